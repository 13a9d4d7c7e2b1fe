//! The client side of the bootstrap protocol (`abi::bootstrap`): every server holds init's
//! bootstrap portal at `abi::well_known::BOOTSTRAP_PORTAL`.
//!
//! Requests carry their string argument as a postcard `&str` payload (`uwire` layout); init
//! answers with a status in word 0 and, for `GET`/`GET_RESOURCE`, the capability.
//!
//! A vmm-server (one per guest) also asks for its guest's configuration ([`get_config`]), its
//! image ([`get_image`]) and reports the guest's end ([`guest_done`]).

use alloc::vec::Vec;

use abi::bootstrap::{GET, GET_CONFIG, GET_RESOURCE, GUEST_DONE, POWER_OFF, REGISTER};
use abi::{well_known, Rights, Sel, Status};

use crate::{syscall, Error, Utcb};

/// How often [`get`] asks for a portal that is not registered yet before it gives up.
pub const GET_ATTEMPTS: u32 = 2000;
/// Attempts that only yield before [`get`] starts sleeping a timer tick between them.
const YIELD_ATTEMPTS: u32 = 16;

/// Registers `portal` (created by this server) under `name`, one of the portal names the
/// manifest lists for it. Init keeps a copy with CALL and GRANT.
pub fn register(utcb: &mut Utcb, name: &str, portal: Sel) -> Result<(), Error> {
    utcb.set_payload(REGISTER, name)?;
    utcb.attach_cap(portal, Rights::CALL | Rights::GRANT);
    utcb.call_msg(well_known::BOOTSTRAP_PORTAL)?;
    utcb.reply_status()
}

/// Obtains `"server.portal"` at `recv` (a free selector), waiting while the portal is not
/// registered yet: a few yields, then a timer tick of sleep per attempt (on a semaphore made and
/// removed at `recv`, so that servers of lower priority get to run), [`GET_ATTEMPTS`] in all.
pub fn get(utcb: &mut Utcb, name: &str, recv: Sel) -> Result<(), Error> {
    for attempt in 0..GET_ATTEMPTS {
        match request(utcb, GET, name, recv) {
            Err(Error::Reply(Status::NoPartner)) => pause(attempt, recv),
            other => return other,
        }
    }
    Err(Error::Reply(Status::NoPartner))
}

/// Obtains a resource capability at `recv`: `"io_ports"` (the first port range the manifest
/// gives this server), `"io_ports:N"` (range N), `"irq:N"` (IRQ line N), `"memory"` (its
/// scratch memory; a vmm-server's is its guest's RAM), `"image"` (see [`get_image`]).
pub fn get_resource(utcb: &mut Utcb, name: &str, recv: Sel) -> Result<(), Error> {
    request(utcb, GET_RESOURCE, name, recv)
}

/// A guest's image as [`get_image`] obtains it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Image {
    /// Length in bytes.
    pub len: u64,
    /// Where the image starts in the first page of the capability.
    pub offset: u64,
}

/// The caller's guest configuration (vmm-servers only): the bytes of `manifest::Guest::encode`,
/// for `manifest::Guest::decode`, asked reply by reply (`GET_CONFIG [offset]`; a long command
/// line takes several). Init answers other servers with `NoRights`.
pub fn get_config(utcb: &mut Utcb) -> Result<Vec<u8>, Error> {
    let mut bytes: Vec<u8> = Vec::new();
    loop {
        let offset = bytes.len();
        utcb.call(well_known::BOOTSTRAP_PORTAL, GET_CONFIG, &[offset as u64])?;
        utcb.reply_status()?;
        // Word 1: the whole byte length; this reply's bytes follow from word 2, eight per
        // word, little-endian (`manifest::config_words`).
        let total = usize::try_from(utcb.word(1)).map_err(|_| Error::Protocol)?;
        if total > 1 << 16 {
            return Err(Error::Protocol);
        }
        let packed = utcb.words().get(2..).unwrap_or(&[]);
        let len = total.checked_sub(offset).ok_or(Error::Protocol)?;
        let len = len.min(packed.len() * 8);
        if len == 0 && offset < total {
            return Err(Error::Protocol);
        }
        let chunk: Vec<u8> = packed.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.extend_from_slice(&chunk[..len]);
        if bytes.len() >= total {
            return Ok(bytes);
        }
    }
}

/// Obtains the caller's guest image (vmm-servers only) at `recv`: a READ-only memory capability
/// over the image module's pages, and where in them the image lies.
pub fn get_image(utcb: &mut Utcb, recv: Sel) -> Result<Image, Error> {
    request(utcb, GET_RESOURCE, "image", recv)?;
    Ok(Image {
        len: utcb.word(1),
        offset: utcb.word(2),
    })
}

/// Reports how the caller's guest ended (vmm-servers only): `outcome` is one of
/// `abi::bootstrap::outcome`, `detail` its detail. When this was the last guest, init ends the
/// system and this call does not return.
pub fn guest_done(utcb: &mut Utcb, outcome: u64, detail: u64) -> Result<(), Error> {
    utcb.call(well_known::BOOTSTRAP_PORTAL, GUEST_DONE, &[outcome, detail])?;
    utcb.reply_status()
}

/// Asks init to end the system (`success` travels in word 0 as 1 or 0). Returns only if init
/// refused (the manifest does not allow this server to power off) or could not be reached.
/// While guests still run, init accepts a success and ends the system when the last guest ends
/// (with success only if they all passed); the calling thread then ends.
pub fn power_off(utcb: &mut Utcb, success: bool) -> Error {
    match utcb.call(
        well_known::BOOTSTRAP_PORTAL,
        POWER_OFF,
        &[u64::from(success)],
    ) {
        Err(e) => e,
        Ok(()) => match utcb.reply_status() {
            Err(e) => e,
            // Accepted, but guests still run: the system ends when the last one does. This
            // thread has nothing left to do.
            Ok(()) => crate::syscall::thread_exit(),
        },
    }
}

fn request(utcb: &mut Utcb, label: u64, name: &str, recv: Sel) -> Result<(), Error> {
    utcb.set_payload(label, name)?;
    utcb.set_cap_recv(recv);
    utcb.call_msg(well_known::BOOTSTRAP_PORTAL)?;
    utcb.reply_status()?;
    if utcb.cap_received() {
        Ok(())
    } else {
        Err(Error::Protocol)
    }
}

fn pause(attempt: u32, scratch: Sel) {
    if attempt >= YIELD_ATTEMPTS && syscall::create_semaphore(scratch, 0).is_ok() {
        let _ = syscall::sem_down(scratch, 1);
        let _ = syscall::revoke(scratch, true);
    } else {
        syscall::yield_now();
    }
}
