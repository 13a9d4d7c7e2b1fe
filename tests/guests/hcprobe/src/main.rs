//! The `hcprobe` test guest: unlike the other test guests it knows the hypervisor, namely the DMP
//! hypercall interface (`abi::vm::hypercall`) that patched guest code uses to change its page
//! tables without one exit per change. It runs in shadow mode with `hypercalls = true` and
//! checks, one line each (`hcprobe: <check>: ok|FAIL (<detail>)`):
//!
//! - a mapping changed with `PTE_WRITE` is seen at once (the shadow translation was dropped);
//! - a `QUEUE` of two updates applies both;
//! - a lie about the linear address an entry maps still leaves every translation right;
//! - an entry changed by a plain store, then `INVLPG` by hypercall, is seen;
//! - hostile requests are refused with the documented codes and change nothing: an entry
//!   outside its RAM, an unaligned entry, an oversized queue, an unknown number, a queue whose
//!   second entry points outside its RAM (the first is applied, RBX says so);
//!
//! - the DMP window its VMM set up (the top 1 MiB of linear space, mapped by no table of its own)
//!   shows its current CR3 in its first word, also after a CR3 load, and a write to it faults
//!   (the guest can read what the hypervisor exposes, never forge it);
//!
//! - hypercall `FAULT` (what a patched #PF gate sends) answers hostile arguments without harm:
//!   an allowed access is resolved (`OK`), a not-present address, a write to the window and a
//!   non-canonical address come back as the guest's own fault (`GUEST_FAULT`, with the error
//!   code its tables give in RCX);
//! - tampering with the window through its own identity mapping of the window's guest-physical
//!   page only misleads itself, and the kernel writes the truth again at the next CR3 load;
//!
//! then `hcprobe: N checks passed, M failed` and exit 0 only when M is 0. It builds its test
//! mapping under PML4 slot 1 (linear 0x80_0000_0000) in tables of its own; the loader's
//! identity map reaches them.
#![no_std]
#![no_main]

use abi::vm::hypercall::{
    BAD_ADDRESS, BAD_REQUEST, FAULT, GUEST_FAULT, INVLPG, MAX_QUEUE, OK, PTE_WRITE, QUEUE,
};
use core::ptr::{read_volatile, write_volatile};
use grt::println;

grt::elf64_entry!(main);

/// Guest-physical (= identity-mapped linear) addresses of its own tables and pages.
const PDPT: u64 = 0x60_0000;
const PD: u64 = 0x60_1000;
const PT: u64 = 0x60_2000;
const PAGE_A: u64 = 0x60_3000;
const PAGE_B: u64 = 0x60_4000;
const PAGE_C: u64 = 0x60_5000;
const QUEUE_PAGE: u64 = 0x60_6000;
/// The loader's PML4.
const PML4: u64 = 0x1000;
/// The test mapping: PML4 slot 1.
const X: u64 = 0x80_0000_0000;
const RW: u64 = 0b11;
/// Guest-physical memory no guest of the test systems has.
const OUTSIDE: u64 = 0xc000_0000;

struct Report {
    passed: u32,
    failed: u32,
}

impl Report {
    fn check(&mut self, what: &str, ok: bool, detail: core::fmt::Arguments) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        println!(
            "hcprobe: {}: {} ({})",
            what,
            if ok { "ok" } else { "FAIL" },
            detail
        );
    }
}

fn write(pa: u64, value: u64) {
    // SAFETY: `pa` is one of this guest's own pages below 16 MiB, identity-mapped by the
    // loader's tables and used by nothing else.
    unsafe { write_volatile(pa as *mut u64, value) }
}

fn read(va: u64) -> u64 {
    // SAFETY: `va` is mapped by this guest's own tables (the test mapping or its pages).
    unsafe { read_volatile(va as *const u64) }
}

/// A DMP hypercall: (RAX, RBX) after it.
fn hypercall(amd: bool, number: u64, rbx: u64, rcx: u64, rdx: u64) -> (u64, u64) {
    let (status, applied, _) = hypercall3(amd, number, rbx, rcx, rdx);
    (status, applied)
}

