//! The vmm-server's side of the guest part of the bootstrap protocol (`abi::bootstrap`):
//! `GET_CONFIG` (its guest's record, over as many replies as it takes), `GET_RESOURCE "image"`
//! and `"initrd"` (with the module's length and offset), and `GUEST_DONE` (how the guest
//! ended).

use abi::bootstrap::{GET_CONFIG, GET_RESOURCE, GUEST_DONE};
use abi::{well_known, Sel};
use manifest::Guest;
use rt::{Error, Utcb};

/// The guest record init keeps for this server.
pub fn get(utcb: &mut Utcb) -> Result<Guest, Error> {
    let mut failure = Error::Protocol;
    let bytes = manifest::config_gather(|offset| {
        let asked = utcb
            .call(well_known::BOOTSTRAP_PORTAL, GET_CONFIG, &[offset as u64])
            .and_then(|()| utcb.reply_status());
        match asked {
            Ok(()) => utcb.words().get(1..).map(<[u64]>::to_vec),
            Err(e) => {
                failure = e;
                None
            }
        }
    })
    .ok_or(failure)?;
    Guest::decode(&bytes).ok_or(Error::Protocol)
}

/// The image capability at `recv`; returns the image's length in bytes and its offset in the
/// first page (both 0 if init does not say).
pub fn image(utcb: &mut Utcb, recv: Sel) -> Result<(u64, u64), Error> {
    module(utcb, "image", recv)
}

/// The initrd capability at `recv` (only for a guest with `initrd`); length and offset as for
/// [`image`].
pub fn initrd(utcb: &mut Utcb, recv: Sel) -> Result<(u64, u64), Error> {
    module(utcb, "initrd", recv)
}

fn module(utcb: &mut Utcb, name: &str, recv: Sel) -> Result<(u64, u64), Error> {
    utcb.set_payload(GET_RESOURCE, name)?;
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
