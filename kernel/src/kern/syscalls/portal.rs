//! Portals: `create_portal`.

use alloc::collections::VecDeque;

use abi::{Rights, Status};
use cap::SpaceId;

use crate::kern::cost;
use crate::kern::ids::PdId;
use crate::kern::ids::ThreadId;
use crate::kern::obj::Obj;
use crate::kern::portal::Portal;
use crate::kern::state::Kernel;
use abi::syscall::args;

pub fn create_portal(
    k: &mut Kernel,
    my_pd: PdId,
    space: SpaceId,
    args::CreatePortal {
        dest,
        handler: handler_sel,
        badge,
    }: args::CreatePortal,
) -> Result<u64, Status> {
    k.check_free(space, dest)?;
    let handler: ThreadId = k.lookup(space, handler_sel, Rights::CONTROL)?;
    // The handler must belong to the creating domain: a portal runs code of its creator only.
    if k.threads.get(handler).map(|t| t.pd) != Some(my_pd) {
        return Err(Status::BadArgument);
    }
    k.charge(my_pd, cost::PORTAL)?;
    let portal = k.portals.insert(Portal {
        handler,
        badge,
        callers: VecDeque::new(),
        owner: my_pd,
    });
    if let Err(e) = k
        .caps
        .insert_original(space, dest.raw(), Obj::Portal(portal), Rights::ALL)
    {
        k.portals.remove(portal);
        k.release(my_pd, cost::PORTAL);
        return Err(e.into());
    }
    Ok(0)
}
