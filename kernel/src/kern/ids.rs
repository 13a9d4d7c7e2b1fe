//! Typed ids of kernel objects. Each kind is a marker type, so that the object types (one per
//! file) can name each other's ids without importing each other.

use super::slab::Id;

pub enum PdKind {}
pub enum ThreadKind {}
pub enum PortalKind {}
pub enum SemaphoreKind {}
pub enum VmKind {}

pub type PdId = Id<PdKind>;
/// A thread, or a vCPU (a thread whose `vcpu` part is set).
pub type ThreadId = Id<ThreadKind>;
pub type PortalId = Id<PortalKind>;
pub type SemId = Id<SemaphoreKind>;
pub type VmId = Id<VmKind>;
