//! The fuzzing exit loop of a guest with `fuzz_replies = <seed>` (issue #11): the monitor
//! decides the correct reply to every exit as for any guest, and `vmm::fuzz::FuzzDriver` turns
//! about one in three into a hostile one before it is sent, so that the kernel's reply checks
//! and its confinement check before every entry are hammered while the system's other guests
//! run on.
//!
//! Decisions:
//!
//! - **A refused reply is never resent.** The kernel's `BadArgument` is counted and the correct
//!   reply goes out instead; after `vmm::fuzz::MAX_CONSECUTIVE_REFUSALS` refusals in a row the
//!   vCPU is stopped (FAILED, `failure::REFUSED`).
//! - **The guest is started again whenever it ends** (exit port, triple fault, HLT, an access
//!   outside its RAM, an entry failure, an unconfined entry): the image is loaded again (the RAM
//!   is not cleared: code and data come back, the rest is as the guest left it) and the reply
//!   to the exit that ended it is the initial state with every group, fuzzed like any other.
//!   So a run reaches the exit cap instead of ending at the first hostile reply that kills the
//!   guest.
//! - **A watchdog keeps exits coming**: a second thread recalls the vCPU (`VcpuControl
//!   Recall`) whenever [`RECALL_TICKS`] timer ticks passed without an exit, so a guest that a
//!   hostile reply left looping without exits (or in a fault loop the kernel's vTLB serves by
//!   itself) still exits; [`STUCK_RECALLS`] recalls in a row with no other exit between them
//!   count as an end and the guest is started again. A guest that keeps exiting is never
//!   recalled, so its exits (and the fuzzer's draws) do not depend on timing.
//! - **An exit cap ends the run**: [`SVM_EXITS`] exits on SVM (QEMU), [`VMX_EXITS`] on VMX
//!   (Bochs, about 20 times slower); the kernel tells the backend (`KernelStats`
//!   `VIRT_BACKEND`). The exit that reaches the cap is answered with STOP and the guest's end is
//!   reported to init as STOPPED at that exit's RIP (the manifest must expect `"any"`).
//! - **The fuzzer's policy follows the backend** ([`backend`]): on SVM it keeps the CPL, TR and
//!   a nested guest's paging mode, on VMX it sets RFLAGS.IF in every reply that writes RFLAGS
//!   (`vmm::fuzz::Policy`: states the emulators cannot take, found by this fuzzer).
//! - **The guest's own output is not shown** (it is counted): with hostile replies a guest
//!   prints whatever its broken state makes it print, its runtime's panic messages included,
//!   which would read like a failure of the system. The monitor's log lines are shown up to
//!   [`LOG_LINES`].
//! - Lines, all prefixed `vmm.<guest>: `: `fuzz: unconfined entry refused (breach <rule>)` per
//!   `EntryFailure` with `entry_error::UNCONFINED` (`<rule>` is `virt::confine::Breach`), one
//!   progress line per 1,000 exits, `fuzz: entry failure (…) after …` for the first other entry
//!   failures (with the last mutation), and when the guest ends
//!   `fuzz: seed <seed>: <exits> exits over <kinds> exit kinds (<names>), <mutated> mutated,
//!   <refused> refused, <unconfined> unconfined entries refused, kernel alive`.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use abi::bootstrap::outcome;
use abi::utcb::MSG_WORDS;
use abi::vm::{mtd, reply_len, word, Backend, Exit, EXIT_LABEL};
use abi::{well_known, Sel, Status};
use manifest::{outcome_text, Guest};
use rt::{syscall, thread, Error, Start, Utcb};
use vmm::fuzz::{AfterRefusal, FuzzDriver, Policy, MAX_CONSECUTIVE_REFUSALS, MUTATE_ONE_IN};
use vmm::monitor::{failure, End, Note};

use crate::{cpu, load, new_monitor, Set, SetupError, EXIT_BASE, RECV, VCPU};

/// Timer ticks without an exit after which the watchdog recalls the vCPU.
pub const RECALL_TICKS: u64 = 20;
/// Recall exits in a row (no other exit between them) after which the guest counts as stuck
/// and is started again.
pub const STUCK_RECALLS: u32 = 2;
/// The watchdog thread and the semaphore it naps on.
const WATCHDOG: Sel = well_known::FIRST_FREE.offset(8);
const NAP: Sel = well_known::FIRST_FREE.offset(9);
static WATCHDOG_MEM: thread::ThreadMem<8192> = thread::ThreadMem::new();
/// Set when the guest has ended: the watchdog stops.
static DONE: AtomicBool = AtomicBool::new(false);
/// Exits other than recalls so far (the watchdog's sign of life from the guest).
static EXITS: AtomicU64 = AtomicU64::new(0);

