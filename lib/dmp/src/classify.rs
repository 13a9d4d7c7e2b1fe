//! What the instruction at a hot site is, for DMP.
//!
//! The profile names a site by (exit reason, guest RIP); the service reads up to [`MAX_CODE`]
//! bytes of guest code from that RIP and [`classify`] decodes the first instruction. The exit
//! reason must fit the instruction: a control-register exit at a `mov rax, cr3`, an INVLPG exit at
//! an `invlpg`, an I/O exit at an `in`/`out`, a page fault (or memory fault) at an instruction
//! with an explicit memory operand. A mismatch means the profile is stale (the guest changed its
//! code), the RIP is not an instruction boundary, or the fault was an instruction fetch — in every
//! case the site is [`Unpatchable::ReasonMismatch`].
//!
//! Bytes cannot tell whether a store hits a page table. The caller can (the vTLB knows which
//! guest frames hold tables) and passes that as `is_page_table`; a plain `mov` store with that hint
//! and a page-fault reason is a [`SiteKind::PageTableWrite`], any other memory access a
//! [`SiteKind::FaultingAccess`].

use abi::vm::Exit;
use alloc::vec::Vec;
use core::fmt;
use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic,
    OpAccess, OpKind, Register,
};

/// Guest code bytes [`classify`] looks at, at most (more are ignored). Enough for the hot
/// instruction and the instructions [`crate::plan_patch`] may displace after it (at most 4 + 15).
pub const MAX_CODE: usize = 32;

/// The decoder's mode: 64-bit (long mode) or 32-bit (protected or compatibility mode) code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bitness {
    Bits32,
    Bits64,
}

impl Bitness {
    /// 32 or 64.
    pub const fn bits(self) -> u32 {
        match self {
            Bitness::Bits32 => 32,
            Bitness::Bits64 => 64,
        }
    }

    /// `Some` for 32 and 64 (16-bit code is never patched).
    pub const fn from_bits(bits: u32) -> Option<Bitness> {
        match bits {
            32 => Some(Bitness::Bits32),
            64 => Some(Bitness::Bits64),
            _ => None,
        }
    }

    /// Bytes of a stack slot (push/pop).
    pub const fn word_bytes(self) -> u64 {
        match self {
            Bitness::Bits32 => 4,
            Bitness::Bits64 => 8,
        }
    }
}

/// Width of a general-purpose access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    Byte,
    Word,
    Dword,
    Qword,
}

impl Width {
    pub const fn bytes(self) -> u8 {
        match self {
            Width::Byte => 1,
            Width::Word => 2,
            Width::Dword => 4,
            Width::Qword => 8,
        }
    }

    pub const fn from_bytes(bytes: usize) -> Option<Width> {
        match bytes {
            1 => Some(Width::Byte),
            2 => Some(Width::Word),
            4 => Some(Width::Dword),
            8 => Some(Width::Qword),
            _ => None,
        }
    }

    /// The value bits of this width (`0xff` for a byte, …).
    pub const fn mask(self) -> u64 {
        match self {
            Width::Qword => u64::MAX,
            w => (1u64 << (w.bytes() as u32 * 8)) - 1,
        }
    }
}

/// An explicit memory operand, as decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemOperand {
    /// The segment-override prefix, if any.
    pub segment: Option<Register>,
    /// Base register; [`Register::RIP`] (or `EIP`) for IP-relative operands.
    pub base: Option<Register>,
    /// Index register.
    pub index: Option<Register>,
    /// Scale of the index: 1, 2, 4 or 8.
    pub scale: u8,
    /// The displacement as iced-x86 reports it: for IP-relative operands the absolute target
    /// address, otherwise the displacement sign-extended to the address size.
    pub displacement: u64,
}

impl MemOperand {
    fn of(insn: &Instruction) -> MemOperand {
        let some = |r: Register| if r == Register::None { None } else { Some(r) };
        MemOperand {
            segment: some(insn.segment_prefix()),
            base: some(insn.memory_base()),
            index: some(insn.memory_index()),
            scale: insn.memory_index_scale() as u8,
            displacement: insn.memory_displacement64(),
        }
    }

    /// Addressed relative to the next instruction (`[rip+disp]`); [`MemOperand::displacement`] is
    /// then the absolute target.
    pub fn is_ip_relative(&self) -> bool {
        matches!(self.base, Some(Register::RIP) | Some(Register::EIP))
    }
}

/// What a store writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreValue {
    /// A general-purpose register of the store's width (`AH`..`BH` included).
    Register(Register),
    /// An immediate, already truncated to the store's width.
    Immediate(u64),
}

/// How an instruction accesses its memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDirection {
    In,
    Out,
}

/// Where a port-I/O instruction takes its port from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    Immediate(u8),
    Dx,
}

