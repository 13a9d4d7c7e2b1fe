//! Threads: `create_thread`, and `spawn` for init's first thread.

use alloc::boxed::Box;

use abi::syscall::MAX_PRIORITY;
use abi::{Rights, Status};
use cap::SpaceId;

use crate::arch::user;
use crate::kern::cost;
use crate::kern::ids::{PdId, ThreadId};
use crate::kern::memory::USER_END;
use crate::kern::obj::Obj;
use crate::kern::state::Kernel;
use crate::kern::thread::{State, Thread};
use abi::syscall::args;

/// A thread may make threads and vCPUs at most at its own priority (the root domain, which
/// composes the system, at any): otherwise any server could starve every other domain by
/// making a thread above them.
pub fn may_run_at(k: &Kernel, me: ThreadId, my_pd: PdId, priority: u64) -> Result<(), Status> {
    let mine = k.threads.get(me).map_or(0, |t| t.priority);
    if k.root != Some(my_pd) && priority <= MAX_PRIORITY && priority > u64::from(mine) {
        return Err(Status::NoRights);
    }
    Ok(())
}

pub fn create_thread(
    k: &mut Kernel,
    my_pd: PdId,
    space: SpaceId,
    a: args::CreateThread,
) -> Result<u64, Status> {
    let args::CreateThread {
        dest,
        pd: pd_sel,
        entry,
        stack_top,
        priority,
        utcb,
    } = a;
    k.check_free(space, dest)?;
    let pd = k.lookup::<PdId>(space, pd_sel, Rights::CONTROL)?;
    if priority > MAX_PRIORITY {
        return Err(Status::BadArgument);
    }
    if entry >= USER_END
        || stack_top > USER_END
        || !stack_top.is_multiple_of(16)
        || !utcb.is_multiple_of(4096)
        || utcb >= USER_END
    {
        return Err(Status::BadAddress);
    }
    // The UTCB must be a writable user page of the target domain; the kernel keeps its frame.
    let utcb_frame = {
        let domain = k.pds.get(pd).ok_or(Status::BadSelector)?;
        let t = crate::mem::paging::translate_in(&domain.aspace, utcb).ok_or(Status::BadAddress)?;
        if !t.flags.user || !t.flags.writable {
            return Err(Status::BadAddress);
        }
        t.phys & !0xfff
    };
    k.charge(my_pd, cost::THREAD)?;
    let t = spawn(k, pd, entry, stack_top, priority as u8, utcb, utcb_frame, 0)
        .ok_or(Status::BadAddress)
        .inspect_err(|_| k.release(my_pd, cost::THREAD))?;
    if let Some(thread) = k.threads.get_mut(t) {
        thread.charged_to = Some(my_pd);
    }
    if let Err(e) = k
        .caps
        .insert_original(space, dest.raw(), Obj::Thread(t), Rights::ALL)
    {
        k.kill(t);
        k.release(my_pd, cost::THREAD);
        return Err(e.into());
    }
    Ok(0)
}

/// Makes a ready thread in `pd`.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    k: &mut Kernel,
    pd: PdId,
    entry: u64,
    stack_top: u64,
    priority: u8,
    utcb: u64,
    utcb_frame: u64,
    arg: u64,
) -> Option<ThreadId> {
    let utcb_words = crate::mem::direct::FrameWords::new(utcb_frame)?;
    let regs = Box::new(user::initial_frame(entry, stack_top, utcb, arg));
    let t = k.threads.insert(Thread {
        pd,
        regs,
        utcb: utcb_words,
        priority,
        state: State::Ready,
        serving: None,
        faulted: false,
        badge: 0,
        charged_to: None,
        utcb_page: Some(utcb),
        vcpu: None,
    });
    if let Some(thread) = k.threads.get_mut(t) {
        thread.badge = t.raw();
    }
    if let Some(domain) = k.pds.get_mut(pd) {
        domain.threads.push(t);
    }
    k.wake(t);
    Some(t)
}
