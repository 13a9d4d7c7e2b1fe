//! The bootstrap protocol, init's side (`abi::bootstrap`). Each server's bootstrap portal has its
//! own handler thread in init (the kernel delivers a portal's calls only to a thread waiting on
//! that very portal), so the portal's badge, the server's index, names the caller; the threads
//! share [`crate::state`] behind one lock.
//!
//! - `REGISTER name` + portal capability: accepted only for a portal name the manifest lists for
//!   the caller, once. Init keeps the capability (CALL|GRANT as sent) and starts servers that
//!   were waiting for it as their fault handler.
//! - `GET "server.portal"`: `BadSelector` if the name is malformed or names no portal of the
//!   system, `NoRights` unless `SystemImage::grant` allows it, `NoPartner` until registered;
//!   else `Ok` with the capability attached, with exactly the granted rights.
//! - `GET_RESOURCE`: `"io_ports"` / `"io_ports:N"` carve the caller's N-th port range out of all
//!   ports (kept and handed out again on a repeated ask), `"irq:N"` passes IRQ line N if the
//!   manifest gives it to the caller; attached with CALL. `"memory"` carves the caller's
//!   `scratch` pages (manifest) from the pool once and attaches them with READ|WRITE|GRANT (and
//!   EXEC for a vmm-server, whose scratch memory is its guest's RAM), for the server to map,
//!   delegate and revoke. `"image"`: see [`crate::guests`]. `NoRights` for resources the
//!   manifest does not give, `BadSelector` for unknown names.
//! - `GET_CONFIG`, `GUEST_DONE`: see [`crate::guests`].
//! - `POWER_OFF [success]`: ends the system if the manifest allows the caller, else `NoRights`.
//! - A fault message (`abi::utcb::FAULT_LABEL`) of a server without a fault handler: printed,
//!   and the thread is not resumed; a vmm-server's fault ends its guest as failed.
//! - Anything else: `BadArgument`.

use alloc::string::ToString;
use alloc::vec::Vec;

/// Rights of a server's scratch-memory capability: map it read/write, pass it on.
const MEMORY_RIGHTS: Rights = Rights(Rights::READ.0 | Rights::WRITE.0 | Rights::GRANT.0);
/// Rights of a vmm-server's scratch memory, its guest's RAM: also EXEC, which mapping guest code
/// into the Vm needs.
const GUEST_MEMORY_RIGHTS: Rights = Rights(MEMORY_RIGHTS.0 | Rights::EXEC.0);

use abi::boot::sel::{ALL_IO_PORTS, FIRST_IRQ};
use abi::bootstrap::{GET, GET_CONFIG, GET_RESOURCE, GUEST_DONE, POWER_OFF, REGISTER};
use abi::utcb::FAULT_LABEL;
use abi::{ObjectKind, Rights, Sel, Status};
use rt::{syscall, Error, Start, Utcb};

use crate::console::vector_name;
use crate::state::{lock, Registered, Resource, ServerSels, State};
use crate::{guests, say, servers};

/// Body of the handler thread of server `start.arg`'s bootstrap portal.
pub fn handler_main(start: Start) -> ! {
    let index = start.arg as usize;
    let portal = ServerSels::of(index).portal;
    let mut utcb = start.utcb;
    let mut landing: Option<Sel> = None;
    utcb.set_msg(0, &[]);
    loop {
        let recv = match landing {
            Some(sel) => sel,
            None => {
                let sel = lock()
                    .as_mut()
                    .and_then(|s| s.sels.alloc())
                    .unwrap_or(Sel::new(abi::CAP_SPACE_SLOTS));
                landing = Some(sel);
                sel
            }
        };
        utcb.set_cap_recv(recv);
        match utcb.reply_wait(portal) {
            Ok(badge) if badge == index as u64 => {}
            Ok(_) => {
                utcb.set_status(Status::BadArgument);
                continue;
            }
            // The portal is created right after this thread starts.
            Err(Error::Kernel(Status::BadSelector)) => {
                utcb.set_msg(0, &[]);
                syscall::yield_now();
                continue;
            }
            Err(e) => {
                say!("init: bootstrap handler {index} stops: {e}");
                syscall::thread_exit()
            }
        }
        let received = utcb.cap_received();
        let kept = handle(&mut utcb, index, recv);
        if received {
            if kept {
                landing = None;
            } else {
                let _ = syscall::revoke(recv, true);
            }
        }
    }
}

