//! Deterministic fuzzing: hostile code bytes, reasons, addresses and stub slots through the whole
//! pipeline never panic, and whatever it accepts keeps its invariants.

use abi::vm::Exit;
use alloc::vec::Vec;
use iced_x86::{
    Code, Decoder, DecoderOptions, Encoder, Instruction, MemoryOperand, Mnemonic, Register,
};

use crate::classify::{classify, Bitness, SiteKind};
use crate::plan::{plan_patch, PatchPlan, JMP_REL32_LEN, MAX_PATCH_LEN, PAGE_SIZE};
use crate::replacement::{self, HypercallInsn};
use crate::stub::build_stub;

/// xorshift64*: the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Bytes that make the decoder take interesting paths: prefixes, REX, ModRM forms, the opcodes
/// DMP classifies, branches and padding.
const INTERESTING: &[u8] = &[
    0x0f, 0x01, 0x20, 0x22, 0x38, 0x3f, 0x7c, 0x48, 0x4c, 0x41, 0x66, 0x67, 0xf0, 0xf3, 0x64, 0x65,
    0x89, 0x88, 0x8b, 0xc7, 0xc6, 0xa3, 0xe4, 0xe5, 0xec, 0xee, 0xef, 0x05, 0x04, 0x24, 0x25, 0xd8,
    0xe9, 0xeb, 0xc3, 0xcc, 0x90, 0x1f, 0xe8, 0x74, 0xff, 0x00,
];

fn check_plan(plan: &PatchPlan, code: &[u8]) {
    assert!(plan.covered >= JMP_REL32_LEN && plan.covered <= MAX_PATCH_LEN);
    assert_eq!(plan.expected, &code[..plan.covered]);
    assert_eq!(plan.new.len(), plan.covered);
    assert!(plan.site % PAGE_SIZE + plan.covered as u64 <= PAGE_SIZE);
    let total: usize = plan.displaced.iter().map(|i| i.len()).sum();
    assert_eq!(total, plan.covered);
    let jmp = Decoder::with_ip(
        plan.bitness.bits(),
        &plan.new,
        plan.site,
        DecoderOptions::NONE,
    )
    .decode();
    assert_eq!(jmp.mnemonic(), Mnemonic::Jmp);
    assert_eq!(jmp.near_branch_target(), plan.stub);
}

#[test]
fn hostile_sites_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut patchable, mut planned, mut stubs) = (0, 0, 0);
    for _ in 0..200_000 {
        let len = rng.below(40) as usize;
        let interesting = rng.below(4) != 0;
        let code: Vec<u8> = (0..len)
            .map(|_| {
                if interesting && rng.below(3) != 0 {
                    rng.pick(INTERESTING)
                } else {
                    rng.next() as u8
                }
            })
            .collect();
        let reason = Exit::from_u64(rng.below(20)).unwrap_or(Exit::PageFault);
        let reason = if rng.below(2) == 0 {
            rng.pick(&[
                Exit::PageFault,
                Exit::ControlRegister,
                Exit::Invlpg,
                Exit::Io,
            ])
        } else {
            reason
        };
        let bitness = rng.pick(&[Bitness::Bits32, Bitness::Bits64]);
        let rip = match rng.below(4) {
            0 => rng.next(),
            1 => (rng.next() & !0xfff) | (0xfff - rng.below(16)),
            2 => u64::MAX - rng.below(64),
            _ => rng.next() & 0xffff_ffff,
        };
        let stub = match rng.below(4) {
            0 => rng.next(),
            1 => rip.wrapping_add(rng.below(64)),
            _ => rip
                .wrapping_add(rng.next() & 0x7fff_ffff)
                .wrapping_sub(0x4000_0000),
        };
        let site = classify(&code, rip, reason, bitness, rng.below(2) == 0);
        if !site.is_patchable() {
            assert!(plan_patch(&site, stub).is_err());
            continue;
        }
        patchable += 1;
        let Ok(plan) = plan_patch(&site, stub) else {
            continue;
        };
        planned += 1;
        check_plan(&plan, &site.code);
        let call = rng.pick(&[HypercallInsn::Vmcall, HypercallInsn::Vmmcall]);
        let replacements = [
            Ok(replacement::original(&site)),
            replacement::cr3_read(&site, rng.next()),
            replacement::cr3_read(&site, stub.wrapping_add(0x1000)),
            replacement::invlpg(&site, call),
            replacement::page_table_write(&site, call),
            replacement::flush_queue(bitness, call),
        ];
        for rep in replacements.into_iter().flatten() {
            let slot = rng.pick(&[0, 16, 64, 512]);
            if let Ok(stub) = build_stub(&plan, &rep, slot) {
                stubs += 1;
                assert!(stub.code.len() <= slot);
                let all: Vec<Instruction> = Decoder::with_ip(
                    bitness.bits(),
                    &stub.code,
                    stub.address,
                    DecoderOptions::NONE,
                )
                .into_iter()
                .collect();
                assert!(all.iter().all(|i| !i.is_invalid()));
                let last = all.last().unwrap();
                // a jump back, direct or (out of rel32 reach) through a constant
                assert!(
                    last.mnemonic() == Mnemonic::Jmp || stub.offsets.last() == Some(&None),
                    "{last:?}"
                );
                if last.mnemonic() == Mnemonic::Jmp && last.op0_kind() != iced_x86::OpKind::Memory {
                    assert_eq!(last.near_branch_target(), plan.resume());
                }
            }
        }
    }
    std::println!("fuzz: {patchable} patchable, {planned} planned, {stubs} stubs");
    // the generator reaches every stage
    assert!(patchable > 5000, "{patchable}");
    assert!(planned > 1500, "{planned}");
    assert!(stubs > 1500, "{stubs}");
}

