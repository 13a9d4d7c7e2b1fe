//! The capability kernel: objects, capabilities, scheduling, IPC and the syscall interface.
//!
//! The kernel has one stack and no kernel threads. Every entry from user mode (syscall,
//! interrupt, exception) saves the thread's registers in its thread object, runs to completion
//! with interrupts disabled, and leaves by resuming some thread, or the idle loop. A blocked
//! thread is therefore just a state plus its saved registers; IPC hands the CPU from caller to
//! handler directly (the handler runs on the caller's time slice).

mod init;
mod ipc;
mod memory;
pub mod objects;
mod shadow;
mod slab;
mod syscalls;
pub mod vm;

use abi::Status;
use cap::CapSystem;
use sched::{RunQueue, Slice, Timeouts};
use spin::Mutex;

use crate::arch::trap::TrapFrame;
use crate::arch::{self, apic, gdt, power, user};
use objects::{Obj, Pd, PdId, Portal, Semaphore, State, Thread, ThreadId};
use slab::Slab;

pub use init::start_init;

/// Most capabilities the kernel tracks at once (all domains together).
const MAX_CAPABILITIES: usize = 64 * 1024;

pub struct Kernel {
    pub caps: CapSystem<Obj>,
    pub pds: Slab<Pd>,
    pub threads: Slab<Thread>,
    pub portals: Slab<Portal>,
    pub sems: Slab<Semaphore>,
    pub vms: Slab<vm::Vm>,
    /// Guest-physical mappings and the memory capability each came through.
    pub vm_mappings: alloc::vec::Vec<vm::VmMapRecord>,
    run: RunQueue<ThreadId>,
    timeouts: Timeouts<ThreadId>,
    /// The thread that runs (not in `run`).
    current: Option<ThreadId>,
    slice: Slice,
    /// Timer ticks already accounted for.
    ticks_seen: u64,
    /// The root domain (init), which may power off and write to the kernel console.
    pub root: Option<PdId>,
    /// Live user mappings and the memory capability each came through.
    pub mappings: alloc::vec::Vec<objects::MapRecord>,
    /// The semaphore each legacy IRQ line signals, once a driver bound it.
    irq_sems: [Option<objects::SemId>; 16],
    /// Scratch list for `deliver_irqs` (kept to avoid allocating on the interrupt path).
    pending_signals: alloc::vec::Vec<objects::SemId>,
    /// The domain whose address space and I/O bitmap are loaded (switching costs a CR3 load
    /// and an 8 KiB bitmap copy, so it happens only when the domain changes).
    loaded_pd: Option<PdId>,
}

static KERNEL: Mutex<Option<Kernel>> = Mutex::new(None);

impl Kernel {
    fn new() -> Kernel {
        Kernel {
            caps: CapSystem::new(MAX_CAPABILITIES),
            pds: Slab::new(),
            threads: Slab::new(),
            portals: Slab::new(),
            sems: Slab::new(),
            vms: Slab::new(),
            vm_mappings: alloc::vec::Vec::new(),
            run: RunQueue::new(),
            timeouts: Timeouts::new(),
            current: None,
            slice: Slice::new(sched::DEFAULT_SLICE_TICKS),
            ticks_seen: 0,
            root: None,
            mappings: alloc::vec::Vec::new(),
            irq_sems: [None; 16],
            pending_signals: alloc::vec::Vec::new(),
            loaded_pd: None,
        }
    }

    /// Makes `t` runnable (it must not be current or queued).
    pub fn wake(&mut self, t: ThreadId) {
        let Some(thread) = self.threads.get_mut(t) else {
            return;
        };
        thread.state = State::Ready;
        let priority = thread.priority;
        self.timeouts.cancel(t);
        let _ = self.run.push_back(t, priority);
    }

    /// Sets the syscall result registers of a thread that is not running.
    pub fn set_result(&mut self, t: ThreadId, status: Status, value: u64) {
        if let Some(thread) = self.threads.get_mut(t) {
            thread.regs.rax = status as u64;
            thread.regs.rdx = value;
        }
    }

    /// The running thread; present whenever the kernel handles a user entry.
    pub fn current(&self) -> ThreadId {
        self.current
            .expect("a user entry always has a current thread")
    }

    /// Takes the current thread off the CPU (it blocked or died).
    pub fn block_current(&mut self, state: State) {
        let t = self.current();
        if let Some(thread) = self.threads.get_mut(t) {
            thread.state = state;
        }
        self.current = None;
    }

    /// Hands the CPU to `t` directly, keeping the time slice (IPC hand-off). `t` is a thread that
    /// was blocked in IPC, so it is in no queue.
    pub fn switch_to(&mut self, t: ThreadId) {
        if let Some(previous) = self.current.take() {
            let priority = self.threads.get(previous).map_or(0, |p| p.priority);
            let _ = self.run.push_front(previous, priority);
        }
        if let Some(thread) = self.threads.get_mut(t) {
            thread.state = State::Ready;
        }
        self.current = Some(t);
    }

