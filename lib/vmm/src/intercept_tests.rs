use alloc::vec;
use alloc::vec::Vec;

use abi::vm::{mtd, other, segment, word, Segment};

use super::*;
use crate::dmp::NoMemory;
use crate::state::{Seg, VcpuState};

const RIP: u64 = 0x10_0000;

/// A 64-bit ring-0 state (CR0.PE/PG, CR4.PAE, EFER.LME/LMA, CS.L) at `RIP`.
fn long_state() -> VcpuState {
    let mut s = VcpuState::default();
    s.set(word::CR0, 0x8000_0011);
    s.set(word::CR4, 0x20);
    s.set(word::EFER, 0x500);
    s.set_rip(RIP);
    s.set_segment(
        Segment::Cs,
        Seg::new(8, 0x9b | segment::LONG | segment::PRESENT, 0xffff_ffff, 0),
    );
    s.set_segment(Segment::Ss, Seg::new(0x10, 0x93, 0xffff_ffff, 0));
    s
}

/// An exit of `kind` for register `reg` with the operands known (as VMX reports them).
fn exit(kind: u64, reg: u8, write: bool, gpr: u8, value: u64) -> VcpuState {
    let mut s = long_state();
    s.set(word::QUAL0, kind);
    s.set(word::QUAL1, other::MovAccess::new(reg, write, Some(gpr)).0);
    s.set(word::INSTRUCTION_LEN, 3);
    s.set(word::GPRS + usize::from(gpr), value);
    s
}

/// The host: every feature bit set, so that the filter decides.
fn host(_leaf: u32, _subleaf: u32) -> [u32; 4] {
    [0, u32::MAX, u32::MAX, u32::MAX]
}

fn run(i: &mut Intercepts, msg: &VcpuState) -> Effect {
    i.handle(msg, &mut host, &mut NoMemory)
}

fn dr_write(i: &mut Intercepts, dr: u8, value: u64) -> Effect {
    run(i, &exit(other::DEBUG_REGISTER, dr, true, 1, value))
}

fn dr_read(i: &mut Intercepts, dr: u8) -> Result<u64, (u8, Option<u32>)> {
    let e = run(i, &exit(other::DEBUG_REGISTER, dr, false, 2, 0xdead));
    match e.fault {
        Some(f) => Err(f),
        None => {
            assert_eq!(e.mask, mtd::GPRS | mtd::RIP);
            assert_eq!(e.reply.rip(), RIP + 3);
            Ok(e.reply.get(word::GPRS + 2))
        }
    }
}

#[test]
fn debug_registers_read_back_what_was_written() {
    let mut i = Intercepts::new();
    for dr in 0..4 {
        let e = dr_write(&mut i, dr, 0xffff_8000_0000_1000 + u64::from(dr));
        assert_eq!((e.fault, e.mask), (None, mtd::RIP));
        assert_eq!(e.reply.rip(), RIP + 3);
    }
    for dr in 0..4 {
        assert_eq!(
            dr_read(&mut i, dr),
            Ok(0xffff_8000_0000_1000 + u64::from(dr))
        );
    }
    assert_eq!(dr_read(&mut i, 6), Ok(0xffff_0ff0));
    assert_eq!(dr_read(&mut i, 7), Ok(0x400));
}

#[test]
fn dr6_and_dr7_keep_their_fixed_bits() {
    let mut i = Intercepts::new();
    assert_eq!(dr_write(&mut i, 6, 0).fault, None);
    assert_eq!(dr_read(&mut i, 6), Ok(0xffff_0ff0));
    assert_eq!(dr_write(&mut i, 6, 0xffff_ffff).fault, None);
    assert_eq!(dr_read(&mut i, 6), Ok(0xffff_efff));
    // Every bit but GD (which would make the read raise #DB): bits 11, 12, 14, 15 stay 0.
    assert_eq!(dr_write(&mut i, 7, 0xffff_ffff & !DR7_GD).fault, None);
    assert_eq!(dr_read(&mut i, 7), Ok(0xffff_0fff));
    assert_eq!(dr_write(&mut i, 7, 1).fault, None);
    assert_eq!(dr_read(&mut i, 7), Ok(0x401));
}

#[test]
fn high_bits_of_dr6_and_dr7_raise_gp() {
    let mut i = Intercepts::new();
    for dr in [6, 7, 4, 5] {
        let e = dr_write(&mut i, dr, 1 << 32);
        assert_eq!(e.fault, Some((13, Some(0))), "DR{dr}");
        assert_eq!(e.mask & mtd::RIP, 0);
    }
    assert_eq!(dr_read(&mut i, 7), Ok(0x400));
}

