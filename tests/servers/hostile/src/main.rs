//! The hostile experiments (issue #11, security): a server that attacks the kernel through the
//! hardware-virtualization syscalls, quotas, stale capabilities and garbage arguments, while
//! innocent guests run beside it. It reports through the serial driver one line per experiment,
//! `hostile: <name> ... passed (<how it was contained>)` or `hostile: <name> ... FAILED: <why>`,
//! then exactly `hostile: N passed, M failed`.
//!
//! **Two rounds.** The whole list runs twice. After round 1 the server records the kernel's free
//! frames, heap bytes in use and its own quota used (`KernelStats`, syscall 27) as the baseline;
//! in round 2 it prints `hostile: memory after <name>: frames <f> heap <h> quota <q>` after
//! every experiment, and an experiment whose frames or quota differ from the baseline counts as
//! FAILED (see [`account`] for the heap). N and M count both rounds.
//!
//! **Ending.** The server asks init to power off with success iff M = 0. A failure ends the
//! system at once; a success waits for the innocent guests (init ends the system when the last
//! one ends, with success only if they passed), so neither side has to outlast the other.
//!
//! **Exits.** One thread ([`exits`]) serves every exit portal of this server and hands each
//! exit to the main thread, which decides the reply; so the main thread waits for exits with
//! timeouts and can tell "no exit ever arrived" from a hang.
//!
//! Manifest expectations (`manifests/hostile.toml`): priority [`PRIORITY`] (that of the
//! guests), `serial.log`, scratch memory of at least [`mem::SCRATCH_PAGES`] pages, a quota of at
//! least 2 MiB (the ASID experiment keeps 64 Vms at once, about 17 KiB each, and two
//! experiments make shadow-mode Vms, 512 KiB each), and `power_off = true`.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

extern crate alloc;

mod exits;
mod experiments;
mod garbage;
mod mem;
mod quota;
#[allow(unsafe_code)]
mod raw;
mod threads;
mod vcpu;

use alloc::format;
use alloc::string::String;

use abi::syscall::stats;
use abi::{well_known, Sel, Status};
use rt::{bootstrap, log, syscall, Error, Start, Utcb};

rt::entry!(main, heap = 256 * 1024);

/// The server's priority in the manifest, which is also the guests' (equal: the experiments
/// and the innocent guests share the CPU round-robin, and neither is starved by design). The
/// server's threads and the vCPUs it makes run at this priority too.
pub const PRIORITY: u8 = 10;

/// The scratch memory (`GET_RESOURCE "memory"`).
pub const SCRATCH: Sel = well_known::FIRST_FREE;
/// The echo portal (served by [`threads::echo_main`]) and its thread.
pub const ECHO: Sel = Sel::new(17);
pub const ECHO_THREAD: Sel = Sel::new(18);
/// The exit proxy thread ([`exits`]).
pub const PROXY_THREAD: Sel = Sel::new(19);
/// A semaphore nobody signals: timed sleeps.
pub const SLEEP: Sel = Sel::new(20);
/// The proxy signals EXIT_SEM when it has an exit for the main thread, and waits on REPLY_SEM.
pub const EXIT_SEM: Sel = Sel::new(21);
pub const REPLY_SEM: Sel = Sel::new(22);
/// Where capabilities sent to the proxy or the echo thread land (none are sent).
pub const RECV_PROXY: Sel = Sel::new(23);
pub const RECV_ECHO: Sel = Sel::new(24);
/// The proxy signals SCRIPT_SEM when it has made a run by itself ([`exits::scripted_run`]).
pub const SCRIPT_SEM: Sel = Sel::new(25);
/// `serial.log`, placed right below the exit portals: a vCPU whose `exit_base` is LOG has the
/// serial driver's portal as its Startup portal and this server's exit portals for the rest.
pub const LOG: Sel = Sel::new(31);
/// The exit portals, `EXIT_BASE + reason` (badge = reason), bound to the proxy thread.
pub const EXIT_BASE: Sel = Sel::new(32);

