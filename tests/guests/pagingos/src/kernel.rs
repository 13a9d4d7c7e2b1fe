//! Processes, the scheduler, system calls and the page-fault handler.
//!
//! Scheduling is cooperative: a process runs until it traps; the kernel handles the trap and
//! then either resumes it or picks the next ready process round-robin (on `yield`, on a `wait`
//! that must block, on `exit`). CR3 is loaded only when the next process's address space differs
//! from the loaded one.
//!
//! Unexpected events (a page fault the handler cannot resolve, any other exception in user
//! mode, a failed user check, a bad system call) print one line and end the guest with a
//! non-zero status.

use crate::arch::{self, Ctx};
use crate::frames::{Frames, PAGE};
use crate::paging::{self, ADDR, COW, P, U, W};
use crate::user::{self, Program};

pub const MAX_PROCS: usize = 16;
/// Pool frames of the invlpg workload, at most.
pub const POOL_MAX: usize = 256;

/// What the kernel counts; all deterministic (it goes into the checksum).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Page faults taken from user mode (all of them, resolved).
    pub faults: u64,
    /// Of which: demand-zero (a fresh zeroed frame mapped).
    pub demand_zero: u64,
    /// Copy-on-write with other references: the page was copied.
    pub cow_copy: u64,
    /// Copy-on-write with no other reference: the page was made writable again.
    pub cow_reuse: u64,
    /// A remap-window slot mapped lazily (invlpg workload).
    pub window: u64,
    pub syscalls: u64,
    pub cr3_loads: u64,
    pub forks: u64,
    /// INVLPG instructions the kernel executed.
    pub invlpgs: u64,
}

/// Who runs after a trap.
enum Next {
    /// The process that trapped (it is still ready).
    Same,
    /// The next ready process after it, round-robin (it yielded, blocked or ended).
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    Ready,
    /// Blocked in `wait` (its RIP points back at the `int 0x80`, so it repeats the call).
    Waiting,
    Zombie,
}

#[derive(Clone, Copy)]
struct Proc {
    ctx: Ctx,
    state: State,
    pml4: u64,
    parent: Option<usize>,
    exit_code: u64,
}

const NO_PROC: Proc = Proc {
    ctx: Ctx {
        r15: 0,
        r14: 0,
        r13: 0,
        r12: 0,
        r11: 0,
        r10: 0,
        r9: 0,
        r8: 0,
        rdi: 0,
        rsi: 0,
        rbp: 0,
        rbx: 0,
        rdx: 0,
        rcx: 0,
        rax: 0,
        vector: 0,
        error: 0,
        rip: 0,
        cs: 0,
        rflags: 0,
        rsp: 0,
        ss: 0,
    },
    state: State::Free,
    pml4: 0,
    parent: None,
    exit_code: 0,
};

pub struct Kernel {
    pub frames: Frames,
    kernel_pml4: u64,
    procs: [Proc; MAX_PROCS],
    /// The process that runs or last ran.
    current: usize,
    pub stats: Stats,
    /// The invlpg pool's frames.
    pub pool: [u64; POOL_MAX],
    pub pool_len: usize,
    /// Per window slot: the pool frame + 1 to map at the next fault there (0: none).
    pending: [u16; user::WINDOW_SLOTS as usize],
    /// The workload, for messages.
    pub workload: &'static str,
    /// `verbose=<N>` from the command line (0 without it).
    pub verbose: u64,
    /// The garbage workload's state while it runs.
    pub garbage: Option<crate::garbage::Garbage>,
}

/// The size of the user programs' image in pages.
fn code_pages() -> u64 {
    (user::image().len() as u64).div_ceil(PAGE)
}

impl Kernel {
    pub fn new(frames: Frames, kernel_pml4: u64, workload: &'static str) -> Kernel {
        Kernel {
            frames,
            kernel_pml4,
            procs: [NO_PROC; MAX_PROCS],
            current: 0,
            stats: Stats::default(),
            pool: [0; POOL_MAX],
            pool_len: 0,
            pending: [0; user::WINDOW_SLOTS as usize],
            workload,
            verbose: 0,
            garbage: None,
        }
    }

