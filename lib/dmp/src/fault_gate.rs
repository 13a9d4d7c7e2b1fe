//! Page-fault forwarding: the guest's #PF gate points at a stub in the DMP window that sorts its
//! own faults from the hidden (shadow-only) ones, so that the kernel can stop intercepting #PF
//! (`VmDmp` [`dmp_op::FORWARD_FAULTS`](abi::vm::dmp_op::FORWARD_FAULTS)).
//!
//! Under shadow paging every guest #PF exits; most are either the guest's own (which the kernel
//! reflects into the guest) or hidden faults (a shadow entry is missing; the kernel fills it).
//! With forwarding on, every #PF goes through the guest's IDT gate 14, which the DMP service
//! points at the stub [`build_fault_stub`] makes. The stub walks the guest's 4-level tables
//! through the kernel's read-only view of guest RAM (`VmDmp` [`VIEW`](abi::vm::dmp_op::VIEW)):
//!
//! - a fault the guest's own tables explain (a not-present entry with the hardware's P bit clear,
//!   or a user access that the accumulated U/W bits forbid) goes straight to the guest's original
//!   handler, with no exit at all;
//! - everything else (allowed accesses, supervisor accesses, reserved bits, large pages above
//!   2 MiB, faults on the window or the view themselves) is asked of the kernel with hypercall
//!   [`FAULT`](abi::vm::hypercall::FAULT): [`OK`](abi::vm::hypercall::OK) means a hidden fault
//!   now resolved (the stub returns with IRETQ), [`GUEST_FAULT`](abi::vm::hypercall::GUEST_FAULT)
//!   gives the guest's error code (the stub hands the fault to the guest's handler with it).
//!
//! The stub preserves every register and RFLAGS on every path. The kernel stays the judge: a
//! wrong decision of the stub can only hand the guest a fault its own tables explain, or cost a
//! hypercall.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, IcedError, Instruction, InstructionBlock,
    MemoryOperand, Register,
};

use abi::vm::{hypercall, WINDOW_CR3, WINDOW_RESERVED_MASK};

use crate::replacement::HypercallInsn;

/// The #PF vector: the gate the DMP service patches.
pub const PF_VECTOR: u64 = 14;
/// Bytes of a 64-bit IDT gate.
pub const GATE_LEN: usize = 16;
/// Gate types (the low four bits of the attribute byte) of a 64-bit interrupt and trap gate.
pub const GATE_INTERRUPT: u8 = 0xe;
pub const GATE_TRAP: u8 = 0xf;

/// Page-fault error code bits the stub looks at.
pub mod error_code {
    pub const PRESENT: u64 = 1 << 0;
    pub const WRITE: u64 = 1 << 1;
    pub const USER: u64 = 1 << 2;
    pub const RESERVED: u64 = 1 << 3;
}

/// Physical-address bits of a paging entry (and of CR3).
pub const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

/// A 64-bit IDT gate, decoded (what the policy checks before it swaps the offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate {
    /// The handler's guest-linear address (bits 0..16, 48..64 and 64..96 of the gate).
    pub offset: u64,
    /// Code-segment selector.
    pub selector: u16,
    /// Interrupt-stack-table index (0: the current or the TSS's RSP0 stack).
    pub ist: u8,
    /// Type (bits 0..4), S (4), DPL (5..7), P (7).
    pub attributes: u8,
}

impl Gate {
    /// Decodes a gate; the reserved bits are ignored (every byte pattern is some gate).
    pub fn parse(b: &[u8; GATE_LEN]) -> Gate {
        let w = |i: usize| u64::from(u16::from_le_bytes([b[i], b[i + 1]]));
        let high = u64::from(u32::from_le_bytes([b[8], b[9], b[10], b[11]]));
        Gate {
            offset: w(0) | w(6) << 16 | high << 32,
            selector: u16::from_le_bytes([b[2], b[3]]),
            ist: b[4] & 7,
            attributes: b[5],
        }
    }

    /// Encodes the gate with its reserved bits zero.
    pub fn encode(&self) -> [u8; GATE_LEN] {
        let mut b = [0u8; GATE_LEN];
        b[2..4].copy_from_slice(&self.selector.to_le_bytes());
        b[4] = self.ist & 7;
        b[5] = self.attributes;
        with_offset(&b, self.offset)
    }

    pub fn present(&self) -> bool {
        self.attributes & 0x80 != 0
    }

    /// A present 64-bit interrupt or trap gate (a system descriptor: S clear): the only gates
    /// through which a #PF reaches a handler the stub can stand in for.
    pub fn is_handler_gate(&self) -> bool {
        self.present() && matches!(self.attributes & 0x1f, GATE_INTERRUPT | GATE_TRAP)
    }
}

