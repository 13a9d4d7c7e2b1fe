//! The IPC benchmark's client: calls the server's `ping` portal in a loop and prints the TSC per
//! round trip. Under QEMU's `-icount shift=0` the TSC counts instructions, so the figure is the
//! instructions of one call/reply round trip: client and server user code plus kernel entry,
//! IPC path and exit, twice. `cargo xtask bench` reads the `ipcbench:` line.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use abi::{well_known, Sel};
use rt::{bootstrap, log, Start};

rt::entry!(main, heap = 16 * 1024);

const LOG: Sel = well_known::FIRST_FREE;
const PING: Sel = well_known::FIRST_FREE.offset(1);
/// A selector the client never fills.
const EMPTY: Sel = well_known::FIRST_FREE.offset(100);
const WARM_UP: u64 = 1_000;
const ROUND_TRIPS: u64 = 100_000;

fn tsc() -> u64 {
    rt::cpu::rdtsc()
}

fn main(start: Start) -> ! {
    let mut utcb = start.utcb;
    log::set_name("ipc-bench-client");
    if bootstrap::get(&mut utcb, "serial.log", LOG).is_ok() {
        log::set_portal(LOG);
    }
    if let Err(e) = bootstrap::get(&mut utcb, "ipc-bench-server.ping", PING) {
        rt::println!(&mut utcb, "ipcbench: no ping portal: {e}");
        bootstrap::power_off(&mut utcb, false);
        rt::syscall::thread_exit()
    }
    let mut ok = true;
    let run = |utcb: &mut rt::Utcb, n: u64| {
        for i in 0..n {
            if utcb.call(PING, 0, &[i]).is_err() || utcb.word(0) != i.wrapping_add(1) {
                return false;
            }
        }
        true
    };
    ok &= run(&mut utcb, WARM_UP);
    let begin = tsc();
    ok &= run(&mut utcb, ROUND_TRIPS);
    let elapsed = tsc() - begin;
    // The cheapest kernel entry: a lookup of an empty selector (refused with BadSelector).
    let begin_null = tsc();
    for _ in 0..ROUND_TRIPS {
        let _ = rt::syscall::lookup(EMPTY);
    }
    let null = (tsc() - begin_null) / ROUND_TRIPS;
    if ok {
        rt::println!(
            &mut utcb,
            "ipcbench: {} round trips, {} tsc per round trip, {} tsc per null syscall",
            ROUND_TRIPS,
            elapsed / ROUND_TRIPS,
            null
        );
    } else {
        rt::println!(
            &mut utcb,
            "ipcbench: a round trip failed or returned a wrong value"
        );
    }
    bootstrap::power_off(&mut utcb, ok);
    rt::syscall::thread_exit()
}
