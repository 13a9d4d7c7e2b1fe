//! What the vTLB of a Vm ([`super::vm::Shadow`]) needs from the kernel, as one trait: host
//! frames for its table pool, host-physical memory through the kernel's direct map, and the
//! host CPU's paging features. Everything else of shadow paging is host-tested logic.
//!
//! The adapters here turn a [`Machine`] and a Vm's [`NestedTables`] into the traits the generic
//! pieces take: the guest's RAM ([`GuestPhys`], [`HostMemory`]), the shadow table frames
//! ([`ShadowMemory`]) and read-only lookups in the nested tables ([`TableMemory`]).

use mem::paging::TableMemory;

use super::leaf::{Backing, HostMemory};
use super::vtlb::ShadowMemory;
use super::walk::{self, CasError, Features, GuestPhys, Paging};
use super::AccessKind;
use crate::nested::NestedTables;

/// The kernel side of a vTLB. Addresses are host-physical; the kernel reaches them through its
/// direct map. Nothing here may panic on an address the vTLB got from guest memory: a word out
/// of reach reads as `None`.
pub trait Machine {
    /// The host's physical-address width and 1 GiB-page support (what the guest's CPUID shows).
    fn features(&self) -> Features;
    /// A 4 KiB-aligned host frame for the shadow table pool, None when memory is short.
    fn alloc_frame(&self) -> Option<u64>;
    /// Gives back a frame from [`Machine::alloc_frame`].
    fn free_frame(&self, frame: u64);
    /// Word `index` (< 512) of the table frame at `frame` (nested and shadow tables).
    fn read_word(&self, frame: u64, index: usize) -> u64;
    /// Sets word `index` (< 512) of the shadow table frame at `frame`.
    fn write_word(&self, frame: u64, index: usize, value: u64);
    /// Clears a shadow table frame.
    fn zero_frame(&self, frame: u64) {
        for i in 0..512 {
            self.write_word(frame, i, 0);
        }
    }
    /// The 8-byte-aligned word at `hpa` of guest memory, read atomically (the guest may store
    /// to it meanwhile); None when unaligned or out of reach.
    fn read_shared(&self, hpa: u64) -> Option<u64>;
    /// Atomically replaces the word at `hpa` by `new` if it holds `current`: `Ok(current)` or
    /// `Err(what it holds)`; None when unaligned or out of reach.
    fn compare_exchange(&self, hpa: u64, current: u64, new: u64) -> Option<Result<u64, u64>>;
}

/// The nested tables of a Vm, read through the machine (lookups only: it never allocates).
pub(crate) struct Lookup<'a, M>(pub &'a M);

impl<M: Machine> TableMemory for Lookup<'_, M> {
    fn alloc_table(&mut self) -> Option<u64> {
        None
    }

    fn read(&self, table: u64, index: usize) -> u64 {
        self.0.read_word(table, index)
    }

    fn write(&mut self, _table: u64, _index: usize, _value: u64) {}
}

/// The shadow tables: frames from the pool, through the machine.
pub(crate) struct Frames<'a, M>(pub &'a M);

impl<M: Machine> ShadowMemory for Frames<'_, M> {
    fn read(&self, table: u64, index: usize) -> u64 {
        self.0.read_word(table, index)
    }

    fn write(&mut self, table: u64, index: usize, value: u64) {
        self.0.write_word(table, index, value)
    }

    fn zero(&mut self, table: u64) {
        self.0.zero_frame(table)
    }
}

/// The guest's RAM as the Vm maps it: the walker's reads and A/D updates, and the backing of
/// each guest page.
pub(crate) struct GuestRam<'a, M> {
    pub nested: &'a NestedTables,
    pub machine: &'a M,
}

impl<M: Machine> GuestPhys for GuestRam<'_, M> {
    fn read(&self, gpa: u64) -> Option<u64> {
        let (hpa, _) = self.nested.translate(&Lookup(self.machine), gpa)?;
        self.machine.read_shared(hpa)
    }

    fn compare_exchange(&self, gpa: u64, current: u64, new: u64) -> Result<(), CasError> {
        let (hpa, access) = self
            .nested
            .translate(&Lookup(self.machine), gpa)
            .ok_or(CasError::NotRam)?;
        if !access.write {
            return Err(CasError::NotRam);
        }
        match self.machine.compare_exchange(hpa, current, new) {
            Some(Ok(_)) => Ok(()),
            Some(Err(_)) => Err(CasError::Changed),
            None => Err(CasError::NotRam),
        }
    }
}

impl<M: Machine> HostMemory for GuestRam<'_, M> {
    fn backing(&self, gpa: u64) -> Option<Backing> {
        let (hpa, access) = self.nested.translate(&Lookup(self.machine), gpa)?;
        Some(Backing {
            hpa: hpa & !0xfff,
            writable: access.write,
            executable: access.execute,
        })
    }

    fn backing_region(&self, gpa_2m: u64, out: &mut [Option<Backing>; 512]) {
        *out = [None; 512];
        self.nested
            .translate_region(&Lookup(self.machine), gpa_2m, |i, hpa, access| {
                out[i] = Some(Backing {
                    hpa,
                    writable: access.write,
                    executable: access.execute,
                });
            });
    }
}

/// Guest-linear `la` to guest-physical through the guest's own long-mode tables (controls from
/// its registers `(cr0, cr3, cr4, efer)`), without A/D updates or rights checks; None when
/// nothing maps it.
pub fn linear_to_physical(
    machine: &impl Machine,
    nested: &NestedTables,
    regs: (u64, u64, u64, u64),
    la: u64,
) -> Option<u64> {
    let (cr0, cr3, cr4, efer) = regs;
    let paging = Paging::long_mode(cr0, cr3, cr4, efer, 0, machine.features())?;
    let ram = GuestRam { nested, machine };
    let access = walk::Access::implicit(AccessKind::Read);
    walk::translate(&ram, &paging, la, access)
        .ok()
        .map(|t| t.gpa)
}

/// The host-physical address of guest-physical `gpa`, if guest memory backs it.
pub fn physical_to_host(machine: &impl Machine, nested: &NestedTables, gpa: u64) -> Option<u64> {
    nested.translate(&Lookup(machine), gpa).map(|(hpa, _)| hpa)
}

/// The host-physical address of guest-physical `gpa` for a kernel write: only where the
/// mapping was made with WRITE (the kernel never writes through a read-only capability).
pub fn physical_to_host_writable(
    machine: &impl Machine,
    nested: &NestedTables,
    gpa: u64,
) -> Option<u64> {
    nested
        .translate(&Lookup(machine), gpa)
        .and_then(|(hpa, access)| access.write.then_some(hpa))
}
