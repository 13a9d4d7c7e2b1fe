//! The exit proxy: one thread that serves every exit portal of this server (the kernel lets one
//! thread waiting on any of its portals receive a vCPU's exit) and hands each exit to the main
//! thread, which decides the reply. The main thread waits with a timeout ([`next_exit`]), so an
//! exit that never comes is an observation, not a hang.
//!
//! Protocol: the proxy receives an exit (or learns that its reply was refused: `ReplyWait`
//! returns the error at once and the proxy still serves the vCPU), stores it as an [`Event`],
//! signals `EXIT_SEM` and waits on `REPLY_SEM` for the main thread's [`Order`]; then it replies
//! with it and waits again. While [`AUTO_STOP`] is set (the garbage experiment), it answers
//! every exit with `STOP` by itself.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use abi::utcb::MSG_WORDS;
use abi::vm::{mtd, word, Exit, EXIT_LABEL};
use abi::Sel;
use alloc::format;
use alloc::string::String;
use rt::{syscall, thread, Error, Start};

use crate::{Ctx, EXIT_SEM, PRIORITY, PROXY_THREAD, RECV_PROXY, REPLY_SEM, SCRIPT_SEM};

/// What the proxy received.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `ReplyWait`'s result: an error means the kernel refused the reply just sent (the vCPU
    /// still waits for one) or the wait failed; then the message words are stale.
    pub result: Result<(), Error>,
    pub label: u64,
    /// The portal's badge: the exit portal's offset from its base.
    pub badge: u64,
    pub words: [u64; MSG_WORDS],
}

impl Event {
    /// A real exit message from the kernel.
    pub fn is_exit(&self) -> bool {
        self.result.is_ok() && self.label == EXIT_LABEL
    }

    pub fn reason(&self) -> u64 {
        self.words[word::REASON]
    }

    pub fn is(&self, exit: Exit) -> bool {
        self.is_exit() && self.reason() == exit as u64
    }

    pub fn qual(&self) -> (u64, u64) {
        (self.words[word::QUAL0], self.words[word::QUAL1])
    }

    /// `memory-fault (0x7c00, 0xc) at rip 0x7c00`, or what the wait returned.
    pub fn describe(&self) -> String {
        if let Err(e) = self.result {
            return format!("a refused reply ({e})");
        }
        if self.label != EXIT_LABEL {
            return format!("a call with label {:#x}", self.label);
        }
        let name = Exit::from_u64(self.reason()).map_or("unknown", Exit::name);
        let (q0, q1) = self.qual();
        format!(
            "exit {name} (qualification {q0:#x}, {q1:#x}; rip {:#x}; portal +{})",
            self.words[word::RIP],
            self.badge
        )
    }
}

/// The main thread's answer to an event: reply with `words[..full]` written to the message and
/// the tag saying `count` words (`count < full` makes a reply shorter than its mask needs).
#[derive(Clone, Copy)]
struct Order {
    words: [u64; MSG_WORDS],
    full: usize,
    count: usize,
}

struct Shared {
    event: Option<Event>,
    order: Option<Order>,
}

static SHARED: spin::Mutex<Shared> = spin::Mutex::new(Shared {
    event: None,
    order: None,
});

/// A run the proxy makes without the main thread (saving the main thread's round trips, each of
/// which lets the guests' vCPUs run a time slice): it answers the Startup exit with `startup`,
/// then the next message (the first real exit, or the refusal of that reply) with STOP, and
/// hands both to the main thread through `SCRIPT_SEM`.
struct Script {
    startup: [u64; word::COUNT],
    first: Option<Event>,
}

static SCRIPT: spin::Mutex<Option<Script>> = spin::Mutex::new(None);
static SCRIPT_DONE: spin::Mutex<Option<(Event, Event)>> = spin::Mutex::new(None);

/// Profile messages (`Exit::Profile`) the proxy answered by itself (mask 0: nothing changes).
pub static PROFILES: AtomicU64 = AtomicU64::new(0);

/// Set: the proxy answers every exit with STOP by itself.
pub static AUTO_STOP: AtomicBool = AtomicBool::new(false);
/// Exits the proxy stopped by itself.
pub static AUTO_STOPPED: AtomicU64 = AtomicU64::new(0);

static PROXY_MEM: thread::ThreadMem<{ 16 * 1024 }> = thread::ThreadMem::new();

/// Creates the exit portals at `EXIT_BASE + reason` and the proxy thread serving them.
pub fn start_proxy() -> Result<(), String> {
    thread::spawn(
        &PROXY_MEM,
        PROXY_THREAD,
        PRIORITY,
        proxy_main,
        crate::EXIT_BASE.raw(),
    )
    .map_err(|e| format!("start the exit proxy: {e}"))?;
    for reason in 0..abi::vm::EXIT_COUNT {
        syscall::create_portal(crate::EXIT_BASE.offset(reason), PROXY_THREAD, reason)
            .map_err(|e| format!("create exit portal {reason}: {e}"))?;
    }
    Ok(())
}

