//! Shadow paging (a vTLB) for Vms created in shadow mode: the kernel's glue around
//! `virt::shadow::vm::Shadow`, which holds the vTLB's logic (host-tested). The kernel supplies
//! its [`Machine`]: table frames from the frame allocator, host-physical memory through the
//! direct map, and the host CPU's paging features.

use virt::nested::NestedTables;
use virt::shadow::machine::{self, Machine};
use virt::shadow::walk::Features;

use crate::arch::cpu;
use crate::mem::{direct, frames};

pub use virt::shadow::vm::{CrError, FaultOutcome, HwControl, View, Window};

/// What the hardware of a shadow-mode vCPU runs with for the vTLB's answer `c`: the nested
/// root is the Vm's while the guest's paging is off.
pub fn hardware(
    c: &HwControl,
    shadow: &Shadow,
    nested: &NestedTables,
) -> crate::arch::vm::ShadowControl {
    crate::arch::vm::ShadowControl {
        cr0: c.cr0,
        cr3: c.cr3,
        cr4: c.cr4,
        efer: c.efer,
        visible_cr0: shadow.cr0,
        visible_cr4: shadow.cr4,
        nested_root: c.nested.then(|| nested.root()),
    }
}

/// Shadow table frames per Vm (512 KiB), charged to the Vm's owner. A workload that needs more
/// gets its tables recycled, never a failure.
pub const POOL_FRAMES: usize = 128;
/// Shadow roots kept per Vm (recently used guest address spaces).
const ROOTS: usize = 4;

/// The vTLB of a Vm and its guest's own control registers.
pub type Shadow = virt::shadow::vm::Shadow<DirectMap, POOL_FRAMES, ROOTS>;

/// The kernel as the vTLB's machine: the frame allocator and the direct map.
pub struct DirectMap;

impl Machine for DirectMap {
    fn features(&self) -> Features {
        host_features()
    }

    fn alloc_frame(&self) -> Option<u64> {
        frames::alloc(1)
    }

    fn free_frame(&self, frame: u64) {
        frames::free(frame, 1);
    }

    fn read_word(&self, frame: u64, index: usize) -> u64 {
        direct::read_word(frame, index)
    }

    fn write_word(&self, frame: u64, index: usize, value: u64) {
        direct::write_word(frame, index, value)
    }

    fn zero_frame(&self, frame: u64) {
        direct::zero_frame(frame)
    }

    fn read_shared(&self, hpa: u64) -> Option<u64> {
        direct::read_shared(hpa)
    }

    fn compare_exchange(&self, hpa: u64, current: u64, new: u64) -> Option<Result<u64, u64>> {
        direct::compare_exchange(hpa, current, new)
    }
}

/// Guest-linear `la` to guest-physical through the guest's own long-mode tables (controls from
/// its registers), without A/D updates or rights checks; None when nothing maps it.
pub fn linear_to_physical(
    nested: &NestedTables,
    regs: (u64, u64, u64, u64),
    la: u64,
) -> Option<u64> {
    machine::linear_to_physical(&DirectMap, nested, regs, la)
}

/// The host-physical address of guest-physical `gpa`, if guest memory backs it.
pub fn physical_to_host(nested: &NestedTables, gpa: u64) -> Option<u64> {
    machine::physical_to_host(&DirectMap, nested, gpa)
}

/// The host-physical address of guest-physical `gpa` for a kernel write: only where the
/// mapping was made with WRITE (the kernel never writes through a read-only capability).
pub fn physical_to_host_writable(nested: &NestedTables, gpa: u64) -> Option<u64> {
    machine::physical_to_host_writable(&DirectMap, nested, gpa)
}

/// The host's physical-address width and 1 GiB-page support (what the guest's CPUID shows).
fn host_features() -> Features {
    Features {
        maxphyaddr: cpu::physical_address_bits(),
        gb_pages: cpu::has_1gib_pages(),
        cr4: crate::arch::vm::cpu_cr4(),
    }
}