/// Random `mov [base+index*scale+disp], src` page-table writes, encoded with iced-x86, must
/// make the stub hand the hypervisor exactly the address, value and width the store uses.
#[test]
fn random_page_table_stores_round_trip() {
    use crate::testcpu::Cpu;
    let gprs64 = [
        Register::RAX,
        Register::RCX,
        Register::RDX,
        Register::RBX,
        Register::RSP,
        Register::RBP,
        Register::RSI,
        Register::RDI,
        Register::R8,
        Register::R11,
        Register::R15,
    ];
    let gprs16 = [
        Register::AX,
        Register::CX,
        Register::DX,
        Register::BX,
        Register::SP,
        Register::BP,
        Register::SI,
        Register::DI,
        Register::R8W,
        Register::R11W,
        Register::R15W,
    ];
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let site_rip = 0xffff_ffff_8100_0100;
    let stub_addr = 0xffff_ffff_8200_0000;
    let mut checked = 0;
    for _ in 0..3000 {
        let base = rng.pick(&gprs64);
        let index = rng.pick(&gprs64);
        let index = if index == Register::RSP {
            Register::None
        } else {
            index
        };
        let scale = rng.pick(&[1u32, 2, 4, 8]);
        let disp = rng.pick(&[0i64, 8, -8, 0x7f, 0x1000, -0x1000, 0x7fff_0000]);
        let mem = MemoryOperand::new(base, index, scale, disp, 1, false, Register::None);
        let src = rng.pick(&gprs64);
        let (code, src) = match rng.below(5) {
            0 => (Code::Mov_rm64_r64, src),
            1 => (Code::Mov_rm32_r32, src.full_register32()),
            2 => (
                Code::Mov_rm16_r16,
                gprs16[gprs64.iter().position(|&r| r == src).unwrap()],
            ),
            3 => (
                Code::Mov_rm8_r8,
                rng.pick(&[
                    Register::AL,
                    Register::BH,
                    Register::CL,
                    Register::AH,
                    Register::DIL,
                ]),
            ),
            _ => (Code::Mov_rm64_imm32, Register::None),
        };
        let insn = if src == Register::None {
            Instruction::with2(code, mem, rng.next() as u32 as i32).unwrap()
        } else {
            Instruction::with2(code, mem, src).unwrap()
        };
        let mut enc = Encoder::new(64);
        let Ok(_) = enc.encode(&insn, site_rip) else {
            continue;
        };
        let mut bytes = enc.take_buffer();
        bytes.extend_from_slice(&[0x89, 0xc0, 0x89, 0xc0, 0x89, 0xc0]);
        let site = classify(&bytes, site_rip, Exit::PageFault, Bitness::Bits64, true);
        assert!(
            matches!(site.kind, SiteKind::PageTableWrite { .. }),
            "{bytes:02x?}"
        );
        let plan = plan_patch(&site, stub_addr).unwrap();
        let Ok(rep) = replacement::page_table_write(&site, HypercallInsn::Vmcall) else {
            // only an RSP displacement pushed beyond ±2 GiB is refused
            assert_eq!(base, Register::RSP);
            continue;
        };
        let stub = build_stub(&plan, &rep, 256).unwrap();

        let mut cpu = Cpu::new(Bitness::Bits64);
        let mut reference = cpu.clone();
        let mut hot = bytes[..site.instruction.len()].to_vec();
        hot.extend_from_slice(&[0xe9, 0, 0, 0, 0]);
        reference.run(&hot, site_rip);
        let &(addr, len) = reference.writes.last().unwrap();
        let value = reference.read(addr, len);

        let before = cpu.clone();
        assert_eq!(cpu.run(&stub.code, stub.address), plan.resume());
        assert_eq!(
            cpu.hypercalls,
            [[abi::vm::hypercall::PTE_WRITE, addr, value, len as u64]],
            "{bytes:02x?}"
        );
        // RAX's top half is cleared by the displaced `mov eax, eax`; the rest is restored
        assert_eq!(&cpu.gpr[1..], &before.gpr[1..]);
        assert_eq!(cpu.rflags, before.rflags);
        checked += 1;
    }
    assert!(checked > 2000, "{checked}");
}
