//! Guests, init's side of the bootstrap protocol for vmm-servers (`abi::bootstrap`):
//!
//! - `GET_CONFIG [offset]`: the caller's guest record (`manifest::Guest::encode`) from byte
//!   `offset` on, words after the status as `manifest::config_words` packs them (the whole byte
//!   length, then up to 496 bytes little-endian; a long command line takes several replies);
//!   `NoRights` for a server that runs no guest, `BadArgument` for an offset past the end.
//! - `GET_RESOURCE "image"`: a READ-only memory capability over the pages of the guest's image
//!   module; reply words 1 and 2 are the image's length in bytes and its offset in the first
//!   page. `NoRights` for a server that runs no guest. `GET_RESOURCE "initrd"`: the same for
//!   the guest's initrd module; `BadArgument` when the guest has none.
//! - `GUEST_DONE [outcome, detail]`: judged against the guest's `expect`; init prints
//!   `guests: <name> <outcome> (expected <expect>): passed` (or `FAILED`). A vmm-server that
//!   faults ends its guest as failed. When every guest has ended, init prints
//!   `guests: N passed, M failed` and powers off, with success only when M = 0.

use alloc::vec::Vec;

use abi::{Rights, Sel, Status};
use manifest::{config_words, outcome_text};
use rt::syscall;

use crate::say;
use crate::state::State;

/// Rights of the vmm-server's copy of its guest's image: read it, nothing else.
pub const IMAGE_RIGHTS: Rights = Rights::READ;

/// The words after the status of a `GET_CONFIG` reply to domain `index`.
pub fn config(state: &State, index: usize, offset: u64) -> Result<Vec<u64>, Status> {
    let guest = state.guest_of(index).ok_or(Status::NoRights)?;
    let offset = usize::try_from(offset).map_err(|_| Status::BadArgument)?;
    config_words(&state.image.guests[guest].encode(), offset).ok_or(Status::BadArgument)
}

/// The image capability for domain `index` and the reply words after the status.
pub fn image(state: &State, index: usize) -> Result<(Sel, [u64; 2]), Status> {
    let guest = state.guest_of(index).ok_or(Status::NoRights)?;
    let run = &state.guests[guest];
    Ok((run.image_sel, [run.image_len, run.image_offset]))
}

/// The initrd capability for domain `index` and the reply words after the status.
pub fn initrd(state: &State, index: usize) -> Result<(Sel, [u64; 2]), Status> {
    let guest = state.guest_of(index).ok_or(Status::NoRights)?;
    let (sel, len, offset) = state.guests[guest].initrd.ok_or(Status::BadArgument)?;
    Ok((sel, [len, offset]))
}

/// `GUEST_DONE [outcome, detail]` from domain `index`.
pub fn done(state: &mut State, index: usize, outcome: u64, detail: u64) -> Status {
    let Some(guest) = state.guest_of(index) else {
        return Status::NoRights;
    };
    if state.guests[guest].passed.is_some() {
        return Status::BadArgument;
    }
    let expect = state.image.guests[guest].expect;
    let passed = expect.met_by(outcome, detail);
    end(
        state,
        guest,
        passed,
        format_args!("{}", outcome_text(outcome, detail)),
    );
    Status::Ok
}

/// Domain `index` faulted: if it runs a guest that has not ended, the guest ends as failed.
pub fn vmm_faulted(state: &mut State, index: usize) {
    if let Some(guest) = state.guest_of(index) {
        if state.guests[guest].passed.is_none() {
            end(
                state,
                guest,
                false,
                format_args!("lost its vmm-server (fault)"),
            );
        }
    }
}

fn end(state: &mut State, guest: usize, passed: bool, how: core::fmt::Arguments<'_>) {
    state.guests[guest].passed = Some(passed);
    let record = &state.image.guests[guest];
    say!(
        "guests: {} {how} (expected {}): {}",
        record.name,
        record.expect,
        if passed { "passed" } else { "FAILED" }
    );
    let ended: Vec<bool> = state.guests.iter().filter_map(|g| g.passed).collect();
    if ended.len() < state.guests.len() {
        return;
    }
    let passed = ended.iter().filter(|&&p| p).count();
    let failed = ended.len() - passed;
    say!("guests: {passed} passed, {failed} failed");
    // A server that may power off decides when the system ends (it may still be at work): wait
    // for its request unless it came already.
    match state.power_off_request {
        Some(request) => {
            let _ = syscall::power_off(request && failed == 0);
        }
        None if state.has_power_off_server() => {
            say!("init: the guests have ended; the system ends when a server powers it off");
        }
        None => {
            let _ = syscall::power_off(failed == 0);
        }
    }
}
