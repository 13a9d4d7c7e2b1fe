//! Kernel objects: protection domains, threads, portals, semaphores, and the resource
//! descriptors (memory, I/O ports, IRQs) that capabilities carry directly.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

use cap::{Quota, SpaceId};
use mem::paging::AddressSpace;

use super::slab::Id;
use crate::arch::gdt::IO_BITMAP_BYTES;
use crate::arch::trap::TrapFrame;
use crate::mem::direct;

pub type PdId = Id<Pd>;
pub type ThreadId = Id<Thread>;
pub type PortalId = Id<Portal>;
pub type SemId = Id<Semaphore>;

/// What a capability names.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Obj {
    Pd(PdId),
    Thread(ThreadId),
    Portal(PortalId),
    Semaphore(SemId),
    /// Physical pages `[base, base + pages * 4096)`.
    Memory {
        base: u64,
        pages: u64,
    },
    /// Ports `[base, base + count)`.
    IoPorts {
        base: u32,
        count: u32,
    },
    /// A legacy IRQ line.
    Irq(u8),
    /// A guest-physical address space.
    Vm(super::vm::VmId),
    /// A virtual CPU (a thread whose `vcpu` part is set).
    Vcpu(ThreadId),
}

impl Obj {
    pub fn kind(&self) -> abi::ObjectKind {
        match self {
            Obj::Pd(_) => abi::ObjectKind::Pd,
            Obj::Thread(_) => abi::ObjectKind::Thread,
            Obj::Portal(_) => abi::ObjectKind::Portal,
            Obj::Semaphore(_) => abi::ObjectKind::Semaphore,
            Obj::Memory { .. } => abi::ObjectKind::Memory,
            Obj::IoPorts { .. } => abi::ObjectKind::IoPorts,
            Obj::Irq(_) => abi::ObjectKind::Irq,
            Obj::Vm(_) => abi::ObjectKind::Vm,
            Obj::Vcpu(_) => abi::ObjectKind::Vcpu,
        }
    }
}

/// A user mapping made with `Map`, remembered so that it goes away with the capability it was
/// made through (revoking a memory capability unmaps everything mapped through it or through
/// anything derived from it).
#[derive(Clone, Copy, Debug)]
pub struct MapRecord {
    pub pd: PdId,
    pub virt: u64,
    pub pages: u64,
    /// The memory capability used: its space and selector.
    pub space: SpaceId,
    pub sel: u64,
}

/// Kernel memory charged to a domain's quota per object (bytes). Sizes are rounded up from the
/// real allocations so that a quota bounds what a domain can make the kernel allocate.
pub mod cost {
    pub const PD: u64 = 2 * 4096; // the object, its capability space and its top-level table
    pub const THREAD: u64 = 1024;
    pub const PORTAL: u64 = 256;
    pub const SEMAPHORE: u64 = 256;
    pub const PAGE_TABLE: u64 = 4096;
    pub const IO_BITMAP: u64 = 8192;
    /// The Vm object and its tag; its nested tables are charged as PAGE_TABLE each.
    pub const VM: u64 = 1024;
    /// The thread, its VMCB or VMCS, its message frame and FPU area.
    pub const VCPU: u64 = 3 * 4096;
    /// One remembered mapping (`Map` or `VmMap`), which lives in the kernel heap until the
    /// capability it was made through goes.
    pub const MAP_RECORD: u64 = 64;
}

/// A protection domain: a capability space, an address space and an I/O-port space.
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
    /// Set for vCPUs: the guest side (see `kern::vm`).
    pub vcpu: Option<Box<super::vm::Vcpu>>,
}

pub struct Portal {
    pub handler: ThreadId,
    pub badge: u64,
    /// Callers waiting for the handler, in arrival order.
    pub callers: VecDeque<ThreadId>,
    /// The domain whose quota paid for it.
    pub owner: PdId,
}

pub struct Semaphore {
    pub count: u64,
    pub waiters: VecDeque<ThreadId>,
    /// The domain whose quota paid for it.
    pub owner: PdId,
}