    /// Creates a process running `program` with arguments `args` (RDI, RSI, RDX, RCX) in a new
    /// address space holding only the program's code. Returns its id.
    pub fn spawn(&mut self, program: Program, args: [u64; 4]) -> usize {
        let id = self.free_slot();
        let pml4 = paging::new_space(&mut self.frames, self.kernel_pml4);
        let image = user::image();
        for page in 0..code_pages() {
            let frame = self.frames.alloc_zeroed();
            let start = (page * PAGE) as usize;
            let bytes = &image[start..image.len().min(start + PAGE as usize)];
            // SAFETY: the frame was just allocated (identity-mapped, unused) and holds a page.
            unsafe {
                core::ptr::copy_nonoverlapping(bytes.as_ptr(), frame as *mut u8, bytes.len())
            };
            let va = user::CODE + page * PAGE;
            let pte = paging::walk(&mut self.frames, pml4, va, true).expect("walk with create");
            self.frames.get(frame);
            paging::set(pte, frame | P | U);
        }
        let mut ctx = Ctx::user(program.entry(), user::STACK_TOP);
        ctx.rdi = args[0];
        ctx.rsi = args[1];
        ctx.rdx = args[2];
        ctx.rcx = args[3];
        self.procs[id] = Proc {
            ctx,
            state: State::Ready,
            pml4,
            parent: None,
            exit_code: 0,
        };
        id
    }

    fn free_slot(&self) -> usize {
        match self.procs.iter().position(|p| p.state == State::Free) {
            Some(id) => id,
            None => self.fatal(format_args!("no free process slot")),
        }
    }

    /// The exit code of top-level process `id` once it has ended.
    pub fn exit_code(&self, id: usize) -> u64 {
        self.procs[id].exit_code
    }

    /// Runs processes until none is ready (each must then have ended; the top-level ones stay
    /// zombies until [`Kernel::reap`]).
    pub fn run(&mut self) {
        self.current = MAX_PROCS - 1;
        let mut next = self.next_ready();
        while let Some(id) = next {
            self.switch_to(id);
            let ctx: *mut Ctx = &mut self.procs[id].ctx;
            // SAFETY: the context was built by `spawn` or `fork` (ring-3 selectors, RFLAGS 0x2)
            // and its address space was just loaded; nothing else uses it during the call.
            unsafe { arch::run_user(ctx) };
            next = match self.trap() {
                Next::Same => Some(id),
                Next::Other => self.next_ready(),
            };
        }
        if let Some(id) = self.procs.iter().position(|p| p.state == State::Waiting) {
            self.fatal(format_args!("process {} waits forever", id));
        }
    }

    /// The address space of process `id` (for inspection while it is a zombie).
    pub fn pml4(&self, id: usize) -> u64 {
        self.procs[id].pml4
    }

    /// Returns to the kernel's own address space and tears down the ended top-level processes.
    pub fn reap(&mut self) {
        // SAFETY: the kernel's PML4 maps the kernel as every address space does.
        unsafe { arch::write_cr3(self.kernel_pml4) };
        for id in 0..MAX_PROCS {
            if self.procs[id].state == State::Zombie {
                debug_assert!(self.procs[id].parent.is_none());
                paging::teardown(&mut self.frames, self.procs[id].pml4);
                self.procs[id].state = State::Free;
            }
        }
    }

    /// The first ready process after the current one, round-robin (the current one last).
    fn next_ready(&self) -> Option<usize> {
        (1..=MAX_PROCS)
            .map(|i| (self.current + i) % MAX_PROCS)
            .find(|&id| self.procs[id].state == State::Ready)
    }

    fn switch_to(&mut self, id: usize) {
        self.current = id;
        let pml4 = self.procs[id].pml4;
        if arch::read_cr3() & ADDR != pml4 {
            // SAFETY: every user address space shares the kernel's PML4 entry 0.
            unsafe { arch::write_cr3(pml4) };
            self.stats.cr3_loads += 1;
        }
    }

    /// Handles the trap the current process just took; says who runs next.
    fn trap(&mut self) -> Next {
        let ctx = self.procs[self.current].ctx;
        match ctx.vector {
            arch::SYSCALL_VECTOR => self.syscall(),
            arch::PF_VECTOR => {
                self.page_fault(arch::read_cr2(), ctx.error);
                Next::Same
            }
            v => self.fatal(format_args!(
                "unexpected exception #{} (vector {}) in user mode, error {:#x}, rip {:#x}, rsp {:#x}",
                grt::trap::mnemonic(v as u8),
                v,
                ctx.error,
                ctx.rip,
                ctx.rsp
            )),
        }
    }

