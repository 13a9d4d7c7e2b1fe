//! Syscall decoding: every argument is checked (selectors, kinds, rights, ranges, quota) before
//! anything changes, and every refusal is a [`Status`], never a panic.

mod capability;
mod pd;
mod portal;
mod semaphore;
mod thread;
mod vcpu;
mod vm;

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
        Syscall::Reply => ipc::reply(k, reply::finish_exit).map(|()| 0),
        Syscall::ReplyWait => ipc::reply_wait(k, a[0], reply::finish_exit)
            .map(|()| k.threads.get(me).map_or(0, |t| t.regs.rdx)),
        Syscall::CreatePd => pd::create_pd(k, my_pd, space, a[0], a[1]),
        Syscall::CreateThread => {
            thread::may_run_at(k, me, my_pd, a[4])?;
            thread::create_thread(k, my_pd, space, a)
        }
        Syscall::CreatePortal => portal::create_portal(k, my_pd, space, a[0], a[1], a[2]),
        Syscall::CreateSemaphore => semaphore::create_semaphore(k, my_pd, space, a[0], a[1]),
        Syscall::Delegate => capability::delegate(k, space, a),
        Syscall::Revoke => capability::revoke(k, space, a[0], a[1]),
        Syscall::Lookup => {
            let (object, rights) = k.caps.get(space, a[0]).map_err(Status::from)?;
            Ok(object.kind() as u64 | (u64::from(rights.0) << 8))
        }
        Syscall::SemUp => semaphore::sem_up(k, space, a[0]),
        Syscall::SemDown => semaphore::sem_down(k, me, space, a[0], a[1]),
        Syscall::Map => memory::map(k, space, a).map(|()| 0),
        Syscall::Yield => {
            k.yield_current();
            Ok(0)
        }
        Syscall::IrqBind => semaphore::irq_bind(k, space, a[0], a[1]),
        Syscall::ThreadExit => {
            k.kill(me);
            Ok(0)
        }
        Syscall::PowerOff => {
            if k.root != Some(my_pd) {
                return Err(Status::NoRights);
            }
            power_off(a[0] == 0)
        }
        Syscall::ConsoleWrite => console_write(k, my_pd, a[0], a[1]),
        Syscall::Carve => memory::carve(k, space, me, [a[0], a[1], a[2], a[3]]).map(|()| 0),
        Syscall::CreateVm => vm::create_vm(k, space, a),
        Syscall::CreateVcpu => {
            thread::may_run_at(k, me, my_pd, a[3])?;
            vcpu::create_vcpu(k, my_pd, space, a)
        }
        Syscall::VmMap => vm::vm_map(k, space, a),
        Syscall::VcpuControl => vcpu::vcpu_control(k, space, a),
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
        _ => return Err(Status::BadArgument),
    })
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

/// Ends the system on behalf of the root domain.
pub fn power_off(success: bool) -> ! {
    if success {
        crate::arch::power::succeed()
    } else {
        crate::arch::power::fail(format_args!("init reported failure"))
    }
}