/// `gate` with its handler offset replaced and every other bit (reserved ones included) kept, so
/// that a compare-and-swap of the 16 bytes changes nothing but the offset.
pub fn with_offset(gate: &[u8; GATE_LEN], offset: u64) -> [u8; GATE_LEN] {
    let mut b = *gate;
    let o = offset.to_le_bytes();
    b[0..2].copy_from_slice(&o[0..2]);
    b[6..12].copy_from_slice(&o[2..8]);
    b
}

/// Where the fault stub goes and what it works with (all guest-linear).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultStubConfig {
    /// Where the stub is placed (inside the window, which is executable).
    pub stub_la: u64,
    /// The DMP window (its words: [`WINDOW_CR3`], [`WINDOW_RESERVED_MASK`]) and its length.
    pub window_la: u64,
    pub window_len: u64,
    /// The view of guest RAM (guest-physical `p` at `view_base + p`) and its size.
    pub view_base: u64,
    pub view_size: u64,
    /// The guest's own #PF handler (the gate's offset before the patch).
    pub original_handler: u64,
    pub call: HypercallInsn,
    /// A guest-writable word (in the window's scratch page) holding the address of the last
    /// fault handed to the guest: CR2 as the guest must see it after hidden faults.
    pub last_fault: u64,
    /// The stub's own stack (guest-writable, in the scratch page): `[stack_top - stack_size,
    /// stack_top)`, 16-aligned.
    pub stack_top: u64,
    pub stack_size: u64,
}

/// Why no fault stub was built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultStubError {
    /// A range of the configuration is empty or wraps around the address space.
    BadConfig(&'static str),
    /// iced-x86 refused the code.
    Encode(String),
}

impl fmt::Display for FaultStubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultStubError::BadConfig(why) => write!(f, "bad fault-stub configuration: {why}"),
            FaultStubError::Encode(e) => write!(f, "encoding: {e}"),
        }
    }
}

impl From<IcedError> for FaultStubError {
    fn from(e: IcedError) -> Self {
        FaultStubError::Encode(e.to_string())
    }
}

type Result<T> = core::result::Result<T, FaultStubError>;

/// Registers the stub saves on its own stack, in push order, after the pointer to what it saved
/// on the interrupted stack (RFLAGS, RAX, RBX).
const SAVED: [Register; 8] = [
    Register::RCX,
    Register::RDX,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
];
/// Offset from R11 (where RBX was pushed on the interrupted stack) of the error-code slot.
const ERROR_SLOT: i64 = 24;