/// The watchdog: recalls the vCPU when [`RECALL_TICKS`] ticks passed without an exit (other
/// than a recall), until the guest has ended.
fn watchdog(_start: Start) -> ! {
    let mut seen = EXITS.load(Ordering::Acquire);
    while !DONE.load(Ordering::Acquire) {
        // Nobody signals the semaphore: this is a nap of RECALL_TICKS ticks.
        let _ = syscall::sem_down(NAP, RECALL_TICKS);
        let now = EXITS.load(Ordering::Acquire);
        if DONE.load(Ordering::Acquire) {
            break;
        }
        if now == seen && rt::vm::vcpu_recall(VCPU).is_err() {
            break;
        }
        seen = now;
    }
    syscall::thread_exit()
}

/// Exits after which the guest is stopped on SVM (QEMU).
pub const SVM_EXITS: u64 = 20_000;
/// Exits after which the guest is stopped on VMX (Bochs: about 20 times slower than QEMU).
pub const VMX_EXITS: u64 = 3_000;
/// Monitor log lines shown (then only counted).
pub const LOG_LINES: u64 = 24;
/// Restarts of the guest announced with a line (then only counted).
const REBOOT_LINES: u64 = 8;

/// The exit cap, the fuzzer's policy and the backend's name, from the kernel's backend
/// (`KernelStats` `VIRT_BACKEND`). On SVM
/// (QEMU) the policy spares QEMU the two states it cannot take (`vmm::fuzz::Policy`: CPL > 0
/// with an unusable TR aborts QEMU; a nested-mode guest out of long mode can hang it); on VMX
/// (Bochs) every reply that writes RFLAGS sets IF, without which Bochs lets a looping guest
/// starve the system.
fn backend(guest: &Guest) -> (u64, Policy, &'static str) {
    let backend = syscall::kernel_stats(abi::syscall::stats::VIRT_BACKEND).ok();
    let svm = backend.and_then(Backend::from_stat) == Some(Backend::Svm);
    if svm {
        let policy = Policy {
            keep_paging_mode: guest.mode == manifest::MemoryMode::Nested,
            keep_cpl_and_tr: true,
            interrupts_on: false,
        };
        (SVM_EXITS, policy, "SVM")
    } else {
        let policy = Policy {
            interrupts_on: true,
            ..Policy::default()
        };
        (VMX_EXITS, policy, "VMX")
    }
}

/// What the loop shows and hides.
#[derive(Default)]
struct Shown {
    /// Guest UART lines not shown.
    guest_lines: u64,
    /// Monitor log lines seen (the first [`LOG_LINES`] shown).
    logs: u64,
}

/// Serves the guest's exits with fuzzed replies until the exit cap (or too many refusals);
/// returns the end to report.
pub fn serve(utcb: &mut Utcb, set: &mut Set, guest: &Guest, name: &str, seed: u64) -> End {
    let (cap, policy, backend) = backend(guest);
    rt::println!(
        utcb,
        "{name}: fuzz: seed {seed}: about one reply in {MUTATE_ONE_IN} fuzzed; the guest restarts when it ends and stops after {cap} exits ({backend}{}{}{}); its output is not shown",
        if policy.keep_paging_mode { ", paging mode kept" } else { "" },
        if policy.keep_cpl_and_tr { ", CPL and TR kept" } else { "" },
        if policy.interrupts_on { ", RFLAGS.IF set" } else { "" },
    );
    let started = syscall::create_semaphore(NAP, 0).and_then(|()| {
        let priority = guest.priority;
        thread::spawn(&WATCHDOG_MEM, WATCHDOG, priority, watchdog, 0)
    });
    if let Err(e) = started {
        rt::println!(
            utcb,
            "{name}: fuzz: no watchdog ({e}): a guest that loops without exits is not restarted"
        );
    }
    let mut driver = FuzzDriver::new(seed, cap).with_policy(policy);
    let mut shown = Shown::default();
    let end = run(utcb, set, guest, name, &mut driver, &mut shown);
    DONE.store(true, Ordering::Release);
    let stats = &driver.stats;
    rt::println!(utcb, "{name}: {}", stats.final_line());
    rt::println!(
        utcb,
        "{name}: {}; {} guest lines and {} VMM log lines not shown",
        stats.extra_line(),
        shown.guest_lines,
        shown.logs.saturating_sub(LOG_LINES)
    );
    end
}

/// Replies STOP to the exit being answered; returns `end`.
fn stop(utcb: &mut Utcb, name: &str, end: End) -> End {
    utcb.set_msg(0, &[mtd::STOP]);
    if let Err(e) = utcb.reply() {
        rt::println!(utcb, "{name}: the stop reply failed: {e}");
    }
    end
}

