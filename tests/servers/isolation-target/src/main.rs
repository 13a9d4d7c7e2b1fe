//! The isolation experiments' server under test (`isolation::proto` has the protocol).
//!
//! It provides two portals: `echo`, served by its first thread, and `faults`, the attacker's
//! fault portal, served by a second thread (the kernel delivers a portal's calls only to the
//! thread waiting on that portal). The two threads share the fault mode and the record of the
//! last fault through atomics.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};

use abi::utcb::{FAULT_LABEL, MSG_WORDS, RESUME_LABEL};
use abi::{well_known, Sel, Status};
use isolation::proto::{self, mode};
use rt::ipc::Next;
use rt::{bootstrap, log, syscall, thread, Error, Start, Utcb};

rt::entry!(main, heap = 16 * 1024);

const LOG: Sel = well_known::FIRST_FREE;
const ECHO: Sel = well_known::FIRST_FREE.offset(1);
const FAULTS: Sel = well_known::FIRST_FREE.offset(2);
const FAULT_THREAD: Sel = well_known::FIRST_FREE.offset(3);
/// The two landing slots of `echo` (see `serve_echo`).
const RECV_A: Sel = well_known::FIRST_FREE.offset(4);
const RECV_B: Sel = well_known::FIRST_FREE.offset(5);
const FAULT_RECV: Sel = well_known::FIRST_FREE.offset(6);
const ECHO_BADGE: u64 = 1;
const FAULTS_BADGE: u64 = 2;
/// Priority of the fault thread: the target's own in `manifests/isolation.toml` (a thread
/// cannot ask the kernel for its priority).
const PRIORITY: u8 = 10;

static FAULT_THREAD_MEM: thread::ThreadMem<{ 16 * 1024 }> = thread::ThreadMem::new();

static MODE: AtomicU64 = AtomicU64::new(mode::STOP);
static RESUME_RIP: AtomicU64 = AtomicU64::new(0);
static COUNT: AtomicU64 = AtomicU64::new(0);
static LAST: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

fn main(start: Start) -> ! {
    let mut utcb = start.utcb;
    log::set_name("isolation-target");
    if bootstrap::get(&mut utcb, "serial.log", LOG).is_ok() {
        log::set_portal(LOG);
    }
    if let Err(e) = setup(&mut utcb) {
        rt::println!(&mut utcb, "isolation-target: set-up failed: {e}");
        syscall::thread_exit()
    }
    serve_echo(&mut utcb);
    rt::println!(
        &mut utcb,
        "isolation-target: echo portal unusable; stopping"
    );
    syscall::thread_exit()
}

fn setup(utcb: &mut Utcb) -> Result<(), Error> {
    thread::spawn(&FAULT_THREAD_MEM, FAULT_THREAD, PRIORITY, fault_main, 0)?;
    syscall::create_portal(ECHO, well_known::SELF_THREAD, ECHO_BADGE)?;
    syscall::create_portal(FAULTS, FAULT_THREAD, FAULTS_BADGE)?;
    bootstrap::register(utcb, "echo", ECHO)?;
    bootstrap::register(utcb, "faults", FAULTS)?;
    Ok(())
}

/// Serves `echo`. A capability lands in whichever of the two landing slots does not hold the
/// capability kept by the last `HOLD`; it is dropped after the call unless a `HOLD` keeps it.
fn serve_echo(utcb: &mut Utcb) {
    let mut held: Option<Sel> = None;
    utcb.set_msg(0, &[]);
    loop {
        let landing = if held == Some(RECV_A) { RECV_B } else { RECV_A };
        utcb.set_cap_recv(landing);
        match utcb.reply_wait(ECHO) {
            Ok(_) => {}
            Err(Error::Kernel(Status::BadSelector | Status::WrongKind | Status::NoRights)) => {
                return
            }
            Err(_) => {
                utcb.set_msg(0, &[]);
                continue;
            }
        }
        let received = utcb.cap_received().then_some(landing);
        if echo(utcb, received, held) {
            if let Some(old) = held {
                let _ = syscall::revoke(old, true);
            }
            held = received;
        } else if let Some(sel) = received {
            let _ = syscall::revoke(sel, true);
        }
    }
}

