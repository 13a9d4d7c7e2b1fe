//! Synchronous IPC over portals: call, reply, reply-and-wait, and fault messages.
//!
//! A message is the sender's UTCB tag and words, copied into the receiver's UTCB (the kernel
//! reads both through the direct map, never through user pointers); a capability travels with it
//! when the tag says so, delegated from the sender's space into the receiver's `cap_recv` slot.

use abi::utcb::{MsgTag, Utcb, FAULT_LABEL, MSG_WORDS, RESUME_LABEL};
use abi::{Rights, Sel, Status};

use super::ids::{PortalId, ThreadId};
use super::state::Kernel;
use super::thread::State;
use crate::mem::direct;

// Word offsets of UTCB fields (the UTCB is `#[repr(C)]` of u64s).
const TAG: usize = 0;
const CAP_SEND: usize = 1;
const CAP_SEND_RIGHTS: usize = 2;
const CAP_RECV: usize = 3;
const CAP_RECEIVED: usize = 4;
const BADGE: usize = 5;
const WORDS: usize = 8;

const _: () = assert!(core::mem::offset_of!(Utcb, words) == WORDS * 8);
const _: () = assert!(core::mem::offset_of!(Utcb, badge) == BADGE * 8);

fn utcb(k: &Kernel, t: ThreadId) -> Option<direct::FrameWords> {
    k.threads.get(t).map(|x| x.utcb)
}

/// Copies a message from `from`'s UTCB to `to`'s, with its capability if any. Validates the tag
/// first; nothing is copied if it is bad or the capability cannot travel.
fn transfer(
    k: &mut Kernel,
    from: ThreadId,
    to: ThreadId,
    badge: Option<u64>,
) -> Result<(), Status> {
    let (Some(src), Some(dst)) = (utcb(k, from), utcb(k, to)) else {
        return Err(Status::NoPartner);
    };
    let tag = MsgTag(src.read(TAG));
    let words = tag.words().ok_or(Status::BadArgument)?;
    let mut received = 0;
    if tag.has_cap() {
        let sel = src.read(CAP_SEND);
        let rights = Rights::from_bits(src.read(CAP_SEND_RIGHTS)).ok_or(Status::BadArgument)?;
        let dst_sel = dst.read(CAP_RECV);
        let (Some(from_pd), Some(to_pd)) = (pd_space(k, from), pd_space(k, to)) else {
            return Err(Status::NoPartner);
        };
        k.caps
            .delegate(from_pd, sel, to_pd, dst_sel, rights)
            .map_err(Status::from)?;
        super::memory::after_cap_insert(k, to, dst_sel);
        received = 1;
    }
    for i in 0..words.min(MSG_WORDS) {
        dst.write(WORDS + i, src.read(WORDS + i));
    }
    dst.write(TAG, tag.0);
    dst.write(CAP_RECEIVED, received);
    if let Some(badge) = badge {
        dst.write(BADGE, badge);
    }
    Ok(())
}

fn pd_space(k: &Kernel, t: ThreadId) -> Option<cap::SpaceId> {
    let pd = k.threads.get(t)?.pd;
    Some(k.pds.get(pd)?.space)
}

/// Hands `caller`'s message to the handler of `portal` (which is receiving) and runs it.
fn deliver(k: &mut Kernel, caller: ThreadId, portal: PortalId) -> Result<(), Status> {
    let (handler, badge) = match k.portals.get(portal) {
        Some(p) => (p.handler, p.badge),
        None => return Err(Status::NoPartner),
    };
    transfer(k, caller, handler, Some(badge))?;
    if let Some(h) = k.threads.get_mut(handler) {
        h.serving = Some(caller);
        h.regs.rax = Status::Ok as u64;
        h.regs.rdx = badge;
    }
    if let Some(c) = k.threads.get_mut(caller) {
        c.state = State::AwaitingReply;
    }
    Ok(())
}

/// `call(portal)` from the current thread.
pub fn call(k: &mut Kernel, portal_sel: Sel) -> Result<(), Status> {
    let caller = k.current();
    // Fault messages come from the kernel only, so a handler can trust them.
    let frame = utcb(k, caller).ok_or(Status::NoPartner)?;
    let label = MsgTag(frame.read(TAG)).label();
    if label == FAULT_LABEL || label == abi::vm::EXIT_LABEL {
        return Err(Status::BadArgument);
    }
    let space = pd_space(k, caller).ok_or(Status::NoPartner)?;
    let portal: PortalId = k.lookup(space, portal_sel, Rights::CALL)?;
    send(k, caller, portal)
}

