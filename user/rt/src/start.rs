//! Thread entry: `_start` (the ELF entry of every server) and `_rt_thread_start` (threads made
//! by [`crate::thread::spawn`]).
//!
//! The kernel starts a thread with RSP = its stack top, RDI = its UTCB's address and RSI = the
//! start argument (`abi::syscall`). `_start` clears the frame pointer (the end of the frame
//! chain), aligns the stack to 16 bytes and calls `rt_start(utcb, arg)`. `_rt_thread_start` finds
//! the entry function and its argument in the two words at its stack pointer (written by
//! `spawn`), pops them, which leaves RSP 16-aligned, and calls `rt_thread_start`.

use crate::ipc::Utcb;
use crate::{thread, Start};

core::arch::global_asm!(
    ".pushsection .text._start, \"ax\", @progbits",
    ".global _start",
    ".type _start, @function",
    "_start:",
    "    xor ebp, ebp",
    "    and rsp, -16",
    "    call {start}",
    "    ud2",
    ".size _start, . - _start",
    ".popsection",
    ".pushsection .text._rt_thread_start, \"ax\", @progbits",
    ".global _rt_thread_start",
    ".type _rt_thread_start, @function",
    "_rt_thread_start:",
    "    pop rsi",
    "    pop rdx",
    "    xor ebp, ebp",
    "    call {thread}",
    "    ud2",
    ".size _rt_thread_start, . - _rt_thread_start",
    ".popsection",
    start = sym rt_start,
    thread = sym rt_thread_start,
);

extern "Rust" {
    /// Defined by [`crate::entry!`] in the server.
    fn __rt_main(start: Start) -> !;
}

extern "C" fn rt_start(utcb: u64, arg: u64) -> ! {
    thread::set_main_utcb(utcb);
    crate::boot::set_first_arg(arg);
    // SAFETY: the kernel passes this thread's mapped UTCB page; this is its only handle.
    let utcb = unsafe { Utcb::from_addr(utcb) };
    // SAFETY: `__rt_main` is the server's `entry!` function, a safe Rust fn with this signature.
    unsafe { __rt_main(Start { utcb, arg }) }
}

extern "C" fn rt_thread_start(utcb: u64, entry: u64, arg: u64) -> ! {
    // SAFETY: `spawn` stored a `fn(Start) -> !` at the stack top, which arrives here as `entry`;
    // function pointers and u64 have the same size on x86-64.
    let entry: fn(Start) -> ! = unsafe { core::mem::transmute::<u64, fn(Start) -> !>(entry) };
    // SAFETY: the kernel passes this thread's UTCB page (from `spawn`); this is its only handle.
    let utcb = unsafe { Utcb::from_addr(utcb) };
    entry(Start { utcb, arg })
}
