//! Wrappers for the hardware-virtualization syscalls (`abi::vm`): Vm and vCPU creation, guest
//! memory mapping and vCPU control. Exit messages arrive as ordinary calls on the exit portals;
//! [`crate::Utcb::words`] gives the words that `abi::vm::word` names.

use abi::syscall::Syscall;
use abi::vm::{MemoryMode, VcpuOp};
use abi::{Rights, Sel};

use crate::syscall::raw;
use crate::Error;

fn checked(call: Syscall, args: [u64; 6]) -> Result<u64, Error> {
    // SAFETY: these syscalls create objects, change a Vm's guest-physical mappings or a vCPU's
    // settings; none of them touches the caller's memory, threads or UTCB.
    let (status, value) = unsafe { raw(call as u64, args) };
    Error::from_kernel(status).map(|()| value)
}

/// Creates a Vm at `dest` in memory mode `mode`, paid from domain `pd`.
pub fn create_vm(dest: Sel, pd: Sel, mode: MemoryMode) -> Result<(), Error> {
    checked(Syscall::CreateVm, [dest, pd, mode as u64, 0, 0, 0]).map(drop)
}

/// Creates a vCPU of `vm` at `dest`, paid from `pd`, running at `priority`; its exits call the
/// portals at `exit_base + reason` in the caller's space.
pub fn create_vcpu(
    dest: Sel,
    vm: Sel,
    pd: Sel,
    priority: u64,
    exit_base: Sel,
) -> Result<(), Error> {
    checked(Syscall::CreateVcpu, [dest, vm, pd, priority, exit_base, 0]).map(drop)
}

/// Maps `pages` pages of memory capability `mem` from page `first_page` into `vm` at
/// guest-physical `gpa` with `rights` (READ, WRITE, EXEC).
pub fn vm_map(
    vm: Sel,
    mem: Sel,
    first_page: u64,
    pages: u64,
    gpa: u64,
    rights: Rights,
) -> Result<(), Error> {
    checked(
        Syscall::VmMap,
        [vm, mem, first_page, pages, gpa, u64::from(rights.0)],
    )
    .map(drop)
}

/// Sets the register groups (`abi::vm::mtd`) that exit messages for `reason` carry.
pub fn vcpu_set_mask(vcpu: Sel, reason: abi::vm::Exit, mask: u64) -> Result<(), Error> {
    checked(
        Syscall::VcpuControl,
        [vcpu, VcpuOp::SetMask as u64, reason as u64, mask, 0, 0],
    )
    .map(drop)
}

/// Makes `vcpu` exit with `Exit::Recall` before it runs guest code again.
pub fn vcpu_recall(vcpu: Sel) -> Result<(), Error> {
    checked(
        Syscall::VcpuControl,
        [vcpu, VcpuOp::Recall as u64, 0, 0, 0, 0],
    )
    .map(drop)
}

/// `VmPatch`: replaces `expected` (1-64 bytes) by `new` (as long) at `address` of Vm `vm` if the
/// guest's bytes are `expected`: guest-linear when `linear`, else guest-physical. The bytes
/// travel in the caller's UTCB message words 0-15.
pub fn vm_patch(
    utcb: &mut crate::Utcb,
    vm: Sel,
    address: u64,
    linear: bool,
    expected: &[u8],
    new: &[u8],
) -> Result<(), Error> {
    vm_patch_moving(utcb, vm, address, linear, expected, new, None)
}

/// [`vm_patch`] that, with `moving` = (from, to), moves a vCPU whose next instruction is at
/// guest-linear `from` inside the range to `to` in the DMP window instead of failing `Busy`.
pub fn vm_patch_moving(
    utcb: &mut crate::Utcb,
    vm: Sel,
    address: u64,
    linear: bool,
    expected: &[u8],
    new: &[u8],
    moving: Option<(u64, u64)>,
) -> Result<(), Error> {
    let len = expected.len();
    if len == 0 || len > 64 || new.len() != len {
        return Err(Error::Kernel(abi::Status::BadArgument));
    }
    let mut words = [0u64; 16];
    for (i, b) in expected.iter().enumerate() {
        words[i / 8] |= u64::from(*b) << (8 * (i % 8));
    }
    for (i, b) in new.iter().enumerate() {
        words[8 + i / 8] |= u64::from(*b) << (8 * (i % 8));
    }
    utcb.set_msg(0, &words);
    let flags = if linear { abi::vm::PATCH_VIRTUAL } else { 0 };
    let (from, to) = moving.unwrap_or((0, 0));
    checked(
        Syscall::VmPatch,
        [vm, address, len as u64 | flags, from, to, 0],
    )
    .map(drop)
}

/// Makes the kernel answer the DMP hypercalls of shadow-mode `vcpu` itself (`on`), or deliver
/// VMMCALL/VMCALL to the VMM again.
pub fn vcpu_hypercalls(vcpu: Sel, on: bool) -> Result<(), Error> {
    checked(
        Syscall::VcpuControl,
        [vcpu, VcpuOp::Hypercalls as u64, u64::from(on), 0, 0, 0],
    )
    .map(drop)
}

/// `VmWindow`: the DMP window of shadow-mode Vm `vm`: `pages` guest-linear pages from `linear`
/// shown (read and execute, supervisor only) as the guest-physical pages from `physical`;
/// `pages` = 0 removes it.
pub fn vm_window(vm: Sel, linear: u64, physical: u64, pages: u64) -> Result<(), Error> {
    checked(Syscall::VmWindow, [vm, linear, physical, pages, 0, 0]).map(drop)
}

/// `VmDmp`: DMP control `op` (`abi::vm::dmp_op`) of Vm `vm` with argument `arg` (needs PATCH).
pub fn vm_dmp(vm: Sel, op: u64, arg: u64) -> Result<(), Error> {
    checked(Syscall::VmDmp, [vm, op, arg, 0, 0, 0]).map(drop)
}

/// `VmRead`: `out.len()` (1-64) guest bytes at `address` of Vm `vm` (guest-linear when
/// `linear`), inside one page.
pub fn vm_read(
    utcb: &mut crate::Utcb,
    vm: Sel,
    address: u64,
    linear: bool,
    out: &mut [u8],
) -> Result<(), Error> {
    let len = out.len();
    if len == 0 || len > 64 {
        return Err(Error::Kernel(abi::Status::BadArgument));
    }
    let flags = if linear { abi::vm::PATCH_VIRTUAL } else { 0 };
    checked(Syscall::VmRead, [vm, address, len as u64 | flags, 0, 0, 0])?;
    for (i, b) in out.iter_mut().enumerate() {
        *b = (utcb.word(i / 8) >> (8 * (i % 8))) as u8;
    }
    Ok(())
}
