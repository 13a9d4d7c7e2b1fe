//! The vmm-server's side of the guest part of the bootstrap protocol (`abi::bootstrap`):
//! `GET_CONFIG` (its guest's record), `GET_RESOURCE "image"` (with the image's length and
//! offset), and `GUEST_DONE` (how the guest ended).

use abi::bootstrap::{GET_CONFIG, GET_RESOURCE, GUEST_DONE};
use abi::{well_known, Sel};
use manifest::Guest;
use rt::{Error, Utcb};

/// The guest record init keeps for this server.
pub fn get(utcb: &mut Utcb) -> Result<Guest, Error> {
    utcb.call(well_known::BOOTSTRAP_PORTAL, GET_CONFIG, &[])?;
    utcb.reply_status()?;
    let words = utcb.words().get(1..).ok_or(Error::Protocol)?;
    let bytes = manifest::config_bytes(words).ok_or(Error::Protocol)?;
    Guest::decode(&bytes).ok_or(Error::Protocol)
}

/// The image capability at `recv`; returns the image's length in bytes and its offset in the
/// first page (both 0 if init does not say).
pub fn image(utcb: &mut Utcb, recv: Sel) -> Result<(u64, u64), Error> {
    utcb.set_payload(GET_RESOURCE, "image")?;
    utcb.set_cap_recv(recv);
    utcb.call_msg(well_known::BOOTSTRAP_PORTAL)?;
    utcb.reply_status()?;
    if !utcb.cap_received() {
        return Err(Error::Protocol);
    }
    Ok((utcb.word(1), utcb.word(2)))
}

/// Reports the guest's end (`abi::bootstrap::outcome`) to init.
pub fn done(utcb: &mut Utcb, outcome: u64, detail: u64) -> Result<(), Error> {
    utcb.call(well_known::BOOTSTRAP_PORTAL, GUEST_DONE, &[outcome, detail])?;
    utcb.reply_status()
}