#[test]
fn dr4_and_dr5_alias_dr6_and_dr7_unless_cr4_de() {
    let mut i = Intercepts::new();
    assert_eq!(dr_write(&mut i, 5, 0x3).fault, None);
    assert_eq!(dr_read(&mut i, 7), Ok(0x403));
    assert_eq!(dr_read(&mut i, 4), Ok(0xffff_0ff0));
    for dr in [4, 5] {
        let mut msg = exit(other::DEBUG_REGISTER, dr, false, 0, 0);
        msg.set(word::CR4, 0x20 | CR4_DE);
        assert_eq!(run(&mut i, &msg).fault, Some((6, None)));
    }
}

#[test]
fn mov_dr_outside_ring_0_raises_gp_and_gd_raises_db() {
    let mut i = Intercepts::new();
    let mut msg = exit(other::DEBUG_REGISTER, 0, true, 0, 5);
    msg.set_segment(Segment::Ss, Seg::new(0x23, 0x93 | 3 << 5, 0xffff_ffff, 0));
    assert_eq!(run(&mut i, &msg).fault, Some((13, Some(0))));
    assert_eq!(dr_read(&mut i, 0), Ok(0));
    // General detect: the next access raises #DB with DR6.BD and clears GD.
    assert_eq!(dr_write(&mut i, 7, 0x400 | DR7_GD).fault, None);
    assert_eq!(dr_write(&mut i, 0, 1).fault, Some((1, None)));
    assert_eq!(dr_read(&mut i, 6), Ok(0xffff_0ff0 | DR6_BD));
    assert_eq!(dr_read(&mut i, 7), Ok(0x400));
}

#[test]
fn outside_64_bit_mode_values_are_32_bits() {
    let mut i = Intercepts::new();
    let mut msg = exit(other::DEBUG_REGISTER, 0, true, 0, 0x1234_5678_9abc_def0);
    msg.set_segment(Segment::Cs, Seg::new(8, 0x9b | segment::DB, 0xffff_ffff, 0));
    assert_eq!(run(&mut i, &msg).fault, None);
    assert_eq!(dr_read(&mut i, 0), Ok(0x9abc_def0));
}

fn cr_write(i: &mut Intercepts, cr: u8, value: u64, state: &VcpuState) -> Effect {
    let mut msg = exit(other::CONTROL_REGISTER, cr, true, 3, value);
    for w in [word::CR0, word::CR3, word::CR4, word::EFER] {
        msg.set(w, state.get(w));
    }
    run(i, &msg)
}

#[test]
fn cr4_bits_of_unoffered_features_and_reserved_bits_raise_gp() {
    let mut i = Intercepts::new();
    let s = long_state();
    // VMXE, SMXE, PCIDE, PKE, LA57 (hidden by the CPUID filter), bit 31, bit 32.
    for bit in [13, 14, 17, 22, 12, 31, 32] {
        let e = cr_write(&mut i, 4, 0x20 | 1 << bit, &s);
        assert_eq!(e.fault, Some((13, Some(0))), "CR4 bit {bit}");
        assert_eq!(e.mask, 0);
    }
    // OSXSAVE: XSAVE is offered (the host has it).
    assert_eq!(cr_write(&mut i, 4, 0x20 | 1 << 18, &s).fault, None);
    // PAE may not be cleared in long mode.
    assert_eq!(cr_write(&mut i, 4, 0, &s).fault, Some((13, Some(0))));
    // Offered bits are written, with RIP past the instruction.
    let e = cr_write(&mut i, 4, 0x20 | 0x600 | 1 << 20 | 1 << 16 | 1 << 3, &s);
    assert_eq!(e.fault, None);
    assert_eq!(e.mask, mtd::CONTROL | mtd::RIP);
    assert_eq!(
        e.reply.get(word::CR4),
        0x20 | 0x600 | 1 << 20 | 1 << 16 | 1 << 3
    );
    assert_eq!(e.reply.rip(), RIP + 3);
}

#[test]
fn cr4_allowed_follows_cpuid() {
    let none = cr4_allowed([0; 4], [0; 4]);
    assert_eq!(none, 0x7ff);
    let all = cr4_allowed([0, 0, u32::MAX, 0], [0, u32::MAX, u32::MAX, 0]);
    assert_eq!(all & (1 << 14), 0, "SMXE is never offered");
    assert_ne!(all & (1 << 18), 0);
}