/// Handles one call on `echo`, the capability that came with it (if any) at `received` and
/// the one kept by the last `HOLD` at `held`; returns whether to keep `received`.
fn echo(utcb: &mut Utcb, received: Option<Sel>, held: Option<Sel>) -> bool {
    match utcb.label() {
        proto::ECHO => {
            let report = match received.map(syscall::lookup) {
                None => 0,
                Some(Ok(info)) => proto::cap_report(info.kind_raw, info.rights.0),
                Some(Err(_)) => proto::cap_report(0, 0),
            };
            let mut words = [0u64; MSG_WORDS];
            let n = utcb.words().len();
            words[..n].copy_from_slice(utcb.words());
            if let Some(first) = words[..n].first_mut() {
                *first = first.wrapping_add(1);
            }
            utcb.set_msg(report, &words[..n]);
            false
        }
        proto::HOLD => {
            utcb.set_status(if received.is_some() {
                Status::Ok
            } else {
                Status::BadArgument
            });
            received.is_some()
        }
        proto::PROBE_HOLD => {
            let words = match held.map(syscall::lookup) {
                Some(Ok(info)) => [
                    Status::Ok as u64,
                    u64::from(info.kind_raw),
                    u64::from(info.rights.0),
                ],
                Some(Err(e)) => [e.status().map_or(u64::MAX, |s| s as u64), 0, 0],
                None => [Status::BadSelector as u64, 0, 0],
            };
            utcb.set_msg(0, &words);
            false
        }
        proto::SET_FAULT_MODE => {
            RESUME_RIP.store(utcb.word(1), Ordering::SeqCst);
            MODE.store(utcb.word(0), Ordering::SeqCst);
            utcb.set_status(Status::Ok);
            false
        }
        proto::LAST_FAULT => {
            let words = [
                COUNT.load(Ordering::SeqCst),
                LAST[0].load(Ordering::SeqCst),
                LAST[1].load(Ordering::SeqCst),
                LAST[2].load(Ordering::SeqCst),
                LAST[3].load(Ordering::SeqCst),
            ];
            utcb.set_msg(0, &words);
            false
        }
        _ => {
            utcb.set_status(Status::BadArgument);
            false
        }
    }
}

/// The fault thread: serves `faults` (created by the first thread right after this one).
fn fault_main(start: Start) -> ! {
    let mut utcb = start.utcb;
    loop {
        match rt::ipc::serve(&mut utcb, FAULTS, FAULT_RECV, |utcb, _| {
            fault(utcb);
            Next::Reply
        }) {
            Err(Error::Kernel(Status::BadSelector)) => syscall::yield_now(),
            _ => syscall::thread_exit(),
        }
    }
}

/// Handles one call on `faults`: a fault message of the attacker, recorded and answered by the
/// mode.
fn fault(utcb: &mut Utcb) {
    if utcb.cap_received() {
        let _ = syscall::revoke(FAULT_RECV, true);
    }
    if utcb.label() != FAULT_LABEL {
        utcb.set_status(Status::BadArgument);
        return;
    }
    let rip = utcb.word(2);
    for (i, slot) in LAST.iter().enumerate() {
        // vector, error code, rip, address
        slot.store(utcb.word(i), Ordering::SeqCst);
    }
    COUNT.fetch_add(1, Ordering::SeqCst);
    match MODE.load(Ordering::SeqCst) {
        mode::RESUME_AT => utcb.set_msg(RESUME_LABEL, &[RESUME_RIP.load(Ordering::SeqCst)]),
        mode::RETRY => utcb.set_msg(RESUME_LABEL, &[rip]),
        _ => utcb.set_msg(0, &[]),
    }
}
