//! Port I/O: which device answers which port.
//!
//! | ports | device |
//! |---|---|
//! | the PC's: 8259 pair, PIT, port 0x61, RTC, COM1, i8042, fw_cfg, 0xcf9, PCI configuration, 0x80, ACPI PM | the board ([`crate::platform::board`]); COM1's output goes to the console ([`crate::console`]) |
//! | `0xf4` | exit port (like QEMU's `isa-debug-exit`): a write of `v` ends the guest with status `v` (the value masked to the access size; QEMU itself would exit with `(v << 1) \| 1`); reads all-ones |
//! | anything else | nothing: reads return all-ones of the access size, writes are dropped; both are counted per port |
//!
//! String I/O (`ins`/`outs`, with or without `rep`) is not supported: the access does nothing and
//! the guest gets #UD.

use alloc::string::String;
use alloc::vec::Vec;

use abi::vm::IoQual;

use crate::console::{self, Console};
use crate::platform::board::{Board, BoardEvent};
use crate::platform::misc::Event;

/// The exit port.
pub const EXIT_PORT: u16 = 0xf4;

/// Distinct ignored ports whose counts are kept (the rest are counted together).
pub const TRACKED_PORTS: usize = 32;
/// Ignored accesses that are reported for logging at most, in all.
pub const LOG_BUDGET: u32 = 32;

/// What an access did, beyond its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEvent {
    /// Nothing to report.
    None,
    /// The console completed lines: take them with [`Ports::take_lines`].
    Line,
    /// The guest wrote its exit status.
    Exit(u32),
    /// The guest asked for a reset through `port`.
    Reset(u16),
    /// The guest powered the machine off (ACPI S5).
    PowerOff,
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
#[derive(Clone, Debug)]
pub struct Ports {
    board: Board,
    console: Console,
    /// Lines the console completed and the monitor has not taken yet.
    lines: Vec<String>,
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
    pub fn new(board: Board) -> Ports {
        Ports {
            board,
            console: Console::new(),
            lines: Vec::new(),
            tracked: [(0, 0); TRACKED_PORTS],
            tracked_len: 0,
            untracked: 0,
            ignored: 0,
            logged: 0,
        }
    }

    /// The PC's devices.
    pub fn board(&mut self) -> &mut Board {
        &mut self.board
    }

    /// The PC's devices, to look at.
    pub fn board_state(&self) -> &Board {
        &self.board
    }

    /// The console.
    pub fn console(&mut self) -> &mut Console {
        &mut self.console
    }

    /// The console, to look at.
    pub fn console_state(&self) -> &Console {
        &self.console
    }

    /// Feeds `bytes` to the console, keeping the lines they complete for [`Ports::take_lines`];
    /// whether any line was completed.
    pub fn output(&mut self, bytes: &[u8]) -> bool {
        let mut any = false;
        for &byte in bytes {
            if self.console.output(byte) {
                self.lines.push(console::printable(self.console.line()));
                any = true;
            }
        }
        any
    }

    /// The console's partial line as a completed one, if there is one.
    pub fn flush(&mut self) -> bool {
        if self.console.flush() {
            self.lines.push(console::printable(self.console.line()));
            return true;
        }
        false
    }

    /// The lines completed since the last call, printable.
    pub fn take_lines(&mut self) -> Vec<String> {
        core::mem::take(&mut self.lines)
    }

    /// Ignored accesses so far.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Performs the access that `qual` describes at guest time `now_ns`; `rax` holds the value
    /// for `out`.
    pub fn access(&mut self, now_ns: u64, qual: IoQual, rax: u64) -> IoResult {
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
        if self.board.claims_port(port) {
            if is_in {
                let value = self.board.port_read(now_ns, port, size) & mask;
                return IoResult {
                    value: Some(value),
                    event: IoEvent::None,
                };
            }
            let event = match self.board.port_write(now_ns, port, size, out) {
                BoardEvent::Machine(Event::Reset) => IoEvent::Reset(port),
                BoardEvent::Machine(Event::PowerOff) => IoEvent::PowerOff,
                _ => IoEvent::None,
            };
            let bytes = self.board.serial.take_output();
            if self.output(&bytes) && event == IoEvent::None {
                return IoResult {
                    value: None,
                    event: IoEvent::Line,
                };
            }
            return IoResult { value: None, event };
        }
        let event = match (port, is_in, out) {
            (EXIT_PORT, false, v) => IoEvent::Exit(v),
            (EXIT_PORT, true, _) => IoEvent::None,
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
#[path = "ports_tests.rs"]
mod tests;
