//! Patched UART port I/O (issue #6, port I/O): stubs for the two hot instructions of a polled
//! 16550 driver, which otherwise exit once each per character.
//!
//! | hot site | the stub instead |
//! |---|---|
//! | `in al, dx` / `in al, imm8` of the line status register (`base + 5`) | loads AL from the LSR word the VMM keeps in the DMP window: no exit |
//! | `out dx, al` / `out imm8, al` to the transmit holding register (`base + 0`) | with DLAB clear in the window's LCR word, appends AL to the output ring in the window's scratch page and makes hypercall `UART_FLUSH` only at `\n` or a full ring; with DLAB set, runs the original `out` |
//!
//! The protocol (window words, ring, hypercall) is `abi::dmp::uart`. A stub preserves every
//! register and RFLAGS except what the original instruction changes (`in al` changes AL, `out`
//! nothing); in 64-bit code it moves RSP below the red zone before it pushes, like
//! [`crate::replacement`]'s stubs. Only 64-bit code is handled (the window lies in the top of
//! the 64-bit address space).
//!
//! **Where the jump goes: [`plan_uart_patch`].** The hot instruction is one byte (`in al, dx`,
//! `out dx, al`), and compiled polling loops follow it with a test and a branch at once (grt:
//! `in al, dx; test al, 0x20; jne …`), so [`crate::plan_patch`], which displaces the instructions
//! *after* the hot one, finds no room. The instruction that loads the port into DX usually comes
//! right *before* it (`mov dx, 0x3fd; in al, dx`). So for a DX port the plan first looks for that
//! load in the bytes before the site ([`BEFORE`] of them, same page) and displaces from it up to
//! and including the hot instruction: the stub then re-executes the load and the instructions in
//! between (relocated) before its replacement, DX provably holds the port (nothing in between
//! writes DX), and the stub needs no run-time check. The range ends right after the hot
//! instruction, which is where the vCPU's RIP stands after the exit that made the site hot: the
//! kernel's compare-and-swap does not find the vCPU inside the range (`Busy`).
//!
//! Bytes before an instruction cannot be decoded with certainty (an instruction's immediate can
//! look like another instruction). The load is accepted only as `mov dx, imm16` or `mov edx,
//! imm32` whose immediate *is* the port (all of it: in grt's loop the bytes `ba f8 03 89 f0`,
//! the tail of `mov dx, 0x3f8; mov eax, esi`, also decode as `mov edx, 0xf08903f8`), followed by
//! whole instructions that end exactly at the site, none of them a branch, padding or a write of
//! DX. The nearest such load is taken. What remains is the known limitation of all patching with
//! a jump (crate documentation): a jump from elsewhere into the displaced range.
//!
//! Without such a load (a port computed at run time, an immediate port) the plan is
//! [`crate::plan_patch`]'s (the hot instruction and the instructions after it); a DX stub then
//! compares DX with the port at run time and runs the original instruction when it differs.
//!
//! **Known limitation.** The window is supervisor-only: a site that user mode executes (a guest
//! that gives ring 3 port access through IOPL or its TSS bitmap) would fault on the jump. The
//! exit profile does not say the CPL; the policy patches UART sites on the assumption that only
//! the guest kernel drives the UART.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, IcedError, Instruction, InstructionInfoFactory,
    MemoryOperand, Mnemonic, OpAccess, Register,
};

use abi::dmp::uart::{
    ring_offset, LCR_DLAB, RING_CAPACITY, RING_COUNT, RING_DATA, WINDOW_UART_LCR, WINDOW_UART_LSR,
};
use abi::dmp::UART_FLUSH;

use crate::classify::{Bitness, IoDirection, Port, Site, SiteKind, Width};
use crate::plan::{plan_patch, PatchPlan, PlanError, JMP_REL32_LEN, MAX_PATCH_LEN, PAGE_SIZE};
use crate::replacement::{HypercallInsn, RED_ZONE};
use crate::stub::{build_stub, Stub, StubError};

/// The first port of COM1, the UART the vmm-server models.
pub const COM1: u16 = 0x3f8;
/// Register offsets from the UART's first port.
pub const THR: u16 = 0;
pub const LSR: u16 = 5;
/// Bytes before the site [`plan_uart_patch`] looks at for the port load (the caller reads up to
/// this many, from the same page).
pub const BEFORE: usize = 16;

/// Where a UART stub finds the window's words and the ring (guest-linear addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UartWindow {
    /// The UART's first port.
    pub base: u16,
    /// The LSR word (`abi::dmp::uart::WINDOW_UART_LSR`).
    pub lsr: u64,
    /// The LCR word.
    pub lcr: u64,
    /// The ring page (`RING_COUNT`, `RING_DATA`).
    pub ring: u64,
}

impl UartWindow {
    /// The UART window of COM1 in a DMP window of `pages` pages at guest-linear `linear`.
    pub const fn new(linear: u64, pages: u64) -> UartWindow {
        UartWindow {
            base: COM1,
            lsr: linear + WINDOW_UART_LSR,
            lcr: linear + WINDOW_UART_LCR,
            ring: linear + ring_offset(pages),
        }
    }
}

/// Which UART access a site makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UartAccess {
    /// A read of the line status register.
    LsrRead,
    /// A write of the transmit holding register.
    ThrWrite,
}

/// Why a UART site is not patched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UartError {
    /// Not port I/O (or string I/O).
    WrongKind,
    /// 32-bit code (the window is above 4 GiB).
    Bits32,
    /// A word or dword access (UART registers are bytes).
    NotByte,
    /// A port that is not the LSR (for `in`) or THR (for `out`) of the UART.
    NotUartPort(u16),
    /// No room for the jump.
    Plan(PlanError),
    /// iced-x86 refused an instruction, or a made-up label clashes with a guest address.
    Encode(String),
}

