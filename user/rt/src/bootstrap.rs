//! The client side of the bootstrap protocol (`abi::bootstrap`): every server holds init's
//! bootstrap portal at `abi::well_known::BOOTSTRAP_PORTAL`.
//!
//! Requests carry their string argument as a postcard `&str` payload (`uwire` layout); init
//! answers with a status in word 0 and, for `GET`/`GET_RESOURCE`, the capability.

use abi::bootstrap::{GET, GET_RESOURCE, POWER_OFF, REGISTER};
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
/// gives this server), `"io_ports:N"` (range N), `"irq:N"` (IRQ line N).
pub fn get_resource(utcb: &mut Utcb, name: &str, recv: Sel) -> Result<(), Error> {
    request(utcb, GET_RESOURCE, name, recv)
}

/// Asks init to end the system (`success` travels in word 0 as 1 or 0). Returns only if init
/// refused (the manifest does not allow this server to power off) or could not be reached.
pub fn power_off(utcb: &mut Utcb, success: bool) -> Error {
    match utcb.call(
        well_known::BOOTSTRAP_PORTAL,
        POWER_OFF,
        &[u64::from(success)],
    ) {
        Err(e) => e,
        Ok(()) => utcb.reply_status().err().unwrap_or(Error::Protocol),
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
