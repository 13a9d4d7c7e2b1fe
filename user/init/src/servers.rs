//! Turning the manifest's servers into running protection domains.
//!
//! For each server, in manifest order, then for each guest's vmm-server, [`prepare`] creates its
//! domain (with the manifest's quota), loads its ELF, gives it its own domain at `SELF_PD`,
//! starts init's handler thread for its bootstrap portal, creates that portal (badge = the server's index) and delegates it at
//! `BOOTSTRAP_PORTAL`, and at `FAULT_PORTAL` too when the manifest names no fault handler
//! (init then reports the server's faults).
//!
//! **Order rule.** A server whose fault handler is another server's portal starts only once
//! that portal is registered ([`start_ready`] runs after every registration), so it can never
//! fault before its handler exists, whatever the manifest order. Everything else starts right
//! after loading. [`start`] delegates the fault portal, creates the thread (entry from the ELF,
//! stack top, the manifest's priority, UTCB) and gives the server its thread at `SELF_THREAD`.

use alloc::format;
use alloc::string::String;

use abi::boot::BootPage;
use abi::{well_known, Rights, Sel, Status};
use rt::syscall::ChildPd;
use rt::{boot, syscall, thread, Error};

use crate::load::{self, STACK_TOP, UTCB_ADDR};
use crate::state::{Progress, ServerSels, State};
use crate::{say, serve, INIT_PRIORITY};

/// Stack of each of init's bootstrap handler threads.
const HANDLER_STACK: usize = 16 * 1024;

static HANDLERS: [thread::ThreadMem<HANDLER_STACK>; crate::state::MAX_SERVERS] =
    [const { thread::ThreadMem::new() }; crate::state::MAX_SERVERS];

/// Rights a server holds on its own domain and thread: inspect and use them, not pass them on.
const SELF_RIGHTS: Rights = Rights(Rights::READ.0 | Rights::CONTROL.0);

/// Delegates, treating an already filled slot as done (a kernel that fills `SELF_PD` and
/// `SELF_THREAD` itself, as `abi::well_known` describes, makes init's copy unnecessary).
fn give(src: Sel, pd: Sel, dest: Sel, rights: Rights) -> Result<(), Error> {
    match syscall::delegate(src, pd, dest, rights) {
        Err(Error::Kernel(Status::SelectorInUse)) => Ok(()),
        other => other,
    }
}

/// Loads server `index` and sets up its bootstrap portal; it is not started yet.
pub fn prepare(state: &mut State, page: &'static BootPage, index: usize) -> Result<(), String> {
    let server = &state.image.servers[index];
    let sels = ServerSels::of(index);
    let module = boot::find(page, state.module_of(index))
        .ok_or_else(|| format!("no boot module `{}`", state.module_of(index)))?;
    let bytes = module.bytes().ok_or("boot module outside the user half")?;
    let pd = syscall::create_child_pd(sels.pd, server.quota)
        .map_err(|e| format!("create domain: {e}"))?;
    give(sels.pd, sels.pd, well_known::SELF_PD, SELF_RIGHTS)
        .map_err(|e| format!("give its domain: {e}"))?;
    let loaded = load::load(
        &mut state.memory,
        bytes,
        sels.pd,
        sels.mem,
        server.memory_pages,
    )
    .map_err(|e| format!("load: {e}"))?;
    thread::spawn(
        &HANDLERS[index],
        sels.handler,
        INIT_PRIORITY,
        serve::handler_main,
        index as u64,
    )
    .map_err(|e| format!("start its bootstrap handler: {e}"))?;
    syscall::create_portal(sels.portal, sels.handler, index as u64)
        .map_err(|e| format!("create its bootstrap portal: {e}"))?;
    syscall::delegate(
        sels.portal,
        sels.pd,
        well_known::BOOTSTRAP_PORTAL,
        Rights::CALL,
    )
    .map_err(|e| format!("give its bootstrap portal: {e}"))?;
    match server.fault_portal() {
        None => syscall::delegate(sels.portal, sels.pd, well_known::FAULT_PORTAL, Rights::CALL)
            .map_err(|e| format!("give its fault portal: {e}"))?,
        Some((handler, _)) if handler == server.name => {
            return Err(
                "its fault handler is its own portal, which cannot exist before it runs".into(),
            )
        }
        Some(_) => {}
    }
    say!(
        "init: loaded {} ({} pages, quota {} KiB)",
        server.name,
        loaded.pages,
        server.quota / 1024
    );
    state.progress[index] = Progress::Loaded {
        entry: loaded.entry,
        pd,
    };
    Ok(())
}

/// Starts every loaded server whose fault handler (if any) is registered.
pub fn start_ready(state: &mut State) -> Result<(), String> {
    for index in 0..state.image.servers.len() {
        let Progress::Loaded { entry, pd } = state.progress[index] else {
            continue;
        };
        let server = &state.image.servers[index];
        let handler = match server.fault_portal() {
            None => None,
            Some((s, p)) => match state.registered(s, p) {
                Some(sel) => Some(sel),
                None => continue,
            },
        };
        start(state, index, pd, entry, handler)
            .map_err(|e| format!("cannot start {}: {e}", state.image.servers[index].name))?;
    }
    Ok(())
}

fn start(
    state: &mut State,
    index: usize,
    pd: ChildPd,
    entry: u64,
    fault: Option<Sel>,
) -> Result<(), String> {
    let server = &state.image.servers[index];
    let sels = ServerSels::of(index);
    if let Some(portal) = fault {
        syscall::delegate(portal, sels.pd, well_known::FAULT_PORTAL, Rights::CALL)
            .map_err(|e| format!("give its fault portal: {e}"))?;
    }
    // The thread runs the server's own code, stack and UTCB, which `load` mapped in its domain.
    pd.start_thread(
        sels.thread,
        entry,
        STACK_TOP,
        u64::from(server.priority),
        UTCB_ADDR,
    )
    .map_err(|e| format!("create its thread: {e}"))?;
    // The kernel does not fill SELF_THREAD (abi::well_known says it does), so init gives it.
    // A server below init's priority (30) has not run yet; one at 30 or 31 may run first and
    // find SELF_THREAD empty for a moment.
    give(sels.thread, sels.pd, well_known::SELF_THREAD, SELF_RIGHTS)
        .map_err(|e| format!("give its thread: {e}"))?;
    say!(
        "init: started {} (prio {}{})",
        server.name,
        server.priority,
        match server.fault_handler.as_deref() {
            Some(h) => format!(", faults to {h}"),
            None => String::new(),
        }
    );
    state.progress[index] = Progress::Running;
    Ok(())
}
