//! What the stub runs instead of the hot instruction, and the hypercall ABI those sequences use.
//!
//! # Hypercalls (guest stub → kernel)
//!
//! One `vmcall` (Intel) or `vmmcall` (AMD) instruction ([`HypercallInsn`], which is
//! `abi::vm::HypercallInsn`), numbers from `abi::vm::hypercall` (the one place they are defined):
//!
//! | register | holds |
//! |---|---|
//! | RAX (EAX) | the hypercall number; on return, a status (0 = done) |
//! | RBX (EBX) | argument 0: the guest-linear address concerned |
//! | RCX (ECX) | argument 1 |
//! | RDX (EDX) | argument 2 |
//!
//! [`invlpg`] calls `hypercall::INVLPG` with RBX = the linear address, as the kernel takes it;
//! it is what the policy installs. [`page_table_write`] (number `PTE_WRITE`: RBX = linear
//! address, RCX = value, RDX = width) and [`flush_queue`] (number `QUEUE`, no arguments) are
//! sequences of an earlier design whose arguments differ from what the kernel's `PTE_WRITE`
//! (RCX = the entry's guest-physical address, RDX = value) and `QUEUE` (RBX = queue, RCX =
//! count) take: the policy does not install them, and they stay only as tested building blocks.
//!
//! The hypervisor writes RAX only; the stub saves and restores RAX, RBX, RCX, RDX and the flags
//! around the call, so the guest sees no register change but the replaced instruction's own. In
//! 64-bit code the stub first moves RSP 128 bytes down so that its pushes cannot clobber a
//! System V red zone below the interrupted code's RSP; operands addressed through RSP are
//! adjusted for that and the pushes.
//!
//! Linear addresses are computed with `lea`, which ignores segments: operands with an FS or GS
//! override (whose base is not zero in 64-bit code) are refused, and 32-bit code is assumed to
//! use flat segments.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use iced_x86::{Code, IcedError, Instruction, MemoryOperand, Register};

use abi::vm::hypercall;

use crate::classify::{Bitness, MemOperand, Site, SiteKind, StoreValue, Width};

/// Register of the hypercall number (and of the returned status).
pub const REG_NUMBER: Register = Register::RAX;
/// Register of argument 0 (the linear address).
pub const REG_ADDRESS: Register = Register::RBX;
/// Register of argument 1 (the value).
pub const REG_VALUE: Register = Register::RCX;
/// Register of argument 2 (the width).
pub const REG_WIDTH: Register = Register::RDX;
/// Bytes below RSP a 64-bit stub leaves alone (the System V red zone).
pub const RED_ZONE: u64 = 128;

/// The hypercall instruction of the machine's virtualization backend (defined in `abi`, where
/// `Backend::hypercall_insn` chooses it).
pub use abi::vm::HypercallInsn;

/// Why no replacement sequence was built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplacementError {
    /// The site's kind is not the one this constructor replaces.
    WrongKind,
    /// The memory operand has an FS or GS override: its linear address needs the segment base.
    SegmentBase,
    /// An address does not fit the mode (above 4 GiB in 32-bit code, a displacement beyond
    /// ±2 GiB after adjustment for the stub's pushes).
    OutOfRange,
    /// A store the mode cannot encode (8 bytes in 32-bit code).
    UnsupportedWidth,
    /// iced-x86 refused an instruction.
    Encode(alloc::string::String),
}

impl fmt::Display for ReplacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplacementError::WrongKind => f.write_str("wrong site kind for this replacement"),
            ReplacementError::SegmentBase => f.write_str("FS/GS segment override"),
            ReplacementError::OutOfRange => f.write_str("address out of range"),
            ReplacementError::UnsupportedWidth => f.write_str("unsupported store width"),
            ReplacementError::Encode(e) => write!(f, "encoding: {e}"),
        }
    }
}

impl From<IcedError> for ReplacementError {
    fn from(e: IcedError) -> Self {
        use alloc::string::ToString;
        ReplacementError::Encode(e.to_string())
    }
}

type Result<T> = core::result::Result<T, ReplacementError>;

