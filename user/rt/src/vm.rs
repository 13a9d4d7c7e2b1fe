//! Wrappers for the hardware-virtualization syscalls (`abi::vm`): Vm and vCPU creation, guest
//! memory mapping and vCPU control. Exit messages arrive as ordinary calls on the exit portals;
//! [`crate::Utcb::words`] gives the words that `abi::vm::word` names.

use abi::syscall::args::{self, len_flags, Word};
use abi::vm::{MemoryMode, VcpuOp};
use abi::{Rights, Sel};

// These syscalls create objects, change a Vm's guest-physical mappings or a vCPU's settings, or
// read guest bytes into the UTCB (`VmRead`, under a `&mut Utcb`): none of them touches the
// caller's memory, threads or a borrowed UTCB.
use crate::syscall::checked;
use crate::Error;

/// Creates a Vm at `dest` in memory mode `mode`, paid from domain `pd`.
pub fn create_vm(dest: Sel, pd: Sel, mode: MemoryMode) -> Result<(), Error> {
    checked(args::CreateVm {
        dest,
        pd,
        mode: Word::new(mode),
    })
    .map(drop)
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
    checked(args::CreateVcpu {
        dest,
        vm,
        pd,
        priority,
        exit_base,
    })
    .map(drop)
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
    checked(args::VmMap {
        vm,
        mem,
        first_page,
        pages,
        gpa,
        rights: Word::new(rights),
    })
    .map(drop)
}

/// Sets the register groups (`abi::vm::mtd`) that exit messages for `reason` carry.
pub fn vcpu_set_mask(vcpu: Sel, reason: abi::vm::Exit, mask: u64) -> Result<(), Error> {
    checked(args::VcpuControl {
        vcpu,
        op: Word::new(VcpuOp::SetMask),
        a: reason as u64,
        b: mask,
    })
    .map(drop)
}

/// Makes `vcpu` exit with `Exit::Recall` before it runs guest code again.
pub fn vcpu_recall(vcpu: Sel) -> Result<(), Error> {
    checked(args::VcpuControl {
        vcpu,
        op: Word::new(VcpuOp::Recall),
        a: 0,
        b: 0,
    })
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
    let (from, to) = moving.unwrap_or((0, 0));
    checked(args::VmPatch {
        vm,
        address,
        len_flags: len_flags(len as u64, linear),
        from,
        to,
    })
    .map(drop)
}

/// Makes the kernel answer the DMP hypercalls of shadow-mode `vcpu` itself (`on`), or deliver
/// VMMCALL/VMCALL to the VMM again.
pub fn vcpu_hypercalls(vcpu: Sel, on: bool) -> Result<(), Error> {
    checked(args::VcpuControl {
        vcpu,
        op: Word::new(VcpuOp::Hypercalls),
        a: u64::from(on),
        b: 0,
    })
    .map(drop)
}

/// `VmWindow`: the DMP window of shadow-mode Vm `vm`: `pages` guest-linear pages from `linear`
/// shown (read and execute, supervisor only) as the guest-physical pages from `physical`;
/// `pages` = 0 removes it.
pub fn vm_window(vm: Sel, linear: u64, physical: u64, pages: u64) -> Result<(), Error> {
    checked(args::VmWindow {
        vm,
        linear,
        physical,
        pages,
    })
    .map(drop)
}

/// `VmDmp`: DMP control `op` (`abi::vm::dmp_op`) of Vm `vm` with argument `arg` (needs PATCH).
pub fn vm_dmp(vm: Sel, op: u64, arg: u64) -> Result<(), Error> {
    checked(args::VmDmp { vm, op, arg }).map(drop)
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
    checked(args::VmRead {
        vm,
        address,
        len_flags: len_flags(len as u64, linear),
    })?;
    for (i, b) in out.iter_mut().enumerate() {
        *b = (utcb.word(i / 8) >> (8 * (i % 8))) as u8;
    }
    Ok(())
}
