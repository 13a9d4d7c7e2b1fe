//! Port I/O: which device answers which port.
//!
//! | ports | device |
//! |---|---|
//! | `0x3f8..=0x3ff` | the 16550 UART ([`crate::uart`]); wider accesses are split into bytes |
//! | `0xf4` | exit port (like QEMU's `isa-debug-exit`): a write of `v` ends the guest with status `v` (the value masked to the access size; QEMU itself would exit with `(v << 1) \| 1`); reads all-ones |
//! | `0xcf9` | reset control: a byte write with bit 2 set (0x06, 0x0e) asks for a reset |
//! | `0x64` | keyboard controller: a byte write of 0xfe (pulse reset line) asks for a reset |
//! | anything else | nothing: reads return all-ones of the access size, writes are dropped; both are counted per port |
//!
//! String I/O (`ins`/`outs`, with or without `rep`) is not supported: the access does nothing and
//! the guest gets #UD.

use abi::vm::IoQual;

use crate::uart::{self, Uart};

/// The exit port.
pub const EXIT_PORT: u16 = 0xf4;
/// The reset control register and the keyboard controller's command port.
pub const RESET_CONTROL: u16 = 0xcf9;
pub const KBD_COMMAND: u16 = 0x64;

/// Distinct ignored ports whose counts are kept (the rest are counted together).
pub const TRACKED_PORTS: usize = 32;
/// Ignored accesses that are reported for logging at most, in all.
pub const LOG_BUDGET: u32 = 32;

/// What an access did, beyond its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEvent {
    /// Nothing to report.
    None,
    /// The UART completed a line: take it with [`Ports::uart`]`.line()`.
    Line,
    /// The guest wrote its exit status.
    Exit(u32),
    /// The guest asked for a reset through `port`.
    Reset(u16),
    /// No device: an access to `port`, its `count`th; `log` says whether to log it (the first
    /// accesses to each port, within [`LOG_BUDGET`] for the whole guest).
    Ignored { port: u16, count: u64, log: bool },
    /// String I/O, which is not supported.
    StringIo,
}

/// The outcome of one access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoResult {
    /// For `in`: the value read (to merge into RAX by size).
    pub value: Option<u32>,
    pub event: IoEvent,
}

/// The guest's port space.
#[derive(Clone, Debug, Default)]
pub struct Ports {
    uart: Uart,
    tracked: [(u16, u64); TRACKED_PORTS],
    tracked_len: usize,
    /// Ignored accesses to ports beyond the tracked ones.
    untracked: u64,
    /// All ignored accesses.
    ignored: u64,
    logged: u32,
}