/// Sends `caller`'s message to `portal`: straight to a waiting handler, else into the queue.
fn send(k: &mut Kernel, caller: ThreadId, portal: PortalId) -> Result<(), Status> {
    let handler = k.portals.get(portal).ok_or(Status::NoPartner)?.handler;
    let handler_state = k
        .threads
        .get(handler)
        .map(|h| h.state)
        .ok_or(Status::NoPartner)?;
    if handler == caller {
        return Err(Status::BadArgument); // a thread cannot serve its own call
    }
    // A VMM serves all exit portals of a vCPU with one thread, waiting on any of them.
    let receiving = handler_state == State::Receiving(portal)
        || (matches!(handler_state, State::Receiving(_)) && is_vcpu(k, caller));
    if receiving {
        deliver(k, caller, portal)?;
        k.block_current_if(caller, State::AwaitingReply);
        k.switch_to(handler);
    } else {
        if let Some(p) = k.portals.get_mut(portal) {
            p.callers.push_back(caller);
        }
        k.block_current_if(caller, State::Calling(portal));
    }
    Ok(())
}

/// How a reply to a vCPU's exit is checked and written back (`reply::finish_exit`, passed in by
/// the syscall layer so that IPC does not depend on the VM code): `Ok(true)` resumes the vCPU,
/// `Ok(false)` ends it, an error refuses the reply and the handler still serves the vCPU. A
/// generic parameter, not a function pointer, so the call stays direct on the reply path.
pub trait AnswerExit: FnOnce(&mut Kernel, ThreadId, ThreadId) -> Result<bool, Status> {}
impl<F: FnOnce(&mut Kernel, ThreadId, ThreadId) -> Result<bool, Status>> AnswerExit for F {}

/// Replies to the caller the current thread serves, if any. Returns the caller.
fn reply_to_caller(
    k: &mut Kernel,
    answer_exit: impl AnswerExit,
) -> Result<Option<ThreadId>, Status> {
    let me = k.current();
    let Some(caller) = k.threads.get_mut(me).and_then(|t| t.serving.take()) else {
        return Ok(None);
    };
    let Some(c) = k.threads.get(caller) else {
        return Ok(None);
    };
    if c.faulted {
        finish_fault(k, me, caller);
        return Ok(Some(caller));
    }
    if c.vcpu.is_some() {
        match answer_exit(k, me, caller) {
            Ok(true) => {
                if let Some(c) = k.threads.get_mut(caller) {
                    c.state = State::Ready;
                }
            }
            Ok(false) => k.kill(caller),
            Err(status) => {
                // Refused: the handler still serves the vCPU and may answer again.
                if let Some(h) = k.threads.get_mut(me) {
                    h.serving = Some(caller);
                }
                return Err(status);
            }
        }
        return Ok(Some(caller));
    }
    match transfer(k, me, caller, None) {
        Ok(()) => k.set_result(caller, Status::Ok, 0),
        // The reply could not travel (bad tag or capability): the caller learns why.
        Err(status) => k.set_result(caller, status, 0),
    }
    if let Some(c) = k.threads.get_mut(caller) {
        c.state = State::Ready;
    }
    Ok(Some(caller))
}

/// `reply()`.
pub fn reply(k: &mut Kernel, answer_exit: impl AnswerExit) -> Result<(), Status> {
    match reply_to_caller(k, answer_exit)? {
        Some(caller) => {
            if k.threads
                .get(caller)
                .is_some_and(|c| c.state == State::Ready)
            {
                k.wake(caller);
            }
            Ok(())
        }
        None => Err(Status::NoPartner),
    }
}

