//! Capability syscalls: `delegate` and `revoke`, and what the kernel undoes when capabilities go.

use alloc::vec::Vec;

use abi::{Rights, Status};
use cap::{Removed, SpaceId};

use crate::kern::ids::PdId;
use crate::kern::memory::{self};
use crate::kern::obj::Obj;
use crate::kern::state::Kernel;
use crate::kern::teardown::settle_removed;
use abi::syscall::args;

pub fn delegate(k: &mut Kernel, space: SpaceId, a: args::Delegate) -> Result<u64, Status> {
    let args::Delegate {
        src,
        pd: pd_sel,
        dest,
        rights,
    } = a;
    let rights = rights.get()?;
    let pd = k.lookup::<PdId>(space, pd_sel, Rights::CONTROL)?;
    let target = k.pds.get(pd).ok_or(Status::BadSelector)?.space;
    k.caps
        .delegate(space, src.raw(), target, dest.raw(), rights)
        .map_err(Status::from)?;
    memory::after_cap_insert_pd(k, pd, dest.raw());
    Ok(0)
}

pub fn revoke(
    k: &mut Kernel,
    space: SpaceId,
    args::Revoke { sel, include_self }: args::Revoke,
) -> Result<u64, Status> {
    let include_self = include_self.get()?;
    let mut removed = Vec::new();
    let count = k
        .caps
        .revoke(space, sel.raw(), include_self, &mut |r: Removed<Obj>| {
            removed.push(r)
        })
        .map_err(Status::from)?;
    settle_removed(k, removed);
    Ok(count as u64)
}