/// Why a site cannot be patched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unpatchable {
    /// The bytes are no valid instruction, or end in the middle of one.
    Undecodable,
    /// The exit reason is not one DMP patches (CPUID, HLT, MSRs, …).
    UnhandledReason,
    /// The instruction cannot cause this exit: a stale profile, a RIP that is not an instruction
    /// boundary, or an instruction-fetch fault.
    ReasonMismatch,
    /// A LOCK prefix or an implicitly locked `xchg` with memory: its atomicity cannot be kept by
    /// anything the stub does instead.
    Locked,
    /// A branch, call, return or interrupt: it depends on where it executes and ends a block.
    ControlFlow,
    /// The faulting access is implicit (stack, string instructions, descriptor tables, several
    /// memory operands): no single operand to hand over.
    ImplicitMemory,
    /// The hot instruction addresses memory EIP-relative (address-size prefix in 64-bit mode):
    /// rare in real code, and the replacement sequences do not rebuild such addresses. (A
    /// displaced instruction after the hot one may be EIP-relative: the block encoder moves it.)
    IpRelative32,
    /// The RIP cannot hold code in this mode (at or above 4 GiB in 32-bit code).
    RipOutOfRange,
}

impl fmt::Display for Unpatchable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unpatchable::Undecodable => "no valid instruction at the site",
            Unpatchable::UnhandledReason => "exit reason not handled by DMP",
            Unpatchable::ReasonMismatch => "instruction does not match the exit reason",
            Unpatchable::Locked => "locked memory access",
            Unpatchable::ControlFlow => "control-flow instruction",
            Unpatchable::ImplicitMemory => "implicit memory access",
            Unpatchable::IpRelative32 => "EIP-relative addressing",
            Unpatchable::RipOutOfRange => "RIP out of range for the mode",
        })
    }
}

/// The DMP class of a hot site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteKind {
    /// A plain `mov` store (register or immediate source, also `movnti` and the `moffs` forms)
    /// that page-faulted on what the caller says is a guest page table.
    PageTableWrite {
        width: Width,
        mem: MemOperand,
        value: StoreValue,
    },
    /// `mov gpr, cr3`.
    Cr3Read {
        gpr: Register,
    },
    /// `mov cr3, gpr`.
    Cr3Write {
        gpr: Register,
    },
    /// `mov` to or from CR0, CR2, CR4 or CR8, `clts`, `lmsw` (CR0 written), `smsw` (CR0 read).
    OtherCrAccess {
        cr: u8,
        write: bool,
    },
    /// `invlpg m`.
    Invlpg {
        mem: MemOperand,
    },
    /// Any other instruction whose one explicit memory operand faulted.
    FaultingAccess {
        access: Access,
        /// Bytes accessed (1 to 64: vector operands included).
        bytes: u32,
        mem: MemOperand,
    },
    /// `in`/`out` with an immediate port or DX (not the string forms).
    PortIo {
        direction: IoDirection,
        width: Width,
        port: Port,
    },
    Unpatchable(Unpatchable),
}

/// A classified hot site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// Guest RIP (guest-linear address) of the hot instruction.
    pub rip: u64,
    pub bitness: Bitness,
    /// The exit reason that made the site hot.
    pub reason: Exit,
    /// The guest code from `rip` on, as given (at most [`MAX_CODE`] bytes).
    pub code: Vec<u8>,
    /// The decoded hot instruction (an invalid instruction if the bytes were undecodable).
    pub instruction: Instruction,
    pub kind: SiteKind,
}

impl Site {
    /// Whether [`crate::plan_patch`] may work on this site.
    pub fn is_patchable(&self) -> bool {
        !matches!(self.kind, SiteKind::Unpatchable(_))
    }
}

/// Decode the instruction at a hot site and classify it.
///
/// `code` holds the guest bytes from `rip` on (only the first [`MAX_CODE`] are used), `reason`
/// the exit reason of the hot site, `is_page_table` whether the faulting access hit a guest page
/// table (only used with [`Exit::PageFault`]).
pub fn classify(
    code: &[u8],
    rip: u64,
    reason: Exit,
    bitness: Bitness,
    is_page_table: bool,
) -> Site {
    let code = &code[..code.len().min(MAX_CODE)];
    let mut site = Site {
        rip,
        bitness,
        reason,
        code: code.to_vec(),
        instruction: Instruction::default(),
        kind: SiteKind::Unpatchable(Unpatchable::Undecodable),
    };
    if bitness == Bitness::Bits32 && rip > u64::from(u32::MAX) {
        site.kind = SiteKind::Unpatchable(Unpatchable::RipOutOfRange);
        return site;
    }
    let mut decoder = Decoder::with_ip(bitness.bits(), code, rip, DecoderOptions::NONE);
    if !decoder.can_decode() {
        return site;
    }
    let insn = decoder.decode();
    if insn.is_invalid() {
        return site;
    }
    site.instruction = insn;
    site.kind = kind_of(&insn, reason, is_page_table);
    site
}

fn kind_of(insn: &Instruction, reason: Exit, is_page_table: bool) -> SiteKind {
    match reason {
        Exit::ControlRegister => control_register(insn),
        Exit::Invlpg => invlpg(insn),
        Exit::Io => port_io(insn),
        Exit::PageFault => memory_access(insn, is_page_table),
        Exit::MemoryFault => memory_access(insn, false),
        _ => SiteKind::Unpatchable(Unpatchable::UnhandledReason),
    }
}

