//! Device time for a running guest: the guest's timers (PIT, RTC, local APIC, ...) run out at
//! TSC deadlines the monitor reports, and a guest that runs (rather than waits in HLT) must be
//! interrupted then. The server's second thread does it: it sleeps on the kernel's timed
//! semaphore wait until the earliest deadline and then recalls the vCPU (`VcpuOp::Recall`),
//! whose `Recall` exit lets the monitor deliver the interrupt. The thread runs at the vCPU's
//! priority (one below the server's main thread), so a busy vCPU is recalled at the end of its
//! time slice at the latest, and the thread can never starve it.
//!
//! The kernel's timed waits count its timer ticks; the main thread measures a tick in TSC
//! values once before the vCPU exists ([`measure_tick`]), and both threads' waits use it.

use core::sync::atomic::{AtomicU64, Ordering};

use abi::Sel;
use rt::{syscall, Start};

use crate::cpu;

/// The TSC value the timer thread recalls the vCPU at; `NONE` while no timer runs.
static DEADLINE: AtomicU64 = AtomicU64::new(NONE);
/// TSC values per kernel timer tick (0 until measured).
static TICK_TSC: AtomicU64 = AtomicU64::new(0);
/// The TSC at the vCPU's last exit (`EXIT_TSC`).
static LAST_EXIT: AtomicU64 = AtomicU64::new(0);
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

/// Records the TSC of the exit being handled: the timer thread lets the guest run at least a
/// tick after an exit before it recalls it. Without that, a machine slower than a device's
/// period (Bochs: a PIT at 300 Hz against the cost of one exit) would recall the vCPU before it
/// ran a single instruction, again and again.
pub fn exited(tsc: u64) {
    LAST_EXIT.store(tsc, Ordering::Release);
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

/// Measures the kernel tick in TSC values on the calling thread, waiting on `sem` (which
/// nobody signals yet): aligned to a tick, then two. Called once before the vCPU exists, so
/// that nothing competes with the measurement.
pub fn measure_tick(sem: Sel) {
    for _ in 0..4 {
        let _ = syscall::sem_down(sem, 1);
        let start = cpu::rdtsc();
        if syscall::sem_down(sem, 2).is_err() {
            TICK_TSC.store((cpu::rdtsc() - start) / 2, Ordering::Relaxed);
            return;
        }
    }
}

fn main(_start: Start) -> ! {
    let Some(&caps) = CAPS.get() else {
        syscall::thread_exit()
    };
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
        let since_exit = now.saturating_sub(LAST_EXIT.load(Ordering::Acquire));
        if since_exit < TICK_TSC.load(Ordering::Relaxed) {
            // The guest has not run a tick since its last exit: let it.
            let _ = syscall::sem_down(caps.kick, 1);
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
