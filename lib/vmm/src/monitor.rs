//! The exit handler: turns one exit message into the reply that resumes (or stops) the vCPU,
//! plus what the vmm-server has to say about it (guest output lines, log lines, the guest's end).
//! The server only moves words between the UTCB and this type and prints the notes.
//!
//! | exit | handling |
//! |---|---|
//! | startup | the initial state from the loader, all groups |
//! | recall, interrupt window | resume |
//! | cpuid | [`crate::cpuid::filter`] of the host's values |
//! | io | [`crate::ports`]; `in` merges the value into RAX by size; string I/O gets #UD |
//! | rdmsr, wrmsr | [`crate::msr`]; refused accesses get #GP(0) |
//! | hlt | nothing can wake the guest (no interrupt sources yet): ends, FAILED, "halted" |
//! | hypercall | `abi::dmp::UART_FLUSH` with a UART window: the ring drained, RAX = OK; another number from `VMM_FIRST` on with the VMM's hypercalls enabled: RAX = BAD_REQUEST; else #UD |
//! | other (MOV DR, nested-mode MOV CR, INVD, XSETBV, RDTSCP) | [`crate::intercept`]: the architectural result |
//! | memory fault | ends, STOPPED with the guest-physical address |
//! | shutdown (triple fault) | ends, SHUTDOWN with the RIP |
//! | exception | re-injected |
//! | entry failure | ends, FAILED |
//!
//! An event that was being delivered when the exit happened is re-injected on resume. An exit
//! message without the register groups its handling needs, or with an unknown reason, ends the
//! guest (FAILED): the VMM never writes back registers it was not given.
//!
//! **DMP UART window** ([`Monitor::enable_uart_window`], guests with `dmp = true`): the monitor
//! keeps the UART's LSR and LCR words in the DMP window current (at the start and after every
//! port I/O exit that touches the UART's ports) and drains the window's output ring (`abi::dmp::uart`) into the UART model
//! before it handles any port I/O exit, on hypercall `UART_FLUSH`, and when the guest ends, so
//! that patched and unpatched output come out in the guest's order and the same lines.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use abi::bootstrap::outcome;
use abi::vm::{inject, mtd, word, Exit, IoQual, EXIT_COUNT};

use crate::cpuid;
use crate::dmp::{GuestMemory, UartWindow, RING_BYTES};
use crate::mmio::{self, CpuMode, MmioOp};
use crate::msr::{MsrAction, MsrContext, MsrPolicy, StateWrite};
use crate::platform::board::{Board, BoardConfig, BoardEvent, Clock};
use crate::platform::serial;
use crate::ports::{self, IoEvent, Ports};
use crate::state::{reply_len, Gpr, VcpuState};

/// Detail codes of a FAILED end (for the log and init's report).
pub mod failure {
    /// The guest halted with nothing to wake it.
    pub const HALTED: u64 = 1;
    /// The hardware refused to enter the guest.
    pub const ENTRY: u64 = 2;
    /// The kernel refused the VMM's reply.
    pub const REFUSED: u64 = 3;
    /// An exit message the VMM cannot handle (unknown reason, missing registers, no instruction
    /// length, an exception vector that is not one).
    pub const PROTOCOL: u64 = 4;
    /// The image could not be loaded.
    pub const LOAD: u64 = 5;
    /// Shadow mode: the guest entered a paging mode the kernel's vTLB does not follow.
    pub const UNSHADOWED: u64 = 7;
    /// The VMM could not set the guest up (configuration, memory, Vm, vCPU or portals).
    pub const SETUP: u64 = 6;
}

const RFLAGS_IF: u64 = 1 << 9;

/// Exception vectors the VMM injects.
pub const UD: u8 = 6;
pub const GP: u8 = 13;
pub const PF: u8 = 14;

/// The register groups each exit's message carries (set with `VcpuControl::SetMask`): what its
/// handling reads or writes back.
pub fn transfer_mask(exit: Exit) -> u64 {
    match exit {
        Exit::Startup => mtd::ALL,
        // Interrupt delivery needs RFLAGS.IF and the interruptibility state.
        Exit::Recall | Exit::InterruptWindow | Exit::Hlt => mtd::RIP | mtd::INJECT,
        Exit::Cpuid | Exit::Io => mtd::GPRS | mtd::RIP,
        // MMIO emulation fetches the instruction through the guest's tables and mode.
        Exit::MemoryFault => mtd::GPRS | mtd::RIP | mtd::CONTROL | mtd::SEGMENTS | mtd::INJECT,
        Exit::Rdmsr | Exit::Wrmsr => mtd::GPRS | mtd::RIP | mtd::CONTROL | mtd::MSRS,
        Exit::Exception => mtd::RIP | mtd::CONTROL | mtd::INJECT,
        // A VMM hypercall's number is in RAX; the reply sets RAX and advances RIP.
        Exit::Hypercall => mtd::GPRS | mtd::RIP,
        Exit::Shutdown | Exit::EntryFailure => mtd::RIP,
        // `crate::intercept` reads the operands, mode and privilege level.
        Exit::Other => mtd::GPRS | mtd::RIP | mtd::CONTROL | mtd::SEGMENTS,
        // Handled by the kernel's vTLB; never delivered. Profile messages carry no state.
        Exit::PageFault | Exit::ControlRegister | Exit::Invlpg | Exit::Profile => 0,
    }
}