#[test]
fn cr0_reserved_and_inconsistent_values_raise_gp() {
    let mut i = Intercepts::new();
    let s = long_state();
    for value in [
        0x8000_0011 | 1 << 32, // reserved high bit
        0x8000_0011 | CR0_NW,  // NW without CD
        0x11,                  // paging off in 64-bit mode
        CR0_PG | 0x10,         // PG without PE
    ] {
        assert_eq!(
            cr_write(&mut i, 0, value, &s).fault,
            Some((13, Some(0))),
            "{value:#x}"
        );
    }
    // Clearing NE (which VMX fixes to 1) is the guest's right.
    let e = cr_write(&mut i, 0, 0x8000_0011 & !(1 << 5), &s);
    assert_eq!(e.fault, None);
    assert_eq!(e.reply.get(word::CR0), 0x8000_0011);
    // CD and NW together are fine.
    let e = cr_write(&mut i, 0, 0x8000_0011 | CR0_CD | CR0_NW, &s);
    assert_eq!(e.fault, None);
}

#[test]
fn cr0_paging_on_with_lme_sets_lma() {
    let mut i = Intercepts::new();
    let mut s = long_state();
    s.set(word::CR0, 0x11);
    s.set(word::EFER, EFER_LME);
    let mut msg = exit(other::CONTROL_REGISTER, 0, true, 3, 0x8000_0011);
    for w in [word::CR0, word::CR4, word::EFER] {
        msg.set(w, s.get(w));
    }
    msg.set_segment(Segment::Cs, Seg::new(8, 0x9b | segment::DB, 0xffff_ffff, 0));
    let e = run(&mut i, &msg);
    assert_eq!(e.fault, None);
    assert_eq!(e.reply.get(word::EFER), EFER_LME | EFER_LMA);
    msg.set(word::CR4, 0);
    assert_eq!(run(&mut i, &msg).fault, Some((13, Some(0))));
}

#[test]
fn cr8_keeps_the_task_priority() {
    let mut i = Intercepts::new();
    let s = long_state();
    assert_eq!(cr_write(&mut i, 8, 0x10, &s).fault, Some((13, Some(0))));
    assert_eq!(cr_write(&mut i, 8, 0x9, &s).fault, None);
    let e = run(&mut i, &exit(other::CONTROL_REGISTER, 8, false, 5, 0));
    assert_eq!(e.reply.get(word::GPRS + 5), 9);
}

#[test]
fn mov_is_decoded_like_the_cpu() {
    // mov dr7, rax
    assert_eq!(
        decode_mov(&[0x0f, 0x23, 0xf8], true),
        Some(MovInsn {
            debug: true,
            reg: 7,
            write: true,
            gpr: 0,
            len: 3
        })
    );
    // mov r10, dr0
    assert_eq!(
        decode_mov(&[0x41, 0x0f, 0x21, 0xc2], true),
        Some(MovInsn {
            debug: true,
            reg: 0,
            write: false,
            gpr: 10,
            len: 4
        })
    );
    // mov cr8, rax (REX.R) and AMD's lock mov cr0, eax
    assert_eq!(
        decode_mov(&[0x44, 0x0f, 0x22, 0xc0], true).map(|m| m.reg),
        Some(8)
    );
    assert_eq!(
        decode_mov(&[0xf0, 0x0f, 0x22, 0xc0], false).map(|m| m.reg),
        Some(8)
    );
    // REX is not a prefix outside 64-bit mode; other opcodes are not decoded.
    assert_eq!(decode_mov(&[0x41, 0x0f, 0x21, 0xc2], false), None);
    assert_eq!(decode_mov(&[0x0f, 0x01, 0xd1], true), None);
    assert_eq!(decode_mov(&[0x0f, 0x23], true), None);
    assert_eq!(decode_mov(&[0x66; 15], true), None);
}

