//! Permission checks as the CPU does them, for a [`Translation`] found by a page walk.
//!
//! Used where the kernel must decide what a guest or user access would have done (emulated
//! accesses, copy-from-user) and by tests that check a mapping's effective rights.

use super::Translation;

/// The kind of a memory access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    Read,
    Write,
    Execute,
}

/// The CPU controls that change permission checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Controls {
    /// CR0.WP: supervisor writes honour R/W.
    pub wp: bool,
    /// EFER.NXE: the NX bit is in use (else it is a reserved bit).
    pub nxe: bool,
    /// CR4.SMEP: the supervisor may not execute user pages.
    pub smep: bool,
    /// CR4.SMAP: the supervisor may not read or write user pages...
    pub smap: bool,
    /// ...unless RFLAGS.AC is set.
    pub ac: bool,
}

impl Controls {
    /// What our kernel runs with: WP, NXE, SMEP and SMAP on, AC clear.
    pub const STRICT: Self = Self {
        wp: true,
        nxe: true,
        smep: true,
        smap: true,
        ac: false,
    };
}

impl Default for Controls {
    fn default() -> Self {
        Self::STRICT
    }
}

/// A memory access to check against a [`Translation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub kind: AccessKind,
    /// Made at CPL 3.
    pub user: bool,
    pub controls: Controls,
}

impl Access {
    /// A user-mode access under [`Controls::STRICT`].
    pub const fn user(kind: AccessKind) -> Self {
        Self {
            kind,
            user: true,
            controls: Controls::STRICT,
        }
    }

    /// A supervisor-mode access under [`Controls::STRICT`].
    pub const fn supervisor(kind: AccessKind) -> Self {
        Self {
            kind,
            user: false,
            controls: Controls::STRICT,
        }
    }
}

/// Why the CPU would fault an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessFault {
    /// A user-mode access to a supervisor page.
    SupervisorPage,
    /// A write to a read-only page.
    ReadOnly,
    /// An instruction fetch from a no-execute page.
    NoExecute,
    /// A supervisor instruction fetch from a user page with SMEP on.
    Smep,
    /// A supervisor data access to a user page with SMAP on and AC clear.
    Smap,
    /// NX is set somewhere while EFER.NXE is clear: a reserved-bit fault on any access.
    ReservedNx,
}

/// Permission check as the CPU does it (U/S, R/W with CR0.WP, NX with EFER.NXE, SMEP/SMAP optional args).
pub fn check_access(t: &Translation, access: Access) -> Result<(), AccessFault> {
    let c = access.controls;
    let f = t.flags;
    if !c.nxe && !f.executable {
        return Err(AccessFault::ReservedNx);
    }
    if access.user {
        if !f.user {
            return Err(AccessFault::SupervisorPage);
        }
        return match access.kind {
            AccessKind::Read => Ok(()),
            AccessKind::Write if !f.writable => Err(AccessFault::ReadOnly),
            AccessKind::Write => Ok(()),
            AccessKind::Execute if !f.executable => Err(AccessFault::NoExecute),
            AccessKind::Execute => Ok(()),
        };
    }
    let smap_blocks = f.user && c.smap && !c.ac;
    match access.kind {
        AccessKind::Read if smap_blocks => Err(AccessFault::Smap),
        AccessKind::Read => Ok(()),
        AccessKind::Write if smap_blocks => Err(AccessFault::Smap),
        AccessKind::Write if !f.writable && c.wp => Err(AccessFault::ReadOnly),
        AccessKind::Write => Ok(()),
        AccessKind::Execute if f.user && c.smep => Err(AccessFault::Smep),
        AccessKind::Execute if !f.executable => Err(AccessFault::NoExecute),
        AccessKind::Execute => Ok(()),
    }
}
