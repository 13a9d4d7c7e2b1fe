//! Semaphores: `create_semaphore`, `sem_up`, `sem_down`, and `irq_bind`, which makes a legacy
//! IRQ line signal one.

use alloc::collections::VecDeque;

use abi::{Rights, Status};
use cap::SpaceId;

use crate::kern::cost;
use crate::kern::ids::SemId;
use crate::kern::ids::{PdId, ThreadId};
use crate::kern::obj::IrqLine;
use crate::kern::obj::Obj;
use crate::kern::semaphore::Semaphore;
use crate::kern::state::Kernel;
use crate::kern::thread::State;
use abi::syscall::args;

pub fn create_semaphore(
    k: &mut Kernel,
    my_pd: PdId,
    space: SpaceId,
    args::CreateSemaphore { dest, initial }: args::CreateSemaphore,
) -> Result<u64, Status> {
    k.check_free(space, dest)?;
    k.charge(my_pd, cost::SEMAPHORE)?;
    let sem = k.sems.insert(Semaphore {
        count: initial,
        waiters: VecDeque::new(),
        owner: my_pd,
    });
    if let Err(e) = k
        .caps
        .insert_original(space, dest.raw(), Obj::Semaphore(sem), Rights::ALL)
    {
        k.sems.remove(sem);
        k.release(my_pd, cost::SEMAPHORE);
        return Err(e.into());
    }
    Ok(0)
}

pub fn sem_up(
    k: &mut Kernel,
    space: SpaceId,
    args::SemUp { sem: sel }: args::SemUp,
) -> Result<u64, Status> {
    let sem: SemId = k.lookup(space, sel, Rights::WRITE)?;
    k.signal(sem);
    Ok(0)
}

pub fn sem_down(
    k: &mut Kernel,
    me: ThreadId,
    space: SpaceId,
    args::SemDown {
        sem: sel,
        timeout_ticks: timeout,
    }: args::SemDown,
) -> Result<u64, Status> {
    let sem: SemId = k.lookup(space, sel, Rights::READ)?;
    let s = k.sems.get_mut(sem).ok_or(Status::BadSelector)?;
    if s.count > 0 {
        s.count -= 1;
        return Ok(0);
    }
    s.waiters.push_back(me);
    k.block_current(State::SemWait(sem));
    if timeout != 0 {
        let deadline = crate::arch::apic::ticks().saturating_add(timeout);
        k.add_timeout(me, deadline);
    }
    Ok(0)
}

/// `irq_bind(irq, sem)`: the IRQ line signals the semaphore from now on (needs CALL on the IRQ
/// and WRITE on the semaphore). A later bind of the same line replaces the earlier one.
pub fn irq_bind(
    k: &mut Kernel,
    space: SpaceId,
    args::IrqBind {
        irq: irq_sel,
        sem: sem_sel,
    }: args::IrqBind,
) -> Result<u64, Status> {
    let IrqLine(irq) = k.lookup(space, irq_sel, Rights::CALL)?;
    let sem: SemId = k.lookup(space, sem_sel, Rights::WRITE)?;
    k.bind_irq(irq, sem);
    Ok(0)
}