/// How the guest ended (`abi::bootstrap::GUEST_DONE` words).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct End {
    /// One of `abi::bootstrap::outcome`.
    pub outcome: u64,
    pub detail: u64,
}

/// Something the server reports about an exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// A line of guest UART output (printable text), to print as `[<guest>] <line>`.
    Line(String),
    /// A line for the VMM's own log (without the server's name).
    Log(String),
    /// The guest ended; the reply stops the vCPU.
    End(End),
}

/// The reply to one exit and the notes about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The reply's words; word `MASK` holds the groups written back (and `mtd::STOP`).
    pub reply: VcpuState,
    pub notes: Vec<Note>,
    /// The guest executed HLT with interrupts enabled and nothing is pending: the vCPU sleeps
    /// until a device has an interrupt for it. The server holds the reply back, waits until
    /// this TSC value (the next device timer) and asks [`Monitor::wake`] whether to send it.
    pub halted_until: Option<u64>,
}

impl Response {
    /// The reply's transfer mask.
    pub fn mask(&self) -> u64 {
        self.reply.get(word::MASK)
    }

    /// The words to send: up to the highest group the mask names.
    pub fn words(&self) -> &[u64] {
        &self.reply.words[..reply_len(self.mask())]
    }

    /// Whether the reply stops the vCPU.
    pub fn stops(&self) -> bool {
        self.mask() & mtd::STOP != 0
    }
}

/// The state of one guest's exit handling.
#[derive(Clone, Debug)]
pub struct Monitor {
    initial: VcpuState,
    ports: Ports,
    msrs: MsrPolicy,
    counts: [u64; EXIT_COUNT as usize],
    unknown: u64,
    host_max: Option<(u32, u32)>,
    ended: Option<End>,
    string_io_logged: bool,
    other_logged: u32,
    /// Guest time and its RAM's end (accesses beyond are device memory).
    clock: Clock,
    ram_bytes: u64,
    /// The HLT exit the vCPU sleeps in, while it does.
    halted: Option<VcpuState>,
    intercepts: crate::intercept::Intercepts,
    /// The DMP window's UART words and ring, for guests with DMP.
    uart_window: Option<UartWindow>,
    /// Whether the kernel sends this guest's hypercalls from `VMM_FIRST` on here (and answers the
    /// lower ones itself): unknown numbers then get `BAD_REQUEST`, not #UD.
    vmm_hypercalls: bool,
    /// Where a drain puts the ring's bytes.
    ring_buffer: Vec<u8>,
    /// Bytes that came through the ring, and `UART_FLUSH` hypercalls.
    ring_bytes: u64,
    ring_flushes: u64,
    ring_failed: bool,
}

/// The event word for exception `vector`, with an error code where the vector has one: in
/// protected and long mode (`protected`: CR0.PE) only, as the hardware delivers them.
pub fn exception(vector: u8, protected: bool) -> u64 {
    let has_error = protected && matches!(vector, 8 | 10..=14 | 17 | 21);
    let kind = if vector == 2 {
        inject::KIND_NMI
    } else {
        inject::KIND_EXCEPTION
    };
    u64::from(vector) | kind | if has_error { inject::HAS_ERROR } else { 0 } | inject::VALID
}

/// What a handler decided, before it becomes a [`Response`].
struct Step {
    reply: VcpuState,
    mask: u64,
    notes: Vec<Note>,
    end: Option<End>,
    /// HLT: the vCPU sleeps unless an interrupt is delivered with this reply.
    halt: bool,
}

impl Step {
    fn new(msg: &VcpuState) -> Step {
        Step {
            reply: *msg,
            mask: 0,
            notes: Vec::new(),
            end: None,
            halt: false,
        }
    }

    fn inject(&mut self, event: u64, error: u64) {
        self.reply.set(word::INJECT, event);
        self.reply.set(word::INJECT_ERROR, error);
        self.mask |= mtd::INJECT;
    }