/// What an experiment returns: a note on success, the reason on failure.
pub type Outcome = Result<String, String>;
type Experiment = fn(&mut Ctx) -> Outcome;

/// How much work the experiments do: full on SVM (QEMU in the scenarios), less on VMX, where the
/// scenarios run Bochs, which is some ten times slower.
#[derive(Clone, Copy)]
pub struct Scale {
    /// Most VmMap calls of the remap experiment.
    pub remaps: u64,
    /// Rounds of the destroy-child experiment.
    pub child_rounds: u64,
    /// Vms of the ASID experiment.
    pub vms: u64,
    /// Calls of the garbage experiment.
    pub garbage_calls: u64,
    /// Recalls of the recall storm.
    pub recalls: u64,
    /// Timer ticks to wait for an exit that must come, for one that must not, and for late
    /// ones after an experiment. A tick is 200,000 APIC-timer periods: about 3 ms of real time
    /// on QEMU, and on Bochs (no clock sync, APIC time from the instruction count) some 3.2
    /// million emulated instructions, about 20 times more work than a QEMU tick sees.
    pub expected: u64,
    pub unexpected: u64,
    pub settle: u64,
}

pub const FULL: Scale = Scale {
    remaps: 200_000,
    child_rounds: 20,
    vms: 64,
    garbage_calls: 2000,
    recalls: 10_000,
    expected: 300,
    unexpected: 60,
    settle: 3,
};
pub const REDUCED: Scale = Scale {
    remaps: 200_000,
    child_rounds: 20,
    vms: 8,
    garbage_calls: 600,
    recalls: 2_000,
    expected: 100,
    unexpected: 8,
    settle: 1,
};

/// The state the experiments share.
pub struct Ctx {
    pub utcb: Utcb,
    /// Whether the main thread holds an exit the proxy waits to answer.
    pub pending: bool,
    pub scale: Scale,
    /// 1 or 2.
    pub round: u32,
    /// Whether the kernel runs VMX (else SVM).
    pub vmx: bool,
    /// Exits that arrived after the experiment had stopped or removed their vCPUs (see
    /// [`exits::settle`]): how many, and the first.
    pub late: (u64, String),
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

/// `Err(why)` unless `got` is a refusal by the kernel (any status).
pub fn any_refusal<T: core::fmt::Debug>(
    what: &str,
    got: Result<T, Error>,
) -> Result<Status, String> {
    match got {
        Err(Error::Kernel(s)) => Ok(s),
        other => Err(format!("{what}: expected a refusal, got {other:?}")),
    }
}

/// The value, or `Err(why)` naming what failed.
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

/// One kernel figure (`abi::syscall::stats`), or `u64::MAX` when the kernel refuses.
pub fn stat(which: u64) -> u64 {
    syscall::kernel_stats(which).unwrap_or(u64::MAX)
}

/// The kernel's memory as the leak checks compare it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Memory {
    pub frames: u64,
    pub heap: u64,
    pub quota: u64,
}

impl Memory {
    pub fn now() -> Memory {
        Memory {
            frames: stat(stats::FREE_FRAMES),
            heap: stat(stats::HEAP_USED),
            quota: stat(stats::QUOTA_USED),
        }
    }
}

/// Heap bytes the kernel may use beyond the baseline after an experiment without counting as a
/// leak. The heap is global and its growth is not all leaks: vectors and queues keep the
/// capacity they once needed (reached in round 1, so round 2 should not grow them), and the
/// innocent guests' IPC grows the kernel's queues too. A real leak per object (a record, a Vm)
/// repeated by an experiment's loop exceeds this by far; anything within it is reported in the
/// memory line but not judged.
pub const HEAP_SLACK: u64 = 64 * 1024;

