use super::*;
use crate::boot;
use crate::dmp::NoMemory;
use crate::msr::{efer, index};
use alloc::vec;

fn host(leaf: u32, _sub: u32) -> [u32; 4] {
    match leaf {
        0 => [0x16, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
        1 => [0x806e9, 0x0108_0800, u32::MAX, u32::MAX],
        0x8000_0000 => [0x8000_0008, 0, 0, 0],
        _ => [leaf, 1, 2, 3],
    }
}

fn exit_msg(exit: Exit, f: impl FnOnce(&mut VcpuState)) -> Vec<u64> {
    let mut s = VcpuState::default();
    s.set(word::MASK, transfer_mask(exit));
    s.set(word::REASON, exit as u64);
    s.set_rip(0x10_0000);
    s.set(word::RFLAGS, 0x202);
    s.set(word::INSTRUCTION_LEN, 2);
    f(&mut s);
    s.words.to_vec()
}

fn run(m: &mut Monitor, msg: &[u64]) -> Response {
    m.handle(msg, &mut host, &mut NoMemory)
}

fn monitor() -> Monitor {
    Monitor::new(boot::long_mode(0x10_0000, 0x36d7_6289, 0x7000))
}

#[test]
fn startup_sends_the_initial_state() {
    let mut m = monitor();
    let r = run(&mut m, &exit_msg(Exit::Startup, |_| {}));
    assert_eq!(r.mask(), mtd::ALL);
    assert_eq!(r.words().len(), word::DR7 + 1);
    assert_eq!(r.reply.get(word::EFER), 0x500);
    assert_eq!(r.reply.rip(), 0x10_0000);
    assert!(r.notes.is_empty());
}

#[test]
fn cpuid_is_filtered_and_rip_advances() {
    let mut m = monitor();
    let r = run(
        &mut m,
        &exit_msg(Exit::Cpuid, |s| {
            s.set_gpr(Gpr::Rax, 0xffff_ffff_0000_0001);
            s.set_gpr(Gpr::Rbx, 0xdead_dead_dead_dead);
        }),
    );
    assert_eq!(r.mask(), mtd::GPRS | mtd::RIP);
    assert_eq!(r.words().len(), word::RFLAGS + 1);
    assert_eq!(r.reply.rip(), 0x10_0002);
    assert_eq!(r.reply.get(word::RFLAGS), 0x202);
    assert_eq!(r.reply.gpr(Gpr::Rbx) >> 24, 0);
    assert_ne!(r.reply.gpr(Gpr::Rcx) & 1 << 31, 0);
    assert_eq!(r.reply.gpr(Gpr::Rcx) & 1 << 5, 0);
    // Max basic leaf clamped; signature leaf.
    let r = run(&mut m, &exit_msg(Exit::Cpuid, |s| s.set_gpr(Gpr::Rax, 0)));
    assert_eq!(r.reply.gpr(Gpr::Rax), u64::from(crate::cpuid::BASIC_MAX));
    let r = run(
        &mut m,
        &exit_msg(Exit::Cpuid, |s| s.set_gpr(Gpr::Rax, 0x4000_0000)),
    );
    assert_eq!(r.reply.gpr(Gpr::Rax), 0x4000_0001);
    assert_eq!(m.count(Exit::Cpuid), 3);
}

fn io(port: u16, size: u8, is_in: bool, rax: u64) -> Vec<u64> {
    exit_msg(Exit::Io, |s| {
        s.set(word::QUAL0, IoQual::new(port, size, is_in, false, false).0);
        s.set_gpr(Gpr::Rax, rax);
        s.set(word::INSTRUCTION_LEN, 1);
    })
}

#[test]
fn uart_lines_become_notes() {
    let mut m = monitor();
    for &b in b"hello\r" {
        let r = run(&mut m, &io(0x3f8, 1, false, u64::from(b)));
        assert!(r.notes.is_empty());
        assert_eq!(r.mask(), mtd::RIP);
        assert_eq!(r.reply.rip(), 0x10_0001);
    }
    let r = run(&mut m, &io(0x3f8, 1, false, 10));
    assert_eq!(r.notes, [Note::Line("hello".into())]);
    let r = run(&mut m, &io(0x3fd, 1, true, 0xffff_ffff_ffff_ff00));
    assert_eq!(r.mask(), mtd::GPRS | mtd::RIP);
    assert_eq!(r.reply.gpr(Gpr::Rax), 0xffff_ffff_ffff_ff60);
}

#[test]
fn exit_port_flushes_and_stops() {
    let mut m = monitor();
    run(&mut m, &io(0x3f8, 1, false, u64::from(b'x')));
    let r = run(&mut m, &io(0xf4, 1, false, 3));
    assert!(r.stops());
    assert_eq!(r.words().len(), 1);
    assert_eq!(
        r.notes,
        [
            Note::Line("x".into()),
            Note::End(End {
                outcome: outcome::EXITED,
                detail: 3
            })
        ]
    );
    assert_eq!(m.ended().map(|e| e.outcome), Some(outcome::EXITED));
    // Anything after the end keeps the vCPU stopped, without a second end.
    let r = run(&mut m, &io(0x3f8, 1, false, 1));
    assert!(r.stops());
    assert!(r.notes.is_empty());
}

#[test]
fn reset_requests() {
    let mut m = monitor();
    let r = run(&mut m, &io(0x64, 1, false, 0xfe));
    assert!(r.stops());
    assert!(r.notes.contains(&Note::End(End {
        outcome: outcome::RESET,
        detail: 0x64
    })));
}

#[test]
fn ignored_ports_and_string_io() {
    let mut m = monitor();
    let r = run(&mut m, &io(0x2f8, 2, true, 0x1234_5678));
    assert_eq!(r.reply.gpr(Gpr::Rax), 0x1234_ffff);
    assert!(matches!(&r.notes[..], [Note::Log(t)] if t.contains("port 0x2f8")));
    let r = run(&mut m, &io(0x2f8, 2, true, 0));
    assert!(r.notes.is_empty());
    let msg = exit_msg(Exit::Io, |s| {
        s.set(word::QUAL0, IoQual::new(0x3f8, 1, false, true, true).0)
    });
    let r = run(&mut m, &msg);
    assert_eq!(r.mask(), mtd::INJECT);
    assert_eq!(r.reply.get(word::INJECT), exception(UD, false));
    assert_eq!(r.reply.rip(), 0x10_0000);
    assert_eq!(r.notes.len(), 1);
    assert!(run(&mut m, &msg).notes.is_empty());
    assert!(m.summary().contains("ignored port accesses 2"));
}

#[test]
fn io_without_instruction_length_fails() {
    let mut m = monitor();
    let mut msg = io(0x3f8, 1, false, 0x41);
    msg[word::INSTRUCTION_LEN] = 0;
    let r = run(&mut m, &msg);
    assert!(r.stops());
    assert_eq!(
        m.ended(),
        Some(End {
            outcome: outcome::FAILED,
            detail: failure::PROTOCOL
        })
    );
}

fn rdmsr(msr: u32) -> Vec<u64> {
    exit_msg(Exit::Rdmsr, |s| {
        s.set_gpr(Gpr::Rcx, u64::from(msr));
        s.set_gpr(Gpr::Rax, 0xffff_ffff_ffff_ffff);
        s.set(word::EFER, 0x500);
        s.set(word::CR0, 0x8000_0011);
        s.set(word::EXIT_TSC, 0x1_2345_6789);
    })
}

fn wrmsr(msr: u32, value: u64) -> Vec<u64> {
    exit_msg(Exit::Wrmsr, |s| {
        s.set_gpr(Gpr::Rcx, u64::from(msr));
        s.set_gpr(Gpr::Rax, value & 0xffff_ffff);
        s.set_gpr(Gpr::Rdx, value >> 32);
        s.set(word::EFER, 0x500);
        s.set(word::CR0, 0x8000_0011);
    })
}

#[test]
fn msrs() {
    let mut m = monitor();
    let r = run(&mut m, &rdmsr(index::TSC));
    assert_eq!(r.mask(), mtd::GPRS | mtd::RIP);
    assert_eq!(r.reply.gpr(Gpr::Rax), 0x2345_6789);
    assert_eq!(r.reply.gpr(Gpr::Rdx), 1);
    assert_eq!(r.reply.rip(), 0x10_0002);
    let r = run(&mut m, &rdmsr(0x123));
    assert_eq!(r.mask(), mtd::INJECT);
    assert_eq!(
        r.reply.get(word::INJECT),
        13 | inject::KIND_EXCEPTION | inject::HAS_ERROR | inject::VALID
    );
    assert_eq!(r.reply.get(word::INJECT_ERROR), 0);
    assert_eq!(r.reply.rip(), 0x10_0000);
    let r = run(&mut m, &wrmsr(index::EFER, 0x500 | efer::NXE));
    assert_eq!(r.mask(), mtd::CONTROL | mtd::RIP);
    assert_eq!(r.reply.get(word::EFER), 0xd00);
    assert_eq!(r.reply.get(word::CR0), 0x8000_0011);
    let r = run(&mut m, &wrmsr(index::PAT, 0x0606_0606_0606_0606));
    assert_eq!(r.mask(), mtd::MSRS | mtd::RIP);
    assert_eq!(r.reply.get(word::PAT), 0x0606_0606_0606_0606);
    let r = run(&mut m, &wrmsr(index::MTRR_DEF_TYPE, 0x806));
    assert_eq!(r.mask(), mtd::RIP);
    let r = run(&mut m, &rdmsr(index::MTRR_DEF_TYPE));
    assert_eq!(r.reply.gpr(Gpr::Rax), 0x806);
}

#[test]
fn missing_groups_end_the_guest() {
    let mut m = monitor();
    let mut msg = rdmsr(index::EFER);
    msg[word::MASK] = mtd::GPRS | mtd::RIP;
    let r = run(&mut m, &msg);
    assert!(r.stops());
    assert!(matches!(&r.notes[0], Note::Log(t) if t.contains("needs")));
}

#[test]
fn ends() {
    let cases = [
        (Exit::Hlt, outcome::FAILED, failure::HALTED),
        (Exit::MemoryFault, outcome::STOPPED, 0x1_0000_0000),
        (Exit::Shutdown, outcome::SHUTDOWN, 0x10_0000),
        (Exit::EntryFailure, outcome::FAILED, failure::ENTRY),
    ];
    for (exit, outcome, detail) in cases {
        let mut m = monitor();
        let r = run(
            &mut m,
            &exit_msg(exit, |s| s.set(word::QUAL0, 0x1_0000_0000)),
        );
        assert!(r.stops(), "{exit:?}");
        assert!(
            r.notes.contains(&Note::End(End { outcome, detail })),
            "{exit:?}"
        );
    }
    let mut m = monitor();
    let r = run(
        &mut m,
        &exit_msg(Exit::MemoryFault, |s| s.set(word::QUAL0, 0x4000_0000)),
    );
    assert!(
        matches!(&r.notes[0], Note::Log(t) if t.contains("at 0x40000000") && t.ends_with("stopped")),
        "{:?}",
        r.notes
    );
}

#[test]
fn undefined_instructions() {
    for exit in [Exit::Hypercall, Exit::Other] {
        let mut m = monitor();
        let r = run(&mut m, &exit_msg(exit, |_| {}));
        assert_eq!(r.mask(), mtd::INJECT);
        assert_eq!(
            r.reply.get(word::INJECT),
            6 | inject::KIND_EXCEPTION | inject::VALID
        );
    }
}

#[test]
fn exceptions_are_reinjected() {
    let mut m = monitor();
    let r = run(
        &mut m,
        &exit_msg(Exit::Exception, |s| {
            s.set(word::QUAL0, 14 | 0x2 << 32);
            s.set(word::CR0, 0x8000_0011);
            s.set(word::QUAL1, 0xdead_b000);
        }),
    );
    assert_eq!(r.mask(), mtd::INJECT | mtd::CONTROL);
    assert_eq!(r.reply.get(word::CR2), 0xdead_b000);
    assert_eq!(r.reply.get(word::INJECT_ERROR), 2);
    assert_ne!(r.reply.get(word::INJECT) & inject::HAS_ERROR, 0);
    let r = run(
        &mut m,
        &exit_msg(Exit::Exception, |s| s.set(word::QUAL0, 3)),
    );
    assert_eq!(
        r.reply.get(word::INJECT),
        3 | inject::KIND_EXCEPTION | inject::VALID
    );
    let r = run(
        &mut m,
        &exit_msg(Exit::Exception, |s| s.set(word::QUAL0, 40)),
    );
    assert!(r.stops());
}

#[test]
fn real_mode_exceptions_have_no_error_code() {
    let mut m = monitor();
    let mut msg = rdmsr(0x123);
    msg[word::CR0] = 0x10;
    let r = run(&mut m, &msg);
    assert_eq!(
        r.reply.get(word::INJECT),
        13 | inject::KIND_EXCEPTION | inject::VALID
    );
    let r = run(
        &mut m,
        &exit_msg(Exit::Exception, |s| s.set(word::QUAL0, 13 | 5 << 32)),
    );
    assert_eq!(
        r.reply.get(word::INJECT),
        13 | inject::KIND_EXCEPTION | inject::VALID
    );
    assert_eq!(r.reply.get(word::INJECT_ERROR), 0);
}

#[test]
fn interrupted_delivery_is_reinjected() {
    let mut m = monitor();
    let pending = exception(GP, true);
    let r = run(
        &mut m,
        &exit_msg(Exit::Recall, |s| {
            s.set(word::INJECT, pending);
            s.set(word::INJECT_ERROR, 0x18);
        }),
    );
    assert_eq!(r.mask(), mtd::INJECT);
    assert_eq!(r.reply.get(word::INJECT_ERROR), 0x18);
    let r = run(&mut m, &exit_msg(Exit::InterruptWindow, |_| {}));
    assert_eq!(r.mask(), 0);
    assert_eq!(r.words().len(), 1);
}

#[test]
fn hostile_messages() {
    let mut m = monitor();
    let r = run(&mut m, &[]);
    assert!(r.stops(), "reason 0 without groups");
    let mut m = monitor();
    let r = run(&mut m, &[mtd::ALL, 99]);
    assert!(r.stops());
    assert!(m.summary().contains("unknown 1"));
    let mut m = monitor();
    for reason in 0..EXIT_COUNT + 2 {
        for mask in [0, mtd::ALL, u64::MAX] {
            for q in [0, u64::MAX, 0xffff_ffff] {
                let mut msg = vec![u64::MAX; 80];
                msg[word::MASK] = mask;
                msg[word::REASON] = reason;
                msg[word::QUAL0] = q;
                let _ = m.handle(&msg, &mut host, &mut NoMemory);
                let _ = Monitor::new(VcpuState::default()).handle(&msg, &mut host, &mut NoMemory);
            }
        }
    }
}

#[test]
fn refused_replies_stop() {
    let mut m = monitor();
    let r = m.refused(&mut NoMemory);
    assert!(r.stops());
    assert_eq!(
        m.ended(),
        Some(End {
            outcome: outcome::FAILED,
            detail: failure::REFUSED
        })
    );
}

#[test]
fn summary_counts() {
    let mut m = monitor();
    assert_eq!(
        m.summary(),
        "exits: none; ignored port accesses 0; uart output 0 bytes, fnv-1a 0xcbf29ce484222325"
    );
    run(&mut m, &exit_msg(Exit::Startup, |_| {}));
    run(&mut m, &exit_msg(Exit::Cpuid, |_| {}));
    run(&mut m, &exit_msg(Exit::Cpuid, |_| {}));
    run(&mut m, &io(0x3f8, 1, false, u64::from(b'a')));
    assert_eq!(
        m.summary(),
        "exits: startup 1, cpuid 2, io 1; ignored port accesses 0; uart output 1 bytes, fnv-1a 0xaf63dc4c8601ec8c"
    );
}

fn profile_msg(batch: &abi::profile::ProfileBatch) -> Vec<u64> {
    let mut bytes = [0u8; abi::profile::MAX_ENCODED_LEN];
    let encoded = batch.encode(&mut bytes).unwrap();
    let mut words = vec![0u64; abi::utcb::MSG_WORDS];
    words[word::REASON] = Exit::Profile as u64;
    let used = abi::profile::pack_words(encoded, &mut words[abi::vm::PROFILE_WORDS..]).unwrap();
    words.truncate(abi::vm::PROFILE_WORDS + used);
    words
}

#[test]
fn profile_messages_are_logged_and_change_nothing() {
    let mut m = monitor();
    let mut batch = abi::profile::ProfileBatch::new(3, 2);
    batch.exits_total = 40_000;
    batch.by_reason[Exit::PageFault as usize] = 30_000;
    batch
        .sites
        .push(abi::profile::HotSite {
            reason: Exit::PageFault as u8,
            rip: 0x8000_002f,
            count: 20_000,
            error: 0,
        })
        .unwrap();
    let r = run(&mut m, &profile_msg(&batch));
    assert_eq!(r.mask(), 0);
    assert!(!r.stops());
    assert!(matches!(
        &r.notes[..],
        [Note::Log(text)] if text == "exit profile #2: 40000 exits; hottest page-fault at 0x8000002f (20000 exits)"
    ));
    assert_eq!(m.count(Exit::Profile), 1);
    // Only profiles 1, 2, 4, 8, … are logged.
    let mut third = batch.clone();
    third.sequence = 3;
    let r = run(&mut m, &profile_msg(&third));
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    assert_eq!(m.count(Exit::Profile), 2);
}

#[test]
fn garbled_profile_messages_do_no_harm() {
    let mut m = monitor();
    for words in [
        vec![0, Exit::Profile as u64],
        vec![0, Exit::Profile as u64, 1000, 1, 2],
        vec![0, Exit::Profile as u64, 8, u64::MAX],
    ] {
        let r = run(&mut m, &words);
        assert_eq!(r.mask(), 0);
        assert!(matches!(&r.notes[..], [Note::Log(t)] if t.starts_with("exit profile unreadable")));
    }
    // The guest goes on: a normal exit afterwards is served.
    let r = run(&mut m, &exit_msg(Exit::Cpuid, |_| {}));
    assert!(!r.stops());
}

// ---------------------------------------------------------------------------------------------
// The DMP UART window (abi::dmp::uart).

use crate::dmp::UartWindow;
use abi::dmp::uart::{RING_CAPACITY, RING_COUNT, RING_DATA, WINDOW_UART_LCR, WINDOW_UART_LSR};
use abi::dmp::UART_FLUSH;

const WINDOW: UartWindow = UartWindow::new(0xf_0000, 16);

fn dmp_monitor(mem: &mut Vec<u8>) -> Monitor {
    let mut m = monitor();
    assert!(m.enable_uart_window(WINDOW, mem));
    m.enable_vmm_hypercalls();
    m
}

fn ram() -> Vec<u8> {
    vec![0u8; 0x20_0000]
}

fn word_at(mem: &[u8], at: u64) -> u64 {
    u64::from_le_bytes(mem[at as usize..at as usize + 8].try_into().unwrap())
}

/// What a patched `out dx, al` does: append to the ring.
fn append(mem: &mut [u8], text: &[u8]) {
    let count = word_at(mem, WINDOW.ring + RING_COUNT);
    for (i, &b) in text.iter().enumerate() {
        mem[(WINDOW.ring + RING_DATA + count + i as u64) as usize] = b;
    }
    let new = (count + text.len() as u64).to_le_bytes();
    mem[(WINDOW.ring + RING_COUNT) as usize..][..8].copy_from_slice(&new);
}

fn flush_msg(number: u64) -> Vec<u64> {
    exit_msg(Exit::Hypercall, |s| {
        s.set_gpr(Gpr::Rax, number);
        s.set_gpr(Gpr::Rbx, 0x1234);
        s.set(word::INSTRUCTION_LEN, 3);
    })
}

fn lines(r: &Response) -> Vec<String> {
    r.notes
        .iter()
        .filter_map(|n| match n {
            Note::Line(l) => Some(l.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn window_words_follow_the_uart() {
    let mut mem = ram();
    let mut m = dmp_monitor(&mut mem);
    assert_eq!(word_at(&mem, WINDOW.window + WINDOW_UART_LSR), 0x60);
    assert_eq!(word_at(&mem, WINDOW.window + WINDOW_UART_LCR), 0x03);
    // DLAB on: the THR stub must take the port.
    m.handle(&io(0x3fb, 1, false, 0x83), &mut host, &mut mem);
    assert_eq!(word_at(&mem, WINDOW.window + WINDOW_UART_LCR), 0x83);
    m.handle(&io(0x3fb, 1, false, 0x03), &mut host, &mut mem);
    assert_eq!(word_at(&mem, WINDOW.window + WINDOW_UART_LCR), 0x03);
    // Loopback: bit 7 too; a THR write makes data ready, reading it clears it again.
    m.handle(&io(0x3fc, 1, false, 0x10), &mut host, &mut mem);
    assert_eq!(word_at(&mem, WINDOW.window + WINDOW_UART_LCR), 0x83);
    m.handle(&io(0x3f8, 1, false, 0x55), &mut host, &mut mem);
    assert_eq!(word_at(&mem, WINDOW.window + WINDOW_UART_LSR), 0x61);
    m.handle(&io(0x3f8, 1, true, 0), &mut host, &mut mem);
    assert_eq!(word_at(&mem, WINDOW.window + WINDOW_UART_LSR), 0x60);
    // A window outside guest RAM is refused.
    let mut small = vec![0u8; 0x1000];
    assert!(!monitor().enable_uart_window(WINDOW, &mut small));
}

#[test]
fn flush_hypercall_drains_the_ring() {
    let mut mem = ram();
    let mut m = dmp_monitor(&mut mem);
    append(&mut mem, b"hello\nwor");
    let r = m.handle(&flush_msg(UART_FLUSH), &mut host, &mut mem);
    assert_eq!(lines(&r), ["hello"]);
    assert_eq!(r.mask(), mtd::GPRS | mtd::RIP);
    assert_eq!(r.reply.gpr(Gpr::Rax), abi::vm::hypercall::OK);
    assert_eq!(r.reply.gpr(Gpr::Rbx), 0x1234);
    assert_eq!(r.reply.rip(), 0x10_0003);
    assert_eq!(word_at(&mem, WINDOW.ring + RING_COUNT), 0);
    // A real UART exit drains first: "wor" comes before the port's "ld".
    append(&mut mem, b"ld");
    let r = m.handle(&io(0x3f8, 1, false, 10), &mut host, &mut mem);
    assert_eq!(lines(&r), ["world"]);
    // So does any other port I/O exit, and the end (with the partial line).
    append(&mut mem, b"a\nb");
    let r = m.handle(&io(0x80, 1, false, 0), &mut host, &mut mem);
    assert_eq!(lines(&r), ["a"]);
    append(&mut mem, b"c");
    let r = m.handle(&io(0xf4, 1, false, 0), &mut host, &mut mem);
    assert_eq!(lines(&r), ["bc"]);
    assert!(r.stops());
    assert!(m
        .summary()
        .ends_with("uart output 16 bytes, fnv-1a 0x5d781583a6ef96cd (15 through the DMP ring, 1 flush hypercalls)"));
}

#[test]
fn hostile_rings_and_hypercalls() {
    let mut mem = ram();
    let mut m = dmp_monitor(&mut mem);
    // A count beyond the ring: clamped, the ring emptied.
    let at = (WINDOW.ring + RING_COUNT) as usize;
    mem[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let r = m.handle(&flush_msg(UART_FLUSH), &mut host, &mut mem);
    assert_eq!(
        lines(&r).len(),
        RING_CAPACITY as usize / crate::console::LINE_BYTES
    );
    assert!(lines(&r).iter().all(|l| l.chars().all(|c| c == '?')));
    assert_eq!(word_at(&mem, WINDOW.ring + RING_COUNT), 0);
    // Unknown VMM hypercalls are refused; below VMM_FIRST (the kernel's) they are #UD.
    let r = m.handle(&flush_msg(UART_FLUSH + 1), &mut host, &mut mem);
    assert_eq!(r.reply.gpr(Gpr::Rax), abi::vm::hypercall::BAD_REQUEST);
    assert_eq!(r.reply.rip(), 0x10_0003);
    let r = m.handle(&flush_msg(2), &mut host, &mut mem);
    assert_eq!(r.mask(), mtd::INJECT);
    // Without the window and the enable, every hypercall is #UD.
    let mut plain = monitor();
    let r = plain.handle(&flush_msg(UART_FLUSH), &mut host, &mut mem);
    assert_eq!(r.mask(), mtd::INJECT);
    // Memory that refuses: logged once, the guest goes on.
    let r = m.handle(&flush_msg(UART_FLUSH), &mut host, &mut NoMemory);
    assert_eq!(r.reply.gpr(Gpr::Rax), abi::vm::hypercall::OK);
    assert!(matches!(&r.notes[..], [Note::Log(_)]));
    let r = m.handle(&flush_msg(UART_FLUSH), &mut host, &mut NoMemory);
    assert!(r.notes.is_empty());
}

// The PC platform through the monitor: MMIO emulation, interrupt delivery, HLT.

/// 1 MiB of RAM at 0 whose 4-level tables (PML4 0x1000) identity-map the first 2 MiB, with
/// `code` at 0x10_0000... (RIP of `exit_msg`); the RAM is larger than the tables reach.
fn ram_with_code(code: &[u8]) -> Vec<u8> {
    let mut mem = vec![0u8; 0x20_0000];
    let mut put = |at: usize, v: u64| mem[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put(0x1000, 0x2000 | 3);
    put(0x2000, 0x3000 | 3);
    put(0x3000, 0x83);
    mem[0x10_0000..0x10_0000 + code.len()].copy_from_slice(code);
    mem
}

fn mmio_msg(gpa: u64, how: u64, f: impl FnOnce(&mut VcpuState)) -> Vec<u64> {
    exit_msg(Exit::MemoryFault, |s| {
        s.set(word::QUAL0, gpa);
        s.set(word::QUAL1, how);
        s.set(word::INSTRUCTION_LEN, 0);
        s.set(word::CR0, 0x8000_0011);
        s.set(word::CR3, 0x1000);
        s.set(word::CR4, 0x20);
        s.set(word::EFER, 0x500);
        s.set_segment(
            abi::vm::Segment::Cs,
            crate::state::Seg::new(8, 0xa9b, 0xffff_ffff, 0),
        );
        f(s);
    })
}

#[test]
fn local_apic_reads_are_emulated() {
    use abi::vm::access;
    let mut m = monitor();
    let mut mem = ram_with_code(&[0x8b, 0x03]); // mov eax, [rbx]
    let msg = mmio_msg(0xfee0_0030, access::READ, |s| {
        s.set_gpr(Gpr::Rax, 0xffff_ffff_ffff_ffff);
        s.set_gpr(Gpr::Rbx, 0xfee0_0030);
    });
    let r = m.handle(&msg, &mut host, &mut mem);
    assert!(!r.stops(), "{:?}", r.notes);
    assert_eq!(
        r.reply.gpr(Gpr::Rax),
        u64::from(crate::platform::lapic::VERSION)
    );
    assert_eq!(r.reply.rip(), 0x10_0002);
    assert_eq!(r.mask() & (mtd::GPRS | mtd::RIP), mtd::GPRS | mtd::RIP);
    assert!(r.notes.is_empty());
}

#[test]
fn unknown_mmio_is_logged_once_and_the_guest_goes_on() {
    use abi::vm::access;
    let mut m = monitor();
    let mut mem = ram_with_code(&[0x89, 0x08]); // mov [rax], ecx
    let msg = mmio_msg(0xc000_0010, access::WRITE, |_| {});
    let r = m.handle(&msg, &mut host, &mut mem);
    assert!(!r.stops());
    assert!(matches!(&r.notes[..], [Note::Log(t)] if t.contains("page 0xc0000000")));
    assert_eq!(r.reply.rip(), 0x10_0002);
    let r = m.handle(&msg, &mut host, &mut mem);
    assert!(r.notes.is_empty());
    // Executing there stops the guest; so does an instruction the emulator does not know.
    let r = m.handle(
        &mmio_msg(0xc000_0000, access::EXEC, |_| {}),
        &mut host,
        &mut mem,
    );
    assert!(r.stops());
    assert!(r.notes.contains(&Note::End(End {
        outcome: outcome::STOPPED,
        detail: 0xc000_0000
    })));
    let mut m = monitor();
    let mut mem = ram_with_code(&[0x01, 0x08]); // add [rax], ecx
    let r = m.handle(&msg, &mut host, &mut mem);
    assert!(r.stops());
    assert!(matches!(&r.notes[0], Note::Log(t) if t.contains("Add")));
}

/// Port writes at guest time 0 (TSC = ns: the default board's fallback clock).
fn out_at(m: &mut Monitor, port: u16, value: u64) {
    let r = run(m, &io(port, 1, false, value));
    assert!(!r.stops(), "{:?}", r.notes);
}

/// The 8259 set up at vector 0x20 with only IRQ 0 unmasked, the PIT at about 1 kHz.
fn pit_through_pic(m: &mut Monitor) {
    for (port, value) in [
        (0x20, 0x11),
        (0x21, 0x20),
        (0x21, 0x04),
        (0x21, 0x01),
        (0x21, 0xfe),
        (0x43, 0x34),
        (0x40, 0xa9),
        (0x40, 0x04),
    ] {
        out_at(m, port, value);
    }
}

fn hlt_msg(tsc: u64, rflags: u64) -> Vec<u64> {
    exit_msg(Exit::Hlt, |s| {
        s.set(word::EXIT_TSC, tsc);
        s.set(word::RFLAGS, rflags);
        s.set(word::INSTRUCTION_LEN, 1);
    })
}

#[test]
fn timer_interrupts_are_injected_and_wake_hlt() {
    let mut m = monitor();
    pit_through_pic(&mut m);
    // The mode write raised the PIT's output: IRQ 0 waits, and HLT takes it at once.
    let r = run(&mut m, &hlt_msg(10, 0x202));
    assert_eq!(r.halted_until, None);
    assert_eq!(r.reply.rip(), 0x10_0001);
    assert_eq!(
        r.reply.get(word::INJECT),
        0x20 | inject::KIND_EXTERNAL | inject::VALID
    );
    out_at(&mut m, 0x20, 0x20); // EOI
                                // Nothing pending now: the vCPU sleeps until the PIT's next deadline.
    let mut r = run(&mut m, &hlt_msg(20, 0x202));
    let mut until = r.halted_until.expect("sleeps");
    assert!(until < 1_100_000, "{until}");
    assert_eq!(m.next_deadline_tsc(), Some(until));
    assert!(!m.wake(&mut r, until - 1));
    let mut woke_at = 0;
    for _ in 0..8 {
        if m.wake(&mut r, until) {
            woke_at = until;
            break;
        }
        until = r.halted_until.expect("still asleep");
    }
    assert!((999_000..=1_001_000).contains(&woke_at), "{woke_at}");
    assert_eq!(r.halted_until, None);
    assert_eq!(r.reply.rip(), 0x10_0001);
    assert_eq!(r.mask() & mtd::INJECT, mtd::INJECT);
    assert_eq!(
        r.reply.get(word::INJECT),
        0x20 | inject::KIND_EXTERNAL | inject::VALID
    );
}

#[test]
fn blocked_interrupts_ask_for_a_window() {
    let mut m = monitor();
    pit_through_pic(&mut m);
    // IF clear on a CPUID exit: no injection, an interrupt-window exit instead.
    let r = run(&mut m, &exit_msg(Exit::Cpuid, |s| s.set(word::RFLAGS, 0x2)));
    assert_eq!(r.mask() & mtd::INJECT, mtd::INJECT);
    assert_eq!(r.reply.get(word::INJECT), inject::WINDOW);
    assert_eq!(r.words().len(), word::INTERRUPTIBILITY + 1);
    // The window exit then takes it (IF set, no shadow).
    let r = run(&mut m, &exit_msg(Exit::InterruptWindow, |_| {}));
    assert_eq!(
        r.reply.get(word::INJECT),
        0x20 | inject::KIND_EXTERNAL | inject::VALID
    );
    // An STI shadow blocks it as IF=0 does.
    let mut m = monitor();
    pit_through_pic(&mut m);
    let r = run(
        &mut m,
        &exit_msg(Exit::Recall, |s| s.set(word::INTERRUPTIBILITY, 1)),
    );
    assert_eq!(r.reply.get(word::INJECT), inject::WINDOW);
    // HLT with IF clear and nothing to wake it ends the guest.
    let mut m = monitor();
    let r = run(&mut m, &hlt_msg(0, 0x2));
    assert!(r.stops());
    let r = run(&mut monitor(), &hlt_msg(0, 0x202));
    assert!(r.stops(), "no timer runs: nothing can wake it");
}

#[test]
fn hlt_in_an_sti_shadow_still_takes_the_interrupt() {
    let mut m = monitor();
    pit_through_pic(&mut m);
    // `sti; hlt`: the HLT exit shows the STI shadow, which skipping HLT ends.
    let mut msg = hlt_msg(10, 0x202);
    msg[word::INTERRUPTIBILITY] = 1;
    let r = run(&mut m, &msg);
    assert_eq!(r.reply.rip(), 0x10_0001);
    assert_eq!(
        r.reply.get(word::INJECT),
        0x20 | inject::KIND_EXTERNAL | inject::VALID
    );
}
