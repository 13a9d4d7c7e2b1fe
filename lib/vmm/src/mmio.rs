//! MMIO emulation: a guest instruction that touched guest-physical memory outside its RAM
//! (a device page) is fetched through the guest's own page tables, decoded with `iced-x86`,
//! and turned into one device access; the monitor then updates the destination register and
//! advances RIP past the instruction, as KVM's instruction emulator does for MMIO exits.
//!
//! Emulated: `MOV` in every form with a memory operand (register, immediate, `moffs`),
//! `MOVZX`, `MOVSX`, `MOVSXD` and `XCHG` with memory, which is what device drivers' `readl` /
//! `writel` compile to. Anything else is reported as [`MmioError::Unsupported`] with its
//! mnemonic (the monitor stops the guest with that line: it cannot emulate what it does not
//! decode, and a wrong guess would corrupt the guest silently).

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use crate::dmp::GuestMemory;

/// The guest's paging and code-segment state, from an exit's CONTROL and SEGMENTS groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuMode {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// CS attributes in the neutral 12-bit layout (L bit 9, D/B bit 10).
    pub cs_attributes: u16,
    pub cs_base: u64,
}

const CR0_PE: u64 = 1 << 0;
const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
const LARGE: u64 = 1 << 7;

impl CpuMode {
    /// The code size in bits: 64 in long mode with CS.L, 32 with CS.D, else 16.
    pub fn bitness(&self) -> u32 {
        if self.efer & EFER_LMA != 0 && self.cs_attributes & (1 << 9) != 0 {
            64
        } else if self.cr0 & CR0_PE != 0 && self.cs_attributes & (1 << 10) != 0 {
            32
        } else {
            16
        }
    }
}

/// Why an instruction could not be emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioError {
    /// The instruction's bytes are not readable through the guest's page tables.
    Fetch(u64),
    /// The bytes do not decode.
    Invalid,
    /// A valid instruction this emulator does not handle.
    Unsupported(Mnemonic),
}

impl core::fmt::Display for MmioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MmioError::Fetch(at) => write!(f, "instruction bytes at linear {at:#x} not readable"),
            MmioError::Invalid => write!(f, "instruction does not decode"),
            MmioError::Unsupported(m) => write!(f, "{m:?} on device memory is not emulated"),
        }
    }
}

/// Translates guest-linear `linear` through the guest's tables (paging off, 32-bit, PAE or
/// 4-level); None where nothing present maps it or the tables lie outside RAM.
pub fn translate(mem: &mut dyn GuestMemory, mode: &CpuMode, linear: u64) -> Option<u64> {
    if mode.cr0 & CR0_PG == 0 {
        return Some(linear & 0xffff_ffff);
    }
    let mut read = |gpa: u64, wide: bool| -> Option<u64> {
        let mut bytes = [0u8; 8];
        let n = if wide { 8 } else { 4 };
        mem.read(gpa, &mut bytes[..n])
            .then_some(u64::from_le_bytes(bytes))
    };
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    if mode.cr4 & CR4_PAE == 0 {
        let linear = linear & 0xffff_ffff;
        let pde = read((mode.cr3 & 0xffff_f000) + (linear >> 22) * 4, false)?;
        if pde & PRESENT == 0 {
            return None;
        }
        if pde & LARGE != 0 && mode.cr4 & CR4_PSE != 0 {
            let base = (pde & 0xffc0_0000) | ((pde >> 13) & 0xff) << 32;
            return Some(base | (linear & 0x3f_ffff));
        }
        let pte = read((pde & 0xffff_f000) + ((linear >> 12) & 0x3ff) * 4, false)?;
        return (pte & PRESENT != 0).then_some((pte & 0xffff_f000) | (linear & 0xfff));
    }
    let (mut table, levels) = if mode.efer & EFER_LMA != 0 {
        (mode.cr3 & ADDR, 4)
    } else {
        let linear = linear & 0xffff_ffff;
        let pdpte = read((mode.cr3 & 0xffff_ffe0) + (linear >> 30) * 8, true)?;
        if pdpte & PRESENT == 0 {
            return None;
        }
        (pdpte & ADDR, 2)
    };
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (level - 1);
        let entry = read(table + ((linear >> shift) & 0x1ff) * 8, true)?;
        if entry & PRESENT == 0 {
            return None;
        }
        if level > 1 && entry & LARGE != 0 {
            let size_mask = (1u64 << shift) - 1;
            return Some((entry & ADDR & !size_mask) | (linear & size_mask));
        }
        table = entry & ADDR;
    }
    Some(table | (linear & 0xfff))
}

/// Reads up to 15 instruction bytes at `rip` (through the tables, page by page); how many
/// were readable (at least one, or the error).
fn fetch(
    mem: &mut dyn GuestMemory,
    mode: &CpuMode,
    rip: u64,
    out: &mut [u8; 15],
) -> Result<usize, MmioError> {
    let start = if mode.bitness() == 64 {
        rip
    } else {
        mode.cs_base.wrapping_add(rip) & 0xffff_ffff
    };
    let mut got = 0;
    while got < out.len() {
        let linear = start.wrapping_add(got as u64);
        let Some(gpa) = translate(mem, mode, linear) else {
            break;
        };
        let in_page = (0x1000 - (linear & 0xfff)) as usize;
        let n = in_page.min(out.len() - got);
        if !mem.read(gpa, &mut out[got..got + n]) {
            break;
        }
        got += n;
    }
    if got == 0 {
        Err(MmioError::Fetch(start))
    } else {
        Ok(got)
    }
}

