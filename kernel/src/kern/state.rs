//! The kernel's state: object tables, the capability system, and the scheduler (run queue,
//! time slice, timeouts, IRQ lines bound to semaphores). One lock guards all of it: the kernel
//! runs with interrupts disabled on one stack, from entry to resume.

use abi::Status;
use cap::CapSystem;
use sched::{RunQueue, Slice, Timeouts};
use spin::Mutex;

use super::ids::{PdId, PdKind, PortalKind, SemId, SemaphoreKind, ThreadId, ThreadKind, VmKind};
use super::obj::Obj;
use super::pd::Pd;
use super::portal::Portal;
use super::records::{MapRecord, VmMapRecord};
use super::semaphore::Semaphore;
use super::slab::Slab;
use super::thread::{State, Thread};
use super::vm::Vm;
use crate::arch::trap::TrapFrame;
use crate::arch::{self, apic, gdt};

/// Most capabilities the kernel tracks at once (all domains together).
const MAX_CAPABILITIES: usize = 64 * 1024;

pub struct Kernel {
    pub caps: CapSystem<Obj>,
    pub pds: Slab<Pd, PdKind>,
    pub threads: Slab<Thread, ThreadKind>,
    pub portals: Slab<Portal, PortalKind>,
    pub sems: Slab<Semaphore, SemaphoreKind>,
    pub vms: Slab<Vm, VmKind>,
    /// Guest-physical mappings and the memory capability each came through.
    pub vm_mappings: alloc::vec::Vec<VmMapRecord>,
    pub(super) run: RunQueue<ThreadId>,
    pub(super) timeouts: Timeouts<ThreadId>,
    /// The thread that runs (not in `run`).
    pub(super) current: Option<ThreadId>,
    slice: Slice,
    /// Timer ticks already accounted for.
    ticks_seen: u64,
    /// The root domain (init), which may power off and write to the kernel console.
    pub root: Option<PdId>,
    /// Live user mappings and the memory capability each came through.
    pub mappings: alloc::vec::Vec<MapRecord>,
    /// The semaphore each legacy IRQ line signals, once a driver bound it.
    irq_sems: [Option<SemId>; 16],
    /// Scratch list for `deliver_irqs` (kept to avoid allocating on the interrupt path).
    pending_signals: alloc::vec::Vec<SemId>,
    /// The domain whose address space and I/O bitmap are loaded (switching costs a CR3 load
    /// and an 8 KiB bitmap copy, so it happens only when the domain changes).
    loaded_pd: Option<PdId>,
}

pub(super) static KERNEL: Mutex<Option<Kernel>> = Mutex::new(None);

impl Kernel {
    pub(super) fn new() -> Kernel {
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
    pub(super) fn deliver_irqs(&mut self) {
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
    pub fn signal(&mut self, sem: SemId) {
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
    pub fn bind_irq(&mut self, irq: u8, sem: SemId) {
        if let Some(slot) = self.irq_sems.get_mut(usize::from(irq)) {
            *slot = Some(sem);
            arch::pic::unmask(irq);
        }
    }

    /// Accounts timer ticks: expires timed waits and uses up the running thread's slice.
    pub(super) fn account_ticks(&mut self) {
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
    pub(super) fn schedule(&mut self) -> Option<ThreadId> {
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

    /// For a user thread (not a vCPU): the registers to resume, after loading its domain's
    /// address space and I/O bitmap. None for a vCPU or a thread that is gone.
    pub(super) fn prepare_user(&mut self, t: ThreadId) -> Option<*const TrapFrame> {
        let thread = self.threads.get(t).filter(|x| x.vcpu.is_none())?;
        let (regs, pd) = (&*thread.regs as *const TrapFrame, thread.pd);
        if self.loaded_pd != Some(pd) {
            if let Some(domain) = self.pds.get(pd) {
                // SAFETY: the root frame of a live domain's page tables, whose upper half is the
                // kernel's own (copied at creation), so the kernel keeps running after the switch.
                unsafe { crate::mem::paging::load_space(domain.aspace.root()) };
                gdt::load_io_bitmap(domain.io_bitmap.as_deref());
                self.loaded_pd = Some(pd);
            }
        }
        Some(regs)
    }
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