/// `reply_wait(portal)`: reply if serving, then take the next call or wait for one.
pub fn reply_wait(
    k: &mut Kernel,
    portal_sel: Sel,
    answer_exit: impl AnswerExit,
) -> Result<(), Status> {
    let me = k.current();
    let space = pd_space(k, me).ok_or(Status::NoPartner)?;
    // Receiving needs no right: only the portal's bound handler may (checked next).
    let portal: PortalId = k.lookup(space, portal_sel, Rights::NONE)?;
    if k.portals.get(portal).map(|p| p.handler) != Some(me) {
        return Err(Status::NoRights); // only the bound handler receives on a portal
    }
    let replied = reply_to_caller(k, answer_exit)?;
    // Take the next queued caller whose message can be delivered, if any, right away; a caller
    // whose message cannot travel (bad tag or capability) gets the reason and is skipped.
    while let Some(caller) = k
        .portals
        .get_mut(portal)
        .and_then(|p| p.callers.pop_front())
    {
        match deliver(k, caller, portal) {
            Ok(()) => {
                if let Some(r) = replied {
                    k.wake_if_ready(r);
                }
                return Ok(()); // rax/rdx set by `deliver`
            }
            Err(status) => {
                k.set_result(caller, status, 0);
                k.wake(caller);
            }
        }
    }
    k.block_current_if(me, State::Receiving(portal));
    if let Some(r) = replied {
        // Hand the CPU back to the caller we replied to.
        if k.threads.get(r).is_some_and(|c| c.state == State::Ready) {
            k.switch_to(r);
        }
    }
    Ok(())
}

fn is_vcpu(k: &Kernel, t: ThreadId) -> bool {
    k.threads.get(t).is_some_and(|x| x.vcpu.is_some())
}

/// Whether `portal`'s handler waits for a call now (a vCPU's call would be taken at once).
pub fn receiving(k: &Kernel, portal: PortalId) -> bool {
    k.portals
        .get(portal)
        .and_then(|p| k.threads.get(p.handler))
        .is_some_and(|h| matches!(h.state, State::Receiving(_)))
}

/// Sends an exit message, already in vCPU `t`'s message frame, to `portal`.
pub fn send_exit(k: &mut Kernel, t: ThreadId, portal: PortalId) -> Result<(), Status> {
    send(k, t, portal)
}

/// An exception in user mode: a call on the domain's fault portal with a fault message, or the
/// end of the thread when there is no handler.
pub fn deliver_fault(k: &mut Kernel, vector: u64, address: u64) {
    let t = k.current();
    let Some(thread) = k.threads.get(t) else {
        return;
    };
    let (rip, error, badge, pd) = (
        thread.regs.rip,
        thread.regs.error_code,
        thread.badge,
        thread.pd,
    );
    let portal = k.pds.get(pd).and_then(|p| {
        k.lookup::<PortalId>(p.space, abi::well_known::FAULT_PORTAL, Rights::CALL)
            .ok()
    });
    let Some(portal) = portal else {
        crate::println!(
            "kernel: thread {t:?} faulted (vector {vector}, error {error:#x}, rip {rip:#x}, address {address:#x}) with no fault handler; thread ended"
        );
        k.kill(t);
        return;
    };
    let Some(frame) = utcb(k, t) else {
        return;
    };
    // The faulting thread's UTCB carries the fault message; it is not using it for a call now.
    frame.write(TAG, MsgTag::new(FAULT_LABEL, 5, false).0);
    for (i, word) in [vector, error, rip, address, badge].into_iter().enumerate() {
        frame.write(WORDS + i, word);
    }
    if let Some(thread) = k.threads.get_mut(t) {
        thread.faulted = true;
    }
    if let Err(status) = send(k, t, portal) {
        crate::println!(
            "kernel: fault message of thread {t:?} not delivered ({status}); thread ended"
        );
        k.kill(t);
    }
}

/// The handler answered a fault message: resume at the RIP it gives, or end the thread.
fn finish_fault(k: &mut Kernel, handler: ThreadId, faulted: ThreadId) {
    let Some(frame) = utcb(k, handler) else {
        return;
    };
    let tag = MsgTag(frame.read(TAG));
    let resume_rip = frame.read(WORDS);
    if tag.label() == RESUME_LABEL && resume_rip < 0x0000_8000_0000_0000 {
        if let Some(t) = k.threads.get_mut(faulted) {
            t.faulted = false;
            t.regs.rip = resume_rip;
            t.state = State::Ready;
        }
    } else {
        k.kill(faulted);
    }
}

impl Kernel {
    /// Takes `t` off the CPU if it is the current thread (it always is for syscalls).
    fn block_current_if(&mut self, t: ThreadId, state: State) {
        if self.current == Some(t) {
            self.block_current(state);
        } else if let Some(thread) = self.threads.get_mut(t) {
            thread.state = state;
        }
    }

    fn wake_if_ready(&mut self, t: ThreadId) {
        if self.threads.get(t).is_some_and(|c| c.state == State::Ready) && self.current != Some(t) {
            self.wake(t);
        }
    }
}
