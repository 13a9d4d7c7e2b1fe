//! Syscall decoding: every argument is checked (selectors, kinds, rights, ranges, quota) before
//! anything changes, and every refusal is a [`Status`], never a panic.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

use abi::syscall::{Syscall, MAX_PRIORITY};
use abi::{Rights, Status};
use cap::{Removed, SpaceId};

use super::memory::{self, USER_END};
use super::objects::{cost, Obj, Pd, PdId, Portal, Semaphore, State, Thread, ThreadId};
use super::{ipc, vm, Kernel};
use crate::arch::user;

/// Handles the current thread's syscall; leaves the result in its saved RAX/RDX unless the
/// thread blocked (its result is set when it wakes).
pub fn dispatch(k: &mut Kernel) {
    let me = k.current();
    let Some(thread) = k.threads.get(me) else {
        return;
    };
    let regs = &thread.regs;
    let number = regs.rax;
    let args = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9];
    let Some(pd) = k.pds.get(thread.pd) else {
        return;
    };
    let (space, my_pd) = (pd.space, thread.pd);
    let result = match Syscall::from_u64(number) {
        None => Err(Status::BadSyscall),
        Some(call) => handle(k, call, me, my_pd, space, args),
    };
    // A thread that blocked (in IPC or on a semaphore) gets its result when it wakes; every
    // other thread that still exists (running, preempted or yielded) gets it now.
    if k.threads.get(me).is_some_and(|t| t.state == State::Ready) {
        let (status, value) = match result {
            Ok(value) => (Status::Ok, value),
            Err(status) => (status, 0),
        };
        k.set_result(me, status, value);
    }
}

fn handle(
    k: &mut Kernel,
    call: Syscall,
    me: ThreadId,
    my_pd: PdId,
    space: SpaceId,
    a: [u64; 6],
) -> Result<u64, Status> {
    match call {
        Syscall::Call => ipc::call(k, a[0]).map(|()| 0),
        Syscall::Reply => ipc::reply(k).map(|()| 0),
        Syscall::ReplyWait => {
            ipc::reply_wait(k, a[0]).map(|()| k.threads.get(me).map_or(0, |t| t.regs.rdx))
        }
        Syscall::CreatePd => create_pd(k, my_pd, space, a[0], a[1]),
        Syscall::CreateThread => {
            may_run_at(k, me, my_pd, a[4])?;
            create_thread(k, my_pd, space, a)
        }
        Syscall::CreatePortal => create_portal(k, my_pd, space, a[0], a[1], a[2]),
        Syscall::CreateSemaphore => create_semaphore(k, my_pd, space, a[0], a[1]),
        Syscall::Delegate => delegate(k, space, a),
        Syscall::Revoke => revoke(k, space, a[0], a[1]),
        Syscall::Lookup => {
            let (object, rights) = k.caps.get(space, a[0]).map_err(Status::from)?;
            Ok(object.kind() as u64 | (u64::from(rights.0) << 8))
        }
        Syscall::SemUp => sem_up(k, space, a[0]),
        Syscall::SemDown => sem_down(k, me, space, a[0], a[1]),
        Syscall::Map => memory::map(k, space, a).map(|()| 0),
        Syscall::Yield => {
            k.yield_current();
            Ok(0)
        }
        Syscall::IrqBind => irq_bind(k, space, a[0], a[1]),
        Syscall::ThreadExit => {
            k.kill(me);
            Ok(0)
        }
        Syscall::PowerOff => {
            if k.root != Some(my_pd) {
                return Err(Status::NoRights);
            }
            super::power_off(a[0] == 0)
        }
        Syscall::ConsoleWrite => console_write(k, my_pd, a[0], a[1]),
        Syscall::Carve => memory::carve(k, space, me, [a[0], a[1], a[2], a[3]]).map(|()| 0),
        Syscall::CreateVm => vm::create_vm(k, space, a),
        Syscall::CreateVcpu => {
            may_run_at(k, me, my_pd, a[3])?;
            vm::create_vcpu(k, my_pd, space, a)
        }
        Syscall::VmMap => vm::vm_map(k, space, a),
        Syscall::VcpuControl => vm::vcpu_control(k, space, a),
        Syscall::VmPatch => vm::vm_patch(k, me, space, a),
        Syscall::VmWindow => vm::vm_window(k, space, a),
        Syscall::VmRead => vm::vm_read(k, me, space, a),
        Syscall::VmDmp => vm::vm_dmp(k, space, a),
        Syscall::KernelStats => kernel_stats(k, my_pd, a[0]),
    }
}

