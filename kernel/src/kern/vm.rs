//! The Vm object: a guest-physical address space, its vCPUs, its vTLB in shadow mode and its
//! exit profile.

use alloc::boxed::Box;
use alloc::vec::Vec;

use virt::nested::NestedTables;
use virt::profile::ExitProfile;

use super::ids::{PdId, ThreadId};
use super::shadow::Shadow;
use crate::arch::vm::Backend;

/// A guest-physical address space.
pub struct Vm {
    pub owner: PdId,
    pub backend: Backend,
    pub nested: NestedTables,
    pub table_frames: Vec<u64>,
    pub vcpus: Vec<ThreadId>,
    /// Shadow mode: the vTLB (the nested tables then only record where guest memory lives).
    pub shadow: Option<Box<Shadow>>,
    /// Exits by reason and the hottest (reason, guest RIP) sites, the kernel's own exits
    /// (shadow paging) included.
    pub profile: Box<ExitProfile>,
}
