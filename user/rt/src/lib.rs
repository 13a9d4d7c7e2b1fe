//! The user runtime: what every server of the system links.
//!
//! - [`entry!`] names a server's `fn main(start: Start) -> !`; the runtime's `_start` (the ELF
//!   entry) aligns the stack, sets up the heap and calls it with the thread's UTCB.
//! - [`syscall`]: one wrapper per [`abi::Syscall`], returning [`Error`] for refusals (status
//!   codes the runtime does not know become [`Error::Unknown`], never a panic), and
//!   [`syscall::raw`] for the isolation experiments' syscall storm.
//! - [`ipc::Utcb`]: the thread's message area: words, label, capability transfer, postcard
//!   payloads ([`uwire`] layout: byte length in word 0, bytes little-endian from word 1), and the
//!   IPC syscalls, which are methods because they rewrite the message area.
//! - [`heap`]: the global allocator over a static arena (size set in [`entry!`]).
//! - [`log`] and [`println!`]: text through the serial driver's `log` portal (or the kernel
//!   console for init, the only domain allowed to use it).
//! - [`bootstrap`]: the client side of `abi::bootstrap` (register, get, get_resource, power off).
//! - [`thread`]: more threads in the caller's own domain, over static stacks.
//! - Safe forms of what servers would otherwise do with `unsafe`: [`mem::Mapping`] (a fresh
//!   mapping as an owned range that hands out slices), [`boot`] (init's boot page and modules),
//!   [`io::Port`] (port I/O on granted ports), [`cpu::rdtsc`], and
//!   [`syscall::ChildPd::start_thread`] (a thread in a domain the caller created). Servers and
//!   init `forbid(unsafe_code)`.
//! - A panic prints a best-effort message through the log portal and ends the thread.
//!
//! `unsafe` lives in `start`, `syscall::raw`, the UTCB accessors, the heap arena, `thread`,
//! `mem`, `boot`, `io` and `cpu`; each use says why it is sound.
#![no_std]

extern crate alloc;

pub mod boot;
pub mod bootstrap;
pub mod cpu;
mod error;
pub mod heap;
pub mod io;
pub mod ipc;
pub mod log;
pub mod mem;
mod panic;
mod start;
pub mod syscall;
pub mod thread;
pub mod vm;

pub use abi::Sel;
pub use error::Error;
pub use ipc::Utcb;
/// The payload layout (`uwire`), for servers that decode payloads themselves.
pub use uwire as wire;

/// What a thread receives when it starts.
pub struct Start {
    /// The thread's message area.
    pub utcb: Utcb,
    /// The start argument: 0 for servers, `abi::boot::BOOT_PAGE_ADDR` for init, the `arg` given
    /// to [`thread::spawn`] for threads the runtime starts.
    pub arg: u64,
}

/// Declares the server's entry function, `fn main(start: rt::Start) -> !`, optionally with the
/// heap size in bytes (default [`heap::DEFAULT_SIZE`]):
///
/// ```ignore
/// rt::entry!(main);
/// rt::entry!(main, heap = 64 * 1024);
/// ```
///
/// The expansion defines the symbol `__rt_main` (`no_mangle`) that the runtime's `_start`
/// calls. The `unsafe_code` lint does not report code expanded from another crate's macro, so a
/// crate using it may `forbid(unsafe_code)`; the symbol's signature is the runtime's to keep
/// right, not the server's.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        $crate::entry!($main, heap = $crate::heap::DEFAULT_SIZE);
    };
    ($main:path, heap = $size:expr) => {
        static __RT_HEAP: $crate::heap::Arena<{ $size }> = $crate::heap::Arena::new();

        #[no_mangle]
        fn __rt_main(start: $crate::Start) -> ! {
            $crate::heap::init(&__RT_HEAP);
            let main: fn($crate::Start) -> ! = $main;
            main(start)
        }
    };
}
