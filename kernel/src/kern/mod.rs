//! The capability kernel: objects, capabilities, scheduling, IPC and the syscall interface.
//!
//! The kernel has one stack and no kernel threads. Every entry from user mode (syscall,
//! interrupt, exception) saves the thread's registers in its thread object, runs to completion
//! with interrupts disabled, and leaves by resuming some thread, or the idle loop. A blocked
//! thread is therefore just a state plus its saved registers; IPC hands the CPU from caller to
//! handler directly (the handler runs on the caller's time slice).
//!
//! Layers (a file imports only from layers below it): `slab`, `ids`, `cost`, `records`; the
//! objects `obj`, `pd`, `thread`, `portal`, `semaphore`, `vm`, `vcpu`; `state` (the `Kernel`);
//! `capability`, `memory`, `shadow`; `ipc`; `entry`, `exit`, `shadow_exit`, `reply`, `ending`;
//! `syscalls`; `init` and this file (the entry points).

mod capability;
mod cost;
mod ending;
mod entry;
mod exit;
mod ids;
mod init;
mod ipc;
mod memory;
mod obj;
mod pd;
mod portal;
mod records;
mod reply;
mod semaphore;
mod shadow;
mod shadow_exit;
mod slab;
mod state;
mod syscalls;
mod teardown;
mod thread;
mod vcpu;
mod vm;

use crate::arch::trap::TrapFrame;
use crate::arch::{self, apic, user};
use state::{Kernel, KERNEL};
use vcpu::Vcpu;

/// What runs next.
enum Next {
    User(*const TrapFrame),
    Guest(*mut Vcpu),
    Idle,
}

/// Runs `f` on the kernel state, then resumes whatever thread should run next (a user thread,
/// a vCPU's guest, or the idle loop).
fn run_and_resume(f: impl FnOnce(&mut Kernel)) -> ! {
    let next = {
        let mut guard = KERNEL.lock();
        let kernel = guard
            .as_mut()
            .expect("the kernel state exists once user mode runs");
        f(kernel);
        kernel.account_ticks();
        kernel.next()
    };
    match next {
        Next::Idle => idle(),
        // SAFETY: `prepare` returned the register area of a live thread, which stays allocated
        // while the thread exists; nothing runs between here and the return to user mode.
        Next::User(regs) => user::resume(unsafe { &*regs }),
        // SAFETY: the current thread is this live vCPU; only the kernel frees it, and the
        // kernel does not run again before the guest exits.
        Next::Guest(vcpu) => unsafe { entry::enter(vcpu) },
    }
}

impl Kernel {
    /// Chooses what to run. A vCPU that must call its VMM first (start, recall) does so, and
    /// the choice is made again.
    fn next(&mut self) -> Next {
        loop {
            let Some(t) = self.schedule() else {
                return Next::Idle;
            };
            if let Some(regs) = self.prepare_user(t) {
                return Next::User(regs);
            }
            if self.threads.get(t).is_none_or(|x| x.vcpu.is_none()) {
                return Next::Idle;
            }
            if entry::ready_to_enter(self, t) {
                if let Some(vcpu) = self.threads.get_mut(t).and_then(|x| x.vcpu.as_mut()) {
                    return Next::Guest(&mut **vcpu as *mut Vcpu);
                }
            }
        }
    }
}

/// Waits with interrupts enabled until a thread is ready.
fn idle() -> ! {
    loop {
        arch::cpu::wait_for_interrupt();
        let ready = {
            let mut guard = KERNEL.lock();
            let kernel = guard.as_mut().expect("kernel state");
            kernel.account_ticks();
            !kernel.run.is_empty()
        };
        if ready {
            run_and_resume(|_| {});
        }
    }
}

/// A syscall from the current thread.
pub fn on_syscall(_frame: &mut TrapFrame) -> ! {
    run_and_resume(syscalls::dispatch)
}

/// A vCPU left its guest.
pub fn on_vm_exit() -> ! {
    run_and_resume(exit::handle_exit)
}

/// An interrupt or exception from user mode.
pub fn on_user_trap(frame: &mut TrapFrame) -> ! {
    let vector = frame.vector;
    if vector == u64::from(arch::TIMER_VECTOR) {
        apic::timer_interrupt();
        run_and_resume(|_| {});
    }
    if vector == u64::from(arch::trap::SPURIOUS_VECTOR) {
        run_and_resume(|_| {});
    }
    if let Some(irq) = arch::trap::irq_line(vector) {
        arch::pic::interrupt(irq);
        run_and_resume(|_| {});
    }
    let address = arch::cpu::page_fault_address();
    run_and_resume(|k| ipc::deliver_fault(k, vector, address))
}

/// Loads and runs init if the boot modules hold one; returns otherwise.
pub fn start_init(info: &bootinfo::BootInfo) {
    if init::load_init(info) {
        enter_user_mode()
    }
}

/// Starts user mode with the first ready thread. Never returns.
pub fn enter_user_mode() -> ! {
    run_and_resume(|_| {})
}
