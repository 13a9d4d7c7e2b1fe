//! The isolation experiments (issue #3): the attacker tries, one experiment at a time, what its
//! capabilities should not allow, and reports through the serial driver one line per
//! experiment (`isolation: <name> ... passed` or `... FAILED: <why>`), then exactly
//! `isolation: N passed, M failed`, and asks init to power off with success iff M = 0.
//!
//! Every experiment checks the exact status the kernel (or a server) answers, so it fails
//! honestly when the kernel does something else. The experiments ([`caps`], [`faults`],
//! [`storm`]) share the target's protocol (`isolation::proto`) through [`Ctx`].
//!
//! Manifest expectations (`manifests/isolation.toml`): this server's priority is
//! [`PRIORITY`], its fault handler is `isolation-target.faults`, it may obtain `serial.log` and
//! `isolation-target.echo` (not `faults`), it may power off, and its quota is small enough that
//! semaphores run it out before the [`caps::QUOTA_SELS`] slots run out.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

extern crate alloc;

mod caps;
mod faults;
#[allow(unsafe_code)]
mod probe;
mod storm;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use abi::{well_known, Sel, Status};
use isolation::proto;
use rt::{bootstrap, log, syscall, thread, Error, Start, Utcb};

rt::entry!(main, heap = 64 * 1024);

/// The attacker's priority in the manifest; its looping thread runs at the same priority, so
/// that only fair scheduling lets the main thread progress.
pub const PRIORITY: u8 = 10;

/// `serial.log`.
const LOG: Sel = well_known::FIRST_FREE;
/// `isolation-target.echo`.
pub const ECHO: Sel = well_known::FIRST_FREE.offset(1);
/// The semaphore that releases the looping thread.
pub const GO: Sel = well_known::FIRST_FREE.offset(2);
/// The looping thread.
pub const LOOPER: Sel = well_known::FIRST_FREE.offset(3);

static LOOPER_MEM: thread::ThreadMem<{ 8 * 1024 }> = thread::ThreadMem::new();

/// What an experiment returns: a note on success, the reason on failure.
pub type Outcome = Result<String, String>;
/// An experiment.
type Experiment = fn(&mut Ctx) -> Outcome;

/// The attacker's state shared by the experiments.
pub struct Ctx {
    pub utcb: Utcb,
    /// Why the looping thread could not be prepared, if it could not.
    pub looper: Result<(), Error>,
}

/// The last fault the target recorded.
#[derive(Clone, Copy, Debug)]
pub struct Fault {
    pub count: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub address: u64,
}

impl Ctx {
    /// Calls `echo` with `label` and `words`; returns the reply's label and words.
    pub fn echo(&mut self, label: u64, words: &[u64]) -> Result<(u64, Vec<u64>), Error> {
        self.utcb.call(ECHO, label, words)?;
        Ok((self.utcb.label(), self.utcb.words().to_vec()))
    }

    /// Sets how the target answers the next faults.
    pub fn set_mode(&mut self, mode: u64, rip: u64) -> Result<(), String> {
        match self.echo(proto::SET_FAULT_MODE, &[mode, rip]) {
            Ok((_, words)) if words.first() == Some(&(Status::Ok as u64)) => Ok(()),
            other => Err(format!("setting the fault mode: {other:?}")),
        }
    }

    /// The target's fault count and last fault.
    pub fn last_fault(&mut self) -> Result<Fault, String> {
        match self.echo(proto::LAST_FAULT, &[]) {
            Ok((_, w)) if w.len() == 5 => Ok(Fault {
                count: w[0],
                vector: w[1],
                error: w[2],
                rip: w[3],
                address: w[4],
            }),
            other => Err(format!("asking for the last fault: {other:?}")),
        }
    }
}