    fn advance(&mut self, msg: &VcpuState, default_len: u64) -> bool {
        let len = match msg.get(word::INSTRUCTION_LEN) {
            0 => default_len,
            n => n,
        };
        if len == 0 || len > 15 {
            self.fail(
                failure::PROTOCOL,
                format!("exit without a usable instruction length ({len})"),
            );
            return false;
        }
        self.reply.set_rip(msg.rip().wrapping_add(len));
        self.mask |= mtd::RIP;
        true
    }

    fn log(&mut self, text: String) {
        self.notes.push(Note::Log(text));
    }

    fn end(&mut self, outcome: u64, detail: u64) {
        if self.end.is_none() {
            self.end = Some(End { outcome, detail });
        }
    }

    fn fail(&mut self, detail: u64, text: String) {
        self.log(text);
        self.end(outcome::FAILED, detail);
    }
}

impl Monitor {
    /// A monitor whose guest starts in `initial` (from the loader).
    pub fn new(initial: VcpuState) -> Monitor {
        Monitor::with_board(
            initial,
            Board::new(BoardConfig {
                ram_bytes: 64 << 20,
                tsc_hz: 0,
                rtc_unix_seconds: crate::platform::rtc::DEFAULT_UNIX_SECONDS,
                x2apic: false,
            }),
            64 << 20,
        )
    }

    /// A monitor whose guest starts in `initial` on `board`, with `ram_bytes` of RAM from 0.
    pub fn with_board(initial: VcpuState, board: Board, ram_bytes: u64) -> Monitor {
        Monitor {
            initial,
            clock: board.clock(),
            ram_bytes,
            halted: None,
            ports: Ports::new(board),
            msrs: MsrPolicy::new(),
            counts: [0; EXIT_COUNT as usize],
            unknown: 0,
            host_max: None,
            ended: None,
            string_io_logged: false,
            other_logged: 0,
            intercepts: crate::intercept::Intercepts::new(),
            uart_window: None,
            vmm_hypercalls: false,
            ring_buffer: Vec::new(),
            ring_bytes: 0,
            ring_flushes: 0,
            ring_failed: false,
        }
    }

    /// Keeps the UART words of the DMP window `window` current and drains its ring (see the
    /// module documentation); writes the words now. False (and nothing enabled) if `mem` refused
    /// the words.
    pub fn enable_uart_window(&mut self, window: UartWindow, mem: &mut dyn GuestMemory) -> bool {
        if !window.publish(&self.ports.board().serial, mem) {
            return false;
        }
        self.uart_window = Some(window);
        self.ring_buffer = alloc::vec![0; RING_BYTES];
        true
    }

    /// The kernel hands this guest's hypercalls from `abi::vm::hypercall::VMM_FIRST` on to the
    /// VMM (its vCPU has hypercalls enabled): answer unknown ones with `BAD_REQUEST` instead of
    /// #UD.
    pub fn enable_vmm_hypercalls(&mut self) {
        self.vmm_hypercalls = true;
    }

    /// How the guest ended, once it has.
    pub fn ended(&self) -> Option<End> {
        self.ended
    }

    /// Handles the exit message `msg`; `host_cpuid(leaf, subleaf)` executes CPUID on the host;
    /// `mem` is the guest's RAM (used only with a UART window).
    pub fn handle(
        &mut self,
        msg: &[u64],
        host_cpuid: &mut dyn FnMut(u32, u32) -> [u32; 4],
        mem: &mut dyn GuestMemory,
    ) -> Response {
        if msg.get(word::REASON) == Some(&(Exit::Profile as u64)) {
            // Its words are a packed batch, not vCPU state.
            return self.profile(msg);
        }
        let msg = VcpuState::from_words(msg);
        let mut step = Step::new(&msg);
        let reason = msg.get(word::REASON);
        match Exit::from_u64(reason) {
            None => {
                self.unknown += 1;
                step.fail(failure::PROTOCOL, format!("unknown exit reason {reason}"));
            }
            Some(exit) => {
                self.counts[exit as usize] += 1;
                if self.ended.is_some() {
                    // A stopped vCPU does not exit again; should it, keep it stopped.
                    step.end = self.ended;
                } else if msg.get(word::MASK) & transfer_mask(exit) != transfer_mask(exit) {
                    step.fail(
                        failure::PROTOCOL,
                        format!(
                            "{} exit carries groups {:#x}, needs {:#x}",
                            exit.name(),
                            msg.get(word::MASK),
                            transfer_mask(exit)
                        ),
                    );
                } else {
                    self.dispatch(exit, &msg, &mut step, host_cpuid, mem);
                }
            }
        }
        self.finish(&msg, step, mem)
    }