/// The hot instruction itself, unchanged: the stub then only moves it (and whatever it displaced)
/// out of line. Useful for faulting accesses and port I/O until they have a cheaper replacement.
pub fn original(site: &Site) -> Vec<Instruction> {
    vec![site.instruction]
}

/// Replacement for `mov gpr, cr3`: `mov gpr, [cr3_field]`, reading the guest's CR3 from the
/// DMP region at guest-linear `cr3_field` (RIP-relative in 64-bit code, so it must be within
/// ±2 GiB of the stub; absolute in 32-bit code). No exit at all.
pub fn cr3_read(site: &Site, cr3_field: u64) -> Result<Vec<Instruction>> {
    let SiteKind::Cr3Read { gpr } = site.kind else {
        return Err(ReplacementError::WrongKind);
    };
    let insn = match site.bitness {
        Bitness::Bits64 => Instruction::with2(
            Code::Mov_r64_rm64,
            gpr,
            MemoryOperand::with_base_displ(Register::RIP, cr3_field as i64),
        )?,
        Bitness::Bits32 => {
            let field = u32::try_from(cr3_field).map_err(|_| ReplacementError::OutOfRange)?;
            Instruction::with2(
                Code::Mov_r32_rm32,
                gpr,
                MemoryOperand::with_displ(u64::from(field), 4),
            )?
        }
    };
    Ok(vec![insn])
}

/// Replacement for `invlpg m`: `hypercall::INVLPG` with the operand's linear address.
pub fn invlpg(site: &Site, call: HypercallInsn) -> Result<Vec<Instruction>> {
    let SiteKind::Invlpg { mem } = site.kind else {
        return Err(ReplacementError::WrongKind);
    };
    let mut s = Seq::new(site.bitness);
    s.save()?;
    s.address(&mem)?;
    s.call(hypercall::INVLPG, call)?;
    s.restore()?;
    Ok(s.out)
}

/// Replacement for a page-table store: `hypercall::PTE_WRITE` with the store's linear address,
/// value and width.
pub fn page_table_write(site: &Site, call: HypercallInsn) -> Result<Vec<Instruction>> {
    let SiteKind::PageTableWrite { width, mem, value } = site.kind else {
        return Err(ReplacementError::WrongKind);
    };
    if site.bitness == Bitness::Bits32 && width == Width::Qword {
        return Err(ReplacementError::UnsupportedWidth);
    }
    let mut s = Seq::new(site.bitness);
    s.save()?;
    // The address first, while every register still holds the guest's value (only RBX is
    // written here), then the value, reading RBX's original from its stack slot.
    s.address(&mem)?;
    s.value(value, width)?;
    s.mov_imm32(s.reg(REG_WIDTH), u32::from(width.bytes()))?;
    s.call(hypercall::PTE_WRITE, call)?;
    s.restore()?;
    Ok(s.out)
}

/// A `hypercall::QUEUE` with every register preserved (a stub may append it to another
/// replacement, or a whole stub may consist of it).
pub fn flush_queue(bitness: Bitness, call: HypercallInsn) -> Result<Vec<Instruction>> {
    let mut s = Seq::new(bitness);
    s.save()?;
    s.call(hypercall::QUEUE, call)?;
    s.restore()?;
    Ok(s.out)
}

/// The registers a hypercall sequence saves, in push order (after the flags).
const SAVED: [Register; 4] = [Register::RAX, Register::RBX, Register::RCX, Register::RDX];

/// A save / hypercall / restore sequence under construction.
struct Seq {
    bitness: Bitness,
    out: Vec<Instruction>,
}

impl Seq {
    fn new(bitness: Bitness) -> Seq {
        Seq {
            bitness,
            out: Vec::new(),
        }
    }

    fn w(&self) -> u64 {
        self.bitness.word_bytes()
    }

    /// RSP moved down by the prologue when the replaced instruction would run.
    fn sp_delta(&self) -> u64 {
        let red = match self.bitness {
            Bitness::Bits64 => RED_ZONE,
            Bitness::Bits32 => 0,
        };
        red + (1 + SAVED.len() as u64) * self.w()
    }

    /// The register of this mode's width for a 64-bit name (RAX → EAX in 32-bit code).
    fn reg(&self, r64: Register) -> Register {
        match self.bitness {
            Bitness::Bits64 => r64,
            Bitness::Bits32 => gpr32(r64),
        }
    }