/// `kernel_stats(which)`: one figure of `abi::syscall::stats`.
fn kernel_stats(k: &Kernel, my_pd: PdId, which: u64) -> Result<u64, Status> {
    use abi::syscall::stats;
    let quota = k.pds.get(my_pd).ok_or(Status::BadSelector)?.quota;
    Ok(match which {
        stats::FREE_FRAMES => crate::mem::frames::stats().0 as u64,
        stats::HEAP_USED => crate::mem::heap::stats().0 as u64,
        stats::QUOTA_USED => quota.used(),
        stats::QUOTA_LIMIT => quota.limit(),
        stats::VIRT_BACKEND => crate::arch::vm::backend().map_or(0, |b| b.abi() as u64),
        _ => return Err(Status::BadArgument),
    })
}

/// A thread may make threads and vCPUs at most at its own priority (the root domain, which
/// composes the system, at any): otherwise any server could starve every other domain by
/// making a thread above them.
fn may_run_at(k: &Kernel, me: ThreadId, my_pd: PdId, priority: u64) -> Result<(), Status> {
    let mine = k.threads.get(me).map_or(0, |t| t.priority);
    if k.root != Some(my_pd) && priority <= MAX_PRIORITY && priority > u64::from(mine) {
        return Err(Status::NoRights);
    }
    Ok(())
}

/// Checks that `sel` is a free slot of `space` before an object is made for it.
fn check_free(k: &Kernel, space: SpaceId, sel: u64) -> Result<(), Status> {
    match k.caps.get(space, sel) {
        Err(cap::CapError::Empty) => Ok(()),
        Ok(_) => Err(Status::SelectorInUse),
        Err(e) => Err(e.into()),
    }
}

fn charge(k: &mut Kernel, pd: PdId, bytes: u64) -> Result<(), Status> {
    if !crate::mem::heap::has_room(bytes) {
        return Err(Status::OutOfMemory);
    }
    k.pds
        .get_mut(pd)
        .ok_or(Status::BadSelector)?
        .quota
        .charge(bytes)
        .map_err(Status::from)
}

fn release(k: &mut Kernel, pd: PdId, bytes: u64) {
    if let Some(d) = k.pds.get_mut(pd) {
        d.quota.release(bytes);
    }
}

fn lookup_pd(k: &Kernel, space: SpaceId, sel: u64, rights: Rights) -> Result<PdId, Status> {
    match k.caps.lookup(space, sel, rights).map_err(Status::from)? {
        Obj::Pd(pd) => Ok(*pd),
        _ => Err(Status::WrongKind),
    }
}

/// Creates a domain whose quota is split off `parent`'s; its original capability goes to
/// `parent`'s `dest`.
pub fn new_pd(k: &mut Kernel, parent: Option<PdId>, quota: cap::Quota) -> Result<PdId, Status> {
    let space = k
        .caps
        .create_space(abi::CAP_SPACE_SLOTS as usize)
        .map_err(Status::from)?;
    let mut quota = quota;
    let mut table_frames = Vec::new();
    let aspace = {
        let mut tables = memory::QuotaTables {
            quota: &mut quota,
            frames: &mut table_frames,
        };
        mem::paging::AddressSpace::new(&mut tables).map_err(|_| Status::QuotaExceeded)?
    };
    crate::mem::paging::share_kernel_half(aspace.root());
    Ok(k.pds.insert(Pd {
        space,
        aspace,
        table_frames,
        quota,
        parent,
        io_bitmap: None,
        threads: Vec::new(),
    }))
}