/// Handles one message from server `index`; leaves the reply in the UTCB and says whether the
/// capability that came with it (if any) is kept.
fn handle(utcb: &mut Utcb, index: usize, recv: Sel) -> bool {
    let label = utcb.label();
    if label == FAULT_LABEL {
        report_fault(utcb, index);
        if let Some(state) = lock().as_mut() {
            guests::vmm_faulted(state, index);
        }
        // Any label but RESUME_LABEL: the kernel ends the faulting thread.
        utcb.set_msg(0, &[]);
        return false;
    }
    let mut buf: rt::wire::Buf = [0; rt::wire::MAX_BYTES];
    let arg = match label {
        REGISTER | GET | GET_RESOURCE => match utcb.payload::<&str>(&mut buf) {
            Ok(arg) => arg,
            Err(_) => {
                utcb.set_status(Status::BadArgument);
                return false;
            }
        },
        _ => "",
    };
    let received = utcb.cap_received();
    let success = utcb.word(0) == 1;
    let (word0, word1) = (utcb.word(0), utcb.word(1));
    let mut guard = lock();
    let Some(state) = guard.as_mut() else {
        utcb.set_status(Status::Aborted);
        return false;
    };
    // Words after the status, for replies that carry more.
    let mut more: Vec<u64> = Vec::new();
    let (status, attach, kept) = match label {
        REGISTER => {
            let status = register(state, index, arg, received.then_some(recv));
            (status, None, status == Status::Ok)
        }
        GET => match get(state, index, arg) {
            Ok(cap) => (Status::Ok, Some(cap), false),
            Err(status) => (status, None, false),
        },
        GET_RESOURCE if arg == "initrd" => match guests::initrd(state, index) {
            Ok((sel, words)) => {
                more.extend(words);
                (Status::Ok, Some((sel, guests::IMAGE_RIGHTS)), false)
            }
            Err(status) => (status, None, false),
        },
        GET_RESOURCE if arg == "image" => match guests::image(state, index) {
            Ok((sel, words)) => {
                more.extend(words);
                (Status::Ok, Some((sel, guests::IMAGE_RIGHTS)), false)
            }
            Err(status) => (status, None, false),
        },
        GET_RESOURCE => match resource(state, index, arg) {
            Ok(sel) if arg == "memory" && state.guest_of(index).is_some() => {
                (Status::Ok, Some((sel, GUEST_MEMORY_RIGHTS)), false)
            }
            Ok(sel) if arg == "memory" => (Status::Ok, Some((sel, MEMORY_RIGHTS)), false),
            Ok(sel) => (Status::Ok, Some((sel, Rights::CALL)), false),
            Err(status) => (status, None, false),
        },
        GET_CONFIG => match guests::config(state, index, word0) {
            Ok(words) => {
                more = words;
                (Status::Ok, None, false)
            }
            Err(status) => (status, None, false),
        },
        GUEST_DONE => (guests::done(state, index, word0, word1), None, false),
        POWER_OFF => (power_off(state, index, success), None, false),
        _ => (Status::BadArgument, None, false),
    };
    drop(guard);
    utcb.set_status(status);
    for (i, &word) in more.iter().enumerate() {
        utcb.set_word(i + 1, word);
    }
    if let Some((sel, rights)) = attach {
        utcb.attach_cap(sel, rights);
    }
    kept
}

fn report_fault(utcb: &Utcb, index: usize) {
    let name = lock()
        .as_ref()
        .and_then(|s| s.image.servers.get(index).map(|s| s.name.to_string()))
        .unwrap_or_default();
    let [vector, error, rip, address, thread] = [0, 1, 2, 3, 4].map(|i| utcb.word(i));
    say!(
        "init: server {name} faulted: vector {vector} ({}), error {error:#x}, rip {rip:#x}, address {address:#x}, thread {thread:#x}; not resumed",
        vector_name(vector)
    );
}