/// Identity-mapped long-mode tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD, 2 MiB pages
/// for the first 4 MiB), in 4 MiB of RAM.
fn long_mode_ram() -> Vec<u8> {
    let mut ram = vec![0u8; 4 << 20];
    let mut put = |at: usize, v: u64| ram[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put(0x1000, 0x2003);
    put(0x2000, 0x3003);
    put(0x3000, 0x83);
    put(0x3008, 0x20_0083);
    ram
}

#[test]
fn without_the_hardware_s_operands_the_instruction_is_decoded_through_the_guest_tables() {
    let mut ram = long_mode_ram();
    // mov r9, dr6 at RIP (0x10_0000, in the first 2 MiB page)
    ram[RIP as usize..RIP as usize + 4].copy_from_slice(&[0x49, 0x0f, 0x21, 0xf1]);
    let mut msg = long_state();
    msg.set(word::CR3, 0x1000);
    msg.set(word::QUAL0, other::DEBUG_REGISTER);
    msg.set(word::QUAL1, other::MovAccess::new(6, false, None).0);
    let mut i = Intercepts::new();
    let e = i.handle(&msg, &mut host, &mut ram);
    assert_eq!(e.fault, None);
    assert_eq!(e.reply.get(word::GPRS + 9), 0xffff_0ff0);
    assert_eq!(e.reply.rip(), RIP + 4);
    // The kernel's words and the bytes disagree (the guest changed the code): #UD, logged.
    msg.set(word::QUAL1, other::MovAccess::new(7, false, None).0);
    let e = i.handle(&msg, &mut host, &mut ram);
    assert_eq!(e.fault, Some((6, None)));
    assert!(e.log.is_some());
    // Not mapped: nothing to decode.
    msg.set_rip(0x40_0000);
    assert_eq!(i.handle(&msg, &mut host, &mut ram).fault, Some((6, None)));
}

#[test]
fn translation_of_each_paging_mode() {
    let mut ram = long_mode_ram();
    assert_eq!(
        translate(&mut ram, 0x11, 0, 0, 0, 0x1_2345_6789),
        Some(0x2345_6789)
    );
    assert_eq!(
        translate(&mut ram, 0x8000_0011, 0x1000, 0x20, 0x500, 0x20_1234),
        Some(0x20_1234)
    );
    assert_eq!(
        translate(&mut ram, 0x8000_0011, 0x1000, 0x20, 0x500, 0x40_0000),
        None
    );
    // 32-bit paging with a 4 MiB page at 0 (CR4.PSE).
    ram[0x5000..0x5004].copy_from_slice(&0x83u32.to_le_bytes());
    assert_eq!(
        translate(&mut ram, 0x8000_0011, 0x5000, 0x10, 0, 0x12_3456),
        Some(0x12_3456)
    );
    // Tables outside RAM.
    assert_eq!(
        translate(&mut ram, 0x8000_0011, 0x1000_0000, 0x20, 0x500, 0),
        None
    );
}

#[test]
fn invd_is_a_no_op_and_unoffered_instructions_raise_ud() {
    let mut i = Intercepts::new();
    let mut msg = long_state();
    msg.set(word::QUAL0, other::INVD);
    let e = run(&mut i, &msg);
    assert_eq!((e.fault, e.mask, e.reply.rip()), (None, mtd::RIP, RIP + 2));
    for kind in [other::RDTSCP, other::UNKNOWN] {
        msg.set(word::QUAL0, kind);
        let e = run(&mut i, &msg);
        assert_eq!(e.fault, Some((6, None)));
        assert!(e.log.is_some());
    }
}

#[test]
fn any_message_is_handled_without_panic() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut ram = long_mode_ram();
    let mut i = Intercepts::new();
    for _ in 0..5_000 {
        let mut msg = VcpuState::default();
        for w in msg.words.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *w = x;
        }
        msg.set(word::QUAL0, x % 8);
        let _ = i.handle(&msg, &mut host, &mut ram);
    }
}

