//! The echo thread (a partner for IPC), and the UTCB experiment: a thread whose UTCB page is
//! unmapped by a revoke while it keeps calling.

use core::sync::atomic::{AtomicU64, Ordering};

use abi::vm::{mtd, EXIT_LABEL};
use abi::{well_known, Rights, Sel};
use alloc::format;
use alloc::string::String;
use rt::{syscall, thread, Start};

use crate::mem::{self, page, ALIAS_VA};
use crate::raw;
use crate::vcpu::remove;
use crate::{ensure, ok, sleep, Ctx, Outcome, ECHO, ECHO_THREAD, PRIORITY, RECV_ECHO, SCRATCH};

/// What the echo thread replies: label 0 and these words.
pub const ECHO_REPLY: [u64; 4] = [0x1111_1111_1111_1111; 4];

static ECHO_MEM: thread::ThreadMem<{ 8 * 1024 }> = thread::ThreadMem::new();

/// Starts the echo thread and its portal.
pub fn start_echo() -> Result<(), String> {
    thread::spawn(&ECHO_MEM, ECHO_THREAD, PRIORITY, echo_main, ECHO.raw())
        .map_err(|e| format!("start the echo thread: {e}"))?;
    syscall::create_portal(ECHO, ECHO_THREAD, 0).map_err(|e| format!("create the echo portal: {e}"))
}

fn echo_main(start: Start) -> ! {
    let mut utcb = start.utcb;
    let portal = Sel::new(start.arg);
    while syscall::lookup(portal).is_err() {
        syscall::yield_now();
    }
    utcb.set_msg(0, &[]);
    loop {
        utcb.set_cap_recv(RECV_ECHO);
        let got = utcb.reply_wait(portal);
        if got.is_ok() && utcb.label() == EXIT_LABEL {
            // A vCPU that names this portal as an exit portal is stopped.
            utcb.set_msg(0, &[mtd::STOP]);
        } else {
            utcb.set_msg(0, &ECHO_REPLY);
        }
    }
}

/// Calls the looping thread has made.
pub static CALLS: AtomicU64 = AtomicU64::new(0);

const LOOPER: Sel = Sel::new(160);
const MEM: Sel = Sel::new(161);
/// A pattern whose first word is a valid message tag (36 words, no capability, label
/// 0x2424_2424_2424), so that a kernel still using the page would accept it as a message.
const PATTERN: u8 = 0x24;

/// (10) A thread of this server whose UTCB is a second mapping of a scratch page, made through a
/// carved capability, calls the echo portal in a loop (the kernel writes each reply into that
/// page). Then the carved capability is revoked, which unmaps the page; the page (still mapped
/// through the scratch capability) is filled with a pattern and the thread gets time to run.
/// The kernel must not write IPC into the page any more, and the thread is ended.
pub fn utcb_after_revoke(ctx: &mut Ctx) -> Outcome {
    CALLS.store(0, Ordering::Release);
    mem::fill(page::UTCB, 0);
    let result = (|| {
        ok("carve", syscall::carve(SCRATCH, MEM, page::UTCB, 1))?;
        ok(
            "map the UTCB page a second time",
            syscall::map(
                MEM,
                well_known::SELF_PD,
                ALIAS_VA,
                0,
                1,
                Rights::READ | Rights::WRITE,
            ),
        )?;
        let made = raw::start_call_loop(LOOPER, u64::from(PRIORITY), ALIAS_VA);
        ok("create the looping thread", made)?;
        let mut waited = 0;
        while CALLS.load(Ordering::Acquire) < 3 && waited < ctx.scale.expected {
            sleep(1);
            waited += 1;
        }
        let before = CALLS.load(Ordering::Acquire);
        ensure!(
            before >= 3,
            "the looping thread made only {before} calls in {waited} ticks"
        );
        let (written, _) = mem::differ(page::UTCB, 0);
        ensure!(
            written > 0,
            "the echo replies never appeared in the thread's UTCB page"
        );
        ok("revoke the carved capability", syscall::revoke(MEM, true))?;
        mem::fill(page::UTCB, PATTERN);
        let c0 = CALLS.load(Ordering::Acquire);
        let mut slept = 0;
        while slept < ctx.scale.unexpected && CALLS.load(Ordering::Acquire) < c0 + 3 {
            sleep(2);
            slept += 2;
        }
        let c1 = CALLS.load(Ordering::Acquire);
        let (changed, first) = mem::differ(page::UTCB, PATTERN);
        ensure!(
            changed == 0,
            "after the revoke the kernel still wrote IPC into the unmapped UTCB page: {changed} bytes changed (first at {:#x}), {} calls after the revoke",
            first.unwrap_or(0),
            c1 - c0
        );
        ensure!(
            c1 == c0,
            "the thread lived on after its UTCB page was unmapped: {} calls after the revoke (nothing written)",
            c1 - c0
        );
        Ok(format!(
            "{c0} calls before the revoke (replies written into the page); after it none in {slept} ticks, the pattern intact"
        ))
    })();
    remove(&[LOOPER, MEM]);
    result
}
