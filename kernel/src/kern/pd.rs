//! The protection domain: a capability space, an address space and an I/O-port space.

use alloc::boxed::Box;
use alloc::vec::Vec;

use cap::{Quota, SpaceId};
use mem::paging::AddressSpace;

use super::ids::{PdId, ThreadId};
use crate::arch::gdt::IO_BITMAP_BYTES;

pub struct Pd {
    pub space: SpaceId,
    pub aspace: AddressSpace,
    /// Frames of its page tables (the top level included), freed with the domain.
    pub table_frames: Vec<u64>,
    pub quota: Quota,
    /// The domain that created it, whose quota it came from.
    pub parent: Option<PdId>,
    /// Ports this domain may use (bit clear = allowed), built from its IoPorts capabilities.
    pub io_bitmap: Option<Box<[u8; IO_BITMAP_BYTES]>>,
    pub threads: Vec<ThreadId>,
}
