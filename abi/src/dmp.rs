//! The protocol between a vmm-server and the DMP service (`dmp-service`, issue #6).
//!
//! A vmm-server whose guest is declared with `dmp = true` calls the service's `attach` portal
//! once, before the guest runs: label [`ATTACH`], words [`attach`], and its Vm capability
//! attached with READ and PATCH (what `VmRead`, `VmPatch` and `VmWindow`-based stubs need; the
//! service gets nothing else of the guest). The reply's word 0 is a [`crate::Status`]; with `Ok`
//! it carries a portal capability of the service, which the vmm-server installs as the vCPU's
//! profile portal (`exit_base + Exit::Profile`): from then on the kernel sends the guest's exit
//! profiles straight to the service, which patches hot sites and replies with mask 0.

/// Label of an attach call.
pub const ATTACH: u64 = 0xd3a0;

/// Words of an attach call.
pub mod attach {
    /// Guest-linear address of the Vm's DMP window (`VmWindow`).
    pub const WINDOW_LINEAR: usize = 0;
    /// Guest-physical address of its first page.
    pub const WINDOW_PHYSICAL: usize = 1;
    /// Its pages.
    pub const WINDOW_PAGES: usize = 2;
    /// Words in the call.
    pub const COUNT: usize = 3;
}

/// Bytes at the start of the window the kernel and the protocol reserve (the CR3 word and room
/// for more); stubs go after them.
pub const WINDOW_RESERVED: u64 = 64;
