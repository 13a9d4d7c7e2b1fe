//! Syscall numbers and the register convention.
//!
//! A thread enters the kernel with `syscall`: RAX holds the number, RDI, RSI, RDX, R10, R8, R9
//! the arguments in order. The kernel returns a [`crate::Status`] in RAX and a value in RDX (where
//! the call has one); RCX and R11 are clobbered by the instruction itself, every other register is
//! preserved. Messages travel in the thread's UTCB (`crate::utcb`), never in registers.
//!
//! A new thread starts at its entry point with RSP = its stack top, RDI = the user address of its
//! UTCB and RSI = 0 (init: RSI = [`crate::boot::BOOT_PAGE_ADDR`]); other registers are zero and
//! interrupts are enabled.
//!
//! [`args`] names each call's arguments: one view per syscall, with `to_regs` / `from_regs`.

pub mod args;

/// Syscall numbers. Arguments are listed as `name: meaning`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Syscall {
    /// `portal`: send the UTCB's message to the portal's handler and wait for its reply (which
    /// replaces the UTCB's message). Needs CALL on the portal; the label `utcb::FAULT_LABEL` is
    /// the kernel's and refused (`BadArgument`).
    Call = 0,
    /// Reply to the thread whose call this thread is serving, and go on running.
    Reply = 1,
    /// `portal`: reply to the current caller (if any), then wait for the next call on `portal`,
    /// which must be bound to this thread (a thread serves the one portal it waits on; a server
    /// with several portals waits on each with its own thread). Returns the portal's badge in
    /// RDX.
    ReplyWait = 2,
    /// `dest, quota`: create a protection domain at `dest`, moving `quota` bytes of the caller's
    /// kernel-memory quota to it.
    CreatePd = 3,
    /// `dest, pd, entry, stack_top, priority, utcb`: create and start a thread in `pd` (needs
    /// CONTROL) whose UTCB is the page at user address `utcb` of that domain.
    CreateThread = 4,
    /// `dest, handler, badge`: create a portal served by thread `handler` (of the caller's own
    /// domain); calls deliver `badge` to the handler.
    CreatePortal = 5,
    /// `dest, initial`: create a counting semaphore.
    CreateSemaphore = 6,
    /// `src, pd, dest, rights`: copy capability `src` into `pd`'s space at `dest` with `rights`,
    /// which must be a subset of what `src` holds; `src` needs GRANT and `pd` CONTROL.
    Delegate = 7,
    /// `sel, include_self`: remove every capability derived from `sel`, in every domain,
    /// recursively; with `include_self` = 1 also `sel` itself.
    Revoke = 8,
    /// `sel`: RDX = kind (bits 0..7) | rights (bits 8..15) of the capability at `sel`.
    Lookup = 9,
    /// `sem`: signal (needs WRITE).
    SemUp = 10,
    /// `sem, timeout_ticks`: wait (needs READ); 0 waits forever. Returns `Timeout` at the end.
    SemDown = 11,
    /// `mem, pd, virt, first_page, pages, rights`: map pages of a memory capability into `pd` at
    /// user address `virt` with `rights` (READ, WRITE, EXEC; a subset of the capability's, never
    /// WRITE with EXEC).
    Map = 12,
    /// Give up the rest of the time slice.
    Yield = 13,
    /// `irq, sem`: signal `sem` whenever the interrupt fires (needs CALL on the IRQ and WRITE on
    /// the semaphore); the line is unmasked from then on. Legacy IRQs are edge-triggered: the
    /// driver clears its device's interrupt condition itself.
    IrqBind = 14,
    /// End the calling thread.
    ThreadExit = 15,
    /// `status`: end the system, 0 = success (root domain only).
    PowerOff = 16,
    /// `ptr, len`: write bytes to the kernel console (root domain only; others use the serial
    /// driver).
    ConsoleWrite = 17,
    /// `src, dest, first, count`: create at `dest` a capability over a sub-range of the Memory
    /// (pages) or IoPorts (ports) capability `src` (needs GRANT), with the same rights. It is
    /// derived from `src`, so revoking `src` removes it.
    Carve = 18,
    /// `dest, pd, mode`: create a Vm (an empty guest-physical address space) in [`crate::vm::MemoryMode`]
    /// `mode`, paid from `pd`'s quota (needs CONTROL on `pd`). Fails with `BadArgument` where
    /// the CPU has no usable virtualization or the mode is not supported.
    CreateVm = 19,
    /// `dest, vm, pd, priority, exit_base`: create a vCPU of `vm` (needs CONTROL), paid from `pd`
    /// (CONTROL). It runs at `priority`; its exits call the portals at `exit_base + reason` in the
    /// caller's space (see `crate::vm`), starting with [`crate::vm::Exit::Startup`].
    CreateVcpu = 20,
    /// `vm, mem, first_page, pages, gpa, rights`: map pages of a memory capability into the Vm at
    /// guest-physical `gpa` (page-aligned, below `vm::GUEST_PHYS_LIMIT`) with `rights` (READ,
    /// WRITE, EXEC; a subset of the capability's). Replaces what was mapped there. Revoking the
    /// memory capability unmaps it from the Vm as from any domain.
    VmMap = 21,
    /// `vcpu, op, a, b`: [`crate::vm::VcpuOp`] on a vCPU (needs CONTROL).
    VcpuControl = 22,
    /// `vm, address, len | flags`: compare-and-swap of `len` (1-64) guest bytes inside one page
    /// (needs PATCH). The UTCB's message words 0-7 hold the expected bytes, 8-15 the new ones
    /// (little-endian). Flag [`crate::vm::PATCH_VIRTUAL`]: `address` is guest-linear, translated
    /// through the guest's own page tables (shadow-mode Vms); else guest-physical. `Mismatch`
    /// when the bytes differ, `Busy` while a vCPU's next instruction lies inside the range,
    /// `BadAddress` when nothing backs the page. Optional 4th and 5th arguments `from, to`
    /// (guest-linear, 0 = none): a vCPU whose next instruction is at `from` inside the range is
    /// not `Busy` but moved to `to`, which must lie in the Vm's DMP window (where the stub
    /// continues the displaced instructions).
    VmPatch = 23,
    /// `vm, linear, physical, pages`: the DMP window of a shadow-mode Vm (needs PATCH): `pages`
    /// (1-512) guest-linear pages from `linear` that the kernel's shadow tables map to the
    /// guest-physical pages from `physical` (guest RAM), whatever the guest's own tables say,
    /// supervisor-only, read and execute, never writable. The kernel keeps the guest's current
    /// CR3 in the first word of the first page ([`crate::vm::WINDOW_CR3`]). `pages` = 0 removes
    /// the window.
    VmWindow = 24,
    /// `vm, address, len | flags`: copies `len` (1-64) guest bytes inside one page into the
    /// UTCB's message words 0-7 (little-endian; needs READ on the Vm). Flags as for `VmPatch`.
    /// What the DMP service decodes hot sites from.
    VmRead = 25,
    /// `VmDmp(vm, op, arg)`: DMP controls of a Vm (`crate::vm::dmp_op`: the guest-physical view,
    /// #PF forwarding); needs PATCH on the Vm.
    VmDmp = 26,
    /// `which`: RDX = one kernel-memory figure ([`stats`]): the frame allocator's free frames,
    /// the kernel heap's bytes in use, or the caller's own quota (used or limit). Global figures
    /// are visible to every domain (a coarse covert channel this research kernel accepts; see
    /// docs/abi.md); what they serve is the leak checks of the hostile experiments.
    KernelStats = 27,
}

