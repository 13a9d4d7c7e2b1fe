//! Syscall decoding: every argument is checked (selectors, kinds, rights, ranges, quota) before
//! anything changes, and every refusal is a [`Status`], never a panic.

mod capability;
mod pd;
mod portal;
mod semaphore;
mod thread;
mod vcpu;
mod vm;

use abi::syscall::args::{self, Args};
use abi::syscall::Syscall;
use abi::Status;
use cap::SpaceId;

use super::ids::{PdId, ThreadId};
use super::state::Kernel;
use super::thread::State;
use super::{ipc, memory, reply};

use super::memory::USER_END;
use alloc::vec::Vec;
pub use pd::new_pd;
pub use thread::spawn;

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
    if let Some(thread) = k.threads.get_mut(me).filter(|t| t.state == State::Ready) {
        let (status, value) = match result {
            Ok(value) => (Status::Ok, value),
            Err(status) => (status, 0),
        };
        thread.regs.rax = status as u64;
        thread.regs.rdx = value;
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
        Syscall::Call => ipc::call(k, view::<args::Call>(a).portal).map(|()| 0),
        Syscall::Reply => ipc::reply(k, reply::finish_exit).map(|()| 0),
        Syscall::ReplyWait => {
            ipc::reply_wait(k, view::<args::ReplyWait>(a).portal, reply::finish_exit)
                .map(|()| k.threads.get(me).map_or(0, |t| t.regs.rdx))
        }
        Syscall::CreatePd => pd::create_pd(k, my_pd, space, view(a)),
        Syscall::CreateThread => {
            let v: args::CreateThread = view(a);
            thread::may_run_at(k, me, my_pd, v.priority)?;
            thread::create_thread(k, my_pd, space, v)
        }
        Syscall::CreatePortal => portal::create_portal(k, my_pd, space, view(a)),
        Syscall::CreateSemaphore => semaphore::create_semaphore(k, my_pd, space, view(a)),
        Syscall::Delegate => capability::delegate(k, space, view(a)),
        Syscall::Revoke => capability::revoke(k, space, view(a)),
        Syscall::Lookup => {
            let sel = view::<args::Lookup>(a).sel;
            let (object, rights) = k.caps.get(space, sel.raw()).map_err(Status::from)?;
            Ok(object.kind() as u64 | (u64::from(rights.0) << 8))
        }
        Syscall::SemUp => semaphore::sem_up(k, space, view(a)),
        Syscall::SemDown => semaphore::sem_down(k, me, space, view(a)),
        Syscall::Map => memory::map(k, space, view(a)).map(|()| 0),
        Syscall::Yield => {
            k.yield_current();
            Ok(0)
        }
        Syscall::IrqBind => semaphore::irq_bind(k, space, view(a)),
        Syscall::ThreadExit => {
            k.kill(me);
            Ok(0)
        }
        Syscall::PowerOff => {
            if k.root != Some(my_pd) {
                return Err(Status::NoRights);
            }
            power_off(view::<args::PowerOff>(a).status == 0)
        }
        Syscall::ConsoleWrite => console_write(k, my_pd, view(a)),
        Syscall::Carve => memory::carve(k, space, me, view(a)).map(|()| 0),
        Syscall::CreateVm => vm::create_vm(k, space, view(a)),
        Syscall::CreateVcpu => {
            let v: args::CreateVcpu = view(a);
            thread::may_run_at(k, me, my_pd, v.priority)?;
            vcpu::create_vcpu(k, my_pd, space, v)
        }
        Syscall::VmMap => vm::vm_map(k, space, view(a)),
        Syscall::VcpuControl => vcpu::vcpu_control(k, space, view(a)),
        Syscall::VmPatch => vm::vm_patch(k, me, space, view(a)),
        Syscall::VmWindow => vm::vm_window(k, space, view(a)),
        Syscall::VmRead => vm::vm_read(k, me, space, view(a)),
        Syscall::VmDmp => vm::vm_dmp(k, space, view(a)),
        Syscall::KernelStats => kernel_stats(k, my_pd, view::<args::KernelStats>(a).which),
    }
}

/// Decodes the argument registers as syscall `A`'s view (`abi::syscall::args`): decode once,
/// then invoke with named, typed arguments.
fn view<A: Args>(a: [u64; 6]) -> A {
    A::from_regs(a)
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
        stats::TSC_HZ => crate::arch::tsc::hz(),
        _ => return Err(Status::BadArgument),
    })
}

/// `console_write(ptr, len)` for the root domain: the bytes are read through the domain's page
/// tables, page by page, and must be user-readable.
fn console_write(
    k: &mut Kernel,
    my_pd: PdId,
    args::ConsoleWrite { ptr, len }: args::ConsoleWrite,
) -> Result<u64, Status> {
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

/// Ends the system on behalf of the root domain.
pub fn power_off(success: bool) -> ! {
    if success {
        crate::arch::power::succeed()
    } else {
        crate::arch::power::fail(format_args!("init reported failure"))
    }
}
