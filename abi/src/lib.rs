//! The kernel/user contract, shared by the kernel, the user-level servers and the build tool.
//!
//! Everything here is `no_std`, has a stable representation, and is the single definition of its
//! item: the kernel and its clients never restate these numbers. `docs/abi.md` is the prose form.
#![no_std]

pub mod boot;
pub mod bootstrap;
pub mod dmp;
pub mod exit;
pub mod profile;
pub mod rights;
pub mod status;
pub mod syscall;
pub mod utcb;
pub mod vm;

pub use rights::Rights;
pub use status::Status;
pub use syscall::Syscall;

/// A capability selector: an index into a protection domain's capability space.
pub type Sel = u64;

/// Number of selectors in every capability space.
pub const CAP_SPACE_SLOTS: u64 = 1024;

/// Selectors with a fixed meaning in every domain. The kernel fills them for init; for other
/// domains the creator delegates them (init does so for every server it starts).
pub mod well_known {
    use super::Sel;
    /// The protection domain itself (rights as delegated by its creator).
    pub const SELF_PD: Sel = 0;
    /// The thread that runs the domain's entry point.
    pub const SELF_THREAD: Sel = 1;
    /// The portal that receives the domain's faults (empty if its creator gave none). The kernel
    /// sends fault messages there; a user `Call` with `utcb::FAULT_LABEL` is refused, so a fault
    /// message is always the kernel's.
    pub const FAULT_PORTAL: Sel = 2;
    /// Servers started by init: init's bootstrap portal (see `crate::bootstrap`).
    pub const BOOTSTRAP_PORTAL: Sel = 15;
    /// First selector free for the domain's own use.
    pub const FIRST_FREE: Sel = 16;
}

/// Kinds of kernel object a capability can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ObjectKind {
    Pd = 1,
    Thread = 2,
    Portal = 3,
    Semaphore = 4,
    Memory = 5,
    IoPorts = 6,
    Irq = 7,
    /// A guest-physical address space (`vm`).
    Vm = 8,
    /// A virtual CPU of a Vm (`vm`).
    Vcpu = 9,
}

impl ObjectKind {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Pd,
            2 => Self::Thread,
            3 => Self::Portal,
            4 => Self::Semaphore,
            5 => Self::Memory,
            6 => Self::IoPorts,
            7 => Self::Irq,
            8 => Self::Vm,
            9 => Self::Vcpu,
            _ => return None,
        })
    }
}
