//! Protection domains: `create_pd`, and their end with everything their quota paid for.

use alloc::vec::Vec;

use abi::{Rights, Status};
use cap::SpaceId;

use crate::kern::cost;
use crate::kern::ids::PdId;
use crate::kern::memory::{self};
use crate::kern::obj::Obj;
use crate::kern::pd::Pd;
use crate::kern::state::Kernel;
use crate::kern::teardown::destroy_pd;
use abi::syscall::args;

/// Creates a domain whose quota is split off `parent`'s; its original capability goes to
/// `parent`'s `dest`.
pub fn new_pd(k: &mut Kernel, parent: Option<PdId>, quota: cap::Quota) -> Result<PdId, Status> {
    let space = k
        .caps
        .create_space(abi::CAP_SPACE_SLOTS as usize)
        .map_err(Status::from)?;
    let mut quota = quota;
    let mut table_frames = Vec::new();
    let aspace = {
        let mut tables = memory::QuotaTables {
            quota: &mut quota,
            frames: &mut table_frames,
        };
        mem::paging::AddressSpace::new(&mut tables).map_err(|_| Status::QuotaExceeded)?
    };
    crate::mem::paging::share_kernel_half(aspace.root());
    Ok(k.pds.insert(Pd {
        space,
        aspace,
        table_frames,
        quota,
        parent,
        io_bitmap: None,
        threads: Vec::new(),
    }))
}

pub fn create_pd(
    k: &mut Kernel,
    my_pd: PdId,
    space: SpaceId,
    args::CreatePd { dest, quota }: args::CreatePd,
) -> Result<u64, Status> {
    k.check_free(space, dest)?;
    let total = quota.checked_add(cost::PD).ok_or(Status::QuotaExceeded)?;
    let child_quota = k
        .pds
        .get_mut(my_pd)
        .ok_or(Status::BadSelector)?
        .quota
        .split(total)
        .map_err(Status::from)?;
    let mut child_quota = child_quota;
    child_quota.charge(cost::PD).map_err(Status::from)?;
    let pd = new_pd(k, Some(my_pd), child_quota)?;
    if let Err(e) = k
        .caps
        .insert_original(space, dest.raw(), Obj::Pd(pd), Rights::ALL)
    {
        destroy_pd(k, pd);
        return Err(e.into());
    }
    Ok(0)
}
