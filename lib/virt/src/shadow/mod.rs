//! The host-testable core of a shadow-paging vTLB for guests in 4-level long-mode paging
//! (CR0.PG = CR4.PAE = EFER.LMA = 1), PAE paging and 32-bit paging (the last two shadowed in
//! PAE format, the hardware in PAE paging without long mode); LA57 is not handled, and a guest
//! with paging off runs on its Vm's nested tables ([`vm::GuestMode::Unpaged`]).
//!
//! The shadow tables are a software TLB: they cache translations the guest's own tables allow,
//! are filled lazily on hardware page faults and are dropped when the guest invalidates (INVLPG,
//! MOV CR3, CR4 changes) just as a TLB would be. Guest page tables are not write-protected, so
//! the guest must invalidate after changing them, as the architecture already requires.
//!
//! - [`walk`] walks the guest's tables as the CPU would: permissions, reserved bits, the exact
//!   #PF error code, and the accessed/dirty updates (by compare-and-swap).
//! - [`leaf`] turns a successful walk into the 4 KiB shadow leaf for the faulting page, or into
//!   the 512 leaves of its 2 MiB region for a large guest page.
//! - [`classify`] decides what a hardware #PF taken on the shadow tables means: a fault the
//!   guest must see, a fill, or guest memory the VMM must handle.
//! - [`pool`] hands out the shadow table frames (a fixed set, no allocation) and takes back a
//!   whole tree at once.
//! - [`cache`] remembers the shadow roots of recently used guest address spaces.
//! - [`vtlb`] ties pool and cache together: switching roots, installing leaves, INVLPG and
//!   flushes, recycling tables when the pool runs dry instead of failing the guest.
//! - [`vm`] is the vTLB of a shadow-mode Vm: the guest's own control registers, what each
//!   intercept (#PF, MOV CR, INVLPG, DMP hypercalls) does to the shadow tables, the DMP window
//!   and view.
//!
//! The generic pieces take the hardware side through traits: guest-physical words
//! ([`walk::GuestPhys`]), the host frame behind a guest page ([`leaf::HostMemory`]) and the
//! shadow table frames ([`vtlb::ShadowMemory`]). [`vm::Shadow`] builds all three from a Vm's
//! nested tables and one [`machine::Machine`], which is all the kernel implements: frames, its
//! direct map and the host's paging features.
//!
//! What the kernel must guarantee for the fills to be exact: the guest runs on the shadow
//! tables with hardware CR0.WP = 1 (so read-only shadow entries hold for the guest kernel too),
//! and with hardware CR4.SMEP, CR4.SMAP and EFER.NXE equal to the guest's values.

pub mod cache;
pub mod classify;
pub mod leaf;
pub mod machine;
pub mod pool;
pub mod vm;
pub mod vtlb;
pub mod walk;

#[cfg(test)]
pub(crate) mod fake;

pub use mem::paging::{AccessKind, PageSize};

/// Bits of x86-64 paging-structure entries, as guest and shadow tables use them.
pub mod bits {
    /// P: the entry is present.
    pub const PRESENT: u64 = 1 << 0;
    /// R/W.
    pub const WRITABLE: u64 = 1 << 1;
    /// U/S.
    pub const USER: u64 = 1 << 2;
    /// PWT.
    pub const WRITE_THROUGH: u64 = 1 << 3;
    /// PCD.
    pub const CACHE_DISABLE: u64 = 1 << 4;
    /// A.
    pub const ACCESSED: u64 = 1 << 5;
    /// D (entries that map a page).
    pub const DIRTY: u64 = 1 << 6;
    /// PS in a PDPTE or PDE; PAT in a PTE.
    pub const PAGE_SIZE: u64 = 1 << 7;
    /// PAT in a PTE (same bit as PS).
    pub const PAT_4K: u64 = 1 << 7;
    /// G (entries that map a page).
    pub const GLOBAL: u64 = 1 << 8;
    /// PAT in an entry that maps a 2 MiB or 1 GiB page.
    pub const PAT_LARGE: u64 = 1 << 12;
    /// XD.
    pub const NO_EXECUTE: u64 = 1 << 63;
    /// Address bits 12..=51 (before MAXPHYADDR narrows them).
    pub const ADDR: u64 = 0x000f_ffff_ffff_f000;
}
