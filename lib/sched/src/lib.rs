//! The scheduler's bookkeeping, kept out of the kernel so that it can be tested on the host.
//!
//! The kernel decides *when* to schedule (timer interrupt, blocking call, wake-up) and switches
//! contexts; this crate decides *who* runs next and *when* a timed wait ends:
//!
//! - [`RunQueue`]: ready threads, one FIFO per priority. The highest non-empty priority always
//!   runs first (strict priority), and threads of equal priority take turns (round robin).
//!   Strict priority means a thread that is always ready starves every lower priority: that is
//!   the contract, not a bug, and the system's priority assignment must allow for it.
//! - [`Timeouts`]: deadlines of timed waits (a semaphore down with a timeout), in timer ticks.
//! - [`Slice`]: how many ticks the running thread has left before it goes to the back of its
//!   priority's queue.
//!
//! Items are the kernel's thread handles (any `Copy + Eq` type). Bad arguments give a
//! [`SchedError`], never a panic. The crate has no `unsafe` code and is tested on the host
//! (`cargo test -p sched`).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod runqueue;
mod slice;
mod timeouts;

use core::fmt;

pub use runqueue::{RunQueue, PRIORITIES};
pub use slice::{Slice, DEFAULT_SLICE_TICKS};
pub use timeouts::Timeouts;

/// Why a queue operation was refused. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedError {
    /// The priority is not below [`PRIORITIES`].
    BadPriority,
    /// The item is already queued (at any priority).
    AlreadyQueued,
    /// The queue could not grow: the kernel heap is exhausted.
    NoMemory,
}

impl fmt::Display for SchedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadPriority => "priority out of range",
            Self::AlreadyQueued => "already queued",
            Self::NoMemory => "out of memory",
        })
    }
}