/// A general register operand: its number (hardware order, as `abi::vm::word::GPRS`), width in
/// bytes and whether it is a high-byte register (AH, CH, DH, BH).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegOperand {
    pub number: usize,
    pub size: u8,
    pub high_byte: bool,
}

impl RegOperand {
    fn of(reg: Register) -> Option<RegOperand> {
        if !reg.is_gpr() {
            return None;
        }
        let high_byte = matches!(
            reg,
            Register::AH | Register::CH | Register::DH | Register::BH
        );
        let number = if high_byte {
            reg.number() - 4
        } else {
            reg.number()
        };
        Some(RegOperand {
            number,
            size: reg.size() as u8,
            high_byte,
        })
    }

    /// The operand's value in the full register `full`.
    pub fn value(&self, full: u64) -> u64 {
        match (self.size, self.high_byte) {
            (1, true) => (full >> 8) & 0xff,
            (1, false) => full & 0xff,
            (2, _) => full & 0xffff,
            (4, _) => full & 0xffff_ffff,
            _ => full,
        }
    }

    /// The full register after writing `value` to the operand: 8- and 16-bit writes keep the
    /// rest, a 32-bit write clears the upper half (as the hardware does).
    pub fn merge(&self, full: u64, value: u64) -> u64 {
        match (self.size, self.high_byte) {
            (1, true) => (full & !0xff00) | (value & 0xff) << 8,
            (1, false) => (full & !0xff) | (value & 0xff),
            (2, _) => (full & !0xffff) | (value & 0xffff),
            (4, _) => value & 0xffff_ffff,
            _ => value,
        }
    }
}

/// What the device access does, and what happens to the register afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioOp {
    /// Read `size` bytes into `dest`, extended as `extend` says.
    Load {
        size: u8,
        dest: RegOperand,
        extend: Extend,
    },
    /// Write `size` bytes of `value`.
    Store { size: u8, value: u64 },
    /// XCHG: read `size` bytes into `reg`, write the register's old value.
    Exchange { size: u8, reg: RegOperand },
}

/// How a loaded value fills a wider destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extend {
    Zero,
    Sign,
}

/// A decoded MMIO instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub op: MmioOp,
    /// The instruction's length (RIP advances by it).
    pub len: u64,
}

/// Decodes the instruction at `rip` that touched device memory; `gprs` are the guest's
/// registers (for a store's value).
pub fn decode(
    mem: &mut dyn GuestMemory,
    mode: &CpuMode,
    rip: u64,
    gprs: &[u64; 16],
) -> Result<Decoded, MmioError> {
    let mut bytes = [0u8; 15];
    let n = fetch(mem, mode, rip, &mut bytes)?;
    decode_bytes(&bytes[..n], mode.bitness(), gprs)
}

/// [`decode`] on fetched bytes.
pub fn decode_bytes(bytes: &[u8], bitness: u32, gprs: &[u64; 16]) -> Result<Decoded, MmioError> {
    let mut decoder = Decoder::new(bitness, bytes, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return Err(MmioError::Invalid);
    }
    let unsupported = Err(MmioError::Unsupported(insn.mnemonic()));
    let memory_size = insn.memory_size().size() as u8;
    let op = match insn.mnemonic() {
        Mnemonic::Mov if is_memory(&insn, 0) => {
            let value = match insn.op1_kind() {
                OpKind::Register => match RegOperand::of(insn.op1_register()) {
                    Some(r) => r.value(gprs[r.number]),
                    None => return unsupported,
                },
                OpKind::Immediate8
                | OpKind::Immediate16
                | OpKind::Immediate32
                | OpKind::Immediate8to32
                | OpKind::Immediate32to64 => insn.immediate(1),
                _ => return unsupported,
            };
            MmioOp::Store {
                size: memory_size,
                value: value & size_mask(memory_size),
            }
        }
        Mnemonic::Mov | Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd
            if is_memory(&insn, 1) && insn.op0_kind() == OpKind::Register =>
        {
            let Some(dest) = RegOperand::of(insn.op0_register()) else {
                return unsupported;
            };
            let extend = match insn.mnemonic() {
                Mnemonic::Movsx | Mnemonic::Movsxd => Extend::Sign,
                _ => Extend::Zero,
            };
            MmioOp::Load {
                size: memory_size,
                dest,
                extend,
            }
        }
        Mnemonic::Xchg => {
            let reg_operand = if is_memory(&insn, 0) { 1 } else { 0 };
            if !is_memory(&insn, 1 - reg_operand) {
                return unsupported;
            }
            let Some(reg) = RegOperand::of(insn.op_register(reg_operand)) else {
                return unsupported;
            };
            MmioOp::Exchange {
                size: memory_size,
                reg,
            }
        }
        _ => return unsupported,
    };
    if !matches!(memory_size, 1 | 2 | 4 | 8) {
        return unsupported;
    }
    Ok(Decoded {
        op,
        len: insn.len() as u64,
    })
}

fn is_memory(insn: &Instruction, operand: u32) -> bool {
    operand < insn.op_count() && insn.op_kind(operand) == OpKind::Memory
}

fn size_mask(size: u8) -> u64 {
    match size {
        8 => u64::MAX,
        n => (1u64 << (8 * u32::from(n))) - 1,
    }
}

/// The register value after a load of `size` bytes of `value` into `dest`.
pub fn loaded(dest: RegOperand, full: u64, size: u8, value: u64, extend: Extend) -> u64 {
    let value = value & size_mask(size);
    let widened = match extend {
        Extend::Zero => value,
        Extend::Sign => {
            let shift = 64 - 8 * u32::from(size);
            (((value << shift) as i64) >> shift) as u64
        }
    };
    dest.merge(full, widened)
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
