//! Deliberate faults. Each probe is a few instructions of assembly that return 0 when the
//! access worked; when it traps, the kernel sends the fault to the attacker's fault handler
//! (isolation-target), which, in `RESUME_AT` mode, resumes the thread at [`recover_addr`]:
//! `probe_recover` returns 1 to the probe's caller (the stack pointer is the one the probe was
//! entered with, as no probe pushes anything before its faulting instruction). The kernel writes
//! the fault message into the faulting thread's UTCB, which is not borrowed across a probe.
//!
//! Every probe is harmless if the access unexpectedly works: reads have no side effects here,
//! the unmapped write goes where this program has nothing, the text write stores the value that
//! is already there, the "code" in read-only data is `xor eax, eax; ret`, and the ports are
//! COM1's receive register (read) and the POST port 0x80 (write).
//!
//! This module is the attacker's only `unsafe` code (`docs/ARCHITECTURE.md`): the probes, and
//! the syscall storm's raw syscalls ([`storm_call`]).

core::arch::global_asm!(
    ".pushsection .text.probes, \"ax\", @progbits",
    ".global probe_read",
    "probe_read:",
    "    mov rax, qword ptr [rdi]",
    "    xor eax, eax",
    "    ret",
    ".global probe_write",
    "probe_write:",
    "    mov qword ptr [rdi], rsi",
    "    xor eax, eax",
    "    ret",
    ".global probe_rewrite",
    "probe_rewrite:",
    "    mov rax, qword ptr [rdi]",
    ".global probe_rewrite_insn",
    "probe_rewrite_insn:",
    "    mov qword ptr [rdi], rax",
    "    xor eax, eax",
    "    ret",
    ".global probe_exec",
    "probe_exec:",
    "    jmp rdi",
    ".global probe_inb",
    "probe_inb:",
    "    mov edx, edi",
    ".global probe_inb_insn",
    "probe_inb_insn:",
    "    in al, dx",
    "    xor eax, eax",
    "    ret",
    ".global probe_outb",
    "probe_outb:",
    "    mov edx, edi",
    "    xor eax, eax",
    ".global probe_outb_insn",
    "probe_outb_insn:",
    "    out dx, al",
    "    xor eax, eax",
    "    ret",
    ".global probe_rdtsc",
    "probe_rdtsc:",
    "    rdtsc",
    "    shl rdx, 32",
    "    or rax, rdx",
    "    mov qword ptr [rdi], rax",
    "    xor eax, eax",
    "    ret",
    ".global probe_recover",
    "probe_recover:",
    "    mov eax, 1",
    "    ret",
    ".global probe_fault_forever",
    "probe_fault_forever:",
    "    mov rax, qword ptr [rdi]",
    "    jmp probe_fault_forever",
    ".popsection",
);

extern "C" {
    fn probe_read(addr: u64) -> u32;
    fn probe_write(addr: u64, value: u64) -> u32;
    fn probe_rewrite(addr: u64) -> u32;
    fn probe_rewrite_insn();
    fn probe_exec(addr: u64) -> u32;
    fn probe_inb(port: u64) -> u32;
    fn probe_inb_insn();
    fn probe_outb(port: u64) -> u32;
    fn probe_outb_insn();
    fn probe_rdtsc(out: *mut u64) -> u32;
    fn probe_recover();
    fn probe_fault_forever(addr: u64) -> !;
}

/// An address where this program has nothing mapped (its image starts at 0x400000, its stack
/// and UTCB end below 0x1000_0000).
pub const UNMAPPED: u64 = 0x0000_5555_0000_0000;
/// The start of the kernel's direct map: present, but supervisor-only.
pub const KERNEL: u64 = 0xffff_8000_0000_0000;
/// A port the attacker has no capability for: COM1's data register (owned by serial).
pub const COM1_DATA: u16 = 0x3f8;
/// Another one: the POST diagnostic port.
pub const POST: u16 = 0x80;

/// `xor eax, eax; ret` in read-only, non-executable data.
static NOT_CODE: [u8; 4] = [0x31, 0xc0, 0xc3, 0x90];

/// Where the fault handler must resume a faulting probe.
pub fn recover_addr() -> u64 {
    probe_recover as *const () as u64
}

