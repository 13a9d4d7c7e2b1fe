//! Dynamic Memory Paravirtualization (DMP) policy: what the `dmp-service` decides about a hot
//! guest instruction, kept apart from its syscalls so that it is tested on the host
//! (`cargo test -p dmp`).
//!
//! **Why this lives in user space.** The kernel's whole DMP mechanism is `VmPatch`, a
//! compare-and-swap of at most 64 guest bytes inside one page (`docs/ARCHITECTURE.md`, "Patching
//! guest memory"). Everything that needs an x86 decoder and encoder — which instruction sits at a
//! hot site, whether it can be moved, what to put in its place — is policy, and policy runs in an
//! unprivileged server where a bug costs one guest's speed, not the hypervisor's integrity. The
//! kernel never trusts what this crate computes: it only swaps bytes whose old value it checks.
//!
//! The pipeline for one hot site (an `abi::profile::HotSite`: exit reason, guest RIP, count):
//!
//! 1. [`classify`]: decode the guest bytes at the site with iced-x86 and say what the instruction
//!    is for DMP ([`SiteKind`]): a page-table write, a CR3 read or write, another control-register
//!    access, an INVLPG, another faulting memory access, port I/O — or [`Unpatchable`], with the
//!    reason.
//! 2. [`plan_patch`]: choose the bytes to overwrite with a `jmp rel32` to the stub (whole
//!    instructions, at least five bytes, one page, one basic block) and produce the `expected` and
//!    `new` bytes of the kernel's compare-and-swap ([`PatchPlan`]).
//! 3. [`build_stub`]: encode the stub at its guest-linear address with iced-x86's block encoder:
//!    a replacement for the hot instruction (constructors and the hypercall ABI in
//!    [`replacement`]), the other displaced instructions relocated, and a jump back.
//!
//! Besides hot sites, [`fault_gate`] hands the guest's page faults to the guest itself: it
//! builds the stub its #PF gate is pointed at, which walks the guest's tables through the
//! kernel's view of guest RAM and sends only hidden faults to the kernel ([`policy`] decides when
//! and installs it).
//!
//! Every input is treated as hostile (the guest chooses its code bytes, the profile comes from a
//! message): bad input gives [`Unpatchable`], [`PlanError`], [`StubError`] or
//! [`replacement::ReplacementError`], never a panic. A deterministic fuzz test checks that.
//!
//! **Known limitation (inherent to patching with a jump).** The patch overwrites more than the
//! hot instruction when it is shorter than five bytes. Code elsewhere in the guest that jumps into
//! the middle of the displaced range would land in the jump's displacement or the `int3` padding.
//! Bytes alone cannot prove that no such jump exists; [`plan_patch`] lowers the risk by never
//! displacing across a branch, call, return or interrupt (the end of a basic block) and never
//! across NOP or INT3 padding (which compilers put in front of branch targets), and by displacing
//! as few instructions as possible.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod classify;
pub mod fault_gate;
mod labels;
pub mod plan;
pub mod policy;
pub mod replacement;
pub mod stub;
pub mod uart;

pub use classify::{
    classify, Access, Bitness, IoDirection, MemOperand, Port, Site, SiteKind, StoreValue,
    Unpatchable, Width, MAX_CODE,
};
pub use iced_x86;
pub use plan::{plan_patch, PatchPlan, PlanError, JMP_REL32_LEN, MAX_PATCH_LEN, PAGE_SIZE};
pub use stub::{build_stub, Stub, StubError};

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod testcpu;
