//! Remembered mappings: each goes away with the memory capability it was made through (revoking
//! a memory capability unmaps everything mapped through it or through anything derived from it).

use cap::SpaceId;

use super::ids::{PdId, VmId};

/// A user mapping made with `Map`.
#[derive(Clone, Copy, Debug)]
pub struct MapRecord {
    pub pd: PdId,
    pub virt: u64,
    pub pages: u64,
    /// The memory capability used: its space and selector.
    pub space: SpaceId,
    pub sel: u64,
}

/// A guest-physical mapping made with `VmMap`.
#[derive(Clone, Copy, Debug)]
pub struct VmMapRecord {
    pub vm: VmId,
    pub gpa: u64,
    pub pages: u64,
    pub space: SpaceId,
    pub sel: u64,
}