fn cr_number(r: Register) -> Option<u8> {
    let n = (r as u32).wrapping_sub(Register::CR0 as u32);
    (n <= 15).then_some(n as u8)
}

fn control_register(insn: &Instruction) -> SiteKind {
    match insn.code() {
        Code::Mov_r64_cr | Code::Mov_r32_cr => {
            let (gpr, cr) = (insn.op0_register(), insn.op1_register());
            match cr_number(cr) {
                Some(3) => SiteKind::Cr3Read { gpr },
                Some(n) => SiteKind::OtherCrAccess {
                    cr: n,
                    write: false,
                },
                None => SiteKind::Unpatchable(Unpatchable::ReasonMismatch),
            }
        }
        Code::Mov_cr_r64 | Code::Mov_cr_r32 => {
            let (cr, gpr) = (insn.op0_register(), insn.op1_register());
            match cr_number(cr) {
                Some(3) => SiteKind::Cr3Write { gpr },
                Some(n) => SiteKind::OtherCrAccess { cr: n, write: true },
                None => SiteKind::Unpatchable(Unpatchable::ReasonMismatch),
            }
        }
        Code::Clts | Code::Lmsw_rm16 | Code::Lmsw_r32m16 | Code::Lmsw_r64m16 => {
            SiteKind::OtherCrAccess { cr: 0, write: true }
        }
        Code::Smsw_rm16 | Code::Smsw_r32m16 | Code::Smsw_r64m16 => SiteKind::OtherCrAccess {
            cr: 0,
            write: false,
        },
        _ => SiteKind::Unpatchable(Unpatchable::ReasonMismatch),
    }
}

fn invlpg(insn: &Instruction) -> SiteKind {
    if insn.code() != Code::Invlpg_m {
        return SiteKind::Unpatchable(Unpatchable::ReasonMismatch);
    }
    let mem = MemOperand::of(insn);
    if mem.base == Some(Register::EIP) {
        return SiteKind::Unpatchable(Unpatchable::IpRelative32);
    }
    SiteKind::Invlpg { mem }
}

fn port_io(insn: &Instruction) -> SiteKind {
    use IoDirection::{In, Out};
    use Port::Dx;
    let imm = || Port::Immediate(insn.immediate8());
    let (direction, width, port) = match insn.code() {
        Code::In_AL_imm8 => (In, Width::Byte, imm()),
        Code::In_AX_imm8 => (In, Width::Word, imm()),
        Code::In_EAX_imm8 => (In, Width::Dword, imm()),
        Code::In_AL_DX => (In, Width::Byte, Dx),
        Code::In_AX_DX => (In, Width::Word, Dx),
        Code::In_EAX_DX => (In, Width::Dword, Dx),
        Code::Out_imm8_AL => (Out, Width::Byte, imm()),
        Code::Out_imm8_AX => (Out, Width::Word, imm()),
        Code::Out_imm8_EAX => (Out, Width::Dword, imm()),
        Code::Out_DX_AL => (Out, Width::Byte, Dx),
        Code::Out_DX_AX => (Out, Width::Word, Dx),
        Code::Out_DX_EAX => (Out, Width::Dword, Dx),
        _ => {
            let string = matches!(
                insn.mnemonic(),
                Mnemonic::Insb
                    | Mnemonic::Insw
                    | Mnemonic::Insd
                    | Mnemonic::Outsb
                    | Mnemonic::Outsw
                    | Mnemonic::Outsd
            );
            let why = if string {
                Unpatchable::ImplicitMemory
            } else {
                Unpatchable::ReasonMismatch
            };
            return SiteKind::Unpatchable(why);
        }
    };
    SiteKind::PortIo {
        direction,
        width,
        port,
    }
}

/// The value of a plain `mov` store to memory, if `insn` is one.
fn plain_store(insn: &Instruction) -> Option<StoreValue> {
    match insn.code() {
        Code::Mov_rm8_r8
        | Code::Mov_rm16_r16
        | Code::Mov_rm32_r32
        | Code::Mov_rm64_r64
        | Code::Mov_moffs8_AL
        | Code::Mov_moffs16_AX
        | Code::Mov_moffs32_EAX
        | Code::Mov_moffs64_RAX
        | Code::Movnti_m32_r32
        | Code::Movnti_m64_r64
            if insn.op0_kind() == OpKind::Memory =>
        {
            Some(StoreValue::Register(insn.op1_register()))
        }
        Code::Mov_rm8_imm8 | Code::Mov_rm16_imm16 | Code::Mov_rm32_imm32 | Code::Mov_rm64_imm32
            if insn.op0_kind() == OpKind::Memory =>
        {
            let width = Width::from_bytes(insn.memory_size().size())?;
            Some(StoreValue::Immediate(insn.immediate(1) & width.mask()))
        }
        _ => None,
    }
}