/// Encodes the #PF stub at `c.stub_la` (position-dependent; its length does not depend on the
/// addresses). Entered as the #PF handler: `[rsp]` = error code, then RIP, CS, RFLAGS, RSP, SS.
///
/// Registers while it runs: RBX = CR2, RCX = the hardware error code (the hypercall's
/// arguments), RSI = the window, RDI = the view, R10 = the view's size, R9 = [`ADDRESS_MASK`]
/// (CR2 across the hypercall, which returns a count in RBX), RDX = the table, then the entry,
/// R8 = the AND of the entries' U/W bits, RAX = scratch.
///
/// A read of the view may itself fault (the kernel fills the view on demand): that nested #PF
/// enters the stub again, which sends it to the kernel as a fault inside the view and returns.
/// The nested fault overwrote CR2, so the path to the guest's handler puts the original address
/// back first (a `mov cr2` only when it changed).
///
/// **Stack.** The stub pushes only three words (RFLAGS, RAX, RBX) below the hardware's frame on
/// the interrupted stack, and the rest on its own stack in the scratch page: a guest may size
/// its kernel stacks exactly for its own handlers (a trap frame saved straight into a process
/// structure), and a nested fault inside the stub would otherwise stack two frames more there.
/// A nested entry finds RSP already on the stub's stack and stays on it.
pub fn build_fault_stub(c: &FaultStubConfig) -> Result<Vec<u8>> {
    if c.window_len == 0 || c.window_la.checked_add(c.window_len - 1).is_none() {
        return Err(FaultStubError::BadConfig("window"));
    }
    if c.view_size == 0 || c.view_base.checked_add(c.view_size - 1).is_none() {
        return Err(FaultStubError::BadConfig("view"));
    }
    if c.stack_size < 256 || c.stack_top < c.stack_size || !c.stack_top.is_multiple_of(16) {
        return Err(FaultStubError::BadConfig("stack"));
    }
    let mut a = Asm::default();
    let (hc, not_present, leaf, prot, not_ok, to_guest, same_cr2, handler) = (
        a.label(),
        a.label(),
        a.label(),
        a.label(),
        a.label(),
        a.label(),
        a.label(),
        a.label(),
    );
    let slot = MemoryOperand::with_base_displ(Register::R11, ERROR_SLOT);
    let at = |base: Register, displ: u64| MemoryOperand::with_base_displ(base, displ as i64);
    use Register::*;

    // Flags first (the checks below change them), then onto the stub's stack unless a nested
    // entry is on it already; R11 keeps where RBX went on the interrupted stack.
    let own_stack = a.label();
    a.op(Instruction::with(Code::Pushfq));
    a.op(Instruction::with1(Code::Push_r64, RAX)?);
    a.op(Instruction::with1(Code::Push_r64, RBX)?);
    a.op(Instruction::with2(Code::Mov_r64_rm64, RAX, RSP)?);
    a.op(Instruction::with2(
        Code::Mov_r64_imm64,
        RBX,
        c.stack_top.wrapping_sub(c.stack_size),
    )?);
    a.op(Instruction::with2(Code::Sub_rm64_r64, RAX, RBX)?);
    a.op(Instruction::with2(Code::Mov_r64_imm64, RBX, c.stack_size)?);
    a.op(Instruction::with2(Code::Cmp_rm64_r64, RAX, RBX)?);
    a.op(Instruction::with2(Code::Mov_r64_rm64, RAX, RSP)?);
    a.jump(Code::Jb_rel32_64, own_stack)?;
    a.op(Instruction::with2(Code::Mov_r64_imm64, RSP, c.stack_top)?);
    a.bind(own_stack);
    a.op(Instruction::with1(Code::Push_r64, RAX)?);
    for r in SAVED {
        a.op(Instruction::with1(Code::Push_r64, r)?);
    }
    a.op(Instruction::with2(Code::Mov_r64_rm64, R11, RAX)?);
    a.op(Instruction::with2(Code::Mov_r64_cr, RBX, CR2)?);
    a.op(Instruction::with2(Code::Mov_r64_rm64, RCX, slot)?);
    a.op(Instruction::with2(Code::Mov_r64_imm64, RSI, c.window_la)?);
    a.op(Instruction::with2(Code::Mov_r64_imm64, RDI, c.view_base)?);
    a.op(Instruction::with2(Code::Mov_r64_imm64, R10, c.view_size)?);
    // A fault on the window or the view: only the kernel knows (it fills both on demand).
    a.op(Instruction::with2(Code::Mov_r64_rm64, RAX, RBX)?);
    a.op(Instruction::with2(Code::Sub_rm64_r64, RAX, RSI)?);
    a.op(Instruction::with2(Code::Mov_r64_imm64, RDX, c.window_len)?);
    a.op(Instruction::with2(Code::Cmp_rm64_r64, RAX, RDX)?);
    a.jump(Code::Jb_rel32_64, hc)?;
    a.op(Instruction::with2(Code::Mov_r64_rm64, RAX, RBX)?);
    a.op(Instruction::with2(Code::Sub_rm64_r64, RAX, RDI)?);
    a.op(Instruction::with2(Code::Cmp_rm64_r64, RAX, R10)?);
    a.jump(Code::Jb_rel32_64, hc)?;
    // The walk, from the guest's CR3 as the kernel keeps it in the window.
    a.op(Instruction::with2(Code::Mov_r64_imm64, R9, ADDRESS_MASK)?);
    a.op(Instruction::with2(
        Code::Mov_r64_rm64,
        RDX,
        at(RSI, WINDOW_CR3),
    )?);
    a.op(Instruction::with2(Code::And_rm64_r64, RDX, R9)?);
    a.op(Instruction::with2(Code::Mov_r32_imm32, R8D, 6u32)?);
    for level in (1..=4u32).rev() {
        let shift = 12 + 9 * (level - 1);
        a.op(Instruction::with2(Code::Mov_r64_rm64, RAX, RBX)?);
        a.op(Instruction::with2(Code::Shr_rm64_imm8, RAX, shift)?);
        a.op(Instruction::with2(Code::And_rm32_imm32, EAX, 511u32)?);
        let entry = MemoryOperand::with_base_index_scale(RDX, RAX, 8);
        a.op(Instruction::with2(Code::Lea_r64_m, RAX, entry)?);
        // A table outside the view (outside guest RAM): the kernel decides.
        a.op(Instruction::with2(Code::Cmp_rm64_r64, RAX, R10)?);
        a.jump(Code::Jae_rel32_64, hc)?;
        let view = MemoryOperand::with_base_index_scale(RDI, RAX, 1);
        a.op(Instruction::with2(Code::Mov_r64_rm64, RDX, view)?);
        a.op(Instruction::with2(Code::Test_rm8_imm8, DL, 1u32)?);
        a.jump(Code::Je_rel32_64, not_present)?;
        let reserved = at(RSI, WINDOW_RESERVED_MASK);
        a.op(Instruction::with2(Code::Test_rm64_r64, reserved, RDX)?);
        a.jump(Code::Jne_rel32_64, hc)?;
        if level >= 3 {
            // PS in a PML4E is reserved; 1 GiB pages are left to the kernel.
            a.op(Instruction::with2(Code::Test_rm8_imm8, DL, 0x80u32)?);
            a.jump(Code::Jne_rel32_64, hc)?;
        }
        a.op(Instruction::with2(Code::And_rm64_r64, R8, RDX)?);
        if level == 2 {
            // A 2 MiB page is the leaf; its bits 13..21 are reserved (beyond the kernel's mask).
            let next = a.label();
            a.op(Instruction::with2(Code::Test_rm8_imm8, DL, 0x80u32)?);
            a.jump(Code::Je_rel32_64, next)?;
            a.op(Instruction::with2(
                Code::Test_rm32_imm32,
                EDX,
                0x001f_e000u32,
            )?);
            a.jump(Code::Jne_rel32_64, hc)?;
            a.jump(Code::Jmp_rel32_64, leaf)?;
            a.bind(next);
        }
        if level > 1 {
            a.op(Instruction::with2(Code::And_rm64_r64, RDX, R9)?);
        }
    }
    // Every level present. A user access the accumulated U/W forbid is the guest's protection
    // fault; the rest (supervisor accesses, RSVD, allowed accesses) goes to the kernel.
    a.bind(leaf);
    a.op(Instruction::with2(
        Code::Test_rm8_imm8,
        CL,
        error_code::RESERVED as u32,
    )?);
    a.jump(Code::Jne_rel32_64, hc)?;
    a.op(Instruction::with2(
        Code::Test_rm8_imm8,
        CL,
        error_code::USER as u32,
    )?);
    a.jump(Code::Je_rel32_64, hc)?;
    a.op(Instruction::with2(
        Code::Test_rm8_imm8,
        R8L,
        error_code::USER as u32,
    )?);
    a.jump(Code::Je_rel32_64, prot)?;
    a.op(Instruction::with2(
        Code::Test_rm8_imm8,
        CL,
        error_code::WRITE as u32,
    )?);
    a.jump(Code::Je_rel32_64, hc)?;
    a.op(Instruction::with2(
        Code::Test_rm8_imm8,
        R8L,
        error_code::WRITE as u32,
    )?);
    a.jump(Code::Jne_rel32_64, hc)?;
    a.bind(prot);
    a.op(Instruction::with2(
        Code::Or_rm64_imm8,
        slot,
        error_code::PRESENT as u32,
    )?);
    a.jump(Code::Jmp_rel32_64, to_guest)?;
    // A not-present guest entry: the guest's fault if the hardware saw a not-present entry
    // too, else a stale shadow entry (the kernel's).
    a.bind(not_present);
    a.op(Instruction::with2(
        Code::Test_rm8_imm8,
        CL,
        error_code::PRESENT as u32,
    )?);
    a.jump(Code::Je_rel32_64, to_guest)?;

    // The hypercall returns a count in RBX: the address waits in R9 (the mask is done with).
    a.bind(hc);
    a.op(Instruction::with2(Code::Mov_r64_rm64, R9, RBX)?);
    a.op(Instruction::with2(
        Code::Mov_r32_imm32,
        EAX,
        hypercall::FAULT as u32,
    )?);
    a.op(Instruction::with(match c.call {
        HypercallInsn::Vmcall => Code::Vmcall,
        HypercallInsn::Vmmcall => Code::Vmmcall,
    }));
    a.op(Instruction::with2(Code::Mov_r64_rm64, RBX, R9)?);
    a.op(Instruction::with2(Code::Test_rm64_r64, RAX, RAX)?);
    a.jump(Code::Jne_rel32_64, not_ok)?;
    // OK: resolved. The hidden fault overwrote CR2, which the guest may not have read yet for a
    // fault of its own (its handler's first accesses can fault hidden): CR2 goes back to the
    // last fault the guest saw. Then drop the error code (with LEA: the flags are restored
    // already).
    a.op(Instruction::with2(Code::Mov_r64_imm64, RAX, c.last_fault)?);
    a.op(Instruction::with2(Code::Mov_r64_rm64, RAX, at(RAX, 0))?);
    a.op(Instruction::with2(Code::Mov_cr_r64, CR2, RAX)?);
    restore(&mut a)?;
    let drop_error = MemoryOperand::with_base_displ(RSP, 8);
    a.op(Instruction::with2(Code::Lea_r64_m, RSP, drop_error)?);
    a.op(Instruction::with(Code::Iretq));
    // GUEST_FAULT: the kernel's error code; any other answer: the hardware's, unchanged.
    a.bind(not_ok);
    a.op(Instruction::with2(
        Code::Cmp_rm64_imm8,
        RAX,
        hypercall::GUEST_FAULT as u32,
    )?);
    a.jump(Code::Jne_rel32_64, to_guest)?;
    a.op(Instruction::with2(Code::Mov_r32_rm32, ECX, ECX)?);
    a.op(Instruction::with2(Code::Mov_rm64_r64, slot, RCX)?);

    a.bind(to_guest);
    a.op(Instruction::with2(Code::Mov_r64_imm64, RAX, c.last_fault)?);
    a.op(Instruction::with2(Code::Mov_rm64_r64, at(RAX, 0), RBX)?);
    a.op(Instruction::with2(Code::Mov_r64_cr, RAX, CR2)?);
    a.op(Instruction::with2(Code::Cmp_rm64_r64, RAX, RBX)?);
    a.jump(Code::Je_rel32_64, same_cr2)?;
    a.op(Instruction::with2(Code::Mov_cr_r64, CR2, RBX)?);
    a.bind(same_cr2);
    restore(&mut a)?;
    // An absolute qword: the handler may be anywhere in the address space.
    let target = MemoryOperand::with_base_displ(RIP, handler as i64);
    a.op(Instruction::with1(Code::Jmp_rm64, target)?);
    a.bind(handler);
    a.op(Instruction::with_declare_qword_1(c.original_handler));

    let block = InstructionBlock::new(&a.insns, c.stub_la);
    let encoded = BlockEncoder::encode(64, block, BlockEncoderOptions::NONE)?;
    Ok(encoded.code_buffer)
}