impl fmt::Display for UartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UartError::WrongKind => f.write_str("not byte-wide port I/O"),
            UartError::Bits32 => f.write_str("32-bit code"),
            UartError::NotByte => f.write_str("not a byte access"),
            UartError::NotUartPort(p) => write!(f, "port {p:#x} is not the UART's LSR or THR"),
            UartError::Plan(e) => write!(f, "{e}"),
            UartError::Encode(e) => write!(f, "encoding: {e}"),
        }
    }
}

impl From<IcedError> for UartError {
    fn from(e: IcedError) -> Self {
        UartError::Encode(e.to_string())
    }
}

impl From<PlanError> for UartError {
    fn from(e: PlanError) -> Self {
        UartError::Plan(e)
    }
}

/// A planned UART patch: the compare-and-swap and the stub's replacement, for
/// [`crate::build_stub`] (or [`UartPatch::build`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UartPatch {
    pub access: UartAccess,
    /// Guest RIP of the hot instruction (what the exit profile names).
    pub rip: u64,
    /// The swap: **`plan.site` is where the swapped range starts**, which lies before `rip` when
    /// the port load was displaced too (`plan.expected`, `plan.new` cover the whole range;
    /// `plan.displaced` holds the hot instruction and what follows it; the instructions before
    /// it are at the start of `replacement`).
    pub plan: PatchPlan,
    /// The stub's code before the displaced instructions that follow the hot one.
    pub replacement: Vec<Instruction>,
    /// Whether the stub compares DX with the port at run time (no port load displaced).
    pub checks_dx: bool,
}

impl UartPatch {
    /// The stub, for a slot of `slot_len` bytes at `plan.stub`.
    pub fn build(&self, slot_len: usize) -> Result<Stub, StubError> {
        build_stub(&self.plan, &self.replacement, slot_len)
    }

    /// The patched form, for the log: `in al, dx (LSR 0x3fd)`, `out dx, al (THR 0x3f8)`, with
    /// `, port load displaced` or `, DX checked` for DX ports.
    pub fn form(&self, window: &UartWindow) -> String {
        let (insn, reg, port) = match (self.access, self.plan.displaced[0].code()) {
            (UartAccess::LsrRead, Code::In_AL_DX) => {
                ("in al, dx", "LSR", window.base.wrapping_add(LSR))
            }
            (UartAccess::LsrRead, _) => ("in al, imm8", "LSR", window.base.wrapping_add(LSR)),
            (UartAccess::ThrWrite, Code::Out_DX_AL) => {
                ("out dx, al", "THR", window.base.wrapping_add(THR))
            }
            (UartAccess::ThrWrite, _) => ("out imm8, al", "THR", window.base.wrapping_add(THR)),
        };
        let how = match (self.plan.site < self.rip, self.checks_dx) {
            (true, _) => ", port load displaced",
            (false, true) => ", DX checked",
            (false, false) => "",
        };
        format!("{insn} ({reg} {port:#x}{how})")
    }
}

/// Plans the patch of a hot UART site: `site` classified from the bytes at its RIP (reason
/// `Exit::Io`), `before` the guest bytes right before the RIP (up to [`BEFORE`], from the same
/// page; may be empty), `stub` where the stub goes, `window` the UART's window, `call` the
/// hypercall instruction of the machine. See the module documentation.
pub fn plan_uart_patch(
    site: &Site,
    before: &[u8],
    stub: u64,
    window: &UartWindow,
    call: HypercallInsn,
) -> Result<UartPatch, UartError> {
    let SiteKind::PortIo {
        direction,
        width,
        port,
    } = site.kind
    else {
        return Err(UartError::WrongKind);
    };
    if site.bitness != Bitness::Bits64 {
        return Err(UartError::Bits32);
    }
    if width != Width::Byte {
        return Err(UartError::NotByte);
    }
    let (access, target) = match direction {
        IoDirection::In => (UartAccess::LsrRead, window.base.wrapping_add(LSR)),
        IoDirection::Out => (UartAccess::ThrWrite, window.base.wrapping_add(THR)),
    };
    let (plan, prefix, checks_dx) = match port {
        Port::Immediate(p) if u16::from(p) != target => {
            return Err(UartError::NotUartPort(u16::from(p)))
        }
        Port::Immediate(_) => (plan_patch(site, stub)?, Vec::new(), false),
        Port::Dx => match port_load(site, before, target)? {
            Some((prefix, bytes)) => (backward_plan(site, &prefix, bytes, stub)?, prefix, false),
            None => (plan_patch(site, stub)?, Vec::new(), true),
        },
    };
    // Where both paths of the stub meet: the first displaced instruction after the hot one, or
    // (none) the resume address, where the stub's last jump goes too.
    let end = plan.displaced.get(1).map_or(plan.resume(), Instruction::ip);
    let mut s = Seq::new(end, &plan, &prefix)?;
    s.insns.extend(prefix.iter().copied());
    match access {
        UartAccess::LsrRead => s.lsr_read(site.instruction, window, checks_dx, target)?,
        UartAccess::ThrWrite => s.thr_write(site.instruction, window, checks_dx, target, call)?,
    }
    Ok(UartPatch {
        access,
        rip: site.rip,
        plan,
        replacement: s.asm.insns,
        checks_dx,
    })
}

/// Displaced instructions before the hot one (the port load first) and their guest bytes.
type PortLoad<'a> = (Vec<Instruction>, &'a [u8]);

