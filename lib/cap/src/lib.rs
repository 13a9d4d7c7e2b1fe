//! Capabilities and kernel-memory quotas, kept out of the kernel so that they can be tested on
//! the host.
//!
//! Every protection domain names kernel objects only through its *capability space*: a fixed
//! number of selector slots, each empty or holding a capability (an object and the rights to
//! it). The kernel keeps one [`CapSystem`] for the whole machine, and every capability in every
//! space is a node in one global *derivation tree*:
//!
//! - creating an object puts its *original* capability, a root, into its creator's space
//!   ([`CapSystem::insert_original`]);
//! - delegating copies a capability into a space (another or the same) as a child of the source,
//!   with the same rights or fewer, and only if the source holds [`abi::Rights::GRANT`]
//!   ([`CapSystem::delegate`]);
//! - revoking removes everything derived from a capability, in every space, to any depth, and
//!   optionally the capability itself ([`CapSystem::revoke`]). Removing an original capability
//!   is the kernel's signal to destroy the object ([`Removed::original`]).
//!
//! The object type is a parameter, so the kernel stores its own object handles here and tests
//! store integers. Lookups are O(1); a revoke costs O(size of the removed subtree) and walks the
//! tree iteratively, so a chain of delegations of any depth cannot overflow a kernel stack.
//! Operations check every argument before they change anything, and bad input gives a
//! [`CapError`], never a panic.
//!
//! [`quota`] is the per-domain account of kernel memory: objects created on a domain's behalf
//! are charged to it, and a domain that creates a child domain moves part of its quota there.
//!
//! The crate has no `unsafe` code and is tested on the host (`cargo test -p cap`).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod quota;
mod system;

use core::fmt;

pub use quota::{Quota, QuotaExceeded};
pub use system::{CapSystem, MAX_SPACES};

/// Names a capability space of a [`CapSystem`]. Opaque: an index plus a generation, so the id of
/// a destroyed space never names a later one; using it gives [`CapError::BadSpace`].
pub type SpaceId = u32;

/// Why a capability operation was refused. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapError {
    /// The space does not exist (never created, or destroyed).
    BadSpace,
    /// The selector is outside the space.
    BadSelector,
    /// No capability at the selector.
    Empty,
    /// The destination selector already holds a capability.
    SelectorInUse,
    /// The capability lacks a right the operation needs, or a delegation asked for rights the
    /// source does not have.
    NoRights,
    /// The node arena is full (the `max_nodes` given to [`CapSystem::new`]) or could not grow.
    TooManyCapabilities,
    /// Every space id is in use or retired, or the slot table could not be allocated.
    TooManySpaces,
}

impl fmt::Display for CapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadSpace => "no such capability space",
            Self::BadSelector => "selector out of range",
            Self::Empty => "no capability at selector",
            Self::SelectorInUse => "selector in use",
            Self::NoRights => "insufficient rights",
            Self::TooManyCapabilities => "capability arena full",
            Self::TooManySpaces => "no capability space available",
        })
    }
}

impl From<CapError> for abi::Status {
    fn from(e: CapError) -> Self {
        match e {
            CapError::BadSpace | CapError::BadSelector | CapError::Empty => Self::BadSelector,
            CapError::SelectorInUse => Self::SelectorInUse,
            CapError::NoRights => Self::NoRights,
            CapError::TooManyCapabilities | CapError::TooManySpaces => Self::OutOfMemory,
        }
    }
}

/// A capability that an operation removed, handed to the caller's callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed<O> {
    /// The space it was in.
    pub space: SpaceId,
    /// Its selector there (now empty).
    pub sel: u64,
    /// The object it named.
    pub object: O,
    /// It was the object's original capability: the object has no capability left and the
    /// kernel should destroy it.
    pub original: bool,
}

#[cfg(test)]
mod tests;