/// Compares `now` with `baseline`: `Err(why)` when the quota differs, fewer frames are free, or
/// the heap grew by more than [`HEAP_SLACK`].
///
/// Free frames are global: the innocent guests' domains give theirs back when the guests end,
/// which may happen during any experiment, so more free frames than the baseline is not judged
/// (the memory line shows it); fewer is a leak. This server's own quota, which every frame and
/// heap object made for it is charged to, must come back exactly.
fn account(baseline: Memory, now: Memory) -> Result<(), String> {
    let mut why = String::new();
    if now.frames < baseline.frames {
        why += &format!(
            "free frames {} against {} after round 1 ({:+}); ",
            now.frames,
            baseline.frames,
            now.frames as i64 - baseline.frames as i64
        );
    }
    if now.quota != baseline.quota {
        why += &format!(
            "quota used {} against {} after round 1 ({:+}); ",
            now.quota,
            baseline.quota,
            now.quota as i64 - baseline.quota as i64
        );
    }
    if now.heap > baseline.heap.saturating_add(HEAP_SLACK) {
        why += &format!(
            "kernel heap {} against {} after round 1 (+{}, more than {HEAP_SLACK} of slack); ",
            now.heap,
            baseline.heap,
            now.heap - baseline.heap
        );
    }
    if why.is_empty() {
        Ok(())
    } else {
        why.truncate(why.len() - 2);
        Err(why)
    }
}

