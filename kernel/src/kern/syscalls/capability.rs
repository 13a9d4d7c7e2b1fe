//! Capability syscalls: `delegate` and `revoke`, and what the kernel undoes when capabilities go.

use alloc::vec::Vec;

use abi::{Rights, Status};
use cap::{Removed, SpaceId};

use crate::kern::ids::PdId;
use crate::kern::memory::{self};
use crate::kern::obj::Obj;
use crate::kern::state::Kernel;
use crate::kern::teardown::settle_removed;

pub fn delegate(k: &mut Kernel, space: SpaceId, a: [u64; 6]) -> Result<u64, Status> {
    let [src, pd_sel, dest, rights, ..] = a;
    let rights = Rights::from_bits(rights).ok_or(Status::BadArgument)?;
    let pd = k.lookup::<PdId>(space, pd_sel, Rights::CONTROL)?;
    let target = k.pds.get(pd).ok_or(Status::BadSelector)?.space;
    k.caps
        .delegate(space, src, target, dest, rights)
        .map_err(Status::from)?;
    memory::after_cap_insert_pd(k, pd, dest);
    Ok(0)
}

pub fn revoke(k: &mut Kernel, space: SpaceId, sel: u64, include_self: u64) -> Result<u64, Status> {
    if include_self > 1 {
        return Err(Status::BadArgument);
    }
    let mut removed = Vec::new();
    let count = k
        .caps
        .revoke(space, sel, include_self == 1, &mut |r: Removed<Obj>| {
            removed.push(r)
        })
        .map_err(Status::from)?;
    settle_removed(k, removed);
    Ok(count as u64)
}
