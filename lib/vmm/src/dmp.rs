//! The VMM's half of patched UART output (`abi::dmp::uart`, issue #6): the words it keeps in the
//! DMP window (the UART's LSR and LCR, so that patched guest code reads the line status and
//! checks the divisor latch without exiting) and the output ring in the window's last page, which
//! patched THR writes fill and hypercall `abi::dmp::UART_FLUSH` (or the VMM itself, before any
//! real UART exit and when the guest ends) drains.
//!
//! The window and the ring are ordinary guest RAM; the VMM reaches them through
//! [`GuestMemory`] (the vmm-server's mapping of the guest's RAM, a byte vector in tests). The
//! guest kernel can write the ring page at any time: every value read from it is treated as
//! hostile (the count is clamped to the ring's capacity, the bytes only ever reach the UART
//! model, whose output is made printable).

use abi::dmp::uart::{RING_CAPACITY, RING_COUNT, RING_DATA, WINDOW_UART_LCR, WINDOW_UART_LSR};
use alloc::vec::Vec;

use crate::layout::{DMP_WINDOW_PAGES, DMP_WINDOW_PHYSICAL};
use crate::platform::serial::Serial;

/// Guest-physical memory as the VMM reaches it.
pub trait GuestMemory {
    /// Reads `out.len()` bytes at guest-physical `gpa`; false (and `out` unspecified) if any of
    /// them lies outside guest RAM.
    fn read(&mut self, gpa: u64, out: &mut [u8]) -> bool;
    /// Writes `data` at guest-physical `gpa`; false (nothing written) if any byte lies outside
    /// guest RAM.
    fn write(&mut self, gpa: u64, data: &[u8]) -> bool;
}

/// No guest memory at all: every access fails (a monitor without a DMP window never asks).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMemory;

impl GuestMemory for NoMemory {
    fn read(&mut self, _gpa: u64, _out: &mut [u8]) -> bool {
        false
    }
    fn write(&mut self, _gpa: u64, _data: &[u8]) -> bool {
        false
    }
}

/// Guest RAM as bytes from guest-physical 0 (tests; the vmm-server has its own mapping).
impl GuestMemory for Vec<u8> {
    fn read(&mut self, gpa: u64, out: &mut [u8]) -> bool {
        match range(gpa, out.len(), self.len()) {
            Some(r) => {
                out.copy_from_slice(&self[r]);
                true
            }
            None => false,
        }
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> bool {
        match range(gpa, data.len(), self.len()) {
            Some(r) => {
                self[r].copy_from_slice(data);
                true
            }
            None => false,
        }
    }
}

/// `gpa .. gpa + len` as indices into memory of `size` bytes, if it fits.
pub fn range(gpa: u64, len: usize, size: usize) -> Option<core::ops::Range<usize>> {
    let start = usize::try_from(gpa).ok()?;
    let end = start.checked_add(len)?;
    (end <= size).then_some(start..end)
}

/// Where the window's UART words and the ring live in guest-physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UartWindow {
    /// The window's first page.
    pub window: u64,
    /// The ring page (the window's last).
    pub ring: u64,
}

/// The ring's capacity as a length.
pub const RING_BYTES: usize = RING_CAPACITY as usize;

impl UartWindow {
    /// The UART window of a DMP window of `pages` pages at guest-physical `window`.
    pub const fn new(window: u64, pages: u64) -> UartWindow {
        UartWindow {
            window,
            ring: window + abi::dmp::uart::ring_offset(pages),
        }
    }

    /// The vmm-server's window (`crate::layout::DMP_WINDOW_*`).
    pub const fn layout() -> UartWindow {
        UartWindow::new(DMP_WINDOW_PHYSICAL, DMP_WINDOW_PAGES)
    }

    /// Writes the LSR and LCR words from the UART's state; false if the memory refused.
    pub fn publish(&self, uart: &Serial, mem: &mut dyn GuestMemory) -> bool {
        let lsr = u64::from(uart.line_status()).to_le_bytes();
        let lcr = u64::from(uart.window_lcr()).to_le_bytes();
        mem.write(self.window + WINDOW_UART_LSR, &lsr)
            && mem.write(self.window + WINDOW_UART_LCR, &lcr)
    }