fn proxy_main(start: Start) -> ! {
    let mut utcb = start.utcb;
    let portal = Sel::new(start.arg);
    // The portals are made right after this thread; wait for the one it waits on.
    while syscall::lookup(portal).is_err() {
        syscall::yield_now();
    }
    utcb.set_msg(0, &[]);
    loop {
        utcb.set_cap_recv(RECV_PROXY);
        let result = utcb.reply_wait(portal).map(drop);
        let label = utcb.label();
        if AUTO_STOP.load(Ordering::Acquire) && result.is_ok() && label == EXIT_LABEL {
            AUTO_STOPPED.fetch_add(1, Ordering::AcqRel);
            utcb.set_msg(0, &[mtd::STOP]);
            continue;
        }
        let mut words = [0u64; MSG_WORDS];
        let got = utcb.words();
        words[..got.len()].copy_from_slice(got);
        let event = Event {
            result,
            label,
            badge: utcb.badge(),
            words,
        };
        if event.is(Exit::Profile) {
            // The kernel's periodic exit profile: acknowledged, never the experiments' business.
            PROFILES.fetch_add(1, Ordering::AcqRel);
            utcb.set_msg(0, &[0]);
            continue;
        }
        {
            let mut script = SCRIPT.lock();
            if let Some(s) = script.as_mut() {
                match s.first {
                    None if event.is(Exit::Startup) => {
                        s.first = Some(event);
                        utcb.set_msg(0, &s.startup);
                        continue;
                    }
                    Some(first) => {
                        *script = None;
                        *SCRIPT_DONE.lock() = Some((first, event));
                        utcb.set_msg(0, &[mtd::STOP]);
                        let _ = syscall::sem_up(SCRIPT_SEM);
                        continue;
                    }
                    None => {}
                }
            }
        }
        SHARED.lock().event = Some(event);
        let _ = syscall::sem_up(EXIT_SEM);
        let order = loop {
            let _ = syscall::sem_down(REPLY_SEM, 0);
            if let Some(order) = SHARED.lock().order.take() {
                break order;
            }
        };
        utcb.set_msg(0, &order.words[..order.full]);
        if order.count < order.full {
            // The words beyond `count` stay in the UTCB; the tag no longer covers them.
            utcb.set_msg(0, &order.words[..order.count]);
        }
    }
}

/// Waits at most `ticks` timer ticks for the proxy's next event. The caller must answer it
/// ([`answer`], [`stop`]) before waiting again.
pub fn next_exit(ctx: &mut Ctx, ticks: u64) -> Option<Event> {
    if ctx.pending {
        stop(ctx);
    }
    match syscall::sem_down(EXIT_SEM, ticks.max(1)) {
        Ok(()) => {
            let event = SHARED.lock().event.take();
            ctx.pending = event.is_some();
            event
        }
        Err(_) => None,
    }
}

/// Answers the pending event with a reply of `words` (the tag covers all of them).
pub fn answer(ctx: &mut Ctx, words: &[u64]) {
    answer_short(ctx, words, words.len());
}

/// Answers with `words` in the message but a tag of only `count` words.
pub fn answer_short(ctx: &mut Ctx, words: &[u64], count: usize) {
    if !ctx.pending {
        return;
    }
    let full = words.len().min(MSG_WORDS);
    let mut order = Order {
        words: [0; MSG_WORDS],
        full,
        count: count.min(full),
    };
    order.words[..full].copy_from_slice(&words[..full]);
    SHARED.lock().order = Some(order);
    ctx.pending = false;
    let _ = syscall::sem_up(REPLY_SEM);
}

/// Answers the pending event with `STOP`.
pub fn stop(ctx: &mut Ctx) {
    answer(ctx, &[mtd::STOP]);
}

/// Ends an experiment's dealings with the proxy: answers what is pending with STOP and takes
/// (and stops) events that arrive within `scale.settle` ticks. Such late events (an exit of a
/// vCPU the experiment already stopped or removed) should not exist: they are counted in
/// `ctx.late` (the first one described), and the experiment fails for them.
pub fn settle(ctx: &mut Ctx) {
    if ctx.pending {
        stop(ctx);
    }
    while let Some(e) = next_exit(ctx, ctx.scale.settle) {
        if ctx.late.0 == 0 {
            ctx.late.1 = e.describe();
        }
        ctx.late.0 += 1;
        stop(ctx);
    }
}

/// Makes a vCPU with `create` and lets the proxy run it (see [`Script`]): Startup answered with
/// `startup`, the next message answered with STOP. Returns (Startup, next message).
pub fn scripted_run(
    ctx: &mut Ctx,
    startup: [u64; word::COUNT],
    create: impl FnOnce() -> Result<(), Error>,
) -> Result<(Event, Event), String> {
    *SCRIPT_DONE.lock() = None;
    *SCRIPT.lock() = Some(Script {
        startup,
        first: None,
    });
    if let Err(e) = create() {
        *SCRIPT.lock() = None;
        return Err(format!("create vcpu: {e}"));
    }
    let waited = syscall::sem_down(SCRIPT_SEM, ctx.scale.expected.max(1));
    if waited.is_err() {
        let half = SCRIPT.lock().take().and_then(|s| s.first);
        // The proxy may have finished meanwhile.
        let _ = syscall::sem_down(SCRIPT_SEM, 1);
        if SCRIPT_DONE.lock().is_none() {
            return Err(match half {
                None => format!("no startup exit within {} ticks", ctx.scale.expected),
                Some(_) => format!(
                    "the guest did not exit within {} ticks of its Startup reply",
                    ctx.scale.expected
                ),
            });
        }
    }
    SCRIPT_DONE
        .lock()
        .take()
        .ok_or_else(|| String::from("the proxy's run left no result"))
}
