//! The user programs and the user address-space layout.
//!
//! The programs are position-independent assembly (registers, stack and absolute user
//! addresses only; no references into the kernel image): the kernel copies the bytes between
//! `pagingos_user_start` and `pagingos_user_end` into fresh frames mapped read-only at
//! [`CODE`] in each new address space, the way an `exec` loads a program. Each program takes
//! its parameters in RDI, RSI, RDX and RCX and ends with the `exit` system call, passing a
//! value that depends only on what it computed and read back.
//!
//! System calls: `int 0x80`, number in RAX, arguments in RDI, RSI, RDX, result in RAX; every
//! other register is preserved.

use core::arch::global_asm;

/// Where the programs' code is mapped (read-only).
pub const CODE: u64 = 0x0000_0080_0000_0000;
/// The top of the user stack; the stack is demand-zero in `[STACK_TOP - STACK_SIZE, STACK_TOP)`.
pub const STACK_TOP: u64 = 0x0000_0080_4000_0000;
pub const STACK_SIZE: u64 = 1 << 20;
/// The demand-zero heap: `[HEAP, HEAP + HEAP_SIZE)`.
pub const HEAP: u64 = 0x0000_0100_0000_0000;
pub const HEAP_SIZE: u64 = 64 << 30;
/// Where the forkwait child touches fresh pages (inside the heap, 1 GiB up).
pub const HEAP_CHILD: u64 = HEAP + (1 << 30);
/// The remap window of the invlpg workload: `WINDOW_SLOTS` pages from here.
pub const WINDOW: u64 = 0x0000_0180_0000_0000;
pub const WINDOW_SLOTS: u64 = 64;
/// The word at offset 0 of invlpg pool frame `f` is `POOL_TAG + f`.
pub const POOL_TAG: u64 = 0x7a67_0000_0000;
/// The garbage workload's test region: PML4 slot 4, used by nothing else, so that corrupting
/// its paging-structure entries cannot touch the programs' code, stack or heap.
pub const TEST: u64 = 0x0000_0200_0000_0000;

pub const SYS_EXIT: u64 = 0;
pub const SYS_YIELD: u64 = 1;
pub const SYS_FORK: u64 = 2;
pub const SYS_WAIT: u64 = 3;
pub const SYS_UNMAP: u64 = 4;
pub const SYS_REMAP: u64 = 5;
pub const SYS_FAIL: u64 = 6;
/// The garbage workload's round trip (see [`Program::Garbage`]).
pub const SYS_GARBAGE: u64 = 7;

/// The accesses `garbage` asks for (RAX after [`SYS_GARBAGE`]).
pub const GARBAGE_READ: u64 = 0;
pub const GARBAGE_WRITE: u64 = 1;
pub const GARBAGE_FETCH: u64 = 2;
pub const GARBAGE_DONE: u64 = 3;

extern "C" {
    static pagingos_user_start: u8;
    static pagingos_user_end: u8;
    static pagingos_user_pagefault: u8;
    static pagingos_user_forkwait: u8;
    static pagingos_user_cr3switch: u8;
    static pagingos_user_invlpg: u8;
    static pagingos_user_compute: u8;
    static pagingos_user_garbage: u8;
}