/// The mask of an access of `size` bytes (1, 2 or 4; anything else is taken as 4).
pub fn size_mask(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

/// RAX after an `in` of `size` bytes read `value`: 1- and 2-byte reads replace AL/AX and keep
/// the rest, a 4-byte read replaces EAX and clears the upper half (as any 32-bit write does).
pub fn merge_in(rax: u64, size: u8, value: u32) -> u64 {
    match size {
        1 => (rax & !0xff) | u64::from(value & 0xff),
        2 => (rax & !0xffff) | u64::from(value & 0xffff),
        _ => u64::from(value),
    }
}

impl Ports {
    pub fn new() -> Ports {
        Ports::default()
    }

    /// The UART (for the line it completed).
    pub fn uart(&mut self) -> &mut Uart {
        &mut self.uart
    }

    /// The UART, to look at.
    pub fn uart_state(&self) -> &Uart {
        &self.uart
    }

    /// Ignored accesses so far.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Performs the access that `qual` describes; `rax` holds the value for `out`.
    pub fn access(&mut self, qual: IoQual, rax: u64) -> IoResult {
        let (port, size, is_in) = (qual.port(), qual.size(), qual.is_in());
        if qual.string() || qual.rep() {
            return IoResult {
                value: None,
                event: IoEvent::StringIo,
            };
        }
        let size = if matches!(size, 1 | 2 | 4) { size } else { 4 };
        let mask = size_mask(size);
        let out = rax as u32 & mask;
        let in_uart = |p: u16| (uart::COM1..uart::COM1 + uart::PORTS).contains(&p);
        if in_uart(port) {
            let mut value = 0u32;
            let mut event = IoEvent::None;
            for i in 0..u16::from(size) {
                let p = port.wrapping_add(i);
                if !in_uart(p) {
                    value |= 0xff << (8 * i); // beyond the UART: nothing answers
                    continue;
                }
                let offset = p - uart::COM1;
                if is_in {
                    value |= u32::from(self.uart.read(offset)) << (8 * i);
                } else if self.uart.write(offset, (out >> (8 * i)) as u8) {
                    event = IoEvent::Line;
                }
            }
            return IoResult {
                value: is_in.then_some(value),
                event,
            };
        }
        let event = match (port, is_in, size, out) {
            (EXIT_PORT, false, _, v) => IoEvent::Exit(v),
            (RESET_CONTROL, false, 1, v) if v & 0x4 != 0 => IoEvent::Reset(port),
            (KBD_COMMAND, false, 1, 0xfe) => IoEvent::Reset(port),
            (EXIT_PORT, true, _, _) => IoEvent::None,
            _ => self.ignore(port),
        };
        IoResult {
            value: is_in.then_some(mask),
            event,
        }
    }

    fn ignore(&mut self, port: u16) -> IoEvent {
        self.ignored += 1;
        let count = match self.tracked[..self.tracked_len]
            .iter_mut()
            .find(|(p, _)| *p == port)
        {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None if self.tracked_len < TRACKED_PORTS => {
                self.tracked[self.tracked_len] = (port, 1);
                self.tracked_len += 1;
                1
            }
            None => {
                self.untracked += 1;
                // Counts of untracked ports are unknown: report it as a first access.
                1
            }
        };
        // The first access to a port, then every power of two from 1024 on, while the budget
        // lasts.
        let notable = count == 1 || (count >= 1024 && count.is_power_of_two());
        let log = notable && self.logged < LOG_BUDGET;
        if log {
            self.logged += 1;
        }
        IoEvent::Ignored { port, count, log }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(port: u16, size: u8, v: u64) -> (IoQual, u64) {
        (IoQual::new(port, size, false, false, false), v)
    }

    fn inp(port: u16, size: u8) -> (IoQual, u64) {
        (IoQual::new(port, size, true, false, false), 0)
    }

    #[test]
    fn uart_output_lines() {
        let mut p = Ports::new();
        for &b in b"hi" {
            let (q, v) = out(0x3f8, 1, u64::from(b) | 0xff00);
            assert_eq!(p.access(q, v).event, IoEvent::None);
        }
        let (q, v) = out(0x3f8, 1, u64::from(b'\n'));
        assert_eq!(p.access(q, v).event, IoEvent::Line);
        assert_eq!(p.uart().line(), b"hi");
        let (q, v) = inp(0x3fd, 1);
        assert_eq!(p.access(q, v).value, Some(0x60));
    }

    #[test]
    fn wide_uart_accesses_split() {
        let mut p = Ports::new();
        // Write scratch (0x3ff) with a 2-byte access that runs past the UART.
        let (q, v) = out(0x3ff, 2, 0x1234);
        p.access(q, v);
        let (q, v) = inp(0x3ff, 2);
        assert_eq!(p.access(q, v).value, Some(0xff34));
        // LSR and MSR together.
        let (q, v) = inp(0x3fd, 2);
        assert_eq!(p.access(q, v).value, Some(0xb060));
    }

    #[test]
    fn exit_and_reset() {
        let mut p = Ports::new();
        let (q, v) = out(0xf4, 1, 0x1_0042);
        assert_eq!(p.access(q, v).event, IoEvent::Exit(0x42));
        let (q, v) = out(0xf4, 4, 0xdead_beef_0000_0007);
        assert_eq!(p.access(q, v).event, IoEvent::Exit(7));
        let (q, v) = inp(0xf4, 1);
        assert_eq!(
            p.access(q, v),
            IoResult {
                value: Some(0xff),
                event: IoEvent::None
            }
        );
        for val in [0x06, 0x0e, 0x04] {
            let (q, v) = out(0xcf9, 1, val);
            assert_eq!(p.access(q, v).event, IoEvent::Reset(0xcf9));
        }
        let (q, v) = out(0xcf9, 1, 0x02);
        assert!(matches!(p.access(q, v).event, IoEvent::Ignored { .. }));
        // A dword write to 0xcf8 (PCI configuration address) is not a reset.
        let (q, v) = out(0xcf8, 4, 0x8000_0600);
        assert!(matches!(
            p.access(q, v).event,
            IoEvent::Ignored { port: 0xcf8, .. }
        ));
        let (q, v) = out(0x64, 1, 0xfe);
        assert_eq!(p.access(q, v).event, IoEvent::Reset(0x64));
        let (q, v) = out(0x64, 1, 0xd1);
        assert!(matches!(p.access(q, v).event, IoEvent::Ignored { .. }));
    }

    #[test]
    fn unknown_ports_read_all_ones() {
        let mut p = Ports::new();
        for (size, mask) in [(1, 0xff), (2, 0xffff), (4, 0xffff_ffff), (3, 0xffff_ffff)] {
            let (q, v) = inp(0x80, size);
            assert_eq!(p.access(q, v).value, Some(mask));
        }
        assert_eq!(p.ignored(), 4);
    }

    #[test]
    fn ignored_logging_is_bounded() {
        let mut p = Ports::new();
        let mut logged = 0;
        for _ in 0..5000 {
            let (q, v) = out(0x80, 1, 0);
            if let IoEvent::Ignored { log: true, .. } = p.access(q, v).event {
                logged += 1;
            }
        }
        assert_eq!(logged, 4); // 1, 1024, 2048, 4096
                               // A flood over every port stays within the budget.
        for port in 0..=u16::MAX {
            let (q, v) = out(port, 1, 0);
            if let IoEvent::Ignored { log: true, .. } = p.access(q, v).event {
                logged += 1;
            }
        }
        assert_eq!(logged, LOG_BUDGET as usize);
        assert!(p.ignored() > 5000);
    }

    #[test]
    fn string_io_is_refused() {
        let mut p = Ports::new();
        let q = IoQual::new(0x3f8, 1, false, true, true);
        assert_eq!(p.access(q, 0).event, IoEvent::StringIo);
        let q = IoQual::new(0x3f8, 1, true, true, false);
        assert_eq!(p.access(q, 0).event, IoEvent::StringIo);
    }

    #[test]
    fn merging_into_rax() {
        let rax = 0x1122_3344_5566_7788;
        assert_eq!(merge_in(rax, 1, 0xff), 0x1122_3344_5566_77ff);
        assert_eq!(merge_in(rax, 2, 0xabcd), 0x1122_3344_5566_abcd);
        assert_eq!(merge_in(rax, 4, 0xabcd_ef01), 0xabcd_ef01);
    }
}
