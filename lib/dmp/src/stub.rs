//! The out-of-line code a patched site jumps to.
//!
//! A stub is, in order: the replacement for the hot instruction (any sequence; see
//! [`crate::replacement`]), the other displaced instructions, and a jump back to the first
//! instruction after the displaced range ([`PatchPlan::resume`]). iced-x86's block encoder
//! encodes it at the stub's guest-linear address, so a displaced instruction's RIP-relative
//! operand still reaches the same absolute address (an error if that is beyond ±2 GiB of the
//! stub), and the jump back is a `rel32` (or shorter) branch.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use iced_x86::{BlockEncoder, BlockEncoderOptions, Code, Instruction, InstructionBlock};

use crate::classify::Bitness;
use crate::plan::PatchPlan;

/// Why no stub was built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StubError {
    /// The stub does not fit its slot.
    TooLong { len: usize, slot: usize },
    /// iced-x86 could not encode it (e.g. a RIP-relative target beyond ±2 GiB of the stub).
    Encode(String),
}

impl fmt::Display for StubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StubError::TooLong { len, slot } => {
                write!(f, "stub of {len} bytes does not fit a {slot}-byte slot")
            }
            StubError::Encode(e) => write!(f, "encoding: {e}"),
        }
    }
}

/// An encoded stub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stub {
    /// Guest-linear address the code must be placed at ([`PatchPlan::stub`]).
    pub address: u64,
    pub code: Vec<u8>,
    /// Where the stub's last instruction jumps to ([`PatchPlan::resume`]).
    pub resume: u64,
    /// Offsets in `code` of the relocated displaced instructions (after the hot one), then of the
    /// jump back; `None` where the block encoder rewrote an instruction into several (a branch
    /// out of `rel32` reach becomes an indirect jump through a constant).
    pub offsets: Vec<Option<usize>>,
}