fn run(
    utcb: &mut Utcb,
    set: &mut Set,
    guest: &Guest,
    name: &str,
    driver: &mut FuzzDriver,
    shown: &mut Shown,
) -> End {
    let mut out = [0u64; word::COUNT];
    let mut words = [0u64; MSG_WORDS];
    // Recall exits since the last other exit.
    let mut recalls = 0u32;
    // The first wait has nothing to reply to.
    utcb.set_msg(0, &[]);
    loop {
        utcb.set_cap_recv(RECV);
        match utcb.reply_wait(EXIT_BASE) {
            Ok(_) => {}
            Err(Error::Kernel(Status::BadArgument)) => match driver.refused(&mut out) {
                AfterRefusal::Correct(n) => {
                    utcb.set_msg(0, &out[..n]);
                    continue;
                }
                AfterRefusal::Stop => {
                    rt::println!(
                        utcb,
                        "{name}: fuzz: {MAX_CONSECUTIVE_REFUSALS} replies in a row refused; stopping the guest"
                    );
                    let end = End {
                        outcome: outcome::FAILED,
                        detail: failure::REFUSED,
                    };
                    return stop(utcb, name, end);
                }
            },
            Err(e) => {
                rt::println!(utcb, "{name}: exit portal unusable: {e}");
                return End {
                    outcome: outcome::FAILED,
                    detail: failure::SETUP,
                };
            }
        }
        if utcb.label() != EXIT_LABEL {
            // Only the kernel calls exit portals; anything else gets an empty reply.
            utcb.set_msg(0, &[]);
            continue;
        }
        let n = utcb.words().len().min(MSG_WORDS);
        words[..n].copy_from_slice(&utcb.words()[..n]);
        let msg = &words[..n];
        let reason = msg.get(word::REASON).copied().unwrap_or(u64::MAX);
        if reason == Exit::Profile as u64 {
            // Not an exit: the monitor logs it, the reply changes nothing.
            let response = set.monitor.handle(msg, &mut cpu::cpuid, &mut set.ram);
            print_notes(utcb, name, &response.notes, shown);
            utcb.set_msg(0, response.words());
            continue;
        }
        recalls = if reason == Exit::Recall as u64 {
            recalls + 1
        } else {
            EXITS.fetch_add(1, Ordering::AcqRel);
            0
        };
        let stuck = recalls >= STUCK_RECALLS;
        let notes = driver.exit(msg);
        for line in &notes.lines {
            rt::println!(utcb, "{name}: {line}");
        }
        let response = set.monitor.handle(msg, &mut cpu::cpuid, &mut set.ram);
        print_notes(utcb, name, &response.notes, shown);
        if notes.capped {
            let rip = if msg.get(word::MASK).copied().unwrap_or(0) & mtd::RIP != 0 {
                msg.get(word::RIP).copied().unwrap_or(0)
            } else {
                0
            };
            let end = End {
                outcome: outcome::STOPPED,
                detail: rip,
            };
            return stop(utcb, name, end);
        }
        let len = if response.stops() || stuck {
            recalls = 0;
            let end = response
                .notes
                .iter()
                .find_map(|n| match n {
                    Note::End(e) => Some(*e),
                    _ => None,
                })
                .or(set.monitor.ended())
                .unwrap_or(End {
                    outcome: outcome::FAILED,
                    detail: failure::PROTOCOL,
                });
            driver.stats.reboots += 1;
            driver.stats.stuck += u64::from(!response.stops());
            if driver.stats.reboots <= REBOOT_LINES && !response.stops() {
                let last = if driver.fuzzer.last_kind().is_some() {
                    driver.fuzzer.describe_last()
                } else {
                    "none".into()
                };
                rt::println!(
                    utcb,
                    "{name}: fuzz: the guest made no exit for {STUCK_RECALLS} recall periods at exit {}; starting it again (last mutation: {last})",
                    driver.stats.exits
                );
            } else if driver.stats.reboots <= REBOOT_LINES {
                rt::println!(
                    utcb,
                    "{name}: fuzz: the guest ended ({}) at exit {}; starting it again",
                    outcome_text(end.outcome, end.detail),
                    driver.stats.exits
                );
            }
            if let Err(e) = restart(set, guest) {
                rt::println!(utcb, "{name}: fuzz: cannot start the guest again: {e}");
                return stop(utcb, name, end);
            }
            let mut initial = set.initial;
            initial.set(word::MASK, mtd::ALL);
            driver.reply(msg, &initial.words[..reply_len(mtd::ALL)], &mut out)
        } else {
            driver.reply(msg, response.words(), &mut out)
        };
        utcb.set_msg(0, &out[..len]);
    }
}

/// Loads the image again and starts a new monitor from its initial state.
fn restart(set: &mut Set, guest: &Guest) -> Result<(), SetupError> {
    let boot = load(set.ram.bytes_mut(), set.image, set.initrd, guest)?;
    set.initial = boot.state;
    set.monitor = new_monitor(guest, boot.state, &mut set.ram)?;
    Ok(())
}

/// Shows the monitor's log lines (the first [`LOG_LINES`]) and counts the guest's lines.
fn print_notes(utcb: &mut Utcb, name: &str, notes: &[Note], shown: &mut Shown) {
    for note in notes {
        match note {
            Note::Line(_) => shown.guest_lines += 1,
            Note::Log(text) => {
                shown.logs += 1;
                if shown.logs <= LOG_LINES {
                    rt::println!(utcb, "{name}: {text}");
                }
            }
            Note::End(_) => {}
        }
    }
}
