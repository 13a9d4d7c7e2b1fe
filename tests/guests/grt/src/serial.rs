//! Text output on the COM1 16550 UART, polled: wait for LSR bit 5 (transmit holding register
//! empty), then write the byte. No initialisation: the hypervisor's UART model (and QEMU's)
//! transmits with its defaults.

use core::fmt;

use crate::cpu::{inb, outb};

const COM1: u16 = 0x3f8;
const THR: u16 = COM1;
const LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;
/// Polls before giving up on a UART that never becomes ready (none present: reads all-ones, so
/// this only matters for a broken model) and writing anyway.
const MAX_POLLS: u32 = 1_000_000;

/// Writes one byte.
pub fn write_byte(byte: u8) {
    for _ in 0..MAX_POLLS {
        if inb(LSR) & LSR_THR_EMPTY != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    outb(THR, byte);
}

/// Writes bytes as they are.
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        write_byte(b);
    }
}

/// The UART as a `fmt::Write` sink (what [`print!`](crate::print) uses).
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    // Serial never fails.
    let _ = fmt::Write::write_fmt(&mut Serial, args);
}

/// Prints to COM1.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::_print(format_args!($($arg)*)) };
}

/// Prints a line to COM1 (`\n` only: the hypervisor's console splits lines on it).
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::serial::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