    fn sp(&self) -> Register {
        self.reg(Register::RSP)
    }

    /// Offset from the adjusted RSP of a saved register's slot.
    fn slot(&self, r64: Register) -> u64 {
        let i = SAVED.iter().position(|&r| r == r64).unwrap_or(0) as u64;
        (SAVED.len() as u64 - 1 - i) * self.w()
    }

    fn push_insn(&mut self, insn: Instruction) {
        self.out.push(insn);
    }

    fn save(&mut self) -> Result<()> {
        match self.bitness {
            Bitness::Bits64 => {
                self.lea_sp(-(RED_ZONE as i64))?;
                self.push_insn(Instruction::with(Code::Pushfq));
                for r in SAVED {
                    self.push_insn(Instruction::with1(Code::Push_r64, r)?);
                }
            }
            Bitness::Bits32 => {
                self.push_insn(Instruction::with(Code::Pushfd));
                for r in SAVED {
                    self.push_insn(Instruction::with1(Code::Push_r32, gpr32(r))?);
                }
            }
        }
        Ok(())
    }

    fn restore(&mut self) -> Result<()> {
        match self.bitness {
            Bitness::Bits64 => {
                for r in SAVED.iter().rev() {
                    self.push_insn(Instruction::with1(Code::Pop_r64, *r)?);
                }
                self.push_insn(Instruction::with(Code::Popfq));
                self.lea_sp(RED_ZONE as i64)?;
            }
            Bitness::Bits32 => {
                for r in SAVED.iter().rev() {
                    self.push_insn(Instruction::with1(Code::Pop_r32, gpr32(*r))?);
                }
                self.push_insn(Instruction::with(Code::Popfd));
            }
        }
        Ok(())
    }

    /// `lea rsp, [rsp+delta]` (moves RSP without touching the flags).
    fn lea_sp(&mut self, delta: i64) -> Result<()> {
        let m = MemoryOperand::with_base_displ_size(Register::RSP, delta, 1);
        self.push_insn(Instruction::with2(Code::Lea_r64_m, Register::RSP, m)?);
        Ok(())
    }

    fn lea(&self) -> Code {
        match self.bitness {
            Bitness::Bits64 => Code::Lea_r64_m,
            Bitness::Bits32 => Code::Lea_r32_m,
        }
    }

    fn mov_imm32(&mut self, dst: Register, imm: u32) -> Result<()> {
        let dst32 = gpr32(dst);
        self.push_insn(Instruction::with2(Code::Mov_r32_imm32, dst32, imm)?);
        Ok(())
    }

    fn mov_imm(&mut self, dst64: Register, imm: u64) -> Result<()> {
        match u32::try_from(imm) {
            Ok(imm) => self.mov_imm32(dst64, imm),
            Err(_) if self.bitness == Bitness::Bits64 => {
                self.push_insn(Instruction::with2(Code::Mov_r64_imm64, dst64, imm)?);
                Ok(())
            }
            Err(_) => Err(ReplacementError::OutOfRange),
        }
    }

    /// RBX = the linear address of `mem` as the replaced instruction would have computed it.
    fn address(&mut self, mem: &MemOperand) -> Result<()> {
        if matches!(mem.segment, Some(Register::FS) | Some(Register::GS)) {
            return Err(ReplacementError::SegmentBase);
        }
        let dst = self.reg(REG_ADDRESS);
        let (base, index) = (mem.base, mem.index);
        if base.is_none() && index.is_none() {
            return self.mov_imm(REG_ADDRESS, mem.displacement);
        }
        let base = base.unwrap_or(Register::None);
        let index = index.unwrap_or(Register::None);
        let disp = if base == Register::RIP {
            mem.displacement as i64
        } else {
            let mut disp = mem.displacement;
            if matches!(base, Register::RSP | Register::ESP | Register::SP) {
                disp = disp.wrapping_add(self.sp_delta());
            }
            narrow_displacement(disp, address_bits(base, index))?
        };
        let m = MemoryOperand::new(
            base,
            index,
            u32::from(mem.scale),
            disp,
            1,
            false,
            Register::None,
        );
        let lea = self.lea();
        self.push_insn(Instruction::with2(lea, dst, m)?);
        Ok(())
    }

