//! One wrapper per [`abi::Syscall`], plus [`raw`].
//!
//! Register convention (`abi::syscall`): RAX = number, RDI, RSI, RDX, R10, R8, R9 = arguments;
//! the kernel returns a status in RAX and a value in RDX; `syscall` itself clobbers RCX and R11.
//! A status the runtime does not know becomes [`Error::Unknown`].
//!
//! The IPC calls ([`call`], [`reply`], [`reply_wait`]) take the thread's [`Utcb`] mutably,
//! because the kernel rewrites the message area during them; no borrow of it can be live.

use abi::syscall::args::{self, Word};
use abi::{ObjectKind, Rights, Sel};

use crate::ipc::Utcb;
use crate::Error;

/// Enters the kernel with syscall `number` and `args`; returns (RAX, RDX) as the kernel left
/// them. Any number and any arguments may be passed: the kernel checks them.
///
/// # Safety
///
/// The call does whatever the domain's capabilities allow, which can break the caller's memory
/// safety: it may end the thread, start a thread of the caller's own domain at any address with
/// any stack, or rewrite the calling thread's UTCB (which must not be borrowed across the call).
/// Callers pick numbers and arguments so that none of this happens to memory they rely on.
pub unsafe fn raw(number: u64, args: [u64; 6]) -> (u64, u64) {
    let status: u64;
    let value: u64;
    // SAFETY: `syscall` transfers to the kernel, which preserves every register but RAX, RDX
    // (results), RCX and R11 (clobbered by the instruction) and does not touch the user stack.
    // Memory is not declared untouched: the kernel writes the UTCB and, for some calls, memory
    // the caller passed. What the call does is the caller's responsibility (see above).
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") number => status,
            in("rdi") args[0],
            in("rsi") args[1],
            inlateout("rdx") args[2] => value,
            in("r10") args[3],
            in("r8") args[4],
            in("r9") args[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    (status, value)
}

/// Enters the kernel with the syscall of argument view `args`; returns (RAX, RDX).
///
/// # Safety
///
/// As for [`raw`].
pub unsafe fn raw_args<A: args::Args>(args: &A) -> (u64, u64) {
    // SAFETY: the caller upholds `raw`'s contract for this call.
    unsafe { raw(A::SYSCALL as u64, args.to_regs()) }
}

/// A syscall whose effects cannot break the caller's memory safety; returns RDX.
fn safe<A: args::Args>(args: A) -> Result<u64, Error> {
    // SAFETY: only called below (and in `crate::vm`) for calls that cannot end the thread, start
    // code in the caller's domain or rewrite the UTCB (those have their own wrappers).
    let (status, value) = unsafe { raw_args(&args) };
    Error::from_kernel(status).map(|()| value)
}

/// [`safe`] for the other modules of the runtime: `A` must be a call that cannot end the
/// thread, start code in the caller's domain or rewrite the UTCB.
pub(crate) fn checked<A: args::Args>(args: A) -> Result<u64, Error> {
    safe(args)
}

/// Sends the UTCB's message to `portal`'s handler and waits; the reply replaces the message.
pub fn call(utcb: &mut Utcb, portal: Sel) -> Result<(), Error> {
    let _ = utcb; // the kernel uses the thread's registered UTCB, which this borrow guards
                  // SAFETY: Call rewrites only the UTCB, which is mutably borrowed here.
    let (status, _) = unsafe { raw_args(&args::Call { portal }) };
    Error::from_kernel(status)
}

/// Replies with the UTCB's message to the caller this thread serves, and goes on running.
pub fn reply(utcb: &mut Utcb) -> Result<(), Error> {
    let _ = utcb;
    // SAFETY: Reply reads the UTCB, which is mutably borrowed here.
    let (status, _) = unsafe { raw_args(&args::Reply {}) };
    Error::from_kernel(status)
}

/// Replies (if serving a call) and waits for the next call on `portal`, which must be bound to
/// this thread; returns the portal's badge. The new message is in the UTCB.
pub fn reply_wait(utcb: &mut Utcb, portal: Sel) -> Result<u64, Error> {
    let _ = utcb;
    // SAFETY: ReplyWait rewrites only the UTCB, which is mutably borrowed here.
    let (status, badge) = unsafe { raw_args(&args::ReplyWait { portal }) };
    Error::from_kernel(status).map(|()| badge)
}

/// Creates a protection domain at `dest`, moving `quota` bytes of kernel-memory quota to it.
pub fn create_pd(dest: Sel, quota: u64) -> Result<(), Error> {
    safe(args::CreatePd { dest, quota }).map(drop)
}

/// Creates and starts a thread in domain `pd` at `entry` with RSP = `stack_top` (16-aligned)
/// and its UTCB at the page `utcb` of that domain.
///
/// # Safety
///
/// If `pd` is the caller's own domain, the new thread runs the caller's code at `entry` on the
/// stack at `stack_top`: both must be valid for that, and the stack and UTCB pages must not be
/// used by anything else.
pub unsafe fn create_thread(
    dest: Sel,
    pd: Sel,
    entry: u64,
    stack_top: u64,
    priority: u64,
    utcb: u64,
) -> Result<(), Error> {
    // SAFETY: the caller guarantees that the new thread's code, stack and UTCB are sound.
    let (status, _) = unsafe {
        raw_args(&args::CreateThread {
            dest,
            pd,
            entry,
            stack_top,
            priority,
            utcb,
        })
    };
    Error::from_kernel(status)
}

/// A protection domain the caller created with [`create_child_pd`]: never the caller's own, so
/// starting a thread in it cannot run code in the caller's address space.
///
/// It names the domain through its selector; the caller must not revoke that selector and put
/// a capability to another domain (its own) there while it keeps the `ChildPd` (init, the one
/// user, never revokes a domain it created).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChildPd(Sel);

impl ChildPd {
    /// The domain's selector.
    pub fn sel(self) -> Sel {
        self.0
    }

    /// Creates and starts a thread in this domain at `entry` with RSP = `stack_top` and its
    /// UTCB at the page `utcb` of the domain ([`create_thread`]).
    pub fn start_thread(
        self,
        dest: Sel,
        entry: u64,
        stack_top: u64,
        priority: u64,
        utcb: u64,
    ) -> Result<(), Error> {
        // SAFETY: `self.0` names a domain `create_child_pd` created (see the type's contract),
        // not the caller's: the thread runs in that domain's address space, on its stack and
        // UTCB, and cannot touch the caller's memory.
        unsafe { create_thread(dest, self.0, entry, stack_top, priority, utcb) }
    }
}

/// [`create_pd`] for a domain the caller will start threads in.
pub fn create_child_pd(dest: Sel, quota: u64) -> Result<ChildPd, Error> {
    create_pd(dest, quota).map(|()| ChildPd(dest))
}

/// Creates a portal at `dest` served by thread `handler` (of the caller's domain, CONTROL);
/// calls deliver `badge`.
pub fn create_portal(dest: Sel, handler: Sel, badge: u64) -> Result<(), Error> {
    safe(args::CreatePortal {
        dest,
        handler,
        badge,
    })
    .map(drop)
}

/// Creates a counting semaphore at `dest`.
pub fn create_semaphore(dest: Sel, initial: u64) -> Result<(), Error> {
    safe(args::CreateSemaphore { dest, initial }).map(drop)
}

/// Copies capability `src` into domain `pd`'s space at `dest` with `rights`.
pub fn delegate(src: Sel, pd: Sel, dest: Sel, rights: Rights) -> Result<(), Error> {
    safe(args::Delegate {
        src,
        pd,
        dest,
        rights: Word::new(rights),
    })
    .map(drop)
}

/// Removes everything derived from `sel` (and `sel` itself with `include_self`); returns how
/// many capabilities went.
pub fn revoke(sel: Sel, include_self: bool) -> Result<u64, Error> {
    safe(args::Revoke {
        sel,
        include_self: Word::new(include_self),
    })
}

/// What [`lookup`] reports about a capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapInfo {
    /// The object kind as the kernel reported it (bits 0..7).
    pub kind_raw: u8,
    pub rights: Rights,
}