    fn syscall(&mut self) -> Next {
        self.stats.syscalls += 1;
        let id = self.current;
        let ctx = self.procs[id].ctx;
        let result = match ctx.rax {
            user::SYS_EXIT => {
                self.exit(id, ctx.rdi);
                return Next::Other;
            }
            user::SYS_YIELD => {
                self.procs[id].ctx.rax = 0;
                return Next::Other;
            }
            user::SYS_FORK => self.fork(id) as u64,
            user::SYS_WAIT => match self.wait(id) {
                Some(code) => code,
                None => return Next::Other,
            },
            user::SYS_UNMAP => self.unmap(ctx.rdi, ctx.rsi, ctx.rdx),
            user::SYS_REMAP => self.remap(ctx.rdi, ctx.rsi, ctx.rdx != 0),
            user::SYS_GARBAGE => {
                let (op, address, value) = crate::garbage::syscall(self, ctx.rdi);
                let ctx = &mut self.procs[id].ctx;
                ctx.rdi = address;
                ctx.rdx = value;
                op
            }
            user::SYS_FAIL => {
                grt::println!(
                    "pagingos: {}: check failed in user mode (process {}, at {:#x}, rip {:#x})",
                    self.workload,
                    id,
                    ctx.rdi,
                    ctx.rip
                );
                grt::exit(grt::EXIT_FAILURE)
            }
            n => self.fatal(format_args!("unknown system call {} (process {})", n, id)),
        };
        self.procs[id].ctx.rax = result;
        Next::Same
    }

    fn exit(&mut self, id: usize, code: u64) {
        let proc = &mut self.procs[id];
        proc.state = State::Zombie;
        proc.exit_code = code;
        if let Some(parent) = proc.parent {
            if self.procs[parent].state == State::Waiting {
                self.procs[parent].state = State::Ready;
            }
        }
    }

    /// Creates a copy-on-write child of `parent` (the current process); returns its id. The
    /// child resumes from the same `int 0x80` with RAX = 0.
    fn fork(&mut self, parent: usize) -> usize {
        let child = self.free_slot();
        let pml4 = paging::fork(&mut self.frames, self.kernel_pml4, self.procs[parent].pml4);
        // The parent's writable pages just became read-only: flush its TLB.
        // SAFETY: the parent's address space is the loaded one; reloading it changes nothing
        // but the TLB.
        unsafe { arch::write_cr3(self.procs[parent].pml4) };
        let mut ctx = self.procs[parent].ctx;
        ctx.rax = 0;
        self.procs[child] = Proc {
            ctx,
            state: State::Ready,
            pml4,
            parent: Some(parent),
            exit_code: 0,
        };
        self.stats.forks += 1;
        child
    }

    /// Reaps an ended child of `parent` (the current process): tears its address space down
    /// and returns its exit code. If it has children but none has ended, blocks it (`None`;
    /// the call is repeated when it runs again). Without children: `u64::MAX`.
    fn wait(&mut self, parent: usize) -> Option<u64> {
        let mut has_children = false;
        for id in 0..MAX_PROCS {
            if self.procs[id].parent != Some(parent) || self.procs[id].state == State::Free {
                continue;
            }
            has_children = true;
            if self.procs[id].state == State::Zombie {
                paging::teardown(&mut self.frames, self.procs[id].pml4);
                self.procs[id].state = State::Free;
                self.procs[id].parent = None;
                return Some(self.procs[id].exit_code);
            }
        }
        if !has_children {
            return Some(u64::MAX);
        }
        let proc = &mut self.procs[parent];
        proc.state = State::Waiting;
        proc.ctx.rip -= 2; // back to the `int 0x80`
        None
    }

    /// `unmap(addr, count, stride)`: unmaps `count` pages `stride` apart; returns how many were
    /// mapped.
    fn unmap(&mut self, addr: u64, count: u64, stride: u64) -> u64 {
        let pml4 = self.procs[self.current].pml4;
        let mut unmapped = 0;
        for i in 0..count {
            let va = i
                .checked_mul(stride)
                .and_then(|offset| addr.checked_add(offset))
                .filter(|va| (paging::USER_START..paging::USER_END).contains(va))
                .unwrap_or_else(|| self.fatal(format_args!("unmap outside user space")))
                & !(PAGE - 1);
            if va < user::CODE + code_pages() * PAGE {
                self.fatal(format_args!("unmap of the program's code at {:#x}", va));
            }
            if paging::unmap(&mut self.frames, pml4, va) {
                self.stats.invlpgs += 1;
                unmapped += 1;
            }
        }
        unmapped
    }