    /// Takes the ring's bytes into `out` (at least [`RING_BYTES`] long, or the rest is lost)
    /// and empties the ring: how many there were (the count clamped to the capacity), or `None`
    /// if the memory refused (the ring is then left as it was).
    pub fn take(&self, mem: &mut dyn GuestMemory, out: &mut [u8]) -> Option<usize> {
        let mut count = [0u8; 8];
        if !mem.read(self.ring + RING_COUNT, &mut count) {
            return None;
        }
        let count = u64::from_le_bytes(count);
        if count == 0 {
            return Some(0);
        }
        let n = (count.min(RING_CAPACITY) as usize).min(out.len());
        if !mem.read(self.ring + RING_DATA, &mut out[..n]) {
            return None;
        }
        if !mem.write(self.ring + RING_COUNT, &0u64.to_le_bytes()) {
            return None;
        }
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const PAGES: u64 = 4;

    fn ram() -> Vec<u8> {
        vec![0u8; 0x10_0000]
    }

    fn word(mem: &[u8], at: u64) -> u64 {
        u64::from_le_bytes(mem[at as usize..at as usize + 8].try_into().unwrap())
    }

    #[test]
    fn words_follow_the_uart() {
        let w = UartWindow::new(0x8_0000, PAGES);
        assert_eq!(w.ring, 0x8_0000 + 3 * 4096);
        let mut mem = ram();
        let mut uart = Serial::com1();
        assert!(w.publish(&uart, &mut mem));
        assert_eq!(word(&mem, w.window + WINDOW_UART_LSR), 0x60);
        assert_eq!(word(&mem, w.window + WINDOW_UART_LCR), 0x03);
        uart.write(0, 0x3fb, 1, 0x83);
        assert!(w.publish(&uart, &mut mem));
        assert_eq!(word(&mem, w.window + WINDOW_UART_LCR), 0x83);
        // Loopback: a THR write becomes received data, LCR shows bit 7, LSR data ready.
        uart.write(0, 0x3fb, 1, 0x03);
        uart.write(0, 0x3fc, 1, 0x10);
        uart.write(0, 0x3f8, 1, u32::from(b'x'));
        assert!(w.publish(&uart, &mut mem));
        assert_eq!(word(&mem, w.window + WINDOW_UART_LCR), 0x83);
        assert_eq!(word(&mem, w.window + WINDOW_UART_LSR), 0x61);
        // Outside RAM: refused.
        let far = UartWindow::new(0x10_0000, PAGES);
        assert!(!far.publish(&uart, &mut mem));
        assert!(!w.publish(&uart, &mut NoMemory));
    }

    #[test]
    fn the_ring_is_drained_and_clamped() {
        let w = UartWindow::new(0x8_0000, PAGES);
        let mut mem = ram();
        let mut out = [0u8; RING_BYTES];
        assert_eq!(w.take(&mut mem, &mut out), Some(0));
        let data = w.ring + RING_DATA;
        mem[data as usize..data as usize + 3].copy_from_slice(b"hi\n");
        mem[(w.ring + RING_COUNT) as usize] = 3;
        assert_eq!(w.take(&mut mem, &mut out), Some(3));
        assert_eq!(&out[..3], b"hi\n");
        assert_eq!(word(&mem, w.ring + RING_COUNT), 0);
        // A hostile count: clamped to the capacity, and the ring is emptied.
        mem[(w.ring + RING_COUNT) as usize..(w.ring + RING_COUNT) as usize + 8]
            .copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(w.take(&mut mem, &mut out), Some(RING_BYTES));
        assert_eq!(word(&mem, w.ring + RING_COUNT), 0);
        // A ring outside RAM: nothing.
        let far = UartWindow::new(0xf_f000, PAGES);
        assert_eq!(far.take(&mut mem, &mut out), None);
        assert_eq!(w.take(&mut NoMemory, &mut out), None);
        assert_eq!(range(u64::MAX, 2, 10), None);
        assert_eq!(range(8, 2, 10), Some(8..10));
        assert_eq!(range(9, 2, 10), None);
    }
}