/// The instructions from the nearest `mov dx, port` / `mov edx, port` in `before` up to the site
/// and their bytes, if there is such a load that qualifies (module documentation); `Err` when
/// the nearest qualifying load of an immediate into DX loads another port.
fn port_load<'a>(
    site: &Site,
    before: &'a [u8],
    port: u16,
) -> Result<Option<PortLoad<'a>>, UartError> {
    let before = &before[before.len().saturating_sub(BEFORE)..];
    let page = site.rip & !(PAGE_SIZE - 1);
    let mut factory = InstructionInfoFactory::new();
    for start in (0..before.len()).rev() {
        let at = site.rip.wrapping_sub((before.len() - start) as u64);
        if at < page || at > site.rip {
            continue;
        }
        let bytes = &before[start..];
        let mut decoder = Decoder::with_ip(64, bytes, at, DecoderOptions::NONE);
        let mut insns = Vec::new();
        while decoder.can_decode() {
            let insn = decoder.decode();
            if insn.is_invalid() {
                break;
            }
            insns.push(insn);
        }
        if insns.last().map(Instruction::next_ip) != Some(site.rip) {
            continue; // undecodable, or not ending at the site
        }
        let Some(value) = dx_immediate(&insns[0]) else {
            continue;
        };
        let clean = insns[1..].iter().all(|i| {
            i.flow_control() == FlowControl::Next
                && !matches!(i.mnemonic(), Mnemonic::Nop | Mnemonic::Int3)
                && !writes_dx(&mut factory, i)
        });
        if !clean {
            continue;
        }
        if value != u64::from(port) {
            // A clean load of another port (the exit port, another device): not the UART. (A
            // value beyond 16 bits is no port load at all: the bytes mean something else.)
            match u16::try_from(value) {
                Ok(other) => return Err(UartError::NotUartPort(other)),
                Err(_) => continue,
            }
        }
        return Ok(Some((insns, bytes)));
    }
    Ok(None)
}

/// The immediate `insn` loads into DX/EDX (`mov dx, imm16`, `mov edx, imm32`).
fn dx_immediate(insn: &Instruction) -> Option<u64> {
    match insn.code() {
        Code::Mov_r16_imm16 if insn.op0_register() == Register::DX => Some(insn.immediate(1)),
        Code::Mov_r32_imm32 if insn.op0_register() == Register::EDX => Some(insn.immediate(1)),
        _ => None,
    }
}

/// Whether `insn` may write any part of RDX.
fn writes_dx(factory: &mut InstructionInfoFactory, insn: &Instruction) -> bool {
    factory.info(insn).used_registers().iter().any(|u| {
        u.register().full_register() == Register::RDX
            && !matches!(
                u.access(),
                OpAccess::Read | OpAccess::CondRead | OpAccess::None
            )
    })
}

/// The plan for a range from the port load (`prefix[0]`, whose guest bytes up to the site are
/// `bytes`) through the hot instruction.
fn backward_plan(
    site: &Site,
    prefix: &[Instruction],
    bytes: &[u8],
    stub: u64,
) -> Result<PatchPlan, UartError> {
    let start = prefix[0].ip();
    let hot = site.instruction;
    let end = hot.next_ip();
    if end <= start {
        // The hot instruction wraps around the top of the address space.
        return Err(PlanError::CrossesPage.into());
    }
    let covered = (end - start) as usize;
    if covered < JMP_REL32_LEN {
        return Err(PlanError::NeedMoreCode.into());
    }
    if covered > MAX_PATCH_LEN || start / PAGE_SIZE != (end - 1) / PAGE_SIZE {
        return Err(PlanError::CrossesPage.into());
    }
    if stub >= start && stub < end {
        return Err(PlanError::StubOverlapsSite.into());
    }
    let rel = stub.wrapping_sub(start + JMP_REL32_LEN as u64) as i64;
    let rel = i32::try_from(rel).map_err(|_| PlanError::StubOutOfRange)?;
    let mut expected = bytes.to_vec();
    expected.extend_from_slice(&site.code[..hot.len()]);
    let mut new = Vec::with_capacity(covered);
    new.push(JMP_REL32);
    new.extend_from_slice(&rel.to_le_bytes());
    new.resize(covered, INT3);
    Ok(PatchPlan {
        site: start,
        stub,
        bitness: site.bitness,
        covered,
        expected,
        new,
        displaced: alloc::vec![hot],
    })
}

/// `jmp rel32`'s opcode and the filler after it (as in [`crate::plan`]).
const JMP_REL32: u8 = 0xe9;
const INT3: u8 = 0xcc;

/// Made-up addresses of the stub's internal branch targets (1, 2, …: iced-x86's block encoder
/// resolves branches by instruction address); no guest instruction lies this low.
const LABELS: u64 = 16;

/// A stub's replacement under construction.
struct Seq {
    asm: crate::labels::Labeled,
    /// Where the two paths meet (after the replacement).
    end: u64,
}

impl core::ops::Deref for Seq {
    type Target = crate::labels::Labeled;
    fn deref(&self) -> &Self::Target {
        &self.asm
    }
}

impl core::ops::DerefMut for Seq {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.asm
    }
}

impl Seq {
    fn new(end: u64, plan: &PatchPlan, prefix: &[Instruction]) -> Result<Seq, UartError> {
        let clash = plan
            .displaced
            .iter()
            .chain(prefix)
            .map(Instruction::ip)
            .chain([plan.resume()])
            .any(|ip| ip <= LABELS);
        if clash {
            return Err(UartError::Encode("guest code at the stub's labels".into()));
        }
        Ok(Seq {
            asm: Default::default(),
            end,
        })
    }

    fn op0(&mut self, code: Code) {
        self.op(Instruction::with(code));
    }

    fn lea_sp(&mut self, delta: i64) -> Result<(), UartError> {
        let m = MemoryOperand::with_base_displ_size(Register::RSP, delta, 1);
        self.op(Instruction::with2(Code::Lea_r64_m, Register::RSP, m)?);
        Ok(())
    }