fn create_pd(
    k: &mut Kernel,
    my_pd: PdId,
    space: SpaceId,
    dest: u64,
    quota: u64,
) -> Result<u64, Status> {
    check_free(k, space, dest)?;
    let total = quota.checked_add(cost::PD).ok_or(Status::QuotaExceeded)?;
    let child_quota = k
        .pds
        .get_mut(my_pd)
        .ok_or(Status::BadSelector)?
        .quota
        .split(total)
        .map_err(Status::from)?;
    let mut child_quota = child_quota;
    child_quota.charge(cost::PD).map_err(Status::from)?;
    let pd = new_pd(k, Some(my_pd), child_quota)?;
    if let Err(e) = k
        .caps
        .insert_original(space, dest, Obj::Pd(pd), Rights::ALL)
    {
        destroy_pd(k, pd);
        return Err(e.into());
    }
    Ok(0)
}

fn create_thread(k: &mut Kernel, my_pd: PdId, space: SpaceId, a: [u64; 6]) -> Result<u64, Status> {
    let [dest, pd_sel, entry, stack_top, priority, utcb] = a;
    check_free(k, space, dest)?;
    let pd = lookup_pd(k, space, pd_sel, Rights::CONTROL)?;
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
    charge(k, my_pd, cost::THREAD)?;
    let t = spawn(k, pd, entry, stack_top, priority as u8, utcb, utcb_frame, 0)
        .ok_or(Status::BadAddress)
        .inspect_err(|_| release(k, my_pd, cost::THREAD))?;
    if let Some(thread) = k.threads.get_mut(t) {
        thread.charged_to = Some(my_pd);
    }
    if let Err(e) = k
        .caps
        .insert_original(space, dest, Obj::Thread(t), Rights::ALL)
    {
        k.kill(t);
        release(k, my_pd, cost::THREAD);
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

fn create_portal(
    k: &mut Kernel,
    my_pd: PdId,
    space: SpaceId,
    dest: u64,
    handler_sel: u64,
    badge: u64,
) -> Result<u64, Status> {
    check_free(k, space, dest)?;
    let handler = match k
        .caps
        .lookup(space, handler_sel, Rights::CONTROL)
        .map_err(Status::from)?
    {
        Obj::Thread(t) => *t,
        _ => return Err(Status::WrongKind),
    };
    // The handler must belong to the creating domain: a portal runs code of its creator only.
    if k.threads.get(handler).map(|t| t.pd) != Some(my_pd) {
        return Err(Status::BadArgument);
    }
    charge(k, my_pd, cost::PORTAL)?;
    let portal = k.portals.insert(Portal {
        handler,
        badge,
        callers: VecDeque::new(),
        owner: my_pd,
    });
    if let Err(e) = k
        .caps
        .insert_original(space, dest, Obj::Portal(portal), Rights::ALL)
    {
        k.portals.remove(portal);
        release(k, my_pd, cost::PORTAL);
        return Err(e.into());
    }
    Ok(0)
}

fn create_semaphore(
    k: &mut Kernel,
    my_pd: PdId,
    space: SpaceId,
    dest: u64,
    initial: u64,
) -> Result<u64, Status> {
    check_free(k, space, dest)?;
    charge(k, my_pd, cost::SEMAPHORE)?;
    let sem = k.sems.insert(Semaphore {
        count: initial,
        waiters: VecDeque::new(),
        owner: my_pd,
    });
    if let Err(e) = k
        .caps
        .insert_original(space, dest, Obj::Semaphore(sem), Rights::ALL)
    {
        k.sems.remove(sem);
        release(k, my_pd, cost::SEMAPHORE);
        return Err(e.into());
    }
    Ok(0)
}

fn delegate(k: &mut Kernel, space: SpaceId, a: [u64; 6]) -> Result<u64, Status> {
    let [src, pd_sel, dest, rights, ..] = a;
    let rights = Rights::from_bits(rights).ok_or(Status::BadArgument)?;
    let pd = lookup_pd(k, space, pd_sel, Rights::CONTROL)?;
    let target = k.pds.get(pd).ok_or(Status::BadSelector)?.space;
    k.caps
        .delegate(space, src, target, dest, rights)
        .map_err(Status::from)?;
    memory::after_cap_insert_pd(k, pd, dest);
    Ok(0)
}

fn revoke(k: &mut Kernel, space: SpaceId, sel: u64, include_self: u64) -> Result<u64, Status> {
    if include_self > 1 {
        return Err(Status::BadArgument);
    }
    let mut removed = Vec::new();
    let count = k
        .caps
        .revoke(space, sel, include_self == 1, &mut |r: Removed<Obj>| {
            removed.push(r)
        })
        .map_err(Status::from)?;
    settle_removed(k, removed);
    Ok(count as u64)
}

/// Destroys objects whose original capability went away and closes ports whose capability did.
pub fn settle_removed(k: &mut Kernel, removed: Vec<Removed<Obj>>) {
    for r in removed {
        match r.object {
            Obj::Memory { .. } => {
                memory::unmap_through(k, r.space, r.sel);
                vm::unmap_through(k, r.space, r.sel);
            }
            Obj::Vm(v) if r.original => vm::destroy_vm(k, v),
            Obj::Vcpu(t) if r.original => k.kill(t),
            Obj::IoPorts { .. } => {
                let mut owner = None;
                k.pds.for_each(|id, d| {
                    if d.space == r.space {
                        owner = Some(id);
                    }
                });
                if let Some(pd) = owner {
                    memory::rebuild_io_bitmap(k, pd);
                }
            }
            Obj::Thread(t) if r.original => k.kill(t),
            Obj::Portal(p) if r.original => {
                k.abort_portal_callers(p);
                if let Some(portal) = k.portals.remove(p) {
                    release(k, portal.owner, cost::PORTAL);
                }
            }
            Obj::Semaphore(s) if r.original => {
                if let Some(sem) = k.sems.remove(s) {
                    release(k, sem.owner, cost::SEMAPHORE);
                    for w in sem.waiters {
                        k.set_result(w, Status::Aborted, 0);
                        k.wake(w);
                    }
                }
            }
            Obj::Pd(pd) if r.original => destroy_pd(k, pd),
            _ => {}
        }
    }
}

/// Ends a domain: its threads, its capabilities (and what was derived from them), its page
/// tables; its quota returns to its parent.
pub fn destroy_pd(k: &mut Kernel, pd: PdId) {
    let Some(domain) = k.pds.get(pd) else { return };
    let (threads, space) = (domain.threads.clone(), domain.space);
    for t in threads {
        k.kill(t);
    }
    destroy_charged_to(k, pd);
    let mut removed = Vec::new();
    let _ = k.caps.destroy_space(space, &mut |r| removed.push(r));
    settle_removed(k, removed);
    k.mappings.retain(|m| m.pd != pd);
    memory::shrink(&mut k.mappings);
    k.forget_loaded(pd);
    if let Some(domain) = k.pds.remove(pd) {
        for frame in &domain.table_frames {
            crate::mem::frames::free(*frame, 1);
        }
        if let Some(parent) = domain.parent.and_then(|p| k.pds.get_mut(p)) {
            let mut quota = domain.quota;
            quota.release(quota.used());
            parent.quota.join(quota);
        }
    }
}

/// Destroys every object `pd`'s quota paid for, wherever its capabilities are: objects die with
/// the quota that paid for them, so destroying a domain can never hand its parent back room
/// that live objects still use. Capabilities to them elsewhere go stale (`BadSelector`).
fn destroy_charged_to(k: &mut Kernel, pd: PdId) {
    let mut children = Vec::new();
    k.pds.for_each(|id, d| {
        if d.parent == Some(pd) {
            children.push(id);
        }
    });
    for child in children {
        destroy_pd(k, child);
    }
    let mut vms = Vec::new();
    k.vms.for_each(|id, v| {
        if v.owner == pd {
            vms.push(id);
        }
    });
    for v in vms {
        vm::destroy_vm(k, v);
    }
    let mut threads = Vec::new();
    k.threads.for_each(|id, t| {
        if t.charged_to == Some(pd) {
            threads.push(id);
        }
    });
    for t in threads {
        k.kill(t);
    }
    let mut portals = Vec::new();
    k.portals.for_each(|id, p| {
        if p.owner == pd {
            portals.push(id);
        }
    });
    for p in portals {
        k.abort_portal_callers(p);
        k.portals.remove(p);
    }
    let mut sems = Vec::new();
    k.sems.for_each(|id, s| {
        if s.owner == pd {
            sems.push(id);
        }
    });
    for s in sems {
        if let Some(sem) = k.sems.remove(s) {
            for w in sem.waiters {
                k.set_result(w, Status::Aborted, 0);
                k.wake(w);
            }
        }
    }
}

fn sem_up(k: &mut Kernel, space: SpaceId, sel: u64) -> Result<u64, Status> {
    let sem = match k
        .caps
        .lookup(space, sel, Rights::WRITE)
        .map_err(Status::from)?
    {
        Obj::Semaphore(s) => *s,
        _ => return Err(Status::WrongKind),
    };
    k.signal(sem);
    Ok(0)
}

/// `irq_bind(irq, sem)`: the IRQ line signals the semaphore from now on (needs CALL on the IRQ
/// and WRITE on the semaphore). A later bind of the same line replaces the earlier one.
fn irq_bind(k: &mut Kernel, space: SpaceId, irq_sel: u64, sem_sel: u64) -> Result<u64, Status> {
    let irq = match k
        .caps
        .lookup(space, irq_sel, Rights::CALL)
        .map_err(Status::from)?
    {
        Obj::Irq(irq) => *irq,
        _ => return Err(Status::WrongKind),
    };
    let sem = match k
        .caps
        .lookup(space, sem_sel, Rights::WRITE)
        .map_err(Status::from)?
    {
        Obj::Semaphore(s) => *s,
        _ => return Err(Status::WrongKind),
    };
    k.bind_irq(irq, sem);
    Ok(0)
}

fn sem_down(
    k: &mut Kernel,
    me: ThreadId,
    space: SpaceId,
    sel: u64,
    timeout: u64,
) -> Result<u64, Status> {
    let sem = match k
        .caps
        .lookup(space, sel, Rights::READ)
        .map_err(Status::from)?
    {
        Obj::Semaphore(s) => *s,
        _ => return Err(Status::WrongKind),
    };
    let s = k.sems.get_mut(sem).ok_or(Status::BadSelector)?;
    if s.count > 0 {
        s.count -= 1;
        return Ok(0);
    }
    s.waiters.push_back(me);
    k.block_current(State::SemWait(sem));
    if timeout != 0 {
        let deadline = crate::arch::apic::ticks().saturating_add(timeout);
        k.add_timeout(me, deadline);
    }
    Ok(0)
}

/// `console_write(ptr, len)` for the root domain: the bytes are read through the domain's page
/// tables, page by page, and must be user-readable.
fn console_write(k: &mut Kernel, my_pd: PdId, ptr: u64, len: u64) -> Result<u64, Status> {
    if k.root != Some(my_pd) {
        return Err(Status::NoRights);
    }
    if len > 4096 || ptr.checked_add(len).is_none_or(|end| end > USER_END) {
        return Err(Status::BadArgument);
    }
    let domain = k.pds.get(my_pd).ok_or(Status::BadSelector)?;
    let mut bytes = Vec::with_capacity(len as usize);
    for addr in ptr..ptr + len {
        let t = crate::mem::paging::translate_in(&domain.aspace, addr).ok_or(Status::BadAddress)?;
        if !t.flags.user {
            return Err(Status::BadAddress);
        }
        let byte = crate::mem::direct::bytes(t.phys, 1).ok_or(Status::BadAddress)?[0];
        bytes.push(byte);
    }
    crate::klog::print(format_args!(
        "{}",
        alloc::string::String::from_utf8_lossy(&bytes)
    ));
    Ok(len)
}
