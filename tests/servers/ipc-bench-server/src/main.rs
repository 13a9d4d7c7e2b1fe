//! The IPC benchmark's server: a `ping` portal whose handler replies with the word it got plus
//! one, the smallest useful call/reply.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use abi::{well_known, Sel};
use rt::ipc::{self, Next};
use rt::{bootstrap, log, syscall, Start};

rt::entry!(main, heap = 16 * 1024);

const LOG: Sel = well_known::FIRST_FREE;
const PING: Sel = well_known::FIRST_FREE.offset(1);
const NO_CAP: Sel = well_known::FIRST_FREE.offset(2);

fn main(start: Start) -> ! {
    let mut utcb = start.utcb;
    log::set_name("ipc-bench-server");
    if bootstrap::get(&mut utcb, "serial.log", LOG).is_ok() {
        log::set_portal(LOG);
    }
    let ready = syscall::create_portal(PING, well_known::SELF_THREAD, 1)
        .and_then(|()| bootstrap::register(&mut utcb, "ping", PING));
    if let Err(e) = ready {
        rt::println!(&mut utcb, "ipc-bench-server: cannot offer ping: {e}");
        syscall::thread_exit()
    }
    let result = ipc::serve(&mut utcb, PING, NO_CAP, |utcb, _badge| {
        let value = utcb.word(0).wrapping_add(1);
        utcb.set_msg(0, &[value]);
        Next::Reply
    });
    rt::println!(&mut utcb, "ipc-bench-server: serving stopped: {result:?}");
    syscall::thread_exit()
}