    /// Ends a thread: removes it from every queue, fails a call it was serving, and frees it.
    pub fn kill(&mut self, t: ThreadId) {
        let Some(thread) = self.threads.get(t) else {
            return;
        };
        let (state, serving, pd) = (thread.state, thread.serving, thread.pd);
        if let Some(vm) = thread.vcpu.as_ref().map(|v| v.vm) {
            vm::report_profile(self, vm);
        }
        match state {
            State::Calling(portal) => {
                if let Some(p) = self.portals.get_mut(portal) {
                    p.callers.retain(|&c| c != t);
                }
            }
            State::SemWait(sem) => {
                if let Some(s) = self.sems.get_mut(sem) {
                    s.waiters.retain(|&w| w != t);
                }
            }
            _ => {}
        }
        self.run.remove(t);
        self.timeouts.cancel(t);
        if self.current == Some(t) {
            self.current = None;
        }
        if let Some(caller) = serving {
            self.abort_call(caller);
        }
        // Callers whose call this thread was about to take stay queued on its portals; a call to
        // a portal whose handler is dead fails when it is attempted (see `ipc`).
        for portal in self.portals_handled_by(t) {
            self.abort_portal_callers(portal);
        }
        if let Some(pd) = self.pds.get_mut(pd) {
            pd.threads.retain(|&x| x != t);
        }
        if let Some(thread) = self.threads.remove(t) {
            let cost = match &thread.vcpu {
                Some(vcpu) => {
                    if let Some(v) = self.vms.get_mut(vcpu.vm) {
                        v.vcpus.retain(|&x| x != t);
                    }
                    objects::cost::VCPU
                }
                None => objects::cost::THREAD,
            };
            if let Some(payer) = thread.charged_to.and_then(|p| self.pds.get_mut(p)) {
                payer.quota.release(cost);
            }
        }
    }

    fn portals_handled_by(&self, t: ThreadId) -> alloc::vec::Vec<objects::PortalId> {
        // Portals are few; a linear scan keeps the portal table free of back-pointers.
        let mut found = alloc::vec::Vec::new();
        self.portals.for_each(|id, p| {
            if p.handler == t {
                found.push(id);
            }
        });
        found
    }

    /// A caller's call ends without a reply.
    pub fn abort_call(&mut self, caller: ThreadId) {
        let faulted = self.threads.get(caller).is_some_and(|c| c.faulted);
        let vcpu = self.threads.get(caller).is_some_and(|c| c.vcpu.is_some());
        if faulted {
            log::warn!("thread {caller:?}: fault handler gone; thread ended");
            self.kill(caller);
        } else if vcpu {
            // An exit nobody answered must not be entered as if it had been handled.
            crate::println!("kernel: vCPU {caller:?}: its exit handler is gone; vCPU stopped");
            self.kill(caller);
        } else {
            self.set_result(caller, Status::Aborted, 0);
            self.wake(caller);
        }
    }

    /// Fails every call queued on `portal`.
    pub fn abort_portal_callers(&mut self, portal: objects::PortalId) {
        let callers = match self.portals.get_mut(portal) {
            Some(p) => core::mem::take(&mut p.callers),
            None => return,
        };
        for caller in callers {
            self.abort_call(caller);
        }
    }

    /// Makes the next resume reload `pd`'s address space and I/O bitmap; if `pd`'s tables are
    /// loaded now, moves to the kernel's own so that they can be changed or freed.
    pub fn forget_loaded(&mut self, pd: PdId) {
        if self.loaded_pd == Some(pd) {
            crate::mem::paging::load_kernel_space();
            self.loaded_pd = None;
        }
    }

    /// Puts the current thread at the back of its priority's queue.
    pub fn yield_current(&mut self) {
        if let Some(c) = self.current.take() {
            let priority = self.threads.get(c).map_or(0, |t| t.priority);
            let _ = self.run.push_back(c, priority);
        }
    }

    /// Wakes `t` with `Timeout` at `deadline` (in timer ticks) unless it is woken before.
    pub fn add_timeout(&mut self, t: ThreadId, deadline: u64) {
        self.timeouts.add(t, deadline);
    }

    /// Signals the semaphore of every bound IRQ line that fired.
    fn deliver_irqs(&mut self) {
        let pending = arch::pic::take_pending();
        if pending == 0 {
            return;
        }
        for (irq, sem) in self.irq_sems.iter().enumerate() {
            if pending & (1 << irq) != 0 {
                if let Some(sem) = sem {
                    self.pending_signals.push(*sem);
                }
            }
        }
        while let Some(sem) = self.pending_signals.pop() {
            self.signal(sem);
        }
    }

    /// `up` on a semaphore: wakes its first waiter or counts.
    pub fn signal(&mut self, sem: objects::SemId) {
        let Some(s) = self.sems.get_mut(sem) else {
            return;
        };
        if let Some(waiter) = s.waiters.pop_front() {
            self.set_result(waiter, Status::Ok, 0);
            self.wake(waiter);
        } else {
            s.count = s.count.saturating_add(1);
        }
    }