fn register(state: &mut State, index: usize, name: &str, cap: Option<Sel>) -> Status {
    let Some(cap) = cap else {
        return Status::BadArgument;
    };
    if !state.image.servers[index].provides(name) {
        return Status::NoRights;
    }
    if state
        .registry
        .iter()
        .any(|r| r.server == index && r.portal == name)
    {
        return Status::BadArgument;
    }
    match syscall::lookup(cap) {
        Ok(info) if info.kind() == Some(ObjectKind::Portal) => {}
        _ => return Status::WrongKind,
    }
    state.registry.push(Registered {
        server: index,
        portal: name.to_string(),
        sel: cap,
    });
    let server = &state.image.servers[index].name;
    say!("init: {server} registered {server}.{name}");
    if let Err(why) = servers::start_ready(state) {
        say!("init: {why}");
    }
    Status::Ok
}

fn get(state: &State, index: usize, name: &str) -> Result<(Sel, Rights), Status> {
    let (server, portal) = manifest::split_portal(name).ok_or(Status::BadSelector)?;
    let provider = state.image.server(server).ok_or(Status::BadSelector)?;
    if !provider.provides(portal) {
        return Err(Status::BadSelector);
    }
    let client = &state.image.servers[index].name;
    let rights = state
        .image
        .grant(client, server, portal)
        .ok_or(Status::NoRights)?;
    let sel = state.registered(server, portal).ok_or(Status::NoPartner)?;
    Ok((sel, rights))
}

fn resource(state: &mut State, index: usize, name: &str) -> Result<Sel, Status> {
    if let Some(r) = state
        .resources
        .iter()
        .find(|r| r.server == index && r.name == name)
    {
        return Ok(r.sel);
    }
    let server = &state.image.servers[index];
    if name == "memory" {
        let pages = server.scratch_pages;
        if pages == 0 {
            return Err(Status::NoRights);
        }
        let sel = state.sels.alloc().ok_or(Status::OutOfMemory)?;
        if state.memory.take(sel, pages).is_err() {
            state.sels.release(sel);
            return Err(Status::OutOfMemory);
        }
        state.resources.push(Resource {
            server: index,
            name: name.to_string(),
            sel,
        });
        return Ok(sel);
    }
    if let Some(line) = name.strip_prefix("irq:") {
        let line: u8 = line.parse().map_err(|_| Status::BadSelector)?;
        if !server.irqs.contains(&line) || u64::from(line) >= abi::boot::IRQ_COUNT {
            return Err(Status::NoRights);
        }
        return Ok(FIRST_IRQ.offset(u64::from(line)));
    }
    let range = match name {
        "io_ports" => 0,
        _ => name
            .strip_prefix("io_ports:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or(Status::BadSelector)?,
    };
    let ports = *server.io_ports.get(range).ok_or(Status::NoRights)?;
    let sel = state.sels.alloc().ok_or(Status::OutOfMemory)?;
    if let Err(e) = syscall::carve(
        ALL_IO_PORTS,
        sel,
        u64::from(ports.base),
        u64::from(ports.count),
    ) {
        state.sels.release(sel);
        return Err(e.status().unwrap_or(Status::BadArgument));
    }
    state.resources.push(Resource {
        server: index,
        name: name.to_string(),
        sel,
    });
    Ok(sel)
}

/// A server asks to end the system. While guests run, a successful request waits for them (the
/// system then ends when the last one does, with success only if they all passed); a failure
/// ends it at once.
fn power_off(state: &mut State, index: usize, success: bool) -> Status {
    let server = &state.image.servers[index];
    if !server.power_off {
        say!("init: {} may not power off; refused", server.name);
        return Status::NoRights;
    }
    let name = server.name.clone();
    let guests = state.guests_ended();
    if success && guests.is_none() {
        say!("init: {name} asks to power off (success); waiting for the guests to end");
        state.power_off_request = Some(true);
        // The caller waits in its call; the last guest's end powers the system off.
        return Status::Ok;
    }
    let success = success && guests.unwrap_or(true);
    say!(
        "init: {name} powers the system off ({})",
        if success { "success" } else { "failure" }
    );
    let error = syscall::power_off(success);
    error.status().unwrap_or(Status::Aborted)
}