fn main(start: Start) -> ! {
    let mut utcb = start.utcb;
    log::set_name("hostile");
    if bootstrap::get(&mut utcb, "serial.log", LOG).is_err() {
        // Nothing can be printed without the serial driver; init reports the power-off.
        bootstrap::power_off(&mut utcb, false);
        syscall::thread_exit()
    }
    log::set_portal(LOG);
    let vmx = vcpu::backend_is_vmx();
    let mut ctx = Ctx {
        utcb,
        pending: false,
        scale: if vmx { REDUCED } else { FULL },
        round: 0,
        vmx,
        late: (0, String::new()),
    };
    if let Err(why) = setup(&mut ctx) {
        rt::println!(&mut ctx.utcb, "hostile: set-up FAILED: {why}");
        rt::println!(&mut ctx.utcb, "hostile: 0 passed, 1 failed");
        let e = bootstrap::power_off(&mut ctx.utcb, false);
        rt::println!(&mut ctx.utcb, "hostile: power-off refused: {e}");
        syscall::thread_exit()
    }
    rt::println!(
        &mut ctx.utcb,
        "hostile: {} backend, {} work: {} remaps, {} Vms, {} garbage calls, {} recalls; quota {} of {}",
        if vmx { "VMX" } else { "SVM" },
        if vmx { "reduced (slow emulator)" } else { "full" },
        ctx.scale.remaps,
        ctx.scale.vms,
        ctx.scale.garbage_calls,
        ctx.scale.recalls,
        stat(stats::QUOTA_USED),
        stat(stats::QUOTA_LIMIT),
    );

    // Order: the experiments that compare the kernel's global free frames within themselves
    // (destroy-child-quota, asid-exhaustion) come after the first seconds, when the innocent
    // `hello` guest (whose end frees frames) has long ended; the unconfined and foreign-portal
    // experiments come last, since a kernel that fails them may leave a guest running wild.
    let list: [(&str, Experiment); 17] = [
        ("map-reduced-rights", experiments::map_reduced_rights),
        ("patch-readonly", experiments::patch_readonly),
        ("vm-cap-reduced-rights", experiments::vm_cap_reduced_rights),
        ("vmmap-limits", experiments::vmmap_limits),
        ("vmmap-remap-quota", quota::vmmap_remap_quota),
        ("refused-reply-no-livelock", vcpu::refused_reply),
        ("recall-storm", vcpu::recall_storm),
        ("stale-caps", experiments::stale_caps),
        ("utcb-after-revoke", threads::utcb_after_revoke),
        ("syscall-garbage-vm", garbage::garbage),
        ("destroy-child-quota", quota::destroy_child_quota),
        ("asid-exhaustion", vcpu::asid_exhaustion),
        ("exit-base-edge", vcpu::exit_base_edge),
        ("unconfined-startup", vcpu::unconfined_startup),
        ("unconfined-paging-off", vcpu::unconfined_paging_off),
        ("unconfined-handler-death", vcpu::unconfined_handler_death),
        ("exit-portal-foreign", vcpu::exit_portal_foreign),
    ];
    let (mut passed, mut failed) = (0u32, 0u32);
    let mut baseline: Option<Memory> = None;
    for round in 1..=2 {
        ctx.round = round;
        rt::println!(
            &mut ctx.utcb,
            "hostile: round {round} of 2{}",
            if round == 1 {
                " (the memory baseline is taken after it)"
            } else {
                " (memory checked against the baseline after every experiment)"
            }
        );
        for (name, experiment) in list {
            ctx.late = (0, String::new());
            let mut outcome = experiment(&mut ctx);
            exits::settle(&mut ctx);
            if ctx.late.0 > 0 {
                let late = format!(
                    "{} exits arrived after the experiment was done with its vCPUs (first: {})",
                    ctx.late.0, ctx.late.1
                );
                outcome = match outcome {
                    Ok(_) => Err(late),
                    Err(why) => Err(format!("{why}; and {late}")),
                };
            }
            if let Some(base) = baseline {
                let now = Memory::now();
                rt::println!(
                    &mut ctx.utcb,
                    "hostile: memory after {name}: frames {} heap {} quota {} (baseline frames {} heap {} quota {})",
                    now.frames,
                    now.heap,
                    now.quota,
                    base.frames,
                    base.heap,
                    base.quota
                );
                if let Err(leak) = account(base, now) {
                    outcome = match outcome {
                        Ok(_) => Err(format!("leak: {leak}")),
                        Err(why) => Err(format!("{why}; and leak: {leak}")),
                    };
                }
            }
            match outcome {
                Ok(note) if note.is_empty() => {
                    passed += 1;
                    rt::println!(&mut ctx.utcb, "hostile: {name} ... passed");
                }
                Ok(note) => {
                    passed += 1;
                    rt::println!(&mut ctx.utcb, "hostile: {name} ... passed ({note})");
                }
                Err(why) => {
                    failed += 1;
                    rt::println!(&mut ctx.utcb, "hostile: {name} ... FAILED: {why}");
                }
            }
        }
        if round == 1 {
            let base = Memory::now();
            rt::println!(
                &mut ctx.utcb,
                "hostile: baseline after round 1: frames {} heap {} quota {}",
                base.frames,
                base.heap,
                base.quota
            );
            baseline = Some(base);
        }
    }
    rt::println!(&mut ctx.utcb, "hostile: {passed} passed, {failed} failed");
    // With failures the system ends at once; without, init ends it when the innocent guests
    // have ended too (with success only if they passed).
    let e = bootstrap::power_off(&mut ctx.utcb, failed == 0);
    rt::println!(&mut ctx.utcb, "hostile: power-off refused: {e}");
    idle()
}

/// The threads, semaphores and portals every experiment uses, made once (round 1's baseline
/// includes them).
fn setup(ctx: &mut Ctx) -> Result<(), String> {
    ok(
        "get scratch memory",
        bootstrap::get_resource(&mut ctx.utcb, "memory", SCRATCH),
    )?;
    mem::map_scratch()?;
    ok(
        "create sleep semaphore",
        syscall::create_semaphore(SLEEP, 0),
    )?;
    ok(
        "create exit semaphore",
        syscall::create_semaphore(EXIT_SEM, 0),
    )?;
    ok(
        "create reply semaphore",
        syscall::create_semaphore(REPLY_SEM, 0),
    )?;
    ok(
        "create script semaphore",
        syscall::create_semaphore(SCRIPT_SEM, 0),
    )?;
    exits::start_proxy()?;
    threads::start_echo()?;
    Ok(())
}

/// Sleeps `ticks` timer ticks.
pub fn sleep(ticks: u64) {
    let _ = syscall::sem_down(SLEEP, ticks.max(1));
}

/// Blocks forever: init decides when the system ends.
fn idle() -> ! {
    loop {
        let _ = syscall::sem_down(SLEEP, 0);
    }
}