    /// Below the red zone, flags saved.
    fn enter(&mut self) -> Result<(), UartError> {
        self.lea_sp(-(RED_ZONE as i64))?;
        self.op0(Code::Pushfq);
        Ok(())
    }

    fn leave(&mut self) -> Result<(), UartError> {
        self.op0(Code::Popfq);
        self.lea_sp(RED_ZONE as i64)
    }

    /// `cmp dx, port; jne slow`.
    fn check_dx(&mut self, port: u16, slow: u64) -> Result<(), UartError> {
        self.op(Instruction::with2(
            Code::Cmp_rm16_imm16,
            Register::DX,
            u32::from(port),
        )?);
        Ok(self.jump(Code::Jne_rel32_64, slow)?)
    }

    /// The slow path: flags back, RSP back, the original instruction (it falls through to the
    /// end).
    fn slow(&mut self, slow: u64, hot: Instruction) -> Result<(), UartError> {
        self.bind(slow);
        self.leave()?;
        self.op(hot);
        Ok(())
    }

    /// `in al, <LSR>`: AL = the window's LSR byte.
    fn lsr_read(
        &mut self,
        hot: Instruction,
        window: &UartWindow,
        checks_dx: bool,
        port: u16,
    ) -> Result<(), UartError> {
        let load = Instruction::with2(
            Code::Mov_r8_rm8,
            Register::AL,
            MemoryOperand::with_base_displ(Register::RIP, window.lsr as i64),
        )?;
        if !checks_dx {
            self.op(load);
            return Ok(());
        }
        let slow = self.label();
        self.enter()?;
        self.check_dx(port, slow)?;
        self.leave()?;
        self.op(load);
        let end = self.end;
        self.jump(Code::Jmp_rel32_64, end)?;
        self.slow(slow, hot)
    }

    /// `out <THR>, al`: append AL to the ring unless DLAB is set.
    fn thr_write(
        &mut self,
        hot: Instruction,
        window: &UartWindow,
        checks_dx: bool,
        port: u16,
        call: HypercallInsn,
    ) -> Result<(), UartError> {
        use Register::{AL, EAX, ECX, RAX, RBX, RCX, RIP};
        let (slow, flush, done) = (self.label(), self.label(), self.label());
        self.enter()?;
        if checks_dx {
            self.check_dx(port, slow)?;
        }
        // DLAB (or loopback) set: a THR write is no output; the real instruction does it.
        self.op(Instruction::with2(
            Code::Test_rm8_imm8,
            MemoryOperand::with_base_displ(RIP, window.lcr as i64),
            u32::from(LCR_DLAB),
        )?);
        self.jump(Code::Jne_rel32_64, slow)?;
        for r in [RAX, RBX, RCX] {
            self.op(Instruction::with1(Code::Push_r64, r)?);
        }
        self.op(Instruction::with2(
            Code::Lea_r64_m,
            RBX,
            MemoryOperand::with_base_displ(RIP, window.ring as i64),
        )?);
        let count32 = MemoryOperand::with_base_displ_size(RBX, RING_COUNT as i64, 1);
        self.op(Instruction::with2(Code::Mov_r32_rm32, ECX, count32)?);
        // Never outside the ring, whatever the (guest-writable) count says.
        self.op(Instruction::with2(
            Code::And_rm32_imm32,
            ECX,
            (RING_CAPACITY - 1) as u32,
        )?);
        let slot = MemoryOperand::new(RBX, RCX, 1, RING_DATA as i64, 1, false, Register::None);
        self.op(Instruction::with2(Code::Mov_rm8_r8, slot, AL)?);
        self.op(Instruction::with1(Code::Inc_rm32, ECX)?);
        let count = MemoryOperand::with_base_displ_size(RBX, RING_COUNT as i64, 1);
        self.op(Instruction::with2(Code::Mov_rm64_r64, count, RCX)?);
        self.op(Instruction::with2(Code::Cmp_AL_imm8, AL, u32::from(b'\n'))?);
        self.jump(Code::Je_rel32_64, flush)?;
        self.op(Instruction::with2(
            Code::Cmp_rm32_imm32,
            ECX,
            RING_CAPACITY as u32,
        )?);
        self.jump(Code::Jb_rel32_64, done)?;
        self.bind(flush);
        self.op(Instruction::with2(
            Code::Mov_r32_imm32,
            EAX,
            UART_FLUSH as u32,
        )?);
        self.op0(match call {
            HypercallInsn::Vmcall => Code::Vmcall,
            HypercallInsn::Vmmcall => Code::Vmmcall,
        });
        self.bind(done);
        for r in [RCX, RBX, RAX] {
            self.op(Instruction::with1(Code::Pop_r64, r)?);
        }
        self.leave()?;
        let end = self.end;
        self.jump(Code::Jmp_rel32_64, end)?;
        self.slow(slow, hot)
    }
}

#[cfg(test)]
mod tests {
    //! The stubs run on the test interpreter (`crate::testcpu`, from guest memory, with port I/O)
    //! against a fake VMM that models
    //! the UART, the window words and the ring as `lib/vmm` does: the tests check what a patched
    //! loop *does* (the same output, the same registers and flags, the exits saved).

    use super::*;
    use crate::classify::classify;
    use crate::testcpu::Env;
    use abi::vm::Exit;

    const WINDOW_LA: u64 = 0xffff_ffff_fff0_0000;
    const WINDOW_PAGES: u64 = 16;
    const SLOT: u64 = 128;
    const TEXT: u64 = 0x20_0000;