#[test]
fn clts_and_lmsw_are_what_svm_s_cr0_intercept_also_catches() {
    assert_eq!(decode_clts_lmsw(&[0x0f, 0x06], true), Some((None, 2)));
    // lmsw ax, lmsw r9w
    assert_eq!(
        decode_clts_lmsw(&[0x0f, 0x01, 0xf0], true),
        Some((Some(0), 3))
    );
    assert_eq!(
        decode_clts_lmsw(&[0x41, 0x0f, 0x01, 0xf1], true),
        Some((Some(9), 4))
    );
    // lmsw [rax] and smsw are not decoded.
    assert_eq!(decode_clts_lmsw(&[0x0f, 0x01, 0x30], true), None);
    assert_eq!(decode_clts_lmsw(&[0x0f, 0x01, 0xe0], true), None);
    let mut ram = long_mode_ram();
    ram[RIP as usize..RIP as usize + 3].copy_from_slice(&[0x0f, 0x01, 0xf0]);
    let mut msg = long_state();
    msg.set(word::CR3, 0x1000);
    msg.set(word::CR0, 0x8000_0011 | 1 << 3);
    msg.set(word::QUAL0, other::CONTROL_REGISTER);
    msg.set(word::QUAL1, other::MovAccess::new(0, true, None).0);
    // LMSW with 0xe: sets MP, EM, TS; PE stays set.
    msg.set(word::GPRS, 0xe);
    let e = Intercepts::new().handle(&msg, &mut host, &mut ram);
    assert_eq!(e.fault, None);
    assert_eq!(e.reply.get(word::CR0), 0x8000_0011 | 0xe);
    assert_eq!(e.reply.rip(), RIP + 3);
    ram[RIP as usize..RIP as usize + 2].copy_from_slice(&[0x0f, 0x06]);
    let e = Intercepts::new().handle(&msg, &mut host, &mut ram);
    assert_eq!(e.reply.get(word::CR0), 0x8000_0011);
    assert_eq!(e.reply.rip(), RIP + 2);
}

fn xsetbv_exit(ecx: u64, value: u64) -> VcpuState {
    let mut msg = long_state();
    msg.set(word::CR4, 0x20 | 1 << 18);
    msg.set(word::QUAL0, other::XSETBV);
    msg.set(word::GPRS + 1, ecx);
    msg.set(word::GPRS, value & 0xffff_ffff);
    msg.set(word::GPRS + 2, value >> 32);
    msg
}

/// A host with XSAVE for x87, SSE and AVX.
fn xsave_host(leaf: u32, _subleaf: u32) -> [u32; 4] {
    match leaf {
        1 => [0, 0, 1 << 26, 0],
        0xd => [0b111, 832, 832, 0],
        _ => [0; 4],
    }
}

#[test]
fn xsetbv_sets_x87_and_sse_only() {
    let mut i = Intercepts::new();
    let e = i.handle(&xsetbv_exit(0, 0b11), &mut xsave_host, &mut NoMemory);
    assert_eq!(e.fault, None);
    assert_eq!(e.mask, mtd::XCR0 | mtd::RIP);
    assert_eq!((e.reply.get(word::XCR0), e.reply.rip()), (0b11, RIP + 3));
    for (ecx, value) in [(0, 0b10), (0, 0b111), (0, 1 << 32 | 1), (1, 1), (0, 0)] {
        let e = i.handle(&xsetbv_exit(ecx, value), &mut xsave_host, &mut NoMemory);
        assert_eq!(e.fault, Some((13, Some(0))), "ecx {ecx} value {value:#x}");
        assert_eq!(e.mask, 0);
    }
    // Outside ring 0: #GP; without CR4.OSXSAVE: #UD.
    let mut msg = xsetbv_exit(0, 1);
    msg.set_segment(Segment::Ss, Seg::new(0x23, 0x93 | 3 << 5, 0xffff_ffff, 0));
    assert_eq!(
        i.handle(&msg, &mut xsave_host, &mut NoMemory).fault,
        Some((13, Some(0)))
    );
    let mut msg = xsetbv_exit(0, 1);
    msg.set(word::CR4, 0x20);
    assert_eq!(
        i.handle(&msg, &mut xsave_host, &mut NoMemory).fault,
        Some((6, None))
    );
    // A host without XSAVE: #UD, logged.
    let e = Intercepts::new().handle(&xsetbv_exit(0, 1), &mut host_without_xsave, &mut NoMemory);
    assert_eq!(e.fault, Some((6, None)));
    assert!(e.log.is_some());
}

fn host_without_xsave(_leaf: u32, _subleaf: u32) -> [u32; 4] {
    [0; 4]
}

#[test]
fn cr4_is_tracked_for_cpuid_s_osxsave() {
    let mut i = Intercepts::new();
    assert_eq!(i.cr4(), 0);
    let s = long_state();
    assert_eq!(cr_write(&mut i, 4, 0x20 | 1 << 18, &s).fault, None);
    assert_eq!(i.cr4(), 0x20 | 1 << 18);
    // An exit that carries the control registers tells the VMM what the vTLB let through.
    let mut msg = xsetbv_exit(0, 1);
    msg.set(word::MASK, mtd::CONTROL);
    msg.set(word::CR4, 0x20);
    let _ = i.handle(&msg, &mut xsave_host, &mut NoMemory);
    assert_eq!(i.cr4(), 0x20);
}
