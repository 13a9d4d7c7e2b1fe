//! More threads in the caller's own domain, each over a static [`ThreadMem`] (its UTCB page and
//! stack), and the record of which stack belongs to which UTCB (the panic handler uses it to
//! find the panicking thread's UTCB).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use abi::{well_known, Sel};

use crate::{syscall, Error, Start};

/// Threads the runtime records besides the main thread.
pub const MAX_THREADS: usize = 16;

struct Record {
    stack_lo: AtomicU64,
    stack_hi: AtomicU64,
    utcb: AtomicU64,
}

static RECORDS: [Record; MAX_THREADS] = [const {
    Record {
        stack_lo: AtomicU64::new(0),
        stack_hi: AtomicU64::new(0),
        utcb: AtomicU64::new(0),
    }
}; MAX_THREADS];
static MAIN_UTCB: AtomicU64 = AtomicU64::new(0);

pub(crate) fn set_main_utcb(addr: u64) {
    MAIN_UTCB.store(addr, Ordering::Release);
}

/// The UTCB address of the calling thread: the recorded thread whose stack holds the stack
/// pointer, else the main thread's.
pub(crate) fn current_utcb() -> u64 {
    let sp: u64;
    // SAFETY: reading RSP has no effect.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack)) };
    RECORDS
        .iter()
        .find(|r| {
            r.utcb.load(Ordering::Acquire) != 0
                && r.stack_lo.load(Ordering::Acquire) <= sp
                && sp <= r.stack_hi.load(Ordering::Acquire)
        })
        .map_or_else(
            || MAIN_UTCB.load(Ordering::Acquire),
            |r| r.utcb.load(Ordering::Acquire),
        )
}

/// Static memory for one thread: its UTCB page, then `STACK` bytes of stack (a multiple of 16).
/// Declare it as a `static`; [`spawn`] uses it once.
#[repr(C, align(4096))]
pub struct ThreadMem<const STACK: usize> {
    utcb: UnsafeCell<[u8; 4096]>,
    stack: UnsafeCell<[u8; STACK]>,
    taken: AtomicBool,
}

// SAFETY: the memory is handed to exactly one new thread (guarded by `taken`); the runtime
// writes it only before that thread exists.
unsafe impl<const STACK: usize> Sync for ThreadMem<STACK> {}

impl<const STACK: usize> ThreadMem<STACK> {
    const CHECK: () = assert!(STACK.is_multiple_of(16) && STACK >= 1024);

    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        let () = Self::CHECK;
        ThreadMem {
            utcb: UnsafeCell::new([0; 4096]),
            stack: UnsafeCell::new([0; STACK]),
            taken: AtomicBool::new(false),
        }
    }
}

extern "C" {
    /// The new thread's first instruction (see `start.rs`).
    fn _rt_thread_start();
}

/// Starts `entry(Start { utcb, arg })` as a new thread of this domain at `priority`, over
/// `mem`; its capability goes to `dest`. Needs CONTROL on `well_known::SELF_PD`.
pub fn spawn<const STACK: usize>(
    mem: &'static ThreadMem<STACK>,
    dest: Sel,
    priority: u8,
    entry: fn(Start) -> !,
    arg: u64,
) -> Result<(), Error> {
    if mem.taken.swap(true, Ordering::AcqRel) {
        return Err(Error::InUse);
    }
    let utcb = mem.utcb.get() as u64;
    let stack_lo = mem.stack.get() as u64;
    let top = stack_lo + STACK as u64;
    // SAFETY: the two words below the stack top belong to `mem`, which no thread uses yet
    // (`taken` was clear); `_rt_thread_start` pops them as the entry and its argument.
    unsafe {
        core::ptr::write((top - 16) as *mut u64, entry as usize as u64);
        core::ptr::write((top - 8) as *mut u64, arg);
    }
    let record = RECORDS.iter().find(|r| {
        r.utcb
            .compare_exchange(0, utcb, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    });
    if let Some(r) = record {
        r.stack_lo.store(stack_lo, Ordering::Release);
        r.stack_hi.store(top, Ordering::Release);
    }
    // SAFETY: the entry is the runtime's trampoline, which calls `entry`, a safe Rust function;
    // the stack and UTCB are `mem`'s, used by nothing else from now on.
    let result = unsafe {
        syscall::create_thread(
            dest,
            well_known::SELF_PD,
            _rt_thread_start as *const () as u64,
            top - 16,
            u64::from(priority),
            utcb,
        )
    };
    if result.is_err() {
        if let Some(r) = record {
            r.utcb.store(0, Ordering::Release);
        }
        mem.taken.store(false, Ordering::Release);
    }
    result
}