    /// grt's `_print` loop as the release pagingos has it at 0x108216 (`objdump -d`): poll LSR
    /// (`mov dx, 0x3fd; in al, dx; test al, 0x20; jne`), write THR (`mov dx, 0x3f8; mov eax,
    /// esi; out dx, al`), next byte. Entered at 0x10822c with R8 = the text, RCX = its end; it
    /// leaves at 0x108251.
    const GRT_BASE: u64 = 0x10_8216;
    const GRT: [u8; 65] = [
        0x48, 0xd1, 0xe9, 0x74, 0x36, 0x4c, 0x01, 0xc1, 0xeb, 0x0c, 0x66, 0xba, 0xf8, 0x03, 0x89,
        0xf0, 0xee, 0x49, 0x39, 0xc8, 0x74, 0x25, 0x41, 0x0f, 0xb6, 0x30, 0x49, 0xff, 0xc0, 0xbf,
        0x40, 0x42, 0x0f, 0x00, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00, 0x66, 0xba, 0xfd,
        0x03, 0xec, 0xa8, 0x20, 0x75, 0xd7, 0xf3, 0x90, 0xff, 0xcf, 0x75, 0xf1, 0xeb, 0xcf, 0x48,
        0x83, 0xc4, 0x10, 0x5d, 0xc3,
    ];
    const GRT_ENTRY: u64 = 0x10_822c;
    const GRT_EXIT: u64 = 0x10_8251;
    const GRT_OUT: u64 = 0x10_8226;
    const GRT_IN: u64 = 0x10_8244;

    fn window() -> UartWindow {
        UartWindow::new(WINDOW_LA, WINDOW_PAGES)
    }

    /// The VMM's side, as `lib/vmm` does it: the UART (LCR, divisor, loopback ignored), the
    /// window words after every port exit, the ring drained before every port exit and on
    /// `UART_FLUSH`.
    #[derive(Clone, Debug, Default)]
    struct Vmm {
        lcr: u8,
        divisor: u8,
        output: Vec<u8>,
        io_exits: u64,
        flushes: u64,
        /// (port, value) of every port exit that was no UART register.
        other_ports: Vec<(u16, u8)>,
    }

    /// The test interpreter (`crate::testcpu`) with the fake VMM behind its ports and
    /// hypercalls.
    type Cpu = crate::testcpu::Cpu<Vmm>;

    impl Env for Vmm {
        fn port_in(cpu: &mut Cpu, port: u16) -> u8 {
            cpu.drain();
            cpu.env.io_exits += 1;
            let lcr = cpu.env.lcr;
            let v = match port.wrapping_sub(COM1) {
                5 => 0x60,
                3 => lcr,
                0 if lcr & 0x80 != 0 => cpu.env.divisor,
                0..=7 => 0,
                _ => 0xff,
            };
            cpu.publish();
            v
        }

        fn port_out(cpu: &mut Cpu, port: u16, v: u8) {
            cpu.drain();
            cpu.env.io_exits += 1;
            match port.wrapping_sub(COM1) {
                0 => cpu.env.thr(v),
                3 => cpu.env.lcr = v,
                1..=7 => {}
                _ => cpu.env.other_ports.push((port, v)),
            }
            cpu.publish();
        }

        fn hypercall(cpu: &mut Cpu) -> bool {
            assert_eq!(cpu.get(Register::RAX), UART_FLUSH, "unknown hypercall");
            cpu.env.flushes += 1;
            cpu.drain();
            cpu.set(Register::RAX, abi::vm::hypercall::OK);
            true
        }
    }

    impl Vmm {
        fn thr(&mut self, b: u8) {
            if self.lcr & 0x80 != 0 {
                self.divisor = b;
            } else {
                self.output.push(b);
            }
        }
    }

    impl Cpu {
        /// grt's loop loaded, the window words published, the UART at 8N1.
        fn new() -> Cpu {
            let vmm = Vmm {
                lcr: 0x03,
                divisor: 1,
                ..Vmm::default()
            };
            let mut cpu = Cpu::with_env(Bitness::Bits64, vmm);
            cpu.load(GRT_BASE, &GRT);
            cpu.publish();
            cpu
        }

        fn publish(&mut self) {
            let w = window();
            let lcr = u64::from(self.env.lcr);
            for (at, v) in [(w.lsr, 0x60), (w.lcr, lcr)] {
                self.load(at, &u64::to_le_bytes(v));
            }
        }

        fn drain(&mut self) {
            let ring = window().ring;
            let n = self.read(ring + RING_COUNT, 8).min(RING_CAPACITY);
            for i in 0..n {
                let b = self.read(ring + RING_DATA + i, 1) as u8;
                self.env.thr(b);
            }
            self.load(ring + RING_COUNT, &[0; 8]);
        }

        fn port_out(&mut self, port: u16, v: u8) {
            Vmm::port_out(self, port, v);
        }

        /// Runs grt's loop over `text`.
        fn print(&mut self, text: &[u8]) {
            self.load(TEXT, text);
            self.set(Register::R8, TEXT);
            self.set(Register::RCX, TEXT + text.len() as u64);
            self.run_memory(GRT_ENTRY, GRT_EXIT);
        }

        /// Writes a stub and swaps the site, as the policy does with `VmPatch`.
        fn patch(&mut self, p: &UartPatch) -> Stub {
            let stub = p.build(SLOT as usize).expect("stub");
            assert!(
                stub.code.len() <= SLOT as usize,
                "{} bytes",
                stub.code.len()
            );
            self.load(stub.address, &stub.code);
            let site = self.bytes(p.plan.site, p.plan.covered);
            assert_eq!(site, p.plan.expected, "expected bytes");
            self.load(p.plan.site, &p.plan.new);
            stub
        }
    }

    fn site_at(cpu: &Cpu, rip: u64) -> Site {
        let site = classify(&cpu.bytes(rip, 32), rip, Exit::Io, Bitness::Bits64, false);
        assert!(site.is_patchable(), "{:?}", site.kind);
        site
    }

    fn before(cpu: &Cpu, rip: u64) -> Vec<u8> {
        let n = ((rip & 0xfff) as usize).min(BEFORE);
        cpu.bytes(rip - n as u64, n)
    }

