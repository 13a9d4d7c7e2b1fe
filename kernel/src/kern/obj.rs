//! What a capability names ([`Obj`]), and the typed view a syscall asks a capability for
//! ([`Kind`], used by `Kernel::lookup`).

use super::ids::{PdId, PortalId, SemId, ThreadId, VmId};

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
    Vm(VmId),
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

/// One kind of capability, decoded: what `Kernel::lookup::<K>` returns for a capability of
/// that kind (anything else is `WrongKind`).
pub trait Kind: Sized {
    fn from_obj(obj: &Obj) -> Option<Self>;
}

/// A vCPU capability's thread (a plain `ThreadId` would be a thread capability).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VcpuRef(pub ThreadId);

/// A memory capability's physical pages.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryRange {
    pub base: u64,
    pub pages: u64,
}

/// An I/O-port capability's ports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PortRange {
    pub base: u32,
    pub count: u32,
}

/// An IRQ capability's line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IrqLine(pub u8);

macro_rules! kind {
    ($t:ty, $pattern:pat => $value:expr) => {
        impl Kind for $t {
            fn from_obj(obj: &Obj) -> Option<Self> {
                match *obj {
                    $pattern => Some($value),
                    _ => None,
                }
            }
        }
    };
}

kind!(PdId, Obj::Pd(x) => x);
kind!(ThreadId, Obj::Thread(x) => x);
kind!(PortalId, Obj::Portal(x) => x);
kind!(SemId, Obj::Semaphore(x) => x);
kind!(VmId, Obj::Vm(x) => x);
kind!(VcpuRef, Obj::Vcpu(x) => VcpuRef(x));
kind!(MemoryRange, Obj::Memory { base, pages } => MemoryRange { base, pages });
kind!(PortRange, Obj::IoPorts { base, count } => PortRange { base, count });
kind!(IrqLine, Obj::Irq(x) => IrqLine(x));
