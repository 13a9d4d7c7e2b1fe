//! The one way syscalls reach objects through capabilities: a typed lookup (kind and rights, or
//! a [`Status`]), the free-slot check before an object is made, and quota charges.

use abi::{Rights, Sel, Status};
use cap::SpaceId;

use super::ids::PdId;
use super::obj::Kind;
use super::state::Kernel;

impl Kernel {
    /// The object of kind `K` at `sel` in `space`, if the capability holds every right in
    /// `rights`. Rights are checked before the kind (`NoRights` wins over `WrongKind`).
    pub fn lookup<K: Kind>(&self, space: SpaceId, sel: Sel, rights: Rights) -> Result<K, Status> {
        let object = self
            .caps
            .lookup(space, sel.raw(), rights)
            .map_err(Status::from)?;
        K::from_obj(object).ok_or(Status::WrongKind)
    }

    /// Checks that `sel` is a free slot of `space` before an object is made for it.
    pub fn check_free(&self, space: SpaceId, sel: Sel) -> Result<(), Status> {
        match self.caps.get(space, sel.raw()) {
            Err(cap::CapError::Empty) => Ok(()),
            Ok(_) => Err(Status::SelectorInUse),
            Err(e) => Err(e.into()),
        }
    }

    /// Charges `bytes` of kernel memory to `pd`'s quota; refused when the quota or the kernel
    /// heap (which keeps a reserve) has no room.
    pub fn charge(&mut self, pd: PdId, bytes: u64) -> Result<(), Status> {
        if !crate::mem::heap::has_room(bytes) {
            return Err(Status::OutOfMemory);
        }
        self.pds
            .get_mut(pd)
            .ok_or(Status::BadSelector)?
            .quota
            .charge(bytes)
            .map_err(Status::from)
    }

    /// Gives `bytes` back to `pd`'s quota.
    pub fn release(&mut self, pd: PdId, bytes: u64) {
        if let Some(d) = self.pds.get_mut(pd) {
            d.quota.release(bytes);
        }
    }
}