/// A DMP hypercall: (RAX, RBX, RCX) after it.
fn hypercall3(amd: bool, number: u64, rbx: u64, rcx: u64, rdx: u64) -> (u64, u64, u64) {
    let (status, applied, rcx_out);
    // SAFETY: VMMCALL/VMCALL with the kernel's hypercalls enabled only changes RAX, RBX and this
    // guest's own page tables. RBX is reserved by the compiler, hence the exchange.
    unsafe {
        if amd {
            core::arch::asm!("xchg rbx, {b}", "vmmcall", "xchg rbx, {b}",
                b = inout(reg) rbx => applied, inout("rax") number => status,
                inout("rcx") rcx => rcx_out, in("rdx") rdx, options(nostack));
        } else {
            core::arch::asm!("xchg rbx, {b}", "vmcall", "xchg rbx, {b}",
                b = inout(reg) rbx => applied, inout("rax") number => status,
                inout("rcx") rcx => rcx_out, in("rdx") rdx, options(nostack));
        }
    }
    (status, applied, rcx_out)
}

/// Where the VMM puts the DMP window (`vmm::layout::DMP_WINDOW_LINEAR`).
const WINDOW: u64 = 0xffff_ffff_fff0_0000;

fn read_cr3() -> u64 {
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack)) };
    cr3
}

fn window(r: &mut Report) {
    let cr3 = read_cr3();
    let shown = read(WINDOW + abi::vm::WINDOW_CR3);
    r.check(
        "window shows CR3",
        shown == cr3,
        format_args!("window {shown:#x}, CR3 {cr3:#x}"),
    );
    // SAFETY: reloading the same CR3 only flushes the TLB.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) cr3, options(nostack)) };
    let again = read(WINDOW + abi::vm::WINDOW_CR3);
    r.check(
        "window after a CR3 load",
        again == cr3,
        format_args!("window {again:#x}"),
    );
    // SAFETY: the store either faults (expected: the window is read-only) or lands in the
    // window page, which only this guest sees.
    let store = unsafe {
        grt::guarded_asm!("mov qword ptr [{}], {}", in(reg) WINDOW + 8, in(reg) 0x5a5a_u64)
    };
    r.check(
        "window is read-only",
        matches!(store, Err(f) if f.vector == 14),
        format_args!(
            "store {}",
            if store.is_ok() {
                "went through"
            } else {
                "refused with #PF"
            }
        ),
    );
}

/// Hypercall `FAULT` with hostile arguments: the kernel answers as it would a hardware #PF.
fn fault(r: &mut Report, amd: bool) {
    const WRITE: u64 = 2;
    const USER: u64 = 4;
    let before = read(X);
    let (s, _, _) = hypercall3(amd, FAULT, X, 0, 0);
    let after = read(X);
    r.check(
        "FAULT on an allowed access resolves",
        s == OK && after == before,
        format_args!("status {s}, read {before:#x} then {after:#x}"),
    );
    let (s, _, code) = hypercall3(amd, FAULT, X + (1 << 30), USER | WRITE, 0);
    r.check(
        "FAULT on an unmapped address is the guest's",
        s == GUEST_FAULT && code == USER | WRITE,
        format_args!("status {s}, error code {code:#x}"),
    );
    let (s, _, code) = hypercall3(amd, FAULT, WINDOW, WRITE, 0);
    r.check(
        "FAULT writing the window is the guest's",
        s == GUEST_FAULT && code == WRITE | 1,
        format_args!("status {s}, error code {code:#x}"),
    );
    let (s, _, _) = hypercall3(amd, FAULT, 0x8000_0000_0000_0000, 0, 0);
    r.check(
        "FAULT on a non-canonical address is refused",
        s == GUEST_FAULT,
        format_args!("status {s}"),
    );
}

/// The window's guest-physical page (`vmm::layout::DMP_WINDOW_PHYSICAL`), which the loader's
/// identity map reaches: writable by this guest, which only fools itself.
const WINDOW_PHYSICAL: u64 = 0xf_0000;

fn tamper(r: &mut Report) {
    let cr3 = read_cr3();
    write(WINDOW_PHYSICAL + abi::vm::WINDOW_CR3, 0xdead_b000);
    let forged = read(WINDOW + abi::vm::WINDOW_CR3);
    // SAFETY: reloading the same CR3 only flushes the TLB.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) cr3, options(nostack)) };
    let again = read(WINDOW + abi::vm::WINDOW_CR3);
    r.check(
        "a forged window word is rewritten at the next CR3 load",
        forged == 0xdead_b000 && again == cr3,
        format_args!("forged {forged:#x}, then {again:#x}"),
    );
}