    /// Binds a legacy IRQ line to a semaphore and unmasks it.
    pub fn bind_irq(&mut self, irq: u8, sem: objects::SemId) {
        if let Some(slot) = self.irq_sems.get_mut(usize::from(irq)) {
            *slot = Some(sem);
            arch::pic::unmask(irq);
        }
    }

    /// Accounts timer ticks: expires timed waits and uses up the running thread's slice.
    fn account_ticks(&mut self) {
        self.deliver_irqs();
        let now = apic::ticks();
        while self.ticks_seen < now {
            self.ticks_seen += 1;
            if self.current.is_some() {
                // A used-up slice is acted on in `schedule`.
                self.slice.tick();
            }
        }
        if self.timeouts.next_deadline().is_none_or(|d| d > now) {
            return;
        }
        let mut expired = alloc::vec::Vec::new();
        self.timeouts.expire(now, &mut |t| expired.push(t));
        for t in expired {
            if let Some(State::SemWait(sem)) = self.threads.get(t).map(|x| x.state) {
                if let Some(s) = self.sems.get_mut(sem) {
                    s.waiters.retain(|&w| w != t);
                }
                self.set_result(t, Status::Timeout, 0);
                self.wake(t);
            }
        }
    }

    /// Chooses the thread to run: the current one unless a higher-priority thread is ready or
    /// its slice is used up and a peer is waiting.
    fn schedule(&mut self) -> Option<ThreadId> {
        if let Some(c) = self.current {
            let priority = self.threads.get(c).map_or(0, |t| t.priority);
            let preempt = match self.run.highest_priority() {
                Some(h) if h > priority => true,
                Some(h) if h == priority => self.slice.remaining() == 0,
                _ => false,
            };
            if preempt {
                let _ = self.run.push_back(c, priority);
                self.current = None;
            } else if self.slice.remaining() == 0 {
                self.slice.refill();
            }
        }
        if self.current.is_none() {
            self.current = self.run.pop_highest().map(|(t, _)| t);
            self.slice.refill();
        }
        self.current
    }

    /// The registers to resume and the I/O bitmap to load, for the chosen thread.
    fn prepare(&mut self, t: ThreadId) -> *const TrapFrame {
        let (regs, pd) = match self.threads.get(t) {
            Some(thread) => (&*thread.regs as *const TrapFrame, thread.pd),
            None => return core::ptr::null(),
        };
        if self.loaded_pd != Some(pd) {
            if let Some(domain) = self.pds.get(pd) {
                // SAFETY: the root frame of a live domain's page tables, whose upper half is the
                // kernel's own (copied at creation), so the kernel keeps running after the switch.
                unsafe { x86::controlregs::cr3_write(domain.aspace.root()) };
                gdt::load_io_bitmap(domain.io_bitmap.as_deref());
                self.loaded_pd = Some(pd);
            }
        }
        regs
    }
}

/// What runs next.
enum Next {
    User(*const TrapFrame),
    Guest(*mut vm::Vcpu),
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
        Next::Guest(vcpu) => unsafe { vm::enter(vcpu) },
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
            let is_vcpu = self.threads.get(t).is_some_and(|x| x.vcpu.is_some());
            if !is_vcpu {
                let regs = self.prepare(t);
                return if regs.is_null() {
                    Next::Idle
                } else {
                    Next::User(regs)
                };
            }
            if vm::ready_to_enter(self, t) {
                if let Some(vcpu) = self.threads.get_mut(t).and_then(|x| x.vcpu.as_mut()) {
                    return Next::Guest(&mut **vcpu as *mut vm::Vcpu);
                }
            }
        }
    }
}

/// Waits with interrupts enabled until a thread is ready.
fn idle() -> ! {
    loop {
        // SAFETY: enabling interrupts only to halt; the timer handler (ring 0) counts ticks.
        unsafe {
            x86::irq::enable();
            x86::halt();
            x86::irq::disable();
        }
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
    run_and_resume(vm::handle_exit)
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
    // SAFETY: reading CR2 has no side effects.
    let address = unsafe { x86::controlregs::cr2() } as u64;
    run_and_resume(|k| ipc::deliver_fault(k, vector, address))
}

/// Creates the kernel state; called once before init starts.
pub fn init_state() {
    let mut guard = KERNEL.lock();
    if guard.is_none() {
        *guard = Some(Kernel::new());
    }
}

/// Runs `f` on the kernel state during boot (before user mode).
pub fn with_kernel<R>(f: impl FnOnce(&mut Kernel) -> R) -> R {
    let mut guard = KERNEL.lock();
    f(guard.as_mut().expect("kernel state initialised"))
}

/// Starts user mode with the first ready thread. Never returns.
pub fn enter_user_mode() -> ! {
    run_and_resume(|_| {})
}

/// Ends the system on behalf of the root domain.
pub fn power_off(success: bool) -> ! {
    if success {
        power::succeed()
    } else {
        power::fail(format_args!("init reported failure"))
    }
}
