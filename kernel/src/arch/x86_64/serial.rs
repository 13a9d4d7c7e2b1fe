//! COM1 (16550 UART at port 0x3f8): the kernel's own early console for boot, logs and panics.
//! User-level servers get their own driver later; this one stays for the kernel's last words.

use x86::io::{inb, outb};

const COM1: u16 = 0x3f8;
const LINE_STATUS: u16 = COM1 + 5;
const TRANSMIT_EMPTY: u8 = 1 << 5;

/// Programs 115200 baud, 8N1, FIFOs on, interrupts off.
pub fn init() {
    // SAFETY: COM1's registers are owned by the kernel at this stage; these writes only configure
    // the UART and have no effect on memory.
    unsafe {
        outb(COM1 + 1, 0x00); // no interrupts
        outb(COM1 + 3, 0x80); // DLAB on
        outb(COM1, 0x01); // divisor 1 = 115200 baud
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03); // 8N1, DLAB off
        outb(COM1 + 2, 0xc7); // FIFO on, cleared, 14-byte threshold
        outb(COM1 + 4, 0x03); // DTR, RTS
    }
}

/// Writes one byte, waiting (boundedly) for the transmitter. An absent UART reads 0xff, so the
/// wait ends at once.
pub fn write_byte(byte: u8) {
    // SAFETY: port I/O on COM1, which only the kernel's logger uses.
    unsafe {
        for _ in 0..100_000 {
            if inb(LINE_STATUS) & TRANSMIT_EMPTY != 0 {
                break;
            }
        }
        outb(COM1, byte);
    }
}

/// Waits (boundedly) until the UART has sent everything, so that an emulator that stops at the
/// next instruction still shows the last line.
pub fn flush() {
    const TRANSMITTER_IDLE: u8 = 1 << 6;
    for _ in 0..100_000 {
        // SAFETY: reading COM1's line status register has no side effects.
        if unsafe { inb(LINE_STATUS) } & TRANSMITTER_IDLE != 0 {
            break;
        }
    }
}

/// Writes a string, turning `\n` into `\r\n`.
pub fn write_str(s: &str) {
    for byte in s.bytes() {
        if byte == b'\n' {
            write_byte(b'\r');
        }
        write_byte(byte);
    }
}