/// The stub under construction.
type Asm = crate::labels::Labeled;

/// Pops what the stub's entry pushed, back onto the interrupted stack (RSP at the error code).
fn restore(a: &mut Asm) -> Result<()> {
    for r in SAVED.iter().rev() {
        a.op(Instruction::with1(Code::Pop_r64, *r)?);
    }
    a.op(Instruction::with1(Code::Pop_r64, Register::RSP)?);
    a.op(Instruction::with1(Code::Pop_r64, Register::RBX)?);
    a.op(Instruction::with1(Code::Pop_r64, Register::RAX)?);
    a.op(Instruction::with(Code::Popfq));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testcpu::{Cpu, Leave};
    use crate::Bitness;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    const WINDOW: u64 = 0xffff_ffff_fff0_0000;
    const WINDOW_LEN: u64 = 16 * 4096;
    const STUB: u64 = WINDOW + 64;
    const VIEW: u64 = 0xffff_ff80_0000_0000;
    const VIEW_SIZE: u64 = 64 << 20;
    const HANDLER: u64 = 0x10_0000;
    const LAST_FAULT: u64 = WINDOW + WINDOW_LEN - 8;
    const STACK_TOP: u64 = WINDOW + WINDOW_LEN - 16;
    /// MAXPHYADDR 40: bits 40..52 reserved.
    const RESERVED: u64 = 0x000f_ff00_0000_0000;
    /// The interrupt stack: the hardware frame sits at `FRAME`.
    const FRAME: u64 = 0xffff_c900_0000_7fd8;
    const FRAME_RIP: u64 = 0x40_1234;
    const FRAME_RSP: u64 = 0x7fff_0000_1000;
    const FRAME_RFLAGS: u64 = 0x202;
    const P: u64 = 1;
    const W: u64 = 2;
    const U: u64 = 4;
    const PS: u64 = 0x80;

    fn config(call: HypercallInsn) -> FaultStubConfig {
        FaultStubConfig {
            stub_la: STUB,
            window_la: WINDOW,
            window_len: WINDOW_LEN,
            view_base: VIEW,
            view_size: VIEW_SIZE,
            original_handler: HANDLER,
            call,
            last_fault: LAST_FAULT,
            stack_top: STACK_TOP,
            stack_size: 2016,
        }
    }

    /// A guest: tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD), 0x4000 (PT).
    /// Linear 0x1000: user read-only; 0x2000: user writable; 0x3000: not present; 0x4000:
    /// supervisor; 0x20_0000: a 2 MiB user read-only page; 0x40_0000: a 2 MiB page with a
    /// reserved bit; 1 << 39: a PML4E with a reserved bit; 2 << 39: a PML4E with PS;
    /// 3 << 39: a PML4E pointing outside guest RAM.
    fn guest() -> Cpu {
        let mut cpu = Cpu::new(Bitness::Bits64);
        // An earlier fault the guest saw: CR2 must read it again after a hidden fault.
        cpu.write(LAST_FAULT, 8, 0x7777_0000);
        let e = |cpu: &mut Cpu, table: u64, i: u64, v: u64| cpu.write(VIEW + table + i * 8, 8, v);
        e(&mut cpu, 0x1000, 0, 0x2000 | P | W | U);
        e(&mut cpu, 0x1000, 1, 0x2000 | P | W | U | 1 << 45);
        e(&mut cpu, 0x1000, 2, 0x2000 | P | W | U | PS);
        e(&mut cpu, 0x1000, 3, VIEW_SIZE | P | W | U);
        e(&mut cpu, 0x2000, 0, 0x3000 | P | W | U);
        e(&mut cpu, 0x3000, 0, 0x4000 | P | W | U);
        e(&mut cpu, 0x3000, 1, 0x60_0000 | P | U | PS);
        e(&mut cpu, 0x3000, 2, 0x80_0000 | P | W | U | PS | 1 << 13);
        e(&mut cpu, 0x4000, 1, 0x5000 | P | U);
        e(&mut cpu, 0x4000, 2, 0x6000 | P | W | U);
        e(&mut cpu, 0x4000, 4, 0x7000 | P | W);
        // The window's words (CR3 with PCID bits, which the walk must drop).
        cpu.write(WINDOW + WINDOW_CR3, 8, 0x1000 | 0x5);
        cpu.write(WINDOW + WINDOW_RESERVED_MASK, 8, RESERVED);
        cpu
    }

    /// Builds the stub, takes a #PF at `la` with error code `code` on the guest (the stub and
    /// the hardware frame in its memory) and runs the stub.
    fn fault(cpu: &mut Cpu, la: u64, code: u64) -> (Leave, Vec<u8>) {
        let stub = build_fault_stub(&config(HypercallInsn::Vmmcall)).unwrap();
        for (i, b) in stub.iter().enumerate() {
            cpu.write(STUB + i as u64, 1, u64::from(*b));
        }
        for (i, v) in [code, FRAME_RIP, 0x33, FRAME_RFLAGS, FRAME_RSP, 0x2b]
            .into_iter()
            .enumerate()
        {
            cpu.write(FRAME + 8 * i as u64, 8, v);
        }
        cpu.set(Register::RSP, FRAME);
        cpu.rflags = 0x086; // SF PF ZF-clear: whatever the handler entry left
        cpu.cr2 = la;
        cpu.writes.clear();
        let leave = cpu.run_until(&stub, STUB);
        (leave, stub)
    }

    /// The stub reached the guest's handler: registers, flags, CR2 and the frame as at entry,
    /// but the error-code slot, which must be `code`; it wrote only below the frame.
    fn check_to_handler(before: &Cpu, cpu: &Cpu, leave: Leave, code: u64) {
        assert_eq!(leave, Leave::Jump(HANDLER));
        assert_eq!(cpu.gpr, before.gpr);
        assert_eq!(cpu.rflags, before.rflags);
        assert_eq!(cpu.cr2, before.cr2);
        assert_eq!(cpu.read(FRAME, 8), code);
        for i in 1..6 {
            assert_eq!(cpu.read(FRAME + 8 * i, 8), before.read(FRAME + 8 * i, 8));
        }
        // The fault the guest is handed is remembered, for CR2 after later hidden faults.
        assert_eq!(cpu.read(LAST_FAULT, 8), cpu.cr2);
        for &(a, len) in cpu.writes.iter().filter(|w| w.0 != LAST_FAULT) {
            let own_stack = (STACK_TOP - 2016..STACK_TOP).contains(&a);
            assert!(
                own_stack || (FRAME - 24..FRAME + 8).contains(&a),
                "write at {a:#x} ({len} bytes)"
            );
        }
    }

    /// The stub returned with IRETQ to the interrupted code: registers restored, RSP, RIP and
    /// RFLAGS from the frame.
    fn check_iret(before: &Cpu, cpu: &Cpu, leave: Leave) {
        assert_eq!(leave, Leave::Iret(FRAME_RIP));
        // CR2 as the guest last saw it, not the hidden fault's address.
        assert_eq!(cpu.cr2, 0x7777_0000);
        assert!(cpu.writes.iter().all(|w| w.0 != LAST_FAULT));
        assert_eq!(cpu.get(Register::RSP), FRAME_RSP);
        assert_eq!(cpu.rflags, FRAME_RFLAGS);
        for i in (0..16).filter(|&i| i != 4) {
            assert_eq!(cpu.gpr[i], before.gpr[i], "register {i}");
        }
    }

    /// Runs a fault that must reach the guest's handler without a hypercall.
    fn genuine(la: u64, code: u64, expect: u64) {
        let mut cpu = guest();
        let (leave, _) = fault(&mut cpu, la, code);
        let mut before = guest();
        fault_setup_only(&mut before, la, code);
        assert!(cpu.hypercalls.is_empty(), "{la:#x} {code:#x}");
        check_to_handler(&before, &cpu, leave, expect);
    }

    /// What [`fault`] sets up, without running.
    fn fault_setup_only(cpu: &mut Cpu, la: u64, code: u64) {
        for (i, v) in [code, FRAME_RIP, 0x33, FRAME_RFLAGS, FRAME_RSP, 0x2b]
            .into_iter()
            .enumerate()
        {
            cpu.write(FRAME + 8 * i as u64, 8, v);
        }
        cpu.set(Register::RSP, FRAME);
        cpu.rflags = 0x086;
        cpu.cr2 = la;
    }

    /// Runs a fault that must become hypercall FAULT(la, code); the fake kernel answers
    /// `reply` (RAX, RCX); returns the CPU state before and after.
    fn hidden(la: u64, code: u64, reply: (u64, u64)) -> (Cpu, Cpu, Leave) {
        let mut cpu = guest();
        cpu.reply = Some([reply.0, 0xdead_beef, reply.1]);
        let mut before = cpu.clone();
        fault_setup_only(&mut before, la, code);
        let (leave, _) = fault(&mut cpu, la, code);
        assert_eq!(cpu.hypercalls.len(), 1, "{la:#x} {code:#x}");
        assert_eq!(&cpu.hypercalls[0][..3], &[hypercall::FAULT, la, code]);
        (before, cpu, leave)
    }

    #[test]
    fn gate_round_trip() {
        let raw = [
            0x34, 0x12, 0x10, 0x00, 0x01, 0x8e, 0x78, 0x56, 0xbc, 0x9a, 0xff, 0xff, 0xaa, 0, 0, 0,
        ];
        let g = Gate::parse(&raw);
        assert_eq!(g.offset, 0xffff_9abc_5678_1234);
        assert_eq!((g.selector, g.ist, g.attributes), (0x10, 1, 0x8e));
        assert!(g.is_handler_gate());
        // encode drops the reserved bytes; with_offset keeps them
        let mut clean = raw;
        clean[12] = 0;
        assert_eq!(g.encode(), clean);
        let moved = with_offset(&raw, 0x0123_4567_89ab_cdef);
        assert_eq!(Gate::parse(&moved).offset, 0x0123_4567_89ab_cdef);
        assert_eq!((&moved[2..6], moved[12]), (&raw[2..6], 0xaa));
        // trap gate yes; not present, task gate, call gate, S set: no
        let kind = |a: u8| Gate { attributes: a, ..g }.is_handler_gate();
        assert!(kind(0xef));
        assert!(!kind(0x0e) && !kind(0x85) && !kind(0x8c) && !kind(0x9e));
    }

    #[test]
    fn stub_shape() {
        if std::env::var_os("DMP_SHOW_FAULT_STUB").is_some() {
            show(&build_fault_stub(&config(HypercallInsn::Vmmcall)).unwrap());
        }
        for (call, m) in [
            (HypercallInsn::Vmcall, Mnemonic::Vmcall),
            (HypercallInsn::Vmmcall, Mnemonic::Vmmcall),
        ] {
            let code = build_fault_stub(&config(call)).unwrap();
            let all: Vec<_> = Decoder::with_ip(64, &code, STUB, DecoderOptions::NONE)
                .iter()
                .collect();
            assert_eq!(all.iter().filter(|i| i.mnemonic() == m).count(), 1);
            assert_eq!(
                all.iter()
                    .filter(|i| i.mnemonic() == Mnemonic::Iretq)
                    .count(),
                1
            );
            // the handler's address is the last qword, which the jump before it reads
            assert_eq!(code[code.len() - 8..], HANDLER.to_le_bytes());
            let jmp = all.iter().find(|i| i.code() == Code::Jmp_rm64).unwrap();
            assert_eq!(jmp.ip_rel_memory_address(), STUB + code.len() as u64 - 8);
            // the length does not depend on the addresses
            let far = FaultStubConfig {
                stub_la: 0x1000,
                original_handler: u64::MAX,
                ..config(call)
            };
            assert_eq!(build_fault_stub(&far).unwrap().len(), code.len());
        }
    }

    #[test]
    fn bad_configurations() {
        let c = config(HypercallInsn::Vmcall);
        for bad in [
            FaultStubConfig { view_size: 0, ..c },
            FaultStubConfig { window_len: 0, ..c },
            FaultStubConfig {
                view_size: 1 << 40,
                ..c
            },
            FaultStubConfig {
                window_la: u64::MAX,
                ..c
            },
        ] {
            assert!(matches!(
                build_fault_stub(&bad),
                Err(FaultStubError::BadConfig(_))
            ));
        }
    }

    #[test]
    fn not_present_user_fault_goes_to_the_guest_unchanged() {
        // (a) user read and user write of a not-present PTE, and a supervisor fetch
        genuine(0x3000, U, U);
        genuine(0x3abc, U | W, U | W);
        genuine(0x3000, 0x10, 0x10);
        // nothing mapped at PML4 index 4
        genuine(4 << 39, U | W, U | W);
    }

    #[test]
    fn user_write_to_a_read_only_page_is_a_protection_fault() {
        // (b) hardware P clear (no shadow entry yet) or set: the guest sees P set
        genuine(0x1008, U | W, P | U | W);
        genuine(0x1008, P | U | W, P | U | W);
        // user access to a supervisor page, read or write
        genuine(0x4000, U, P | U);
        genuine(0x4000, U | W, P | U | W);
        // (g) a 2 MiB read-only user page
        genuine(0x20_0000 + 0x1f_f000, U | W, P | U | W);
    }

    #[test]
    fn hidden_fault_is_resolved_and_returns() {
        // (c) user read of a read-only page, user write of a writable one, a supervisor write
        for (la, code) in [(0x1008, U), (0x2010, U | W), (0x2010, W), (0x1000, P | W)] {
            let (before, cpu, leave) = hidden(la, code, (hypercall::OK, 0));
            check_iret(&before, &cpu, leave);
        }
        // (g) a 2 MiB page, read
        let (before, cpu, leave) = hidden(0x21_2345, U, (hypercall::OK, 0));
        check_iret(&before, &cpu, leave);
    }

    #[test]
    fn the_kernel_can_say_it_is_the_guests_fault() {
        // (d) GUEST_FAULT: the kernel's code in the slot
        let (before, cpu, leave) = hidden(0x2010, U | W, (hypercall::GUEST_FAULT, P | U | W));
        check_to_handler(&before, &cpu, leave, P | U | W);
        // the upper half of RCX is not part of an error code
        let (before, cpu, leave) = hidden(0x2010, U, (hypercall::GUEST_FAULT, 1 << 40 | 5));
        check_to_handler(&before, &cpu, leave, 5);
        // any other answer: the hardware's code, unchanged
        let (before, cpu, leave) = hidden(0x2010, U, (hypercall::BAD_REQUEST, 0x77));
        check_to_handler(&before, &cpu, leave, U);
    }

    #[test]
    fn window_view_reserved_bits_and_large_pages_go_to_the_kernel() {
        // (e) inside the window, inside the view (first and last byte)
        for la in [
            WINDOW,
            STUB,
            WINDOW + WINDOW_LEN - 1,
            VIEW,
            VIEW + VIEW_SIZE - 1,
        ] {
            let (before, cpu, leave) = hidden(la, 0, (hypercall::OK, 0));
            check_iret(&before, &cpu, leave);
        }
        // just outside both: walked (nothing mapped there: the guest's fault)
        genuine(WINDOW + WINDOW_LEN, 0, 0);
        genuine(VIEW + VIEW_SIZE, 0, 0);
        genuine(WINDOW - 1, 0, 0);
        // (f) reserved bit and PS in a PML4E, a reserved bit in a 2 MiB PDE, a table beyond
        // guest RAM, RSVD in the hardware's code, a stale shadow entry (guest not present, P)
        for (la, code) in [
            (1 << 39, U),
            (2 << 39, U),
            (0x40_0000, U),
            (3 << 39, U),
            (0x1000, P | U | 8),
            (0x3000, P | U),
        ] {
            let (before, cpu, leave) = hidden(la, code, (hypercall::GUEST_FAULT, code | P));
            check_to_handler(&before, &cpu, leave, code | P);
        }
    }

    #[test]
    fn a_nested_fault_changed_cr2_back() {
        // The kernel's answer arrives after a nested fault (in the view) overwrote CR2: the
        // guest's handler must still see the faulting address.
        let mut cpu = guest();
        cpu.reply = Some([hypercall::GUEST_FAULT, 0, U | P]);
        cpu.reply_cr2 = Some(VIEW + 0x1000);
        let (leave, _) = fault(&mut cpu, 0x2010, U);
        assert_eq!(leave, Leave::Jump(HANDLER));
        assert_eq!(cpu.cr2, 0x2010);
        assert_eq!(cpu.read(FRAME, 8), U | P);
    }

    /// Prints the stub (`DMP_SHOW_FAULT_STUB=1 cargo test -p dmp stub_shape -- --nocapture`).
    fn show(code: &[u8]) {
        for i in Decoder::with_ip(64, code, STUB, DecoderOptions::NONE).iter() {
            println!("{:#x} {:?} {:?}", i.ip(), i.code(), i.near_branch_target());
        }
    }
}