    /// An exit profile from the kernel (every `abi::vm::PROFILE_PERIOD` exits, or
    /// `PROFILE_TSC_PERIOD` ticks): a log line with the totals and the hottest site for
    /// profiles 1, 2, 4, 8, … (a long run logs a handful, not thousands); the reply changes
    /// nothing. A garbled batch is logged and otherwise ignored (the guest is not at fault).
    fn profile(&mut self, msg: &[u64]) -> Response {
        self.counts[Exit::Profile as usize] += 1;
        let state = VcpuState::default();
        let mut step = Step::new(&state);
        let mut bytes = [0u8; abi::profile::MAX_ENCODED_LEN];
        let decoded = msg
            .get(abi::vm::PROFILE_WORDS..)
            .ok_or(abi::profile::ProfileError::Truncated)
            .and_then(|words| abi::profile::unpack_words(words, &mut bytes))
            .and_then(abi::profile::ProfileBatch::decode);
        match decoded {
            Ok(batch) if !batch.sequence.is_power_of_two() => {}
            Ok(batch) => {
                let mut line = format!(
                    "exit profile #{}: {} exits",
                    batch.sequence, batch.exits_total
                );
                if let Some(top) = batch.sites.first() {
                    let name = top.exit().map_or("unknown", Exit::name);
                    line.push_str(&format!(
                        "; hottest {name} at {:#x} ({} exits)",
                        top.rip, top.count
                    ));
                }
                step.log(line);
            }
            Err(e) => step.log(format!("exit profile unreadable: {e}")),
        }
        step.mask = 0;
        step.reply.set(word::MASK, 0);
        Response {
            reply: step.reply,
            notes: step.notes,
            halted_until: None,
        }
    }

    /// The kernel refused the last reply: stop the vCPU.
    pub fn refused(&mut self, mem: &mut dyn GuestMemory) -> Response {
        let msg = VcpuState::default();
        let mut step = Step::new(&msg);
        step.fail(
            failure::REFUSED,
            String::from("the kernel refused the reply; stopping the guest"),
        );
        self.finish(&msg, step, mem)
    }

    /// Feeds the bytes in the DMP window's UART ring to the UART as THR writes (the lines they
    /// complete become notes) and empties the ring.
    fn drain(&mut self, step: &mut Step, mem: &mut dyn GuestMemory) {
        let Some(window) = self.uart_window else {
            return;
        };
        let mut buffer = core::mem::take(&mut self.ring_buffer);
        match window.take(mem, &mut buffer) {
            Some(n) => {
                self.ring_bytes += n as u64;
                self.ports.output(&buffer[..n]);
                self.take_lines(step);
            }
            None if !self.ring_failed => {
                self.ring_failed = true;
                step.log(String::from("the DMP UART ring is not in guest RAM"));
            }
            None => {}
        }
        self.ring_buffer = buffer;
    }

    /// Rewrites the DMP window's UART words after an access that may have changed them.
    fn publish(&mut self, step: &mut Step, mem: &mut dyn GuestMemory) {
        if let Some(window) = self.uart_window {
            if !window.publish(&self.ports.board().serial, mem) && !self.ring_failed {
                self.ring_failed = true;
                step.log(String::from("the DMP UART words are not in guest RAM"));
            }
        }
    }

    fn finish(&mut self, msg: &VcpuState, mut step: Step, mem: &mut dyn GuestMemory) -> Response {
        if step.end.is_none() && step.mask & mtd::INJECT == 0 {
            // Re-inject an event whose delivery the exit interrupted.
            let pending = msg.get(word::INJECT);
            if msg.get(word::MASK) & mtd::INJECT != 0 && pending & inject::VALID != 0 {
                step.inject(pending, msg.get(word::INJECT_ERROR));
            }
        }
        let mut halted_until = None;
        let tsc = msg.get(word::EXIT_TSC);
        let quiet = self.ports.board_state().quiet_at(tsc);
        if step.end.is_none() && msg.get(word::REASON) != Exit::Startup as u64 && !quiet {
            let now = self.clock.ns(tsc);
            self.deliver(msg, &mut step, now);
        }
        if step.end.is_none() && step.halt {
            halted_until = self.sleep(msg, &mut step);
        }
        if let Some(end) = step.end {
            if self.ended.is_none() {
                self.drain(&mut step, mem);
            }
            if self.ended.is_none() && self.ports.flush() {
                self.take_lines(&mut step);
            }
            if self.ended.is_none() {
                step.notes.push(Note::End(end));
            }
            self.ended = Some(end);
            step.mask = mtd::STOP;
            halted_until = None;
        }
        if halted_until.is_some() {
            self.halted = Some(*msg);
        }
        step.reply.set(word::MASK, step.mask);
        Response {
            reply: step.reply,
            notes: step.notes,
            halted_until,
        }
    }

