//! Kernel memory charged to a domain's quota per object (bytes). Sizes are rounded up from the
//! real allocations so that a quota bounds what a domain can make the kernel allocate.

pub const PD: u64 = 2 * 4096; // the object, its capability space and its top-level table
pub const THREAD: u64 = 1024;
pub const PORTAL: u64 = 256;
pub const SEMAPHORE: u64 = 256;
pub const PAGE_TABLE: u64 = 4096;
pub const IO_BITMAP: u64 = 8192;
/// The Vm object and its tag; its nested tables are charged as PAGE_TABLE each.
pub const VM: u64 = 1024;
/// The thread, its VMCB or VMCS, its message frame and FPU area.
pub const VCPU: u64 = 3 * 4096;
/// One remembered mapping (`Map` or `VmMap`), which lives in the kernel heap until the
/// capability it was made through goes.
pub const MAP_RECORD: u64 = 64;