/// What [`Syscall::KernelStats`] reports.
pub mod stats {
    pub const FREE_FRAMES: u64 = 0;
    pub const HEAP_USED: u64 = 1;
    pub const QUOTA_USED: u64 = 2;
    pub const QUOTA_LIMIT: u64 = 3;
    /// The hardware-virtualization backend the kernel runs guests with: 0 none, else a
    /// [`crate::vm::Backend`] value (1 SVM, 2 VMX); see [`crate::vm::Backend::from_stat`].
    pub const VIRT_BACKEND: u64 = 4;
    /// The TSC's frequency in Hz, measured at boot against the PIT (0: unknown). Guests' TSCs
    /// run unshifted, so VMMs time their devices with it.
    pub const TSC_HZ: u64 = 5;
}

/// Number of defined syscalls; every number at or above it returns `BadSyscall`.
pub const COUNT: u64 = 28;

impl Syscall {
    pub const fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            0 => Self::Call,
            1 => Self::Reply,
            2 => Self::ReplyWait,
            3 => Self::CreatePd,
            4 => Self::CreateThread,
            5 => Self::CreatePortal,
            6 => Self::CreateSemaphore,
            7 => Self::Delegate,
            8 => Self::Revoke,
            9 => Self::Lookup,
            10 => Self::SemUp,
            11 => Self::SemDown,
            12 => Self::Map,
            13 => Self::Yield,
            14 => Self::IrqBind,
            15 => Self::ThreadExit,
            16 => Self::PowerOff,
            17 => Self::ConsoleWrite,
            18 => Self::Carve,
            19 => Self::CreateVm,
            20 => Self::CreateVcpu,
            21 => Self::VmMap,
            22 => Self::VcpuControl,
            23 => Self::VmPatch,
            24 => Self::VmWindow,
            25 => Self::VmRead,
            26 => Self::VmDmp,
            27 => Self::KernelStats,
            _ => return None,
        })
    }
}

/// Highest thread priority; 0 is the lowest.
pub const MAX_PRIORITY: u64 = 31;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_dense_and_bounded() {
        for v in 0..COUNT {
            assert_eq!(Syscall::from_u64(v).map(|s| s as u64), Some(v));
        }
        assert_eq!(Syscall::from_u64(COUNT), None);
        assert_eq!(Syscall::from_u64(u64::MAX), None);
    }
}