    /// Offers the board's pending interrupt to the vCPU: injected with this reply when the
    /// guest can take it now (an NMI unless NMIs are blocked; an external interrupt with
    /// RFLAGS.IF set, no STI/MOV SS shadow and no other event in this reply), otherwise an
    /// interrupt-window exit is asked for, which comes as soon as it can.
    fn deliver(&mut self, msg: &VcpuState, step: &mut Step, now_ns: u64) {
        let groups = msg.get(word::MASK);
        let state_known = groups & mtd::RIP != 0 && groups & mtd::INJECT != 0;
        let blocking = msg.get(word::INTERRUPTIBILITY);
        let event_busy = |step: &Step| {
            step.mask & mtd::INJECT != 0 && step.reply.get(word::INJECT) & inject::VALID != 0
        };
        let board = self.ports.board();
        if state_known && !event_busy(step) && blocking & 2 == 0 && board.nmi_pending(now_ns) {
            board.take_nmi();
            step.inject(2 | inject::KIND_NMI | inject::VALID, 0);
        }
        if board.external_pending(now_ns).is_none() {
            return;
        }
        // Moving RIP past an emulated instruction (HLT after STI) ends an interrupt shadow.
        let shadow = blocking & 1 != 0 && step.reply.rip() == msg.rip();
        let interruptible = step.reply.get(word::RFLAGS) & RFLAGS_IF != 0 && !shadow;
        if state_known && interruptible && !event_busy(step) {
            if let Some(vector) = board.acknowledge_external(now_ns) {
                step.inject(u64::from(vector) | inject::KIND_EXTERNAL | inject::VALID, 0);
                if board.external_pending(now_ns).is_none() {
                    return;
                }
            }
        }
        if step.mask & mtd::INJECT == 0 {
            step.reply.set(word::INJECT, 0);
            step.reply.set(word::INJECT_ERROR, 0);
            step.mask |= mtd::INJECT;
        }
        let event = step.reply.get(word::INJECT);
        step.reply.set(word::INJECT, event | inject::WINDOW);
    }

    /// HLT with nothing delivered: the TSC value the vCPU sleeps until (the next device
    /// timer), or the guest's end when nothing can ever wake it.
    fn sleep(&mut self, msg: &VcpuState, step: &mut Step) -> Option<u64> {
        if step.mask & mtd::INJECT != 0 && step.reply.get(word::INJECT) != 0 {
            return None; // an event goes in now, or the window exit comes at once
        }
        if step.reply.get(word::RFLAGS) & RFLAGS_IF == 0 {
            step.fail(
                failure::HALTED,
                format!("halted at {:#x} with interrupts disabled", msg.rip()),
            );
            return None;
        }
        match self.ports.board_state().next_deadline_ns() {
            Some(ns) => Some(self.clock.tsc(ns)),
            None => {
                step.fail(
                    failure::HALTED,
                    format!(
                        "halted at {:#x} with no interrupt source armed (no timer runs)",
                        msg.rip()
                    ),
                );
                None
            }
        }
    }

    /// The vCPU of `response` (a HLT) sleeps; it is now guest time `tsc`. True when the reply
    /// is to be sent (an interrupt was delivered into it); false to sleep on until the new
    /// `response.halted_until`.
    pub fn wake(&mut self, response: &mut Response, tsc: u64) -> bool {
        let Some(msg) = self.halted else {
            return true;
        };
        let mut step = Step::new(&msg);
        step.reply = response.reply;
        step.mask = response.mask();
        step.halt = true;
        let now = self.clock.ns(tsc);
        self.deliver(&msg, &mut step, now);
        let until = self.sleep(&msg, &mut step);
        step.reply.set(word::MASK, step.mask);
        response.reply = step.reply;
        response.halted_until = until;
        if until.is_some() {
            return false;
        }
        self.halted = None;
        if let Some(end) = step.end {
            self.ended = Some(end);
            response.reply.set(word::MASK, mtd::STOP);
            response.notes = step.notes;
            response.notes.push(Note::End(end));
        }
        true
    }

    /// The next device timer as a TSC value, if one runs (the server kicks the vCPU then).
    pub fn next_deadline_tsc(&self) -> Option<u64> {
        self.ports.board_state().next_deadline_tsc()
    }

    fn take_lines(&mut self, step: &mut Step) {
        for line in self.ports.take_lines() {
            step.notes.push(Note::Line(line));
        }
    }

