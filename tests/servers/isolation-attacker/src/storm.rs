//! (8) The syscall storm: at least `isolation::storm::MIN_CALLS` raw syscalls from the seeded
//! generator in `isolation::storm` (whose filter keeps every call away from what the attacker
//! needs). Every call must return with a defined status code, every undefined number with
//! `BadSyscall`; afterwards the attacker's own capabilities must be exactly as before and the
//! target must still answer.

use alloc::format;
use alloc::vec::Vec;

use abi::syscall::COUNT;
use abi::{Sel, Status};
use isolation::proto::{self, mode};
use isolation::storm::{Storm, MIN_CALLS, ZONE_A};
use rt::syscall;

use crate::{ensure, ok, probe, Ctx, Outcome};

/// Used when RDTSC is not available to user code.
const FALLBACK_SEED: u64 = 0x5eed_15d1_a7e5_0001;

pub fn storm(ctx: &mut Ctx) -> Outcome {
    // A fault while reading the TSC (CR4.TSD) is resumed, and the fixed seed used.
    ctx.set_mode(mode::RESUME_AT, probe::recover_addr())?;
    let seed = probe::rdtsc().map_or(FALLBACK_SEED, |tsc| tsc ^ FALLBACK_SEED);
    ctx.set_mode(mode::STOP, 0)?;
    rt::println!(
        &mut ctx.utcb,
        "isolation: syscall storm: seed {seed:#018x}, {MIN_CALLS} calls"
    );

    let own: Vec<_> = (0..ZONE_A.start)
        .map(|s| syscall::lookup(Sel::new(s)))
        .collect();
    let mut storm = Storm::new(seed);
    let mut by_status = [0u64; 13];
    let (mut unknown, mut not_bad_syscall) = (0u64, 0u64);
    // Undefined status codes per defined syscall number (the last slot: undefined numbers).
    let mut unknown_by_number = [0u64; COUNT as usize + 1];
    let mut first_unknown = None;
    for _ in 0..MIN_CALLS {
        let call = storm.next_call();
        let (status, _) = probe::storm_call(&call);
        match Status::from_u64(status) {
            Some(s) => by_status[s as usize] += 1,
            None => {
                unknown += 1;
                unknown_by_number[call.number.min(COUNT) as usize] += 1;
                first_unknown.get_or_insert((call.number, status));
            }
        }
        if call.number >= COUNT && status != Status::BadSyscall as u64 {
            not_bad_syscall += 1;
        }
    }
    // Remove what the storm made (objects in zone A, and what was derived from them).
    for sel in ZONE_A {
        let _ = syscall::revoke(Sel::new(sel), true);
    }
    let changed: Vec<u64> = (0..ZONE_A.start)
        .zip(&own)
        .filter(|&(sel, before)| syscall::lookup(Sel::new(sel)) != *before)
        .map(|(sel, _)| sel)
        .collect();
    let echo = ctx.echo(proto::ECHO, &[99]);

    let summary = format!(
        "seed {seed:#x}: ok {}, bad syscall {}, bad selector {}, wrong kind {}, no rights {}, \
         quota {}, bad argument {}, in use {}, timeout {}, bad address {}, other {}",
        by_status[Status::Ok as usize],
        by_status[Status::BadSyscall as usize],
        by_status[Status::BadSelector as usize],
        by_status[Status::WrongKind as usize],
        by_status[Status::NoRights as usize],
        by_status[Status::QuotaExceeded as usize],
        by_status[Status::BadArgument as usize],
        by_status[Status::SelectorInUse as usize],
        by_status[Status::Timeout as usize],
        by_status[Status::BadAddress as usize],
        by_status[Status::Aborted as usize]
            + by_status[Status::OutOfMemory as usize]
            + by_status[Status::NoPartner as usize],
    );
    rt::println!(&mut ctx.utcb, "isolation: syscall storm: {summary}");
    if unknown > 0 {
        let by_number: Vec<_> = (0..=COUNT)
            .zip(unknown_by_number)
            .filter(|&(_, n)| n > 0)
            .collect();
        let (number, status) = first_unknown.unwrap_or_default();
        return Err(format!(
            "{unknown} calls returned undefined status codes, (syscall number, calls): \
             {by_number:?} (number {COUNT} = undefined numbers); first: syscall {number} \
             returned {status}"
        ));
    }
    ensure!(
        not_bad_syscall == 0,
        "{not_bad_syscall} undefined syscall numbers did not give BadSyscall"
    );
    ensure!(
        changed.is_empty(),
        "the attacker's own capabilities changed at selectors {changed:?}"
    );
    let (_, words) = ok("echo after the storm", echo)?;
    ensure!(words == [100], "echo after the storm answered {words:?}");
    Ok(format!("{MIN_CALLS} calls returned, seed {seed:#x}"))
}