fn memory_access(insn: &Instruction, is_page_table: bool) -> SiteKind {
    let unpatchable = SiteKind::Unpatchable;
    let mut explicit = 0;
    for i in 0..insn.op_count() {
        match insn.op_kind(i) {
            OpKind::Memory => explicit += 1,
            OpKind::MemorySegSI
            | OpKind::MemorySegESI
            | OpKind::MemorySegRSI
            | OpKind::MemorySegDI
            | OpKind::MemorySegEDI
            | OpKind::MemorySegRDI
            | OpKind::MemoryESDI
            | OpKind::MemoryESEDI
            | OpKind::MemoryESRDI => return unpatchable(Unpatchable::ImplicitMemory),
            _ => {}
        }
    }
    if insn.flow_control() != FlowControl::Next {
        return unpatchable(Unpatchable::ControlFlow);
    }
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(insn);
    let used = info.used_memory();
    if explicit == 0 {
        return unpatchable(if used.is_empty() {
            Unpatchable::ReasonMismatch
        } else {
            Unpatchable::ImplicitMemory
        });
    }
    let access = match used {
        [] => return unpatchable(Unpatchable::ReasonMismatch),
        [one] => match one.access() {
            OpAccess::Read | OpAccess::CondRead => Access::Read,
            OpAccess::Write | OpAccess::CondWrite => Access::Write,
            OpAccess::ReadWrite | OpAccess::ReadCondWrite => Access::ReadWrite,
            // `lea`, hint NOPs, prefetches: nothing there can fault.
            _ => return unpatchable(Unpatchable::ReasonMismatch),
        },
        _ => return unpatchable(Unpatchable::ImplicitMemory),
    };
    let locked = insn.has_lock_prefix() || insn.mnemonic() == Mnemonic::Xchg;
    if locked {
        return unpatchable(Unpatchable::Locked);
    }
    let mem = MemOperand::of(insn);
    if mem.base == Some(Register::EIP) {
        return unpatchable(Unpatchable::IpRelative32);
    }
    if is_page_table {
        if let Some(value) = plain_store(insn) {
            if let Some(width) = Width::from_bytes(insn.memory_size().size()) {
                return SiteKind::PageTableWrite { width, mem, value };
            }
        }
    }
    SiteKind::FaultingAccess {
        access,
        bytes: insn.memory_size().size() as u32,
        mem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Register::{AH, EAX, EBX, ECX, EDX, ESI, R12, R15, R8, R9, RAX, RCX, RDI, RDX, SI, SIL};

    const RIP: u64 = 0xffff_8000_0010_0000;

    fn kind64(code: &[u8], reason: Exit, pt: bool) -> SiteKind {
        let site = classify(code, RIP, reason, Bitness::Bits64, pt);
        site.kind
    }

    fn kind32(code: &[u8], reason: Exit, pt: bool) -> SiteKind {
        classify(code, 0xc010_0000, reason, Bitness::Bits32, pt).kind
    }

    fn mem(base: Option<Register>, index: Option<Register>, scale: u8, disp: u64) -> MemOperand {
        MemOperand {
            segment: None,
            base,
            index,
            scale,
            displacement: disp,
        }
    }

    #[test]
    fn page_table_writes_every_width_and_source() {
        let pt = |code: &[u8]| kind64(code, Exit::PageFault, true);
        // mov [rdi], rax
        assert_eq!(
            pt(&[0x48, 0x89, 0x07]),
            SiteKind::PageTableWrite {
                width: Width::Qword,
                mem: mem(Some(RDI), None, 1, 0),
                value: StoreValue::Register(RAX)
            }
        );
        // mov [rdi+rcx*8+0x10], r9 (REX.WRXB-style: 4c 89 4c cf 10)
        assert_eq!(
            pt(&[0x4c, 0x89, 0x4c, 0xcf, 0x10]),
            SiteKind::PageTableWrite {
                width: Width::Qword,
                mem: mem(Some(RDI), Some(RCX), 8, 0x10),
                value: StoreValue::Register(R9)
            }
        );
        // mov [r8 + r12*8 - 8], rdx (4b 89 54 e0 f8)
        assert_eq!(
            pt(&[0x4b, 0x89, 0x54, 0xe0, 0xf8]),
            SiteKind::PageTableWrite {
                width: Width::Qword,
                mem: mem(Some(R8), Some(R12), 8, (-8i64) as u64),
                value: StoreValue::Register(RDX)
            }
        );
        // mov dword [rdi+4], esi
        assert_eq!(
            pt(&[0x89, 0x77, 0x04]),
            SiteKind::PageTableWrite {
                width: Width::Dword,
                mem: mem(Some(RDI), None, 1, 4),
                value: StoreValue::Register(ESI)
            }
        );
        // mov word [rdi], si (66 prefix)
        assert_eq!(
            pt(&[0x66, 0x89, 0x37]),
            SiteKind::PageTableWrite {
                width: Width::Word,
                mem: mem(Some(RDI), None, 1, 0),
                value: StoreValue::Register(SI)
            }
        );
        // mov byte [rdi], ah (no REX) and mov byte [rdi], sil (REX)
        assert_eq!(
            pt(&[0x88, 0x27]),
            SiteKind::PageTableWrite {
                width: Width::Byte,
                mem: mem(Some(RDI), None, 1, 0),
                value: StoreValue::Register(AH)
            }
        );
        assert_eq!(
            pt(&[0x40, 0x88, 0x37]),
            SiteKind::PageTableWrite {
                width: Width::Byte,
                mem: mem(Some(RDI), None, 1, 0),
                value: StoreValue::Register(SIL)
            }
        );
        // mov qword [rdi], 0 (imm32 sign-extended) and -1
        assert_eq!(
            pt(&[0x48, 0xc7, 0x07, 0, 0, 0, 0]),
            SiteKind::PageTableWrite {
                width: Width::Qword,
                mem: mem(Some(RDI), None, 1, 0),
                value: StoreValue::Immediate(0)
            }
        );
        assert_eq!(
            pt(&[0x48, 0xc7, 0x07, 0xff, 0xff, 0xff, 0xff]),
            SiteKind::PageTableWrite {
                width: Width::Qword,
                mem: mem(Some(RDI), None, 1, 0),
                value: StoreValue::Immediate(u64::MAX)
            }
        );
        // mov word [rdi], 0x1234 ; mov byte [rdi], 0x80
        assert_eq!(
            pt(&[0x66, 0xc7, 0x07, 0x34, 0x12]),
            SiteKind::PageTableWrite {
                width: Width::Word,
                mem: mem(Some(RDI), None, 1, 0),
                value: StoreValue::Immediate(0x1234)
            }
        );
        assert_eq!(
            pt(&[0xc6, 0x07, 0x80]),
            SiteKind::PageTableWrite {
                width: Width::Byte,
                mem: mem(Some(RDI), None, 1, 0),
                value: StoreValue::Immediate(0x80)
            }
        );
        // movnti [rdi], rax
        assert!(matches!(
            pt(&[0x48, 0x0f, 0xc3, 0x07]),
            SiteKind::PageTableWrite {
                width: Width::Qword,
                ..
            }
        ));
        // mov [moffs64], rax: absolute 64-bit address
        assert_eq!(
            pt(&[0x48, 0xa3, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01]),
            SiteKind::PageTableWrite {
                width: Width::Qword,
                mem: mem(None, None, 1, 0x0102_0304_0506_0708),
                value: StoreValue::Register(RAX)
            }
        );
    }

    #[test]
    fn rip_relative_and_segment_prefixes() {
        // mov [rip+0x100], rax: 48 89 05 00 01 00 00 (7 bytes); target = RIP + 7 + 0x100
        let k = kind64(&[0x48, 0x89, 0x05, 0, 1, 0, 0], Exit::PageFault, true);
        let SiteKind::PageTableWrite { mem, .. } = k else {
            panic!("{k:?}")
        };
        assert!(mem.is_ip_relative());
        assert_eq!(mem.base, Some(Register::RIP));
        assert_eq!(mem.displacement, RIP + 7 + 0x100);
        // mov rax, [rip-16] as a faulting read
        let k = kind64(
            &[0x48, 0x8b, 0x05, 0xf0, 0xff, 0xff, 0xff],
            Exit::PageFault,
            false,
        );
        let SiteKind::FaultingAccess { access, bytes, mem } = k else {
            panic!("{k:?}")
        };
        assert_eq!((access, bytes), (Access::Read, 8));
        assert_eq!(mem.displacement, RIP + 7 - 16);
        // mov gs:[rax], rbx ; mov fs:[0x28], rcx (SIB, no base)
        let k = kind64(&[0x65, 0x48, 0x89, 0x18], Exit::PageFault, true);
        let SiteKind::PageTableWrite { mem, .. } = k else {
            panic!("{k:?}")
        };
        assert_eq!(mem.segment, Some(Register::GS));
        let k = kind64(
            &[0x64, 0x48, 0x89, 0x0c, 0x25, 0x28, 0, 0, 0],
            Exit::PageFault,
            false,
        );
        let SiteKind::FaultingAccess { mem, access, .. } = k else {
            panic!("{k:?}")
        };
        assert_eq!(access, Access::Write);
        assert_eq!(
            mem,
            MemOperand {
                segment: Some(Register::FS),
                ..mem_abs(0x28)
            }
        );
        // EIP-relative (67 prefix): refused
        assert_eq!(
            kind64(&[0x67, 0x48, 0x89, 0x05, 0, 1, 0, 0], Exit::PageFault, true),
            SiteKind::Unpatchable(Unpatchable::IpRelative32)
        );
        assert_eq!(
            kind64(&[0x67, 0x0f, 0x01, 0x3d, 0, 0, 0, 0], Exit::Invlpg, false),
            SiteKind::Unpatchable(Unpatchable::IpRelative32)
        );
        // 32-bit addressing in 64-bit mode: mov [eax], ecx
        let k = kind64(&[0x67, 0x89, 0x08], Exit::PageFault, true);
        let SiteKind::PageTableWrite { mem, width, .. } = k else {
            panic!("{k:?}")
        };
        assert_eq!((mem.base, width), (Some(Register::EAX), Width::Dword));
    }

    fn mem_abs(disp: u64) -> MemOperand {
        mem(None, None, 1, disp)
    }

    #[test]
    fn faulting_accesses() {
        let fa = |code: &[u8]| kind64(code, Exit::PageFault, false);
        let access_bytes = |k: SiteKind| match k {
            SiteKind::FaultingAccess { access, bytes, .. } => (access, bytes),
            k => panic!("{k:?}"),
        };
        // a page-table hint on a load changes nothing: mov rax, [rdi]
        assert_eq!(
            access_bytes(kind64(&[0x48, 0x8b, 0x07], Exit::PageFault, true)),
            (Access::Read, 8)
        );
        // a store without the hint
        assert_eq!(access_bytes(fa(&[0x48, 0x89, 0x07])), (Access::Write, 8));
        // or [rdi], eax: read-modify-write, even with the hint
        assert_eq!(
            access_bytes(kind64(&[0x09, 0x07], Exit::PageFault, true)),
            (Access::ReadWrite, 4)
        );
        // movzx eax, byte [rsi]; movzx eax, word [rsi]
        assert_eq!(access_bytes(fa(&[0x0f, 0xb6, 0x06])), (Access::Read, 1));
        assert_eq!(access_bytes(fa(&[0x0f, 0xb7, 0x06])), (Access::Read, 2));
        // movdqu xmm0, [rsi]: 16 bytes
        assert_eq!(
            access_bytes(fa(&[0xf3, 0x0f, 0x6f, 0x06])),
            (Access::Read, 16)
        );
        // cmp byte [rdi], 0
        assert_eq!(access_bytes(fa(&[0x80, 0x3f, 0x00])), (Access::Read, 1));
        // a memory fault (MMIO) is a faulting access too, never a page-table write
        assert_eq!(
            access_bytes(kind64(&[0x89, 0x07], Exit::MemoryFault, true)),
            (Access::Write, 4)
        );
    }

    #[test]
    fn refused_memory_forms() {
        let pf = |code: &[u8]| kind64(code, Exit::PageFault, true);
        let no = SiteKind::Unpatchable;
        // lock cmpxchg [rdi], rsi ; lock or [rdi], eax ; xchg [rdi], rax (implicit lock)
        assert_eq!(pf(&[0xf0, 0x48, 0x0f, 0xb1, 0x37]), no(Unpatchable::Locked));
        assert_eq!(pf(&[0xf0, 0x09, 0x07]), no(Unpatchable::Locked));
        assert_eq!(pf(&[0x48, 0x87, 0x07]), no(Unpatchable::Locked));
        // rep stosq ; movsb ; push rax ; push qword [rdi] ; pop qword [rdi]
        assert_eq!(pf(&[0xf3, 0x48, 0xab]), no(Unpatchable::ImplicitMemory));
        assert_eq!(pf(&[0xa4]), no(Unpatchable::ImplicitMemory));
        assert_eq!(pf(&[0x50]), no(Unpatchable::ImplicitMemory));
        assert_eq!(pf(&[0xff, 0x37]), no(Unpatchable::ImplicitMemory));
        assert_eq!(pf(&[0x8f, 0x07]), no(Unpatchable::ImplicitMemory));
        // call [rax] ; jmp [rax] ; ret
        assert_eq!(pf(&[0xff, 0x10]), no(Unpatchable::ControlFlow));
        assert_eq!(pf(&[0xff, 0x20]), no(Unpatchable::ControlFlow));
        assert_eq!(pf(&[0xc3]), no(Unpatchable::ControlFlow));
        // lea rax, [rdi] and nop dword [rax]: no access, so no fault (e.g. a fetch fault)
        assert_eq!(pf(&[0x48, 0x8d, 0x07]), no(Unpatchable::ReasonMismatch));
        assert_eq!(pf(&[0x0f, 0x1f, 0x00]), no(Unpatchable::ReasonMismatch));
        // add eax, ebx: no memory at all
        assert_eq!(pf(&[0x01, 0xd8]), no(Unpatchable::ReasonMismatch));
    }

    #[test]
    fn control_registers() {
        let cr = |code: &[u8]| kind64(code, Exit::ControlRegister, false);
        assert_eq!(cr(&[0x0f, 0x20, 0xd8]), SiteKind::Cr3Read { gpr: RAX });
        assert_eq!(cr(&[0x0f, 0x20, 0xdf]), SiteKind::Cr3Read { gpr: RDI });
        // REX.B: mov r15, cr3 ; REX.W is ignored: 48 0f 20 d8 is still mov rax, cr3
        assert_eq!(
            cr(&[0x41, 0x0f, 0x20, 0xdf]),
            SiteKind::Cr3Read { gpr: R15 }
        );
        assert_eq!(
            cr(&[0x48, 0x0f, 0x20, 0xd8]),
            SiteKind::Cr3Read { gpr: RAX }
        );
        assert_eq!(cr(&[0x0f, 0x22, 0xd8]), SiteKind::Cr3Write { gpr: RAX });
        assert_eq!(
            cr(&[0x41, 0x0f, 0x22, 0xd9]),
            SiteKind::Cr3Write { gpr: R9 }
        );
        assert_eq!(
            cr(&[0x0f, 0x20, 0xc0]),
            SiteKind::OtherCrAccess {
                cr: 0,
                write: false
            }
        );
        assert_eq!(
            cr(&[0x0f, 0x22, 0xe0]),
            SiteKind::OtherCrAccess { cr: 4, write: true }
        );
        // REX.R: mov cr8, rax
        assert_eq!(
            cr(&[0x44, 0x0f, 0x22, 0xc0]),
            SiteKind::OtherCrAccess { cr: 8, write: true }
        );
        assert_eq!(
            cr(&[0x0f, 0x06]),
            SiteKind::OtherCrAccess { cr: 0, write: true }
        );
        assert_eq!(
            cr(&[0x0f, 0x01, 0xf0]),
            SiteKind::OtherCrAccess { cr: 0, write: true }
        );
        // 32-bit code: mov eax, cr3 / mov cr3, ebx
        let cr32 = |code: &[u8]| kind32(code, Exit::ControlRegister, false);
        assert_eq!(cr32(&[0x0f, 0x20, 0xd8]), SiteKind::Cr3Read { gpr: EAX });
        assert_eq!(cr32(&[0x0f, 0x22, 0xdb]), SiteKind::Cr3Write { gpr: EBX });
        // the wrong reason for the instruction, and the wrong instruction for the reason
        assert_eq!(
            kind64(&[0x0f, 0x20, 0xd8], Exit::PageFault, false),
            SiteKind::Unpatchable(Unpatchable::ReasonMismatch)
        );
        assert_eq!(
            cr(&[0x48, 0x89, 0x07]),
            SiteKind::Unpatchable(Unpatchable::ReasonMismatch)
        );
    }

    #[test]
    fn invlpg_forms() {
        let inv = |code: &[u8]| kind64(code, Exit::Invlpg, false);
        assert_eq!(
            inv(&[0x0f, 0x01, 0x3f]),
            SiteKind::Invlpg {
                mem: mem(Some(RDI), None, 1, 0)
            }
        );
        // invlpg [r9 + rax*1 + 0x1000] (REX.B)
        assert_eq!(
            inv(&[0x41, 0x0f, 0x01, 0xbc, 0x01, 0x00, 0x10, 0x00, 0x00]),
            SiteKind::Invlpg {
                mem: mem(Some(R9), Some(RAX), 1, 0x1000)
            }
        );
        // invlpg [rip+0x20]
        let k = inv(&[0x0f, 0x01, 0x3d, 0x20, 0, 0, 0]);
        let SiteKind::Invlpg { mem: m } = k else {
            panic!("{k:?}")
        };
        assert_eq!(m.displacement, RIP + 7 + 0x20);
        // 32-bit: invlpg [eax]
        assert_eq!(
            kind32(&[0x0f, 0x01, 0x38], Exit::Invlpg, false),
            SiteKind::Invlpg {
                mem: mem(Some(EAX), None, 1, 0)
            }
        );
        // invlpga, invpcid: not INVLPG
        assert_eq!(
            inv(&[0x0f, 0x01, 0xdf]),
            SiteKind::Unpatchable(Unpatchable::ReasonMismatch)
        );
        assert_eq!(
            inv(&[0x66, 0x0f, 0x38, 0x82, 0x07]),
            SiteKind::Unpatchable(Unpatchable::ReasonMismatch)
        );
    }

    #[test]
    fn port_io_forms() {
        use IoDirection::*;
        let io = |code: &[u8]| kind64(code, Exit::Io, false);
        let p = |direction, width, port| SiteKind::PortIo {
            direction,
            width,
            port,
        };
        assert_eq!(io(&[0xe4, 0x60]), p(In, Width::Byte, Port::Immediate(0x60)));
        assert_eq!(
            io(&[0x66, 0xe5, 0x70]),
            p(In, Width::Word, Port::Immediate(0x70))
        );
        assert_eq!(
            io(&[0xe5, 0x71]),
            p(In, Width::Dword, Port::Immediate(0x71))
        );
        assert_eq!(io(&[0xec]), p(In, Width::Byte, Port::Dx));
        assert_eq!(io(&[0x66, 0xed]), p(In, Width::Word, Port::Dx));
        assert_eq!(io(&[0xed]), p(In, Width::Dword, Port::Dx));
        assert_eq!(
            io(&[0xe6, 0x80]),
            p(Out, Width::Byte, Port::Immediate(0x80))
        );
        assert_eq!(
            io(&[0x66, 0xe7, 0x80]),
            p(Out, Width::Word, Port::Immediate(0x80))
        );
        assert_eq!(
            io(&[0xe7, 0xf4]),
            p(Out, Width::Dword, Port::Immediate(0xf4))
        );
        assert_eq!(io(&[0xee]), p(Out, Width::Byte, Port::Dx));
        assert_eq!(io(&[0x66, 0xef]), p(Out, Width::Word, Port::Dx));
        assert_eq!(io(&[0xef]), p(Out, Width::Dword, Port::Dx));
        // 32-bit code: the 66 prefix still selects 16 bits
        assert_eq!(
            kind32(&[0x66, 0xef], Exit::Io, false),
            p(Out, Width::Word, Port::Dx)
        );
        // rep outsb, insd: string I/O
        assert_eq!(
            io(&[0xf3, 0x6e]),
            SiteKind::Unpatchable(Unpatchable::ImplicitMemory)
        );
        assert_eq!(
            io(&[0x6d]),
            SiteKind::Unpatchable(Unpatchable::ImplicitMemory)
        );
        assert_eq!(
            io(&[0x90]),
            SiteKind::Unpatchable(Unpatchable::ReasonMismatch)
        );
    }

    #[test]
    fn thirty_two_bit_stores() {
        // mov [eax], edx ; mov [ebx+ecx*4+0x10], esi ; mov [0xc0001000], eax (moffs)
        let pt = |code: &[u8]| kind32(code, Exit::PageFault, true);
        assert_eq!(
            pt(&[0x89, 0x10]),
            SiteKind::PageTableWrite {
                width: Width::Dword,
                mem: mem(Some(EAX), None, 1, 0),
                value: StoreValue::Register(EDX)
            }
        );
        assert_eq!(
            pt(&[0x89, 0x74, 0x8b, 0x10]),
            SiteKind::PageTableWrite {
                width: Width::Dword,
                mem: mem(Some(EBX), Some(ECX), 4, 0x10),
                value: StoreValue::Register(ESI)
            }
        );
        assert_eq!(
            pt(&[0xa3, 0x00, 0x10, 0x00, 0xc0]),
            SiteKind::PageTableWrite {
                width: Width::Dword,
                mem: mem_abs(0xc000_1000),
                value: StoreValue::Register(EAX)
            }
        );
        // a 48 byte is `dec eax` in 32-bit code, not REX
        assert_eq!(
            pt(&[0x48, 0x89, 0x07]),
            SiteKind::Unpatchable(Unpatchable::ReasonMismatch)
        );
        // RIP above 4 GiB in 32-bit code
        let site = classify(
            &[0x89, 0x10],
            1 << 32,
            Exit::PageFault,
            Bitness::Bits32,
            true,
        );
        assert_eq!(site.kind, SiteKind::Unpatchable(Unpatchable::RipOutOfRange));
    }

    #[test]
    fn bad_bytes_and_reasons() {
        let no = SiteKind::Unpatchable;
        assert_eq!(
            kind64(&[], Exit::PageFault, true),
            no(Unpatchable::Undecodable)
        );
        // truncated: mov [rdi+disp32], rax cut short
        assert_eq!(
            kind64(&[0x48, 0x89, 0x87, 0x00], Exit::PageFault, true),
            no(Unpatchable::Undecodable)
        );
        // invalid opcode (0x06 is push es, invalid in 64-bit mode)
        assert_eq!(
            kind64(&[0x06], Exit::PageFault, true),
            no(Unpatchable::Undecodable)
        );
        // more than 15 bytes of prefixes
        assert_eq!(
            kind64(&[0x66; 20], Exit::PageFault, true),
            no(Unpatchable::Undecodable)
        );
        assert_eq!(
            kind64(&[0x0f, 0xa2], Exit::Cpuid, false),
            no(Unpatchable::UnhandledReason)
        );
        // a RIP one byte into `mov rax, cr3` is `and al, bl`: not an instruction that exits
        assert_eq!(
            kind64(&[0x0f, 0x20, 0xd8][1..], Exit::ControlRegister, false),
            no(Unpatchable::ReasonMismatch)
        );
        // one byte into `invlpg [rdi]` (0f 01 3f) is `add [rdi], edi`
        assert_eq!(
            kind64(&[0x0f, 0x01, 0x3f][1..], Exit::Invlpg, false),
            no(Unpatchable::ReasonMismatch)
        );
        // only MAX_CODE bytes are kept
        let site = classify(&[0x90; 100], RIP, Exit::Hlt, Bitness::Bits64, false);
        assert_eq!(site.code.len(), MAX_CODE);
        assert!(!site.is_patchable());
    }

    #[test]
    fn widths() {
        assert_eq!(Width::Byte.mask(), 0xff);
        assert_eq!(Width::Dword.mask(), 0xffff_ffff);
        assert_eq!(Width::Qword.mask(), u64::MAX);
        for w in [Width::Byte, Width::Word, Width::Dword, Width::Qword] {
            assert_eq!(Width::from_bytes(w.bytes() as usize), Some(w));
        }
        assert_eq!(Width::from_bytes(16), None);
        assert_eq!(Bitness::from_bits(16), None);
        assert_eq!(Bitness::from_bits(64), Some(Bitness::Bits64));
    }
}