    fn dispatch(
        &mut self,
        exit: Exit,
        msg: &VcpuState,
        step: &mut Step,
        host_cpuid: &mut dyn FnMut(u32, u32) -> [u32; 4],
        mem: &mut dyn GuestMemory,
    ) {
        let q0 = msg.get(word::QUAL0);
        match exit {
            Exit::Startup => {
                step.reply = self.initial;
                step.mask = mtd::ALL;
            }
            Exit::Recall | Exit::InterruptWindow => {}
            Exit::PageFault | Exit::ControlRegister | Exit::Invlpg | Exit::Profile => step.fail(
                failure::PROTOCOL,
                format!("{} exit delivered (the kernel handles these)", exit.name()),
            ),
            Exit::Cpuid => self.cpuid(msg, step, host_cpuid),
            Exit::Io => {
                // Bytes the guest's patched code left in the ring come before this access.
                self.drain(step, mem);
                self.io(msg, step);
                let q = IoQual(q0);
                let end = u32::from(q.port()) + u32::from(q.size().max(1));
                let com1 = u32::from(serial::COM1_BASE);
                if u32::from(q.port()) < com1 + u32::from(serial::PORTS) && end > com1 {
                    self.publish(step, mem);
                }
            }
            Exit::Rdmsr | Exit::Wrmsr => {
                if !self.apic_msr(exit, msg, step) {
                    self.msr(exit, msg, step);
                }
            }
            Exit::Hlt => {
                if step.advance(msg, 1) {
                    step.halt = true;
                }
            }
            Exit::Hypercall => self.hypercall(msg, step, mem),
            Exit::MemoryFault => self.mmio(msg, step, mem),
            Exit::Shutdown => {
                step.log(format!("triple fault (last RIP {:#x})", msg.rip()));
                step.end(outcome::SHUTDOWN, msg.rip());
            }
            Exit::Exception => {
                let vector = q0 as u8;
                if q0 & 0xffff_ff00 != 0 || vector >= 32 {
                    step.fail(failure::PROTOCOL, format!("exception exit with {q0:#x}"));
                } else {
                    if vector == PF {
                        step.reply.set(word::CR2, msg.get(word::QUAL1));
                        step.mask |= mtd::CONTROL;
                    }
                    let protected = msg.get(word::CR0) & 1 != 0;
                    let event = exception(vector, protected);
                    let error = if event & inject::HAS_ERROR != 0 {
                        q0 >> 32
                    } else {
                        0
                    };
                    step.inject(event, error);
                }
            }
            Exit::EntryFailure => step.fail(
                failure::ENTRY,
                format!(
                    "the hardware refused to enter the guest (code {q0}, detail {:#x}, RIP {:#x})",
                    msg.get(word::QUAL1),
                    msg.rip()
                ),
            ),
            Exit::Other if q0 == abi::vm::other::UNSHADOWED_MODE => step.fail(
                failure::UNSHADOWED,
                format!(
                    "the guest entered a paging mode the kernel's vTLB does not shadow (CR{} \
                     write at {:#x})",
                    msg.get(word::QUAL1),
                    msg.rip()
                ),
            ),
            Exit::Other => {
                let effect = self.intercepts.handle(msg, host_cpuid, mem);
                if let (Some(text), true) = (effect.log, self.other_logged < 8) {
                    self.other_logged += 1;
                    step.log(text);
                }
                (step.reply, step.mask) = (effect.reply, step.mask | effect.mask);
                if let Some((vector, error)) = effect.fault {
                    let protected = msg.get(word::CR0) & 1 != 0;
                    step.inject(exception(vector, protected), error.map_or(0, u64::from));
                }
            }
        }
    }

    fn cpuid(
        &mut self,
        msg: &VcpuState,
        step: &mut Step,
        host: &mut dyn FnMut(u32, u32) -> [u32; 4],
    ) {
        let (leaf, subleaf) = (msg.gpr(Gpr::Rax) as u32, msg.gpr(Gpr::Rcx) as u32);
        let (basic, extended) = *self
            .host_max
            .get_or_insert_with(|| (host(0, 0)[0], host(0x8000_0000, 0)[0]));
        let values = if cpuid::uses_host(leaf) {
            host(leaf, subleaf)
        } else {
            [0; 4]
        };
        let r = cpuid::filter_with_limits(leaf, subleaf, values, basic, extended);
        let cr4 = if msg.get(word::MASK) & mtd::CONTROL != 0 {
            msg.get(word::CR4)
        } else {
            self.intercepts.cr4()
        };
        let r = cpuid::with_cr4(leaf, r, cr4);
        for (reg, v) in [Gpr::Rax, Gpr::Rbx, Gpr::Rcx, Gpr::Rdx].into_iter().zip(r) {
            step.reply.set_gpr(reg, u64::from(v));
        }
        if step.advance(msg, 2) {
            step.mask |= mtd::GPRS;
        }
    }