    fn plan_at(cpu: &Cpu, rip: u64, slot: u64) -> Result<UartPatch, UartError> {
        let stub = WINDOW_LA + abi::dmp::WINDOW_RESERVED + slot * SLOT;
        plan_uart_patch(
            &site_at(cpu, rip),
            &before(cpu, rip),
            stub,
            &window(),
            HypercallInsn::Vmmcall,
        )
    }

    /// Some lines of varied length, one longer than the ring.
    fn text() -> Vec<u8> {
        let mut t = Vec::new();
        for i in 0..40u32 {
            for j in 0..(i * 7) % 53 {
                t.push(b'a' + ((i + j) % 26) as u8);
            }
            t.push(b'\n');
        }
        t.extend(core::iter::repeat_n(b'x', 5000));
        t.extend_from_slice(b"\nno newline at the end");
        t
    }

    /// Every memory write of a run: the text is read only, so these are the stub's.
    fn check_writes(cpu: &Cpu, sp: u64) {
        let ring = window().ring;
        for &(a, len) in &cpu.writes {
            let in_ring = a >= ring && a + len as u64 <= ring + 4096;
            let on_stack = a + len as u64 <= sp - RED_ZONE && a >= sp - RED_ZONE - 64;
            assert!(in_ring || on_stack, "write at {a:#x} ({len} bytes)");
        }
    }