    /// `remap(slot, frame, lazy)`: points window slot `slot` at pool frame `frame` (writable),
    /// or, when `lazy`, unmaps it and maps the frame at the next fault there. Either way the
    /// slot is invalidated with INVLPG. Returns 0, or 1 for a bad slot or frame.
    fn remap(&mut self, slot: u64, frame: u64, lazy: bool) -> u64 {
        if slot >= user::WINDOW_SLOTS || frame >= self.pool_len as u64 {
            return 1;
        }
        let va = user::WINDOW + slot * PAGE;
        let pml4 = self.procs[self.current].pml4;
        let pte = paging::walk(&mut self.frames, pml4, va, true).expect("walk with create");
        let old = paging::get(pte);
        let pa = self.pool[frame as usize];
        if lazy {
            paging::set(pte, 0);
            self.pending[slot as usize] = frame as u16 + 1;
        } else {
            self.frames.get(pa);
            paging::set(pte, pa | P | W | U);
            self.pending[slot as usize] = 0;
        }
        arch::invlpg(va);
        self.stats.invlpgs += 1;
        if old & P != 0 {
            self.frames.put(old & ADDR);
        }
        0
    }

    /// The page-fault handler for user mode: the garbage workload's test accesses, demand-zero
    /// in the stack and heap, copy-on-write, lazy window slots; anything else is fatal.
    fn page_fault(&mut self, va: u64, error: u64) {
        const ERR_P: u64 = 1;
        const ERR_W: u64 = 2;
        const ERR_U: u64 = 4;
        self.stats.faults += 1;
        if crate::garbage::user_fault(self, va, error) {
            // A test access of the garbage workload: recorded; the program resumes at its
            // recovery address (R13) with its stack as before the access (R12).
            let ctx = &mut self.procs[self.current].ctx;
            ctx.rip = ctx.r13;
            ctx.rsp = ctx.r12;
            return;
        }
        let pml4 = self.procs[self.current].pml4;
        let page = va & !(PAGE - 1);
        let in_user = (paging::USER_START..paging::USER_END).contains(&va);
        if error & ERR_U == 0 || !in_user {
            self.bad_fault(va, error, "not a user address");
        }
        let pte = paging::walk(&mut self.frames, pml4, page, true).expect("walk with create");
        let entry = paging::get(pte);
        if error & ERR_P == 0 {
            if entry & P != 0 {
                // The entry is present now although the CPU saw it absent: a stale TLB entry
                // or a fault that was not ours to take.
                self.bad_fault(va, error, "not-present fault on a present page");
            }
            let stack = user::STACK_TOP - user::STACK_SIZE..user::STACK_TOP;
            let heap = user::HEAP..user::HEAP + user::HEAP_SIZE;
            let window = user::WINDOW..user::WINDOW + user::WINDOW_SLOTS * PAGE;
            if stack.contains(&va) || heap.contains(&va) {
                let frame = self.frames.alloc_zeroed();
                self.frames.get(frame);
                paging::set(pte, frame | P | W | U);
                self.stats.demand_zero += 1;
            } else if window.contains(&va) {
                let slot = ((va - user::WINDOW) / PAGE) as usize;
                let pending = self.pending[slot];
                if pending == 0 {
                    self.bad_fault(va, error, "window slot with nothing to map");
                }
                let frame = self.pool[usize::from(pending - 1)];
                self.frames.get(frame);
                paging::set(pte, frame | P | W | U);
                self.pending[slot] = 0;
                self.stats.window += 1;
            } else {
                self.bad_fault(va, error, "no memory there");
            }
        } else if error & ERR_W != 0 && entry & (P | COW) == P | COW {
            let frame = entry & ADDR;
            if self.frames.refs(frame) == 1 {
                paging::set(pte, (entry & !COW) | W);
                self.stats.cow_reuse += 1;
            } else {
                let copy = self.frames.alloc();
                paging::copy_frame(frame, copy);
                self.frames.get(copy);
                paging::set(pte, (entry & !(ADDR | COW)) | copy | W);
                self.frames.put(frame);
                self.stats.cow_copy += 1;
            }
            arch::invlpg(page);
            self.stats.invlpgs += 1;
        } else {
            self.bad_fault(va, error, "protection violation");
        }
    }

    fn bad_fault(&self, va: u64, error: u64, why: &str) -> ! {
        let ctx = &self.procs[self.current].ctx;
        self.fatal(format_args!(
            "unexpected page fault at {:#x} ({}), error {:#x}, rip {:#x} (process {})",
            va, why, error, ctx.rip, self.current
        ))
    }

    /// Prints `pagingos: <workload>: <message>` and ends the guest with status 3 (an
    /// unexpected fault or a failed check in the running system).
    pub fn fatal(&self, message: core::fmt::Arguments) -> ! {
        grt::println!("pagingos: {}: {}", self.workload, message);
        grt::exit(grt::EXIT_EXCEPTION)
    }
}