    /// A VMCALL/VMMCALL the kernel did not answer itself.
    fn hypercall(&mut self, msg: &VcpuState, step: &mut Step, mem: &mut dyn GuestMemory) {
        use abi::vm::hypercall::{BAD_REQUEST, OK, VMM_FIRST};
        let number = msg.gpr(Gpr::Rax);
        let result = if number == abi::dmp::UART_FLUSH && self.uart_window.is_some() {
            self.ring_flushes += 1;
            self.drain(step, mem);
            OK
        } else if self.vmm_hypercalls && number >= VMM_FIRST {
            BAD_REQUEST
        } else {
            step.inject(exception(UD, false), 0);
            return;
        };
        step.reply.set_gpr(Gpr::Rax, result);
        if step.advance(msg, 3) {
            step.mask |= mtd::GPRS;
        }
    }

    fn io(&mut self, msg: &VcpuState, step: &mut Step) {
        let q = IoQual(msg.get(word::QUAL0));
        let rax = msg.gpr(Gpr::Rax);
        let now = self.clock.ns(msg.get(word::EXIT_TSC));
        let result = self.ports.access(now, q, rax);
        let direction = if q.is_in() { "in" } else { "out" };
        match result.event {
            IoEvent::StringIo => {
                if !self.string_io_logged {
                    self.string_io_logged = true;
                    step.log(format!(
                        "string I/O ({direction}, port {:#x}) is not supported: #UD",
                        q.port()
                    ));
                }
                step.inject(exception(UD, false), 0);
                return;
            }
            IoEvent::Exit(status) => {
                step.end(outcome::EXITED, u64::from(status));
                return;
            }
            IoEvent::Reset(port) => {
                step.log(format!("reset requested through port {port:#x}"));
                step.end(outcome::RESET, u64::from(port));
                return;
            }
            IoEvent::Line => self.take_lines(step),
            IoEvent::PowerOff => {
                self.take_lines(step);
                step.log(String::from("powered off (ACPI S5)"));
                step.end(outcome::EXITED, 0);
                return;
            }
            IoEvent::Ignored {
                port,
                count,
                log: true,
            } => step.log(format!(
                "ignored {direction} port {port:#x} (size {}, access {count})",
                q.size()
            )),
            IoEvent::Ignored { .. } | IoEvent::None => {}
        }
        if let Some(value) = result.value {
            step.reply
                .set_gpr(Gpr::Rax, ports::merge_in(rax, q.size(), value));
            step.mask |= mtd::GPRS;
        }
        step.advance(msg, 0);
    }

    /// A memory fault outside RAM: device memory. The instruction is decoded and becomes one
    /// board access; RIP moves past it. A fault inside RAM (an access its mapping forbids), an
    /// instruction fetch from device memory, or an instruction the emulator cannot decode
    /// stops the guest.
    fn mmio(&mut self, msg: &VcpuState, step: &mut Step, mem: &mut dyn GuestMemory) {
        use abi::vm::access;
        let gpa = msg.get(word::QUAL0);
        let how = msg.get(word::QUAL1);
        let stop = |step: &mut Step, why: String| {
            step.log(format!(
                "guest {why} at {gpa:#x} (RIP {:#x}); stopped",
                msg.rip()
            ));
            step.end(outcome::STOPPED, gpa);
        };
        if gpa < self.ram_bytes {
            return stop(
                step,
                String::from("accessed its memory in a way its mapping forbids"),
            );
        }
        if how & access::EXEC != 0 {
            return stop(step, String::from("executed outside its memory"));
        }
        let cs = msg.segment(abi::vm::Segment::Cs);
        let mode = CpuMode {
            cr0: msg.get(word::CR0),
            cr3: msg.get(word::CR3),
            cr4: msg.get(word::CR4),
            efer: msg.get(word::EFER),
            cs_attributes: cs.attributes,
            cs_base: cs.base,
        };
        let mut gprs = [0u64; 16];
        for (i, r) in gprs.iter_mut().enumerate() {
            *r = msg.get(word::GPRS + i);
        }
        let decoded = match mmio::decode(mem, &mode, msg.rip(), &gprs) {
            Ok(d) => d,
            Err(e) => {
                return stop(
                    step,
                    format!("accessed device memory with an instruction not emulated ({e})"),
                )
            }
        };
        let now = self.clock.ns(msg.get(word::EXIT_TSC));
        let board = self.ports.board();
        let event = match decoded.op {
            MmioOp::Load { size, dest, extend } => {
                let (value, event) = board.mmio_read(now, gpa, size);
                let full = gprs[dest.number];
                step.reply.set(
                    word::GPRS + dest.number,
                    mmio::loaded(dest, full, size, value, extend),
                );
                step.mask |= mtd::GPRS;
                event
            }
            MmioOp::Store { size, value } => board.mmio_write(now, gpa, size, value),
            MmioOp::Exchange { size, reg } => {
                let (old, event) = board.mmio_read(now, gpa, size);
                let full = gprs[reg.number];
                board.mmio_write(now, gpa, size, reg.value(full));
                step.reply.set(
                    word::GPRS + reg.number,
                    mmio::loaded(reg, full, size, old, mmio::Extend::Zero),
                );
                step.mask |= mtd::GPRS;
                event
            }
        };
        if let BoardEvent::UnknownPage(page) = event {
            step.log(format!(
                "no device at guest-physical page {page:#x} (first access from RIP {:#x}): \
                 reads all-ones, writes dropped",
                msg.rip()
            ));
        }
        step.advance(msg, decoded.len);
    }