/// A user program.
#[derive(Clone, Copy, Debug)]
pub enum Program {
    /// `(rounds, pages, stride, base)`: each round writes the first and last word of `pages`
    /// pages `stride` apart from `base` (one demand-zero fault each), reads them back (and a
    /// middle word, which must be zero), then unmaps them all with `unmap(base, pages, stride)`.
    PageFault,
    /// `(rounds, data pages D, child writes K, child fresh pages Z)`: fills D heap pages, then
    /// each round writes one of them, forks and waits; the child checks the D pages, rewrites
    /// the first K (copy-on-write faults), touches Z fresh pages and exits with a digest; the
    /// parent checks its pages are unchanged.
    ForkWait,
    /// `(rounds, pages, id)`: each round reads, checks and rewrites one word in each of `pages`
    /// pages 2 MiB + 4 KiB apart (a value tagged with `id` and the round), then yields.
    Cr3Switch,
    /// `(steps, slots, pool)`: each step remaps window slot `step % slots` to a pseudo-random
    /// pool frame (`remap(slot, frame, step & 1)`: odd steps leave it unmapped, to be faulted
    /// in), reads the frame's tag through it and increments its counter.
    Invlpg,
    /// `(rounds)`: 65,536 steps of a 64-bit mixing function per round, in registers only.
    Compute,
    /// `()`: a loop of `garbage(outcome)` system calls (RDI: the value the last access read;
    /// returns RAX = the next access, RDI = its address, RDX = the value to write), each
    /// followed by the access asked for: a read (`mov rdi, [rdi]`), a write (`mov [rdi], rdx`)
    /// or an instruction fetch (`call rdi`, the page holding `mov eax, imm32; ret`), until RAX
    /// = done. An access that faults is resumed by the kernel at `r13` with RSP = `r12` (set
    /// up at entry), which reports outcome 0.
    Garbage,
}

impl Program {
    /// The program's entry point as a user address.
    pub fn entry(self) -> u64 {
        let label = match self {
            Program::PageFault => core::ptr::addr_of!(pagingos_user_pagefault),
            Program::ForkWait => core::ptr::addr_of!(pagingos_user_forkwait),
            Program::Cr3Switch => core::ptr::addr_of!(pagingos_user_cr3switch),
            Program::Invlpg => core::ptr::addr_of!(pagingos_user_invlpg),
            Program::Compute => core::ptr::addr_of!(pagingos_user_compute),
            Program::Garbage => core::ptr::addr_of!(pagingos_user_garbage),
        };
        CODE + (label as u64 - image().as_ptr() as u64)
    }
}

/// The bytes of all user programs (what is mapped at [`CODE`]).
pub fn image() -> &'static [u8] {
    let start = core::ptr::addr_of!(pagingos_user_start);
    let end = core::ptr::addr_of!(pagingos_user_end);
    // SAFETY: the two labels bound the programs' bytes in this image's read-only data.
    unsafe { core::slice::from_raw_parts(start, end as usize - start as usize) }
}