    #[test]
    fn patched_grt_loop_prints_the_same_with_few_exits() {
        let text = text();
        let mut plain = Cpu::new();
        plain.print(&text);
        assert!(plain.env.output == text);
        assert_eq!(plain.env.io_exits, 2 * text.len() as u64);

        let mut cpu = Cpu::new();
        let lsr = plan_at(&cpu, GRT_IN, 0).unwrap();
        let thr = plan_at(&cpu, GRT_OUT, 1).unwrap();
        // Both ranges start at the port load (0x108220, not inside it at 0x108221 where the
        // bytes `ba f8 03 89 f0` decode as `mov edx, 0xf08903f8`) and end after the hot
        // instruction.
        assert_eq!((lsr.plan.site, lsr.plan.covered), (0x10_8240, 5));
        assert_eq!((thr.plan.site, thr.plan.covered), (0x10_8220, 7));
        assert!(!lsr.checks_dx && !thr.checks_dx);
        assert_eq!(lsr.access, UartAccess::LsrRead);
        assert_eq!(thr.access, UartAccess::ThrWrite);
        assert_eq!(
            lsr.form(&window()),
            "in al, dx (LSR 0x3fd, port load displaced)"
        );
        assert_eq!(
            thr.form(&window()),
            "out dx, al (THR 0x3f8, port load displaced)"
        );
        // The LSR stub: the port load, one load from the window, the jump back.
        let stub = cpu.patch(&lsr);
        let all: Vec<Instruction> =
            Decoder::with_ip(64, &stub.code, stub.address, DecoderOptions::NONE)
                .iter()
                .collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].ip_rel_memory_address(), window().lsr);
        assert_eq!(all[2].near_branch_target(), GRT_IN + 1);
        cpu.patch(&thr);
        cpu.writes.clear();
        let sp = cpu.get(Register::RSP);
        cpu.print(&text);
        // The tail without a newline waits in the ring for the VMM (it drains it at the end).
        assert_eq!(
            cpu.read(window().ring + RING_COUNT, 8),
            "no newline at the end".len() as u64
        );
        cpu.drain();
        assert!(cpu.env.output == text);
        // No port exit at all; a flush per line and per full ring.
        assert_eq!(cpu.env.io_exits, 0);
        let lines = text.iter().filter(|&&b| b == b'\n').count() as u64;
        assert_eq!(cpu.env.flushes, lines + 2);
        // The same registers and flags as the unpatched loop.
        assert_eq!(cpu.gpr, plain.gpr);
        assert_eq!(cpu.rflags, plain.rflags);
        check_writes(&cpu, sp);
        assert!((cpu.env.flushes as f64) / (text.len() as f64) < 0.1);
    }

    #[test]
    fn dlab_sends_thr_writes_through_the_port() {
        let mut cpu = Cpu::new();
        let lsr = plan_at(&cpu, GRT_IN, 0).unwrap();
        let thr = plan_at(&cpu, GRT_OUT, 1).unwrap();
        cpu.patch(&lsr);
        cpu.patch(&thr);
        // The guest sets DLAB (a real exit; the VMM publishes the LCR word).
        cpu.port_out(COM1 + 3, 0x83);
        cpu.env.io_exits = 0;
        cpu.print(b"\x0c");
        assert_eq!(cpu.env.divisor, 0x0c);
        assert!(cpu.env.output.is_empty());
        assert_eq!((cpu.env.io_exits, cpu.env.flushes), (1, 0));
        cpu.port_out(COM1 + 3, 0x03);
        cpu.print(b"ok\n");
        assert_eq!(cpu.env.output, b"ok\n");
        assert_eq!((cpu.env.io_exits, cpu.env.flushes), (2, 1));
    }

    #[test]
    fn hostile_ring_counts_stay_in_the_ring() {
        let mut cpu = Cpu::new();
        let lsr = plan_at(&cpu, GRT_IN, 0).unwrap();
        let thr = plan_at(&cpu, GRT_OUT, 1).unwrap();
        cpu.patch(&lsr);
        cpu.patch(&thr);
        let ring = window().ring;
        cpu.write(ring + RING_COUNT, 8, 0xffff_ffff_ffff_fff0);
        cpu.writes.clear();
        let sp = cpu.get(Register::RSP);
        cpu.print(b"z");
        check_writes(&cpu, sp);
        // Appended at 0xff0 mod the capacity, the count then 0x7f1; the VMM clamps it.
        assert_eq!(cpu.read(ring + RING_DATA + 0x7f0, 1), u64::from(b'z'));
        assert_eq!(cpu.read(ring + RING_COUNT, 8), 0x7f1);
        assert_eq!(cpu.env.io_exits, 0);
    }

    /// Loads `code` at 0x10_0100 followed by a jump to 0x10_0f00, plans the site at
    /// 0x10_0100 + `hot`, and patches it.
    fn forward(code: &[u8], hot: u64) -> (Cpu, UartPatch) {
        let mut cpu = Cpu::new();
        let at = 0x10_0100;
        cpu.load(at, code);
        let end = at + code.len() as u64;
        let jmp = Instruction::with_branch(Code::Jmp_rel32_64, 0x10_0f00).unwrap();
        let mut e = iced_x86::Encoder::new(64);
        e.encode(&jmp, end).unwrap();
        cpu.load(end, &e.take_buffer());
        let p = plan_at(&cpu, at + hot, 0).unwrap();
        cpu.patch(&p);
        (cpu, p)
    }

    #[test]
    fn dx_is_checked_when_no_port_load_is_displaced() {
        // mov dx, si (DX from a register) ; out dx, al ; mov ecx, ebx ; mov ebx, ecx ; add eax, 1
        let code = [
            0x66, 0x89, 0xf2, 0xee, 0x89, 0xd9, 0x89, 0xcb, 0x83, 0xc0, 0x01,
        ];
        let (cpu, p) = forward(&code, 3);
        assert!(p.checks_dx);
        assert_eq!((p.plan.site, p.plan.covered), (0x10_0103, 5));
        assert_eq!(p.form(&window()), "out dx, al (THR 0x3f8, DX checked)");
        for (port, exits, out) in [(0x3f8u16, 0u64, b"A".to_vec()), (0x80, 1, Vec::new())] {
            let mut c = cpu.clone();
            let mut reference = Cpu::new();
            reference.load(0x10_0100, &cpu.bytes(0x10_0100, 64));
            reference.load(0x10_0103, &code[3..]);
            for x in [&mut c, &mut reference] {
                x.set(Register::RSI, u64::from(port));
                x.set(Register::RAX, u64::from(b'A'));
            }
            c.run_memory(0x10_0100, 0x10_0f00);
            reference.run_memory(0x10_0100, 0x10_0f00);
            assert_eq!(c.env.io_exits, exits, "port {port:#x}");
            assert_eq!(c.read(window().ring + RING_COUNT, 8), out.len() as u64);
            c.drain();
            assert_eq!(c.env.output, out);
            assert_eq!(c.gpr, reference.gpr);
            assert_eq!(c.rflags, reference.rflags);
            if port == 0x80 {
                assert_eq!(c.env.other_ports, [(0x80, b'A')]);
            }
        }
        // in al, dx ; mov ecx, ebx ; mov ebx, ecx: the LSR load, or the port when DX differs
        let code = [0xec, 0x89, 0xd9, 0x89, 0xcb];
        let (cpu, p) = forward(&code, 0);
        assert!(p.checks_dx);
        for (port, exits, al) in [(0x3fdu16, 0u64, 0x60u64), (0x3f9, 1, 0)] {
            let mut c = cpu.clone();
            c.set(Register::RDX, u64::from(port));
            let before = c.clone();
            c.run_memory(0x10_0100, 0x10_0f00);
            assert_eq!(c.env.io_exits, exits);
            assert_eq!(c.get(Register::AL), al);
            assert_eq!(c.rflags, before.rflags);
            assert_eq!(c.get(Register::RCX), before.get(Register::EBX));
        }
    }

    #[test]
    fn refusals() {
        let cpu = Cpu::new();
        let stub = WINDOW_LA + 64;
        let w = window();
        let at = |code: &[u8], hot: usize| {
            let rip = 0x10_0100 + hot as u64;
            let site = classify(&code[hot..], rip, Exit::Io, Bitness::Bits64, false);
            plan_uart_patch(&site, &code[..hot], stub, &w, HypercallInsn::Vmcall)
        };
        // mov dx, 0xf4 ; out dx, al ; ...: the exit port, not the UART
        let exit = [0x66, 0xba, 0xf4, 0x00, 0xee, 0x90, 0x90, 0x90, 0x90];
        assert_eq!(at(&exit, 4), Err(UartError::NotUartPort(0xf4)));
        // mov edx, 0x3fd ; out dx, al: the LSR is no THR
        let lsr_out = [0xba, 0xfd, 0x03, 0x00, 0x00, 0xee];
        assert_eq!(at(&lsr_out, 5), Err(UartError::NotUartPort(0x3fd)));
        // mov edx, 0x3f8 ; out dx, al: accepted, 6 bytes displaced
        let ok = [0xba, 0xf8, 0x03, 0x00, 0x00, 0xee];
        let p = at(&ok, 5).unwrap();
        assert_eq!((p.plan.site, p.plan.covered), (0x10_0100, 6));
        // mov dx, 0x3f8 ; mov dl, al ; out dx, al: DX rewritten in between, no anchor, and no
        // room after the site
        let rewritten = [0x66, 0xba, 0xf8, 0x03, 0x88, 0xc2, 0xee, 0xc3];
        assert!(matches!(at(&rewritten, 6), Err(UartError::Plan(_))));
        // mov dx, 0x3f8 ; jmp +0 ; out dx, al: a branch in between
        let branch = [0x66, 0xba, 0xf8, 0x03, 0xeb, 0x00, 0xee, 0xc3];
        assert!(matches!(at(&branch, 6), Err(UartError::Plan(_))));
        // in ax, dx ; out 0x80, al ; 32-bit code ; not port I/O
        assert_eq!(at(&[0x66, 0xed, 0x90], 0), Err(UartError::NotByte));
        assert_eq!(
            at(&[0xe6, 0x80, 0x89, 0xc0, 0x89, 0xc0], 0),
            Err(UartError::NotUartPort(0x80))
        );
        let s32 = classify(
            &[0xee, 0x89, 0xc0, 0x89, 0xc0],
            0x1000,
            Exit::Io,
            Bitness::Bits32,
            false,
        );
        assert_eq!(
            plan_uart_patch(&s32, &[], stub, &w, HypercallInsn::Vmcall),
            Err(UartError::Bits32)
        );
        let cr3 = classify(
            &[0x0f, 0x20, 0xd8],
            0x1000,
            Exit::ControlRegister,
            Bitness::Bits64,
            false,
        );
        assert_eq!(
            plan_uart_patch(&cr3, &[], stub, &w, HypercallInsn::Vmcall),
            Err(UartError::WrongKind)
        );
        // The port load in the previous page is not displaced (the site's page only).
        let mut c = cpu.clone();
        c.load(
            0x10_0ffc,
            &[0x66, 0xba, 0xfd, 0x03, 0xec, 0xa8, 0x20, 0x75, 0xd7],
        );
        let site = site_at(&c, 0x10_1000);
        let r = plan_uart_patch(
            &site,
            &c.bytes(0x10_0ff0, 16),
            stub,
            &w,
            HypercallInsn::Vmcall,
        );
        assert!(matches!(r, Err(UartError::Plan(_))), "{r:?}");
        // A stub out of reach.
        let far = classify(&ok[5..], 0x10_0105, Exit::Io, Bitness::Bits64, false);
        let r = plan_uart_patch(&far, &ok[..5], 0x7fff_0000_0000, &w, HypercallInsn::Vmcall);
        assert_eq!(r, Err(UartError::Plan(PlanError::StubOutOfRange)));
    }

    #[test]
    fn immediate_ports() {
        // A UART at 0x40: in al, 0x45 ; out 0x40, al (each followed by room to displace)
        let w = UartWindow {
            base: 0x40,
            ..window()
        };
        let code = [
            0xe4, 0x45, 0x89, 0xd9, 0x89, 0xcb, 0xe6, 0x40, 0x89, 0xd9, 0x89, 0xcb,
        ];
        let stub = WINDOW_LA + 64;
        let rip = 0x10_0100;
        let s = classify(&code, rip, Exit::Io, Bitness::Bits64, false);
        let p = plan_uart_patch(&s, &[], stub, &w, HypercallInsn::Vmcall).unwrap();
        assert!(!p.checks_dx);
        assert_eq!(p.form(&w), "in al, imm8 (LSR 0x45)");
        let s = classify(&code[6..], rip + 6, Exit::Io, Bitness::Bits64, false);
        let p = plan_uart_patch(&s, &code[..6], stub, &w, HypercallInsn::Vmcall).unwrap();
        assert_eq!(p.form(&w), "out imm8, al (THR 0x40)");
        let stub = p.build(SLOT as usize).unwrap();
        let codes: Vec<Code> = Decoder::with_ip(64, &stub.code, stub.address, DecoderOptions::NONE)
            .iter()
            .map(|i| i.code())
            .collect();
        assert!(codes.contains(&Code::Vmcall));
        assert!(!codes.contains(&Code::Cmp_rm16_imm16));
        assert_eq!(codes.iter().filter(|&&c| c == Code::Out_imm8_AL).count(), 1);
    }

    #[test]
    fn hostile_bytes_never_panic() {
        // xorshift: deterministic
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let w = window();
        let mut planned = 0;
        for round in 0..20_000 {
            let mut code = [0u8; 48];
            for b in code.iter_mut() {
                *b = next() as u8;
            }
            // Often a real port instruction, often after a port load.
            let hot = 16 + (round % 3);
            code[hot] = [0xec, 0xee, 0xe4, 0xe6][round % 4];
            if round % 2 == 0 {
                code[hot - 4..hot].copy_from_slice(&[0x66, 0xba, 0xf8 + (round % 8) as u8, 0x03]);
            }
            let rip = match round % 5 {
                0 => u64::MAX - (next() % 8),
                1 => next() % 32,
                2 => 0x10_0000 + (next() % 0x2000),
                _ => next(),
            };
            let stub = match round % 3 {
                0 => WINDOW_LA + 64,
                1 => rip.wrapping_add(next() % 64),
                _ => next(),
            };
            let site = classify(&code[hot..], rip, Exit::Io, Bitness::Bits64, false);
            let call = HypercallInsn::Vmmcall;
            if let Ok(p) = plan_uart_patch(&site, &code[..hot], stub, &w, call) {
                planned += 1;
                assert_eq!(p.plan.expected.len(), p.plan.covered);
                assert_eq!(p.plan.new.len(), p.plan.covered);
                assert!(p.plan.site <= p.rip && p.plan.resume() > p.rip);
                let _ = p.build(SLOT as usize);
            }
        }
        assert!(planned > 500, "{planned}");
    }

    #[test]
    fn stubs_fit_a_slot() {
        let cpu = Cpu::new();
        let lsr = plan_at(&cpu, GRT_IN, 0)
            .unwrap()
            .build(SLOT as usize)
            .unwrap();
        let thr = plan_at(&cpu, GRT_OUT, 1)
            .unwrap()
            .build(SLOT as usize)
            .unwrap();
        assert!(lsr.code.len() <= 20, "{}", lsr.code.len());
        // The largest form: DX checked and followers displaced.
        let (_, p) = forward(&[0xee, 0x89, 0xd9, 0x89, 0xcb], 0);
        let dx = p.build(SLOT as usize).unwrap();
        assert!(
            thr.code.len() < dx.code.len() && dx.code.len() <= 110,
            "{}",
            dx.code.len()
        );
    }
}
