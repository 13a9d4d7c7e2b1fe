//! Device time for a running guest: the guest's timers (PIT, RTC, local APIC, ...) run out at
//! TSC deadlines the monitor reports, and a guest that runs (rather than waits in HLT) must be
//! interrupted then. The server's second thread does it: it sleeps on the kernel's timed
//! semaphore wait until the earliest deadline and then recalls the vCPU (`VcpuOp::Recall`),
//! whose `Recall` exit lets the monitor deliver the interrupt. The vCPU runs one priority
//! below the server's threads, so the recall comes on the kernel tick the deadline falls in.
//!
//! The kernel's timed waits count its timer ticks; the thread measures a tick in TSC values
//! once at start, and a halted guest's wait (on the main thread) uses the same measure.

use core::sync::atomic::{AtomicU64, Ordering};

use abi::Sel;
use rt::{syscall, Start};

use crate::cpu;

/// The TSC value the timer thread recalls the vCPU at; `NONE` while no timer runs.
static DEADLINE: AtomicU64 = AtomicU64::new(NONE);
/// TSC values per kernel timer tick (0 until measured).
static TICK_TSC: AtomicU64 = AtomicU64::new(0);
const NONE: u64 = u64::MAX;

/// What the timer thread needs: its semaphore and the vCPU to recall.
#[derive(Clone, Copy)]
pub struct TimerCaps {
    pub kick: Sel,
    pub vcpu: Sel,
}

static CAPS: spin::Once<TimerCaps> = spin::Once::new();

/// The kernel ticks to wait for `tsc_values` of TSC: half the estimate, at least one. The
/// caller waits again while the deadline is ahead, so a wait ends at most a tick late even when
/// the tick's measure is off by up to half (a busy machine stretches the measured ticks), at
/// the price of a few more wake-ups on long waits.
fn ticks_for(tsc_values: u64) -> u64 {
    match TICK_TSC.load(Ordering::Relaxed) {
        0 => 1,
        tick => (tsc_values / tick / 2).max(1),
    }
}

/// TSC values per kernel tick as measured (0: not yet).
pub fn tick_tsc() -> u64 {
    TICK_TSC.load(Ordering::Relaxed)
}

/// Sets the next deadline (the monitor's, after each exit); wakes the timer thread when it is
/// earlier than the one the thread sleeps for.
pub fn arm(deadline: Option<u64>) {
    let new = deadline.unwrap_or(NONE);
    let old = DEADLINE.swap(new, Ordering::AcqRel);
    if new < old {
        if let Some(caps) = CAPS.get() {
            let _ = syscall::sem_up(caps.kick);
        }
    }
}

/// Blocks the calling thread on `sem` until about TSC value `until` (or a signal of `sem`).
pub fn sleep_until(sem: Sel, until: u64) {
    let now = cpu::rdtsc();
    if now < until {
        let _ = syscall::sem_down(sem, ticks_for(until - now));
    }
}

/// Starts the timer thread over `mem` at `priority` (its capability at `thread`).
pub fn start(
    caps: TimerCaps,
    mem: &'static rt::thread::ThreadMem<8192>,
    thread: Sel,
    priority: u8,
) -> Result<(), rt::Error> {
    CAPS.call_once(|| caps);
    rt::thread::spawn(mem, thread, priority, main, 0)
}

fn measure_tick(kick: Sel) {
    // Align to a tick, then time four.
    let _ = syscall::sem_down(kick, 1);
    let start = cpu::rdtsc();
    if syscall::sem_down(kick, 4).is_err() {
        TICK_TSC.store((cpu::rdtsc() - start) / 4, Ordering::Relaxed);
    }
}

fn main(_start: Start) -> ! {
    let Some(&caps) = CAPS.get() else {
        syscall::thread_exit()
    };
    while TICK_TSC.load(Ordering::Relaxed) == 0 {
        measure_tick(caps.kick);
    }
    loop {
        let deadline = DEADLINE.load(Ordering::Acquire);
        if deadline == NONE {
            let _ = syscall::sem_down(caps.kick, 0);
            continue;
        }
        let now = cpu::rdtsc();
        if now < deadline {
            let _ = syscall::sem_down(caps.kick, ticks_for(deadline - now));
            continue;
        }
        // Recall once per deadline; the exit that follows sets the next one.
        if DEADLINE
            .compare_exchange(deadline, NONE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let _ = rt::vm::vcpu_recall(caps.vcpu);
        }
    }
}