    /// RCX = `value`, zero-extended from `width`.
    fn value(&mut self, value: StoreValue, width: Width) -> Result<()> {
        let rcx = self.reg(REG_VALUE);
        let r = match value {
            StoreValue::Immediate(imm) => return self.mov_imm(REG_VALUE, imm & width.mask()),
            StoreValue::Register(r) => r,
        };
        let full = r.full_register();
        if full == Register::RBX || full == Register::EBX {
            // Overwritten by the address: read the saved copy.
            let high = u64::from(r == Register::BH);
            let m = MemoryOperand::with_base_displ_size(
                self.sp(),
                (self.slot(Register::RBX) + high) as i64,
                1,
            );
            let code = match width {
                Width::Qword => Code::Mov_r64_rm64,
                Width::Dword => Code::Mov_r32_rm32,
                Width::Word => Code::Movzx_r32_rm16,
                Width::Byte => Code::Movzx_r32_rm8,
            };
            let dst = if width == Width::Qword {
                rcx
            } else {
                gpr32(rcx)
            };
            self.push_insn(Instruction::with2(code, dst, m)?);
            return Ok(());
        }
        if full == Register::RSP || full == Register::ESP {
            // The guest's RSP is above the stub's pushes.
            let m = MemoryOperand::with_base_displ_size(self.sp(), self.sp_delta() as i64, 1);
            let dst = if width == Width::Qword {
                rcx
            } else {
                gpr32(rcx)
            };
            self.push_insn(Instruction::with2(self.lea_for(dst), dst, m)?);
            let ecx = gpr32(rcx);
            match width {
                Width::Word => {
                    self.push_insn(Instruction::with2(Code::Movzx_r32_rm16, ecx, Register::CX)?)
                }
                Width::Byte => {
                    self.push_insn(Instruction::with2(Code::Movzx_r32_rm8, ecx, Register::CL)?)
                }
                _ => {}
            }
            return Ok(());
        }
        let insn = match width {
            Width::Qword => Instruction::with2(Code::Mov_r64_rm64, rcx, r)?,
            Width::Dword => Instruction::with2(Code::Mov_r32_rm32, gpr32(rcx), r)?,
            Width::Word => Instruction::with2(Code::Movzx_r32_rm16, gpr32(rcx), r)?,
            Width::Byte => Instruction::with2(Code::Movzx_r32_rm8, gpr32(rcx), r)?,
        };
        self.push_insn(insn);
        Ok(())
    }

    fn lea_for(&self, dst: Register) -> Code {
        if dst.size() == 8 {
            Code::Lea_r64_m
        } else {
            Code::Lea_r32_m
        }
    }

    fn call(&mut self, number: u64, call: HypercallInsn) -> Result<()> {
        self.mov_imm32(REG_NUMBER, number as u32)?;
        self.push_insn(Instruction::with(match call {
            HypercallInsn::Vmcall => Code::Vmcall,
            HypercallInsn::Vmmcall => Code::Vmmcall,
        }));
        Ok(())
    }
}

/// The 32-bit register of a 64-bit general-purpose register (itself if already 32-bit).
fn gpr32(r: Register) -> Register {
    let full = r.full_register32();
    if full == Register::None {
        r
    } else {
        full
    }
}

/// Address size in bits of an operand addressed through these registers.
fn address_bits(base: Register, index: Register) -> u32 {
    let r = if base != Register::None { base } else { index };
    r.size() as u32 * 8
}

/// A displacement as `MemoryOperand` wants it for this address size: signed, within ±2 GiB for
/// 32/64-bit addresses (or 16 bits for 16-bit ones).
fn narrow_displacement(disp: u64, bits: u32) -> Result<i64> {
    match bits {
        64 => i32::try_from(disp as i64)
            .map(i64::from)
            .map_err(|_| ReplacementError::OutOfRange),
        32 => Ok(i64::from(disp as u32 as i32)),
        16 => Ok(i64::from(disp as u16 as i16)),
        _ => Err(ReplacementError::OutOfRange),
    }
}