/// `Err(why)` unless `got` is exactly the kernel's refusal `want`.
pub fn refused<T: core::fmt::Debug>(
    what: &str,
    got: Result<T, Error>,
    want: Status,
) -> Result<(), String> {
    match got {
        Err(Error::Kernel(s)) if s == want => Ok(()),
        other => Err(format!("{what}: expected {want}, got {other:?}")),
    }
}

/// The value, or `Err(why)` naming `what` failed.
pub fn ok<T>(what: &str, got: Result<T, Error>) -> Result<T, String> {
    got.map_err(|e| format!("{what}: {e}"))
}

/// `Err(why)` unless `cond`.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($why:tt)*) => {
        if !$cond {
            return Err(alloc::format!($($why)*));
        }
    };
}

fn main(start: Start) -> ! {
    let mut utcb = start.utcb;
    log::set_name("isolation-attacker");
    if let Err(e) = bootstrap::get(&mut utcb, "serial.log", LOG) {
        // Nothing can be printed without the serial driver; init reports the power-off.
        let _ = e;
        bootstrap::power_off(&mut utcb, false);
        syscall::thread_exit()
    }
    log::set_portal(LOG);
    if let Err(e) = bootstrap::get(&mut utcb, "isolation-target.echo", ECHO) {
        rt::println!(
            &mut utcb,
            "isolation: cannot obtain isolation-target.echo: {e}"
        );
        rt::println!(&mut utcb, "isolation: 0 passed, 1 failed");
        bootstrap::power_off(&mut utcb, false);
        syscall::thread_exit()
    }
    // The looping thread and its semaphore are made first, so that the quota experiment
    // cannot leave too little quota for them.
    let looper = syscall::create_semaphore(GO, 0)
        .and_then(|()| thread::spawn(&LOOPER_MEM, LOOPER, PRIORITY, faults::looper_main, 0));
    let mut ctx = Ctx { utcb, looper };
    // A forged power-off line: the serial driver must mark it (`serial: forged …`, which the
    // scenario requires), so that only the kernel can end a transcript with success.
    rt::println!(&mut ctx.utcb, "{}", abi::exit::SUCCESS_LINE);

    let experiments: [(&str, Experiment); 11] = [
        ("ipc ping-pong + capability transfer", caps::ping_pong),
        ("calling a portal without a capability", caps::no_capability),
        (
            "unmapped and read-only memory traps to the fault handler",
            faults::memory,
        ),
        (
            "port I/O outside the granted range traps, one past it included",
            faults::ports,
        ),
        (
            "revoked memory is unmapped everywhere it was mapped through",
            faults::revoked_memory,
        ),
        ("delegation cannot add rights", caps::rights),
        (
            "a reduced-rights memory capability maps with those rights only",
            faults::reduced_rights,
        ),
        (
            "revoke removes derived capabilities transitively",
            caps::revoke,
        ),
        (
            "quota exhaustion fails cleanly and the system continues",
            caps::quota,
        ),
        (
            "a thread faulting in a loop does not starve others",
            faults::fault_loop,
        ),
        ("syscall storm", storm::storm),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, experiment) in experiments {
        let outcome = experiment(&mut ctx);
        // Whatever the experiment did, faults end the thread again from here on.
        let _ = ctx.set_mode(proto::mode::STOP, 0);
        match outcome {
            Ok(note) if note.is_empty() => {
                passed += 1;
                rt::println!(&mut ctx.utcb, "isolation: {name} ... passed");
            }
            Ok(note) => {
                passed += 1;
                rt::println!(&mut ctx.utcb, "isolation: {name} ... passed ({note})");
            }
            Err(why) => {
                failed += 1;
                rt::println!(&mut ctx.utcb, "isolation: {name} ... FAILED: {why}");
            }
        }
    }
    rt::println!(&mut ctx.utcb, "isolation: {passed} passed, {failed} failed");
    let e = bootstrap::power_off(&mut ctx.utcb, failed == 0);
    rt::println!(&mut ctx.utcb, "isolation: power-off refused: {e}");
    syscall::thread_exit()
}