global_asm!(
    ".section .rodata.pagingos_user, \"a\"",
    ".balign 16",
    ".global pagingos_user_start",
    "pagingos_user_start:",
    // ---- pagefault(rounds, pages, stride, base) ----
    ".global pagingos_user_pagefault",
    "pagingos_user_pagefault:",
    "    mov r12, rdi",
    "    mov r13, rsi",
    "    mov r14, rdx",
    "    mov r15, rcx",
    "    xor ebx, ebx",
    "    xor r8d, r8d",
    ".Lpf_round:",
    "    cmp r8, r12",
    "    jae .Lpf_done",
    "    xor r9d, r9d",
    "    mov r10, r15",
    ".Lpf_write:",
    "    cmp r9, r13",
    "    jae .Lpf_read_start",
    "    mov rax, r8",
    "    shl rax, 32",
    "    or rax, r9",
    "    mov [r10], rax",
    "    mov [r10 + 4088], r9",
    "    add r10, r14",
    "    inc r9",
    "    jmp .Lpf_write",
    ".Lpf_read_start:",
    "    xor r9d, r9d",
    "    mov r10, r15",
    ".Lpf_read:",
    "    cmp r9, r13",
    "    jae .Lpf_unmap",
    "    mov rax, r8",
    "    shl rax, 32",
    "    or rax, r9",
    "    cmp [r10], rax",
    "    jne .Lpf_bad",
    "    cmp [r10 + 4088], r9",
    "    jne .Lpf_bad",
    "    cmp qword ptr [r10 + 2048], 0",
    "    jne .Lpf_bad",
    "    rol rbx, 9",
    "    xor rbx, rax",
    "    add r10, r14",
    "    inc r9",
    "    jmp .Lpf_read",
    ".Lpf_unmap:",
    "    mov rdi, r15",
    "    mov rsi, r13",
    "    mov rdx, r14",
    "    mov eax, {sys_unmap}",
    "    int 0x80",
    "    mov r10, r15",
    "    cmp rax, r13",
    "    jne .Lpf_bad",
    "    inc r8",
    "    jmp .Lpf_round",
    ".Lpf_done:",
    "    mov rdi, rbx",
    "    mov eax, {sys_exit}",
    "    int 0x80",
    "    ud2",
    ".Lpf_bad:",
    "    mov rdi, r10",
    "    mov eax, {sys_fail}",
    "    int 0x80",
    "    ud2",
    // ---- forkwait(rounds, D, K, Z) ----
    ".global pagingos_user_forkwait",
    "pagingos_user_forkwait:",
    "    mov r12, rdi",
    "    mov r13, rsi",
    "    mov r14, rdx",
    "    mov r15, rcx",
    "    xor ebx, ebx",
    "    push rbx", // the stack page becomes the parent's
    "    pop rbx",
    "    movabs rcx, {heap}",
    "    xor r9d, r9d",
    ".Lfw_init:",
    "    cmp r9, r13",
    "    jae .Lfw_init_done",
    "    lea rax, [r9 + 1]",
    "    mov [rcx], rax",
    "    add rcx, 4096",
    "    inc r9",
    "    jmp .Lfw_init",
    ".Lfw_init_done:",
    "    xor r8d, r8d",
    ".Lfw_round:",
    "    cmp r8, r12",
    "    jae .Lfw_done",
    "    movabs rcx, {heap}",
    "    mov [rcx + 8], r8", // copy-on-write with one reference after a round
    "    push r8",          // so is the stack page
    "    pop r8",
    "    mov eax, {sys_fork}",
    "    int 0x80",
    "    test rax, rax",
    "    jz .Lfw_child",
    "    mov eax, {sys_wait}",
    "    int 0x80",
    "    rol rbx, 9",
    "    xor rbx, rax",
    "    movabs rcx, {heap}",
    "    xor r9d, r9d",
    ".Lfw_check:",
    "    cmp r9, r13",
    "    jae .Lfw_check_done",
    "    lea rax, [r9 + 1]",
    "    cmp [rcx], rax",
    "    jne .Lfw_bad",
    "    add rcx, 4096",
    "    inc r9",
    "    jmp .Lfw_check",
    ".Lfw_check_done:",
    "    movabs rcx, {heap}",
    "    cmp [rcx + 8], r8",
    "    jne .Lfw_bad",
    "    inc r8",
    "    jmp .Lfw_round",
    ".Lfw_done:",
    "    mov rdi, rbx",
    "    mov eax, {sys_exit}",
    "    int 0x80",
    "    ud2",
    ".Lfw_child:",
    "    push r8", // copy-on-write fault on the shared stack page
    "    pop r8",
    "    xor edx, edx",
    "    movabs rcx, {heap}",
    "    cmp [rcx + 8], r8",
    "    jne .Lfw_bad",
    "    xor r9d, r9d",
    ".Lfw_child_check:",
    "    cmp r9, r13",
    "    jae .Lfw_child_write_start",
    "    lea rax, [r9 + 1]",
    "    cmp [rcx], rax",
    "    jne .Lfw_bad",
    "    add rcx, 4096",
    "    inc r9",
    "    jmp .Lfw_child_check",
    ".Lfw_child_write_start:",
    "    movabs rcx, {heap}",
    "    xor r9d, r9d",
    ".Lfw_child_write:",
    "    cmp r9, r14",
    "    jae .Lfw_fresh_start",
    "    mov rax, [rcx]",
    "    imul rax, rax, 31",
    "    add rax, r8",
    "    mov [rcx], rax",
    "    rol rdx, 9",
    "    xor rdx, rax",
    "    add rcx, 4096",
    "    inc r9",
    "    jmp .Lfw_child_write",
    ".Lfw_fresh_start:",
    "    movabs rcx, {heap_child}",
    "    xor r9d, r9d",
    ".Lfw_fresh:",
    "    cmp r9, r15",
    "    jae .Lfw_child_exit",
    "    cmp qword ptr [rcx], 0",
    "    jne .Lfw_bad",
    "    mov [rcx], r9",
    "    add rcx, 4096",
    "    inc r9",
    "    jmp .Lfw_fresh",
    ".Lfw_child_exit:",
    "    rol rdx, 9",
    "    xor rdx, r8",
    "    mov rdi, rdx",
    "    mov eax, {sys_exit}",
    "    int 0x80",
    "    ud2",
    ".Lfw_bad:",
    "    mov rdi, rcx",
    "    mov eax, {sys_fail}",
    "    int 0x80",
    "    ud2",
    // ---- cr3switch(rounds, pages, id) ----
    ".global pagingos_user_cr3switch",
    "pagingos_user_cr3switch:",
    "    mov r12, rdi",
    "    mov r13, rsi",
    "    mov r14, rdx",
    "    shl r14, 8",
    "    xor ebx, ebx",
    "    xor r8d, r8d",
    ".Lcs_round:",
    "    cmp r8, r12",
    "    jae .Lcs_done",
    "    movabs rcx, {heap}",
    "    xor r9d, r9d",
    ".Lcs_touch:",
    "    cmp r9, r13",
    "    jae .Lcs_yield",
    // expected = round == 0 ? 0 : ((round - 1) << 16 | id << 8 | page)
    "    xor eax, eax",
    "    test r8, r8",
    "    jz .Lcs_compare",
    "    lea rax, [r8 - 1]",
    "    shl rax, 16",
    "    or rax, r14",
    "    or rax, r9",
    ".Lcs_compare:",
    "    cmp [rcx], rax",
    "    jne .Lcs_bad",
    "    mov rax, r8",
    "    shl rax, 16",
    "    or rax, r14",
    "    or rax, r9",
    "    mov [rcx], rax",
    "    rol rbx, 9",
    "    xor rbx, rax",
    "    add rcx, 0x201000",
    "    inc r9",
    "    jmp .Lcs_touch",
    ".Lcs_yield:",
    "    mov eax, {sys_yield}",
    "    int 0x80",
    "    inc r8",
    "    jmp .Lcs_round",
    ".Lcs_done:",
    "    mov rdi, rbx",
    "    mov eax, {sys_exit}",
    "    int 0x80",
    "    ud2",
    ".Lcs_bad:",
    "    mov rdi, rcx",
    "    mov eax, {sys_fail}",
    "    int 0x80",
    "    ud2",
    // ---- invlpg(steps, slots, pool) ----
    ".global pagingos_user_invlpg",
    "pagingos_user_invlpg:",
    "    mov r12, rdi",
    "    mov r13, rsi",
    "    mov r14, rdx",
    "    movabs r15, 0x2545f4914f6cdd1d",
    "    xor ebx, ebx",
    "    xor r8d, r8d",
    ".Linv_step:",
    "    cmp r8, r12",
    "    jae .Linv_done",
    "    movabs rax, 6364136223846793005",
    "    imul r15, rax",
    "    movabs rax, 1442695040888963407",
    "    add r15, rax",
    "    mov rax, r15",
    "    shr rax, 33",
    "    xor edx, edx",
    "    div r14",
    "    mov r10, rdx", // the pool frame
    "    mov rax, r8",
    "    xor edx, edx",
    "    div r13",
    "    mov r9, rdx", // the slot
    "    mov rdi, r9",
    "    mov rsi, r10",
    "    mov rdx, r8",
    "    and edx, 1",
    "    mov eax, {sys_remap}",
    "    int 0x80",
    "    test rax, rax",
    "    jnz .Linv_bad_remap",
    "    mov rcx, r9",
    "    shl rcx, 12",
    "    movabs rax, {window}",
    "    add rcx, rax",
    "    movabs rdx, {pool_tag}",
    "    add rdx, r10",
    "    cmp [rcx], rdx",
    "    jne .Linv_bad",
    "    mov rax, [rcx + 8]",
    "    inc rax",
    "    mov [rcx + 8], rax",
    "    rol rbx, 9",
    "    xor rbx, rax",
    "    xor rbx, r10",
    "    inc r8",
    "    jmp .Linv_step",
    ".Linv_done:",
    "    mov rdi, rbx",
    "    mov eax, {sys_exit}",
    "    int 0x80",
    "    ud2",
    ".Linv_bad_remap:",
    "    mov rcx, r9",
    ".Linv_bad:",
    "    mov rdi, rcx",
    "    mov eax, {sys_fail}",
    "    int 0x80",
    "    ud2",
    // ---- compute(rounds) ----
    ".global pagingos_user_compute",
    "pagingos_user_compute:",
    "    mov r12, rdi",
    "    movabs rbx, 0x243f6a8885a308d3",
    "    movabs rsi, 0xff51afd7ed558ccd",
    "    xor r8d, r8d",
    ".Lc_round:",
    "    cmp r8, r12",
    "    jae .Lc_done",
    "    mov ecx, 65536",
    ".Lc_step:",
    "    mov rax, rbx",
    "    shr rax, 33",
    "    xor rbx, rax",
    "    imul rbx, rsi",
    "    add rbx, rcx",
    "    dec ecx",
    "    jnz .Lc_step",
    "    add rbx, r8",
    "    inc r8",
    "    jmp .Lc_round",
    ".Lc_done:",
    "    mov rdi, rbx",
    "    mov eax, {sys_exit}",
    "    int 0x80",
    "    ud2",
    // ---- garbage() ----
    ".global pagingos_user_garbage",
    "pagingos_user_garbage:",
    "    lea r13, [rip + .Lg_fault]", // where the kernel resumes an access that faulted
    "    mov r12, rsp",
    "    xor edi, edi",
    ".Lg_next:",
    "    mov eax, {sys_garbage}",
    "    int 0x80",
    "    cmp rax, {g_read}",
    "    je .Lg_read",
    "    cmp rax, {g_write}",
    "    je .Lg_write",
    "    cmp rax, {g_fetch}",
    "    je .Lg_fetch",
    "    xor edi, edi",
    "    mov eax, {sys_exit}",
    "    int 0x80",
    "    ud2",
    ".Lg_read:",
    "    mov rdi, [rdi]",
    "    jmp .Lg_next",
    ".Lg_write:",
    "    mov [rdi], rdx",
    "    xor edi, edi",
    "    jmp .Lg_next",
    ".Lg_fetch:",
    "    call rdi",
    "    mov edi, eax",
    "    jmp .Lg_next",
    ".Lg_fault:",
    "    xor edi, edi",
    "    jmp .Lg_next",
    ".global pagingos_user_end",
    "pagingos_user_end:",
    sys_exit = const SYS_EXIT,
    sys_yield = const SYS_YIELD,
    sys_fork = const SYS_FORK,
    sys_wait = const SYS_WAIT,
    sys_unmap = const SYS_UNMAP,
    sys_remap = const SYS_REMAP,
    sys_fail = const SYS_FAIL,
    sys_garbage = const SYS_GARBAGE,
    g_read = const GARBAGE_READ,
    g_write = const GARBAGE_WRITE,
    g_fetch = const GARBAGE_FETCH,
    heap = const HEAP,
    heap_child = const HEAP_CHILD,
    window = const WINDOW,
    pool_tag = const POOL_TAG,
);