/// Whether reading `addr` faulted. The faulting instruction is at [`read_insn`].
pub fn read(addr: u64) -> bool {
    // SAFETY: a read has no side effect in this domain (nothing here is device memory); a fault
    // returns through `probe_recover`.
    unsafe { probe_read(addr) == 1 }
}

pub fn read_insn() -> u64 {
    probe_read as *const () as u64
}

/// Whether writing `addr` faulted (the value written is 0x5a5a). The faulting instruction is
/// at [`write_insn`].
pub fn write(addr: u64) -> bool {
    // SAFETY: only used on this program's own scratch page mapped read-only, which holds
    // nothing it relies on.
    unsafe { probe_write(addr, 0x5a5a) == 1 }
}

/// Whether writing [`UNMAPPED`] faulted. The faulting instruction is at [`write_insn`].
pub fn write_unmapped() -> bool {
    // SAFETY: nothing of this program lives at UNMAPPED, so even a write that works harms
    // nothing of it.
    unsafe { probe_write(UNMAPPED, 0x5a5a) == 1 }
}

pub fn write_insn() -> u64 {
    probe_write as *const () as u64
}

/// Whether writing to this program's own text (the first word of `probe_read`) faulted; the
/// value written is the one read there just before. The faulting instruction is at
/// [`rewrite_insn`].
pub fn rewrite_text() -> bool {
    // SAFETY: the text is readable and never changes, so storing the value just read changes
    // nothing even if the store works.
    unsafe { probe_rewrite(read_insn()) == 1 }
}

pub fn rewrite_insn() -> u64 {
    probe_rewrite_insn as *const () as u64
}

/// Whether jumping into read-only data faulted (at [`not_code_addr`]).
pub fn exec_data() -> bool {
    // SAFETY: the bytes are `xor eax, eax; ret`, so if they run, the probe returns 0 normally.
    unsafe { probe_exec(not_code_addr()) == 1 }
}

pub fn not_code_addr() -> u64 {
    NOT_CODE.as_ptr() as u64
}

/// Whether reading port [`COM1_DATA`] faulted (at [`inb_insn`]).
pub fn inb_com1() -> bool {
    // SAFETY: reading COM1's receive register at most takes a byte nobody reads.
    unsafe { probe_inb(u64::from(COM1_DATA)) == 1 }
}

pub fn inb_insn() -> u64 {
    probe_inb_insn as *const () as u64
}

/// Whether writing 0 to `port` faulted (at [`outb_insn`]). Used on [`POST`] and its neighbours
/// 0x7f (unassigned) and 0x81 (a DMA page register nothing here uses).
pub fn outb(port: u16) -> bool {
    // SAFETY: a zero to these ports changes nothing this system uses.
    unsafe { probe_outb(u64::from(port)) == 1 }
}

/// Whether writing 0 to port [`POST`] faulted (at [`outb_insn`]).
pub fn outb_post() -> bool {
    // SAFETY: the POST port only shows diagnostic codes.
    unsafe { probe_outb(u64::from(POST)) == 1 }
}

pub fn outb_insn() -> u64 {
    probe_outb_insn as *const () as u64
}

/// The time-stamp counter, `None` if RDTSC faulted (CR4.TSD).
pub fn rdtsc() -> Option<u64> {
    let mut tsc = 0u64;
    // SAFETY: the probe writes one u64 to the valid local `tsc`.
    let faulted = unsafe { probe_rdtsc(&mut tsc) == 1 };
    (!faulted).then_some(tsc)
}

/// Reads [`UNMAPPED`] forever: with the handler in `RETRY` mode, every attempt faults again.
pub fn fault_forever() -> ! {
    // SAFETY: only reads; never returns.
    unsafe { probe_fault_forever(UNMAPPED) }
}

/// One call of the syscall storm, made raw: (RAX, RDX).
pub fn storm_call(call: &isolation::storm::Call) -> (u64, u64) {
    // SAFETY: the generator never makes ThreadExit or PowerOff and never names a selector below
    // ZONE_A (where all of this program's capabilities are) except in Lookup, which only reads
    // (`isolation::storm`, tested on the host). So no call can end this thread, create, map or
    // start anything in this domain, or rewrite the UTCB, which no borrow spans here anyway.
    unsafe { rt::syscall::raw(call.number, call.args) }
}