impl CapInfo {
    pub fn kind(&self) -> Option<ObjectKind> {
        ObjectKind::from_u8(self.kind_raw)
    }
}

/// The kind and rights of the capability at `sel`.
pub fn lookup(sel: Sel) -> Result<CapInfo, Error> {
    let value = safe(args::Lookup { sel })?;
    Ok(CapInfo {
        kind_raw: value as u8,
        rights: Rights((value >> 8) as u8),
    })
}

/// Signals semaphore `sem`.
pub fn sem_up(sem: Sel) -> Result<(), Error> {
    safe(args::SemUp { sem }).map(drop)
}

/// Waits on semaphore `sem`, at most `timeout_ticks` timer ticks (0: forever).
pub fn sem_down(sem: Sel, timeout_ticks: u64) -> Result<(), Error> {
    safe(args::SemDown { sem, timeout_ticks }).map(drop)
}

/// Maps `pages` pages of memory capability `mem`, from its page `first_page` on, into domain
/// `pd` at `virt` with `rights` (READ, optionally WRITE or EXEC). The kernel refuses addresses
/// that are already mapped, so a mapping never replaces memory the caller uses.
pub fn map(
    mem: Sel,
    pd: Sel,
    virt: u64,
    first_page: u64,
    pages: u64,
    rights: Rights,
) -> Result<(), Error> {
    safe(args::Map {
        mem,
        pd,
        virt,
        first_page,
        pages,
        rights: Word::new(rights),
    })
    .map(drop)
}

/// Gives up the rest of the time slice (to threads of the same priority).
pub fn yield_now() {
    let _ = safe(args::Yield {});
}

/// Signals `sem` whenever IRQ `irq` fires.
pub fn irq_bind(irq: Sel, sem: Sel) -> Result<(), Error> {
    safe(args::IrqBind { irq, sem }).map(drop)
}

/// Ends the calling thread.
pub fn thread_exit() -> ! {
    // SAFETY: ending the thread is what the caller asks for; `-> !` keeps it from continuing.
    unsafe {
        raw_args(&args::ThreadExit {});
    }
    // The kernel never returns from ThreadExit; should it, stop here anyway.
    loop {
        core::hint::spin_loop();
    }
}

/// Ends the system (root domain only); returns only if the kernel refused.
pub fn power_off(success: bool) -> Error {
    match safe(args::PowerOff {
        status: u64::from(!success),
    }) {
        Err(e) => e,
        Ok(_) => Error::Unknown(0),
    }
}

/// Writes `bytes` to the kernel console (root domain only, at most 4096 bytes a call).
pub fn console_write(bytes: &[u8]) -> Result<u64, Error> {
    safe(args::ConsoleWrite {
        ptr: bytes.as_ptr() as u64,
        len: bytes.len() as u64,
    })
}

/// Creates at `dest` a capability over pages (Memory) or ports (IoPorts) `first ..
/// first + count` of `src`.
pub fn carve(src: Sel, dest: Sel, first: u64, count: u64) -> Result<(), Error> {
    safe(args::Carve {
        src,
        dest,
        first,
        count,
    })
    .map(drop)
}

/// One kernel-memory figure (`abi::syscall::stats`): free frames, heap bytes in use, or this
/// domain's quota (used, limit).
pub fn kernel_stats(which: u64) -> Result<u64, Error> {
    safe(args::KernelStats { which })
}