/// Encode the stub of `plan`, with `replacement` in place of the hot instruction, for a slot of
/// `slot_len` bytes at [`PatchPlan::stub`].
pub fn build_stub(
    plan: &PatchPlan,
    replacement: &[Instruction],
    slot_len: usize,
) -> Result<Stub, StubError> {
    let jmp = match plan.bitness {
        Bitness::Bits64 => Code::Jmp_rel32_64,
        Bitness::Bits32 => Code::Jmp_rel32_32,
    };
    let resume = plan.resume();
    let back =
        Instruction::with_branch(jmp, resume).map_err(|e| StubError::Encode(e.to_string()))?;
    let mut insns = Vec::with_capacity(replacement.len() + plan.displaced.len() + 1);
    insns.extend_from_slice(replacement);
    insns.extend(plan.displaced.iter().skip(1).copied());
    insns.push(back);
    let result = BlockEncoder::encode(
        plan.bitness.bits(),
        InstructionBlock::new(&insns, plan.stub),
        BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )
    .map_err(|e| StubError::Encode(e.to_string()))?;
    let code = result.code_buffer;
    if code.len() > slot_len {
        return Err(StubError::TooLong {
            len: code.len(),
            slot: slot_len,
        });
    }
    let offsets = result.new_instruction_offsets[replacement.len()..]
        .iter()
        .map(|&o| (o != u32::MAX).then_some(o as usize))
        .collect();
    Ok(Stub {
        address: plan.stub,
        code,
        resume,
        offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{classify, Site, SiteKind};
    use crate::plan::plan_patch;
    use crate::replacement::{self, HypercallInsn, ReplacementError};
    use crate::testcpu::Cpu;
    use abi::vm::Exit;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic, Register};

    const SITE: u64 = 0xffff_ffff_8100_0100;
    const STUB: u64 = 0xffff_ffff_8200_0000;
    const FIELD: u64 = 0xffff_ffff_8200_1000;
    const SLOT: usize = 256;

    fn site(code: &[u8], reason: Exit) -> Site {
        let site = classify(code, SITE, reason, Bitness::Bits64, true);
        assert!(site.is_patchable(), "{:?}", site.kind);
        site
    }

    fn decode_all(stub: &Stub, bits: Bitness) -> Vec<Instruction> {
        let mut d = Decoder::with_ip(bits.bits(), &stub.code, stub.address, DecoderOptions::NONE);
        let all: Vec<Instruction> = d.iter().collect();
        assert!(all.iter().all(|i| !i.is_invalid()));
        all
    }

    /// The stub's last instruction jumps to the plan's resume address.
    fn check_jump_back(stub: &Stub, plan: &PatchPlan) {
        let all = decode_all(stub, plan.bitness);
        let last = all.last().unwrap();
        assert_eq!(last.mnemonic(), Mnemonic::Jmp);
        assert_eq!(last.near_branch_target(), plan.resume());
        assert_eq!(stub.resume, plan.resume());
        assert_eq!(last.next_ip(), stub.address + stub.code.len() as u64);
    }

    /// Run a stub on the test CPU; check that it leaves to `resume`, that the stack below the red
    /// zone is all it wrote, and that only `changed` registers differ afterwards.
    fn run(stub: &Stub, cpu: &mut Cpu, changed: &[Register]) {
        let before = cpu.clone();
        let target = cpu.run(&stub.code, stub.address);
        assert_eq!(target, stub.resume);
        assert_eq!(cpu.rflags, before.rflags);
        for (i, (a, b)) in before.gpr.iter().zip(cpu.gpr.iter()).enumerate() {
            let r = gpr_at(cpu.bits, i);
            if !changed.contains(&r) {
                assert_eq!(a, b, "{r:?} changed");
            }
        }
        let (sp, red) = match cpu.bits {
            Bitness::Bits64 => (before.gpr[4], 128),
            Bitness::Bits32 => (before.gpr[4], 0),
        };
        for &(a, len) in &cpu.writes {
            assert!(
                a + len as u64 <= sp - red,
                "write at {a:#x} within the red zone"
            );
        }
    }

    /// The i-th general-purpose register (in encoding order) of the mode's width.
    fn gpr_at(bits: Bitness, i: usize) -> Register {
        let all64 = [
            Register::RAX,
            Register::RCX,
            Register::RDX,
            Register::RBX,
            Register::RSP,
            Register::RBP,
            Register::RSI,
            Register::RDI,
            Register::R8,
            Register::R9,
            Register::R10,
            Register::R11,
            Register::R12,
            Register::R13,
            Register::R14,
            Register::R15,
        ];
        if bits == Bitness::Bits64 {
            all64[i]
        } else {
            all64[i].full_register32()
        }
    }

    #[test]
    fn cr3_read_stub_with_a_relocated_rip_relative_load() {
        // mov r15, cr3 (4) ; mov rcx, [rip+0x1000] (7) ; ret
        let code = [
            0x41, 0x0f, 0x20, 0xdf, 0x48, 0x8b, 0x0d, 0x00, 0x10, 0x00, 0x00, 0xc3,
        ];
        let s = site(&code, Exit::ControlRegister);
        assert_eq!(s.kind, SiteKind::Cr3Read { gpr: Register::R15 });
        let plan = plan_patch(&s, STUB).unwrap();
        assert_eq!((plan.covered, plan.displaced.len()), (11, 2));
        let target = SITE + 11 + 0x1000;
        assert_eq!(plan.displaced[1].ip_rel_memory_address(), target);

        let stub = build_stub(&plan, &replacement::cr3_read(&s, FIELD).unwrap(), SLOT).unwrap();
        let all = decode_all(&stub, Bitness::Bits64);
        assert_eq!(all.len(), 3);
        // mov r15, [rip+…] reads the field
        assert_eq!(all[0].op0_register(), Register::R15);
        assert!(all[0].is_ip_rel_memory_operand());
        assert_eq!(all[0].ip_rel_memory_address(), FIELD);
        // the displaced load still reads the same absolute address, from its new place
        assert_eq!(all[1].ip(), STUB + stub.offsets[0].unwrap() as u64);
        assert_ne!(all[1].ip(), plan.displaced[1].ip());
        assert_eq!(all[1].code(), plan.displaced[1].code());
        assert!(all[1].is_ip_rel_memory_operand());
        assert_eq!(all[1].ip_rel_memory_address(), target);
        check_jump_back(&stub, &plan);
        assert_eq!(stub.offsets.len(), 2);

        // and it runs: r15 = the field, rcx = the word at the target
        let mut cpu = Cpu::new(Bitness::Bits64);
        cpu.write(FIELD, 8, 0x1234_5000);
        cpu.write(target, 8, 0xfeed);
        cpu.writes.clear();
        run(&stub, &mut cpu, &[Register::R15, Register::RCX]);
        assert_eq!(cpu.get(Register::R15), 0x1234_5000);
        assert_eq!(cpu.get(Register::RCX), 0xfeed);
        assert!(cpu.hypercalls.is_empty());
    }

    #[test]
    fn rip_relative_out_of_reach_of_the_stub() {
        // mov rax, cr3 ; mov rcx, [rip-0x7fff0000]: with the stub 1.75 GiB above the site the
        // target is out of reach
        let code = [0x0f, 0x20, 0xd8, 0x48, 0x8b, 0x0d, 0x00, 0x00, 0x01, 0x80];
        let s = site(&code, Exit::ControlRegister);
        let stub_addr = SITE + 0x7000_0000;
        let plan = plan_patch(&s, stub_addr).unwrap();
        let r = build_stub(
            &plan,
            &replacement::cr3_read(&s, stub_addr + 0x100).unwrap(),
            SLOT,
        );
        assert!(matches!(r, Err(StubError::Encode(_))), "{r:?}");
        // the CR3 field itself out of reach
        let plan = plan_patch(&s, STUB).unwrap();
        let far = 0x0000_7fff_0000_0000;
        let r = build_stub(&plan, &replacement::cr3_read(&s, far).unwrap(), SLOT);
        assert!(matches!(r, Err(StubError::Encode(_))), "{r:?}");
    }

    #[test]
    fn eip_relative_follower() {
        // mov rax, cr3 ; mov ecx, [eip+0x100] (67 prefix): the address wraps at 4 GiB, and the
        // block encoder keeps it EIP-relative when the stub is placed below 4 GiB as well
        let code = [0x0f, 0x20, 0xd8, 0x67, 0x8b, 0x0d, 0x00, 0x01, 0x00, 0x00];
        let rip = 0x8010_0000;
        let s = classify(&code, rip, Exit::ControlRegister, Bitness::Bits64, false);
        let plan = plan_patch(&s, 0x8020_0000).unwrap();
        let target = plan.displaced[1].ip_rel_memory_address();
        assert_eq!(target, rip + 10 + 0x100);
        let stub = build_stub(&plan, &replacement::original(&s), SLOT).unwrap();
        let all = decode_all(&stub, Bitness::Bits64);
        assert!(all[1].is_ip_rel_memory_operand());
        assert_eq!(all[1].ip_rel_memory_address(), target);
        check_jump_back(&stub, &plan);
    }

    #[test]
    fn invlpg_stub_hypercall() {
        for (call, mnemonic) in [
            (HypercallInsn::Vmcall, Mnemonic::Vmcall),
            (HypercallInsn::Vmmcall, Mnemonic::Vmmcall),
        ] {
            // invlpg [rsp+rbx*2+0x10] (5) ; ret
            let code = [0x0f, 0x01, 0x7c, 0x5c, 0x10, 0xc3];
            let s = site(&code, Exit::Invlpg);
            let plan = plan_patch(&s, STUB).unwrap();
            let rep = replacement::invlpg(&s, call).unwrap();
            let stub = build_stub(&plan, &rep, SLOT).unwrap();
            check_jump_back(&stub, &plan);
            let all = decode_all(&stub, Bitness::Bits64);
            assert_eq!(all.iter().filter(|i| i.mnemonic() == mnemonic).count(), 1);
            let mut cpu = Cpu::new(Bitness::Bits64);
            let expect = cpu.get(Register::RSP) + 2 * cpu.get(Register::RBX) + 0x10;
            run(&stub, &mut cpu, &[]);
            assert_eq!(
                cpu.hypercalls,
                [[
                    abi::vm::hypercall::INVLPG,
                    expect,
                    cpu.get(Register::RCX),
                    cpu.get(Register::RDX)
                ]]
            );
        }
    }

    /// Classify `code` as a page-table write, build its stub, run it; the hypercall's (address,
    /// value, width) must be what the store would have written, and nothing else may change.
    fn pte_write(code: &[u8], bits: Bitness, cpu_setup: impl Fn(&mut Cpu)) -> (u64, u64, u64) {
        let rip = match bits {
            Bitness::Bits64 => SITE,
            Bitness::Bits32 => 0xc010_0100,
        };
        let stub_addr = match bits {
            Bitness::Bits64 => STUB,
            Bitness::Bits32 => 0xc020_0000,
        };
        // pad with harmless two-byte moves so every form can be planned
        let mut padded = code.to_vec();
        padded.extend_from_slice(&[0x89, 0xc0, 0x89, 0xc0, 0x89, 0xc0]);
        let s = classify(&padded, rip, Exit::PageFault, bits, true);
        let SiteKind::PageTableWrite { .. } = s.kind else {
            panic!("{code:02x?}: {:?}", s.kind)
        };
        let plan = plan_patch(&s, stub_addr).unwrap();
        let rep = replacement::page_table_write(&s, HypercallInsn::Vmcall).unwrap();
        let stub = build_stub(&plan, &rep, SLOT).unwrap();
        check_jump_back(&stub, &plan);

        // what the store does, on a copy of the CPU
        let mut cpu = Cpu::new(bits);
        cpu_setup(&mut cpu);
        let mut reference = cpu.clone();
        let mut hot = Vec::from(&code[..s.instruction.len()]);
        hot.extend_from_slice(&[0xe9, 0, 0, 0, 0]); // jmp to just after
        reference.run(&hot, rip);
        let &(addr, len) = reference.writes.last().unwrap();
        let value = reference.read(addr, len);

        // the displaced followers are `mov eax, eax`, which clear RAX's top half
        let changed = [Register::RAX, Register::EAX];
        run(&stub, &mut cpu, &changed);
        assert_eq!(cpu.hypercalls.len(), 1);
        let [n, a, v, w] = cpu.hypercalls[0];
        assert_eq!(n, abi::vm::hypercall::PTE_WRITE);
        assert_eq!((a, v, w), (addr, value, len as u64), "{code:02x?}");
        (a, v, w)
    }

    #[test]
    fn page_table_write_stubs_64() {
        let b = Bitness::Bits64;
        let none = |_: &mut Cpu| {};
        // mov [rdi], rax
        pte_write(&[0x48, 0x89, 0x07], b, none);
        // mov [rbx+rcx*8], rbx: the address register is also the value
        pte_write(&[0x48, 0x89, 0x1c, 0xcb], b, none);
        // mov [rax+rbx], rax ; mov [rdx], rdx ; mov [rcx], rcx
        pte_write(&[0x48, 0x89, 0x04, 0x18], b, none);
        pte_write(&[0x48, 0x89, 0x12], b, none);
        pte_write(&[0x48, 0x89, 0x09], b, none);
        // mov [r8+r12*8-8], rdx
        pte_write(&[0x4b, 0x89, 0x54, 0xe0, 0xf8], b, none);
        // mov [rsp+8], rsp ; mov [rsp], rax ; mov [rsp+rsi*4], ebx
        pte_write(&[0x48, 0x89, 0x64, 0x24, 0x08], b, none);
        pte_write(&[0x48, 0x89, 0x04, 0x24], b, none);
        pte_write(&[0x89, 0x1c, 0xb4], b, none);
        // mov dword [rdi+4], esp ; mov word [rdi], sp ; mov byte [rdi], spl
        pte_write(&[0x89, 0x67, 0x04], b, none);
        pte_write(&[0x66, 0x89, 0x27], b, none);
        pte_write(&[0x40, 0x88, 0x27], b, none);
        // mov byte [rdi], bh ; mov byte [rdi], bl ; mov byte [rdi], ah ; mov word [rsi], bx
        pte_write(&[0x88, 0x3f], b, none);
        pte_write(&[0x88, 0x1f], b, none);
        pte_write(&[0x88, 0x27], b, none);
        pte_write(&[0x66, 0x89, 0x1e], b, none);
        // immediates: qword 0, qword -1, word 0x1234, byte 0x80
        assert_eq!(pte_write(&[0x48, 0xc7, 0x07, 0, 0, 0, 0], b, none).1, 0);
        assert_eq!(
            pte_write(&[0x48, 0xc7, 0x07, 0xff, 0xff, 0xff, 0xff], b, none).1,
            u64::MAX
        );
        assert_eq!(
            pte_write(&[0x66, 0xc7, 0x07, 0x34, 0x12], b, none).1,
            0x1234
        );
        assert_eq!(pte_write(&[0xc6, 0x07, 0x80], b, none).1, 0x80);
        // mov [rip+0x100], rax: the stub's lea is RIP-relative and relocated
        let (a, _, _) = pte_write(&[0x48, 0x89, 0x05, 0, 1, 0, 0], b, none);
        assert_eq!(a, SITE + 7 + 0x100);
        // mov [moffs64], rax ; mov [disp32], rcx (sign-extended) ; mov [eax+8], ecx (67)
        pte_write(&[0x48, 0xa3, 8, 7, 6, 5, 4, 3, 2, 1], b, none);
        let (a, _, _) = pte_write(&[0x48, 0x89, 0x0c, 0x25, 0, 0x10, 0, 0x80], b, none);
        assert_eq!(a, 0xffff_ffff_8000_1000);
        pte_write(&[0x67, 0x89, 0x48, 0x08], b, |c| {
            c.set(Register::RAX, 0xffff_fff0)
        });
        // movnti [rdi], rbx
        pte_write(&[0x48, 0x0f, 0xc3, 0x1f], b, none);
    }

    #[test]
    fn page_table_write_stubs_32() {
        let b = Bitness::Bits32;
        let none = |_: &mut Cpu| {};
        // mov [eax], edx ; mov [ebx+ecx*4+0x10], ebx ; mov [esp+4], ecx ; mov [esp], esp
        pte_write(&[0x89, 0x10], b, none);
        pte_write(&[0x89, 0x5c, 0x8b, 0x10], b, none);
        pte_write(&[0x89, 0x4c, 0x24, 0x04], b, none);
        pte_write(&[0x89, 0x24, 0x24], b, none);
        // mov [0xc0001000], eax ; mov byte [edi], bh ; mov word [edi], 0xabcd
        pte_write(&[0xa3, 0x00, 0x10, 0x00, 0xc0], b, none);
        pte_write(&[0x88, 0x3f], b, none);
        pte_write(&[0x66, 0xc7, 0x07, 0xcd, 0xab], b, none);
    }

    #[test]
    fn flush_queue_preserves_everything() {
        for bits in [Bitness::Bits64, Bitness::Bits32] {
            let (rip, stub_addr) = match bits {
                Bitness::Bits64 => (SITE, STUB),
                Bitness::Bits32 => (0xc010_0100, 0xc020_0000),
            };
            // invlpg [eax/rax] ; mov eax, eax ; mov eax, eax
            let s = classify(
                &[0x0f, 0x01, 0x38, 0x89, 0xc0],
                rip,
                Exit::Invlpg,
                bits,
                false,
            );
            let plan = plan_patch(&s, stub_addr).unwrap();
            let mut rep = replacement::invlpg(&s, HypercallInsn::Vmmcall).unwrap();
            rep.extend(replacement::flush_queue(bits, HypercallInsn::Vmmcall).unwrap());
            let stub = build_stub(&plan, &rep, SLOT).unwrap();
            let mut cpu = Cpu::new(bits);
            let rax = cpu.get(Register::RAX);
            run(&stub, &mut cpu, &[Register::RAX, Register::EAX]);
            let numbers: Vec<u64> = cpu.hypercalls.iter().map(|h| h[0]).collect();
            assert_eq!(
                numbers,
                [abi::vm::hypercall::INVLPG, abi::vm::hypercall::QUEUE]
            );
            let width = match bits {
                Bitness::Bits64 => rax,
                Bitness::Bits32 => rax as u32 as u64,
            };
            assert_eq!(cpu.hypercalls[0][1], width);
        }
    }

    #[test]
    fn original_instruction_moved_and_slot_limit() {
        // out dx, al ; mov eax, ecx ; mov edx, ebx: the out runs in the stub
        let code = [0xee, 0x89, 0xc8, 0x89, 0xda];
        let s = site(&code, Exit::Io);
        let plan = plan_patch(&s, STUB).unwrap();
        let stub = build_stub(&plan, &replacement::original(&s), SLOT).unwrap();
        let all = decode_all(&stub, Bitness::Bits64);
        let codes: Vec<_> = all.iter().map(|i| i.code()).collect();
        let expect: Vec<_> = plan.displaced.iter().map(|i| i.code()).collect();
        assert_eq!(&codes[..3], &expect[..]);
        check_jump_back(&stub, &plan);
        let len = stub.code.len();
        assert_eq!(
            build_stub(&plan, &replacement::original(&s), len - 1),
            Err(StubError::TooLong { len, slot: len - 1 })
        );
        // an empty replacement drops the hot instruction
        let stub = build_stub(&plan, &[], SLOT).unwrap();
        assert_eq!(decode_all(&stub, Bitness::Bits64).len(), 3);
    }

    #[test]
    fn replacement_refusals() {
        // mov gs:[rax], rbx: the segment base is unknown to lea
        let s = site(&[0x65, 0x48, 0x89, 0x18, 0x89, 0xc0], Exit::PageFault);
        assert_eq!(
            replacement::page_table_write(&s, HypercallInsn::Vmcall),
            Err(ReplacementError::SegmentBase)
        );
        // but DS/SS overrides are fine in 64-bit code
        let s = site(&[0x3e, 0x48, 0x89, 0x18, 0x89, 0xc0], Exit::PageFault);
        assert!(replacement::page_table_write(&s, HypercallInsn::Vmcall).is_ok());
        // wrong kinds
        assert_eq!(
            replacement::invlpg(&s, HypercallInsn::Vmcall),
            Err(ReplacementError::WrongKind)
        );
        assert_eq!(
            replacement::cr3_read(&s, FIELD),
            Err(ReplacementError::WrongKind)
        );
        let inv = site(&[0x0f, 0x01, 0x38, 0x89, 0xc0], Exit::Invlpg);
        assert_eq!(
            replacement::page_table_write(&inv, HypercallInsn::Vmcall),
            Err(ReplacementError::WrongKind)
        );
        // a CR3 field above 4 GiB for 32-bit code
        let s32 = classify(
            &[0x0f, 0x20, 0xd8],
            0x1000,
            Exit::ControlRegister,
            Bitness::Bits32,
            false,
        );
        assert_eq!(
            replacement::cr3_read(&s32, 1 << 32),
            Err(ReplacementError::OutOfRange)
        );
        assert!(replacement::cr3_read(&s32, 0xc000_0000).is_ok());
        // [rsp + disp32] whose adjustment for the stub's pushes overflows the displacement
        let s = site(
            &[0x48, 0x89, 0x84, 0x24, 0xff, 0xff, 0xff, 0x7f],
            Exit::PageFault,
        );
        assert_eq!(
            replacement::page_table_write(&s, HypercallInsn::Vmcall),
            Err(ReplacementError::OutOfRange)
        );
    }
}