    /// RDMSR/WRMSR of an MSR the local APIC owns; false for any other MSR.
    fn apic_msr(&mut self, exit: Exit, msg: &VcpuState, step: &mut Step) -> bool {
        let index = msg.gpr(Gpr::Rcx) as u32;
        let now = self.clock.ns(msg.get(word::EXIT_TSC));
        let board = self.ports.board();
        let result = if exit == Exit::Rdmsr {
            board.rdmsr(now, index)
        } else {
            let value = (msg.gpr(Gpr::Rdx) << 32) | (msg.gpr(Gpr::Rax) & 0xffff_ffff);
            board.wrmsr(now, index, value).map(|r| r.map(|()| 0))
        };
        match result {
            None => false,
            Some(Err(_)) => {
                let protected = msg.get(word::CR0) & 1 != 0;
                step.inject(exception(GP, protected), 0);
                true
            }
            Some(Ok(value)) => {
                if exit == Exit::Rdmsr {
                    step.reply.set_gpr(Gpr::Rax, value & 0xffff_ffff);
                    step.reply.set_gpr(Gpr::Rdx, value >> 32);
                    step.mask |= mtd::GPRS;
                }
                step.advance(msg, 2);
                true
            }
        }
    }

    fn msr(&mut self, exit: Exit, msg: &VcpuState, step: &mut Step) {
        let index = msg.gpr(Gpr::Rcx) as u32;
        let ctx = MsrContext {
            tsc: msg.get(word::EXIT_TSC),
            pat: msg.get(word::PAT),
            efer: msg.get(word::EFER),
            cr0: msg.get(word::CR0),
        };
        let action = if exit == Exit::Rdmsr {
            self.msrs.read(index, &ctx)
        } else {
            let value = (msg.gpr(Gpr::Rdx) << 32) | (msg.gpr(Gpr::Rax) & 0xffff_ffff);
            self.msrs.write(index, value, &ctx)
        };
        match action {
            MsrAction::GeneralProtection => {
                let protected = msg.get(word::CR0) & 1 != 0;
                step.inject(exception(GP, protected), 0);
                return;
            }
            MsrAction::Value(v) => {
                step.reply.set_gpr(Gpr::Rax, v & 0xffff_ffff);
                step.reply.set_gpr(Gpr::Rdx, v >> 32);
                step.mask |= mtd::GPRS;
            }
            MsrAction::WriteState(StateWrite::Pat(v)) => {
                step.reply.set(word::PAT, v);
                step.mask |= mtd::MSRS;
            }
            MsrAction::WriteState(StateWrite::Efer(v)) => {
                step.reply.set(word::EFER, v);
                step.mask |= mtd::CONTROL;
            }
            MsrAction::Ok => {}
        }
        step.advance(msg, 2);
    }

    /// Exits handled so far, by reason (`name count` pairs, the reasons seen only), plus the
    /// ignored port accesses: the one-line summary logged when the guest ends.
    pub fn summary(&self) -> String {
        let mut out = String::from("exits:");
        for v in 0..EXIT_COUNT {
            let n = self.counts[v as usize];
            if let (Some(exit), true) = (Exit::from_u64(v), n > 0) {
                out.push_str(&format!(" {} {n},", exit.name()));
            }
        }
        if self.unknown > 0 {
            out.push_str(&format!(" unknown {},", self.unknown));
        }
        if out.ends_with(',') {
            out.pop();
        } else {
            out.push_str(" none");
        }
        out.push_str(&format!("; ignored port accesses {}", self.ports.ignored()));
        let uart = self.ports.console_state();
        out.push_str(&format!(
            "; uart output {} bytes, fnv-1a {:#018x}",
            uart.output_bytes(),
            uart.output_digest()
        ));
        if self.uart_window.is_some() {
            out.push_str(&format!(
                " ({} through the DMP ring, {} flush hypercalls)",
                self.ring_bytes, self.ring_flushes
            ));
        }
        out
    }

    /// Exits of `exit`'s kind handled so far.
    pub fn count(&self, exit: Exit) -> u64 {
        self.counts[exit as usize]
    }
}

#[cfg(test)]
#[path = "monitor_tests.rs"]
mod tests;
