//! The thread: saved registers, a UTCB, a priority, and why it is not running. A vCPU is a
//! thread whose `vcpu` part is set.

use alloc::boxed::Box;

use super::ids::{PdId, PortalId, SemId, ThreadId};
use super::vcpu::Vcpu;
use crate::arch::trap::TrapFrame;
use crate::mem::direct;

/// Why a thread is not running.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum State {
    /// Running or in the run queue.
    Ready,
    /// Queued on a portal whose handler is busy.
    Calling(PortalId),
    /// Its call is being served; it waits for the reply.
    AwaitingReply,
    /// A handler waiting for calls on this portal.
    Receiving(PortalId),
    /// Waiting on a semaphore.
    SemWait(SemId),
}

pub struct Thread {
    pub pd: PdId,
    /// Saved user registers; entries from user mode write here (see `arch::user`).
    pub regs: Box<TrapFrame>,
    /// The UTCB's frame through the direct map (its user mapping belongs to the domain).
    pub utcb: direct::FrameWords,
    pub priority: u8,
    pub state: State,
    /// The caller whose message this thread (a handler) is serving.
    pub serving: Option<ThreadId>,
    /// Set while the thread's pending call is a fault message sent by the kernel for it.
    pub faulted: bool,
    /// Badge reported in fault messages (its selector-independent id).
    pub badge: u64,
    /// The domain whose quota paid for the thread (none for init's first thread).
    pub charged_to: Option<PdId>,
    /// The user address of its UTCB page (None for vCPUs, whose message frame is the
    /// kernel's): when that page is unmapped, the thread ends.
    pub utcb_page: Option<u64>,
    /// Set for vCPUs: the guest side.
    pub vcpu: Option<Box<Vcpu>>,
}