fn main(_boot: &grt::Boot) -> u8 {
    let id = grt::cpu::cpuid(0, 0);
    let amd = id.ebx == u32::from_le_bytes(*b"Auth");
    let hc = |n, b, c, d| hypercall(amd, n, b, c, d);
    let mut r = Report {
        passed: 0,
        failed: 0,
    };
    for page in [PDPT, PD, PT, QUEUE_PAGE] {
        for i in 0..512 {
            write(page + 8 * i, 0);
        }
    }
    write(PAGE_A, 0xaaaa);
    write(PAGE_B, 0xbbbb);
    write(PAGE_C, 0xcccc);
    write(PDPT, PD | RW);
    write(PD, PT | RW);
    write(PT, PAGE_A | RW);
    write(PML4 + 8, PDPT | RW);
    let pte0 = PT;
    let pte1 = PT + 8;

    let first = read(X);
    r.check(
        "plain mapping",
        first == 0xaaaa,
        format_args!("read {first:#x}"),
    );

    let (s, n) = hc(PTE_WRITE, X, pte0, PAGE_B | RW);
    let v = read(X);
    r.check(
        "PTE_WRITE remaps at once",
        s == OK && n == 1 && v == 0xbbbb,
        format_args!("status {s}, applied {n}, read {v:#x}"),
    );

    write(QUEUE_PAGE, X);
    write(QUEUE_PAGE + 8, pte0);
    write(QUEUE_PAGE + 16, PAGE_C | RW);
    write(QUEUE_PAGE + 24, X + 0x1000);
    write(QUEUE_PAGE + 32, pte1);
    write(QUEUE_PAGE + 40, PAGE_A | RW);
    let (s, n) = hc(QUEUE, QUEUE_PAGE, 2, 0);
    let (v0, v1) = (read(X), read(X + 0x1000));
    r.check(
        "QUEUE applies both",
        s == OK && n == 2 && v0 == 0xcccc && v1 == 0xaaaa,
        format_args!("status {s}, applied {n}, read {v0:#x} {v1:#x}"),
    );

    let (s, _) = hc(PTE_WRITE, 0x1234_5000, pte0, PAGE_A | RW);
    let v = read(X);
    r.check(
        "a lie about the address still remaps",
        s == OK && v == 0xaaaa,
        format_args!("status {s}, read {v:#x}"),
    );

    write(pte0, PAGE_B | RW);
    let (s, _) = hc(INVLPG, X, 0, 0);
    let v = read(X);
    r.check(
        "store then INVLPG hypercall",
        s == OK && v == 0xbbbb,
        format_args!("status {s}, read {v:#x}"),
    );

    let (s, n) = hc(PTE_WRITE, X, OUTSIDE, PAGE_A | RW);
    let v = read(X);
    r.check(
        "entry outside RAM refused",
        s == BAD_ADDRESS && n == 0 && v == 0xbbbb,
        format_args!("status {s}, applied {n}, read {v:#x}"),
    );
    let (s, _) = hc(PTE_WRITE, X, pte0 + 4, 0);
    r.check(
        "unaligned entry refused",
        s == BAD_ADDRESS && read(X) == 0xbbbb,
        format_args!("status {s}"),
    );
    let (s, _) = hc(QUEUE, QUEUE_PAGE, MAX_QUEUE + 1, 0);
    r.check(
        "oversized queue refused",
        s == BAD_REQUEST,
        format_args!("status {s}"),
    );
    let (s, _) = hc(99, 0, 0, 0);
    r.check(
        "unknown hypercall refused",
        s == BAD_REQUEST,
        format_args!("status {s}"),
    );
    write(QUEUE_PAGE + 16, PAGE_C | RW);
    write(QUEUE_PAGE + 32, OUTSIDE);
    let (s, n) = hc(QUEUE, QUEUE_PAGE, 2, 0);
    let v = read(X);
    r.check(
        "queue stops at a hostile entry",
        s == BAD_ADDRESS && n == 1 && v == 0xcccc,
        format_args!("status {s}, applied {n}, read {v:#x}"),
    );
    let (s, n) = hc(QUEUE, OUTSIDE, 1, 0);
    r.check(
        "queue outside RAM refused",
        s == BAD_ADDRESS && n == 0,
        format_args!("status {s}, applied {n}"),
    );

    window(&mut r);
    fault(&mut r, amd);
    tamper(&mut r);

    println!("hcprobe: {} checks passed, {} failed", r.passed, r.failed);
    if r.failed == 0 {
        grt::EXIT_SUCCESS
    } else {
        grt::EXIT_FAILURE
    }
}
