//! The Vm syscalls: `create_vm`, `vm_map`, `vm_patch`, `vm_read`, `vm_window`, `vm_dmp`, and the
//! teardown that follows a Vm or its memory capabilities.

use alloc::boxed::Box;
use alloc::vec::Vec;

use abi::utcb::MsgTag;
use abi::vm::{self as vmabi, mtd, word};
use abi::PAGE_SIZE;
use abi::{Rights, Sel, Status};
use cap::SpaceId;
use virt::ept::Access;
use virt::nested::{NestedError, NestedTables};
use virt::profile::ExitProfile;

use crate::arch::vm::{self as hw};
use crate::kern::cost;
use crate::kern::exit::guest_view;
use crate::kern::ids::{PdId, ThreadId, VmId};
use crate::kern::memory::QuotaTables;
use crate::kern::obj::MemoryRange;
use crate::kern::obj::Obj;
use crate::kern::records::VmMapRecord;
use crate::kern::shadow::{self, DirectMap, Shadow};
use crate::kern::state::Kernel;
use crate::kern::teardown::{destroy_vm, flush_vm, shadow_cost};
use crate::kern::vm::Vm;
use crate::mem::direct;
use abi::syscall::args;
use abi::vm::MemoryMode;

/// Most pages one `VmMap` call maps (bounds the time the kernel spends in one call).
const MAX_MAP_PAGES: u64 = 1 << 18;

/// `create_vm(dest, pd, mode)`.
pub fn create_vm(k: &mut Kernel, space: SpaceId, a: args::CreateVm) -> Result<u64, Status> {
    let args::CreateVm {
        dest,
        pd: pd_sel,
        mode,
    } = a;
    k.check_free(space, dest)?;
    let payer = k.lookup::<PdId>(space, pd_sel, Rights::CONTROL)?;
    let backend = hw::backend().ok_or(Status::BadArgument)?;
    let shadowed = match mode.get()? {
        MemoryMode::Nested => false,
        MemoryMode::Shadow => true,
    };
    let charged = cost::VM + if shadowed { shadow_cost() } else { 0 };
    k.charge(payer, charged)?;
    let shadow = if shadowed {
        match Shadow::new(DirectMap) {
            Some(s) => Some(Box::new(s)),
            None => {
                k.release(payer, charged);
                return Err(Status::OutOfMemory);
            }
        }
    } else {
        None
    };
    let format = backend.nested_format();
    let mut table_frames = Vec::new();
    let nested = {
        let domain = k.pds.get_mut(payer).ok_or(Status::BadSelector)?;
        let mut tables = QuotaTables {
            quota: &mut domain.quota,
            frames: &mut table_frames,
        };
        NestedTables::new(&mut tables, format, vmabi::GUEST_PHYS_LIMIT)
    };
    let nested = match nested {
        Ok(n) => n,
        Err(_) => {
            k.release(payer, charged);
            return Err(Status::QuotaExceeded);
        }
    };
    let vm = k.vms.insert(Vm {
        owner: payer,
        backend,
        nested,
        table_frames,
        vcpus: Vec::new(),
        shadow,
        profile: Box::new(ExitProfile::new(0)),
    });
    if let Some(v) = k.vms.get_mut(vm) {
        *v.profile = ExitProfile::new(vm.raw());
    }
    if let Err(e) = k
        .caps
        .insert_original(space, dest.raw(), Obj::Vm(vm), Rights::ALL)
    {
        destroy_vm(k, vm);
        return Err(e.into());
    }
    Ok(0)
}

/// `vm_map(vm, mem, first_page, pages, gpa, rights)`.
pub fn vm_map(k: &mut Kernel, space: SpaceId, a: args::VmMap) -> Result<u64, Status> {
    let args::VmMap {
        vm: vm_sel,
        mem: mem_sel,
        first_page: first,
        pages,
        gpa,
        rights,
    } = a;
    let rights = rights.get()?;
    let mappable = Rights::READ | Rights::WRITE | Rights::EXEC;
    if !mappable.contains(rights) || !rights.contains(Rights::READ) {
        return Err(Status::BadArgument);
    }
    let vm = k.lookup::<VmId>(space, vm_sel, Rights::CONTROL)?;
    let MemoryRange { base, pages: total } = k.lookup(space, mem_sel, rights)?;
    let last = first.checked_add(pages).ok_or(Status::BadArgument)?;
    if pages == 0 || pages > MAX_MAP_PAGES || last > total {
        return Err(Status::BadArgument);
    }
    let end = pages
        .checked_mul(PAGE_SIZE)
        .and_then(|len| gpa.checked_add(len))
        .ok_or(Status::BadAddress)?;
    if !gpa.is_multiple_of(PAGE_SIZE) || end > vmabi::GUEST_PHYS_LIMIT {
        return Err(Status::BadAddress);
    }
    let access = Access {
        read: true,
        write: rights.contains(Rights::WRITE),
        execute: rights.contains(Rights::EXEC),
    };
    let owner = k.vms.get(vm).ok_or(Status::BadSelector)?.owner;
    // The record that undoes this mapping lives in the kernel heap: the Vm's owner pays for it
    // first, and the heap must have room (a refusal, never an allocation failure).
    k.vm_mappings
        .try_reserve(1)
        .map_err(|_| Status::OutOfMemory)?;
    k.charge(owner, cost::MAP_RECORD)?;
    let mut result = Ok(());
    {
        let Kernel { vms, pds, .. } = k;
        let v = vms.get_mut(vm).ok_or(Status::BadSelector)?;
        let domain = pds.get_mut(owner).ok_or(Status::BadSelector)?;
        let mut tables = QuotaTables {
            quota: &mut domain.quota,
            frames: &mut v.table_frames,
        };
        for i in 0..pages {
            let mapped = v.nested.map(
                &mut tables,
                gpa + i * PAGE_SIZE,
                base + (first + i) * PAGE_SIZE,
                access,
            );
            if let Err(e) = mapped {
                // Undo this call's pages: all or nothing.
                for j in 0..i {
                    v.nested.unmap(&mut tables, gpa + j * PAGE_SIZE);
                }
                result = Err(match e {
                    NestedError::OutOfTableMemory => Status::QuotaExceeded,
                    NestedError::BadAddress => Status::BadAddress,
                    NestedError::BadAccess => Status::BadArgument,
                });
                break;
            }
        }
    }
    flush_vm(k, vm);
    if let Err(e) = result {
        k.release(owner, cost::MAP_RECORD);
        return Err(e);
    }
    k.vm_mappings.push(VmMapRecord {
        vm,
        gpa,
        pages,
        space,
        sel: mem_sel.raw(),
    });
    Ok(0)
}

/// `vm_patch(vm, address, len | flags)`: compare-and-swap of guest bytes (see
/// `abi::syscall::Syscall::VmPatch`); the expected and new bytes are in the caller's UTCB.
pub fn vm_patch(
    k: &mut Kernel,
    me: ThreadId,
    space: SpaceId,
    a: args::VmPatch,
) -> Result<u64, Status> {
    let (vm, address, linear, len) =
        guest_range(k, space, (a.vm, a.address, a.len_flags), Rights::PATCH)?;
    let utcb = k.threads.get(me).ok_or(Status::BadSelector)?.utcb;
    let mut expected = [0u8; virt::patch::MAX_PATCH];
    let mut new = [0u8; virt::patch::MAX_PATCH];
    for i in 0..8 {
        expected[8 * i..8 * i + 8].copy_from_slice(&utcb.read(8 + i).to_le_bytes());
        new[8 * i..8 * i + 8].copy_from_slice(&utcb.read(16 + i).to_le_bytes());
    }
    let (from, to) = (a.from, a.to);
    let movable = if from == 0 {
        None
    } else {
        // Only into the window, and only for a linear range (`from` is a guest RIP).
        let window = k
            .vms
            .get(vm)
            .and_then(|v| v.shadow.as_deref())
            .and_then(|s| s.window)
            .ok_or(Status::BadArgument)?;
        let inside = from > address && from - address < len as u64;
        if !linear || !inside || to.wrapping_sub(window.gla) >= window.pages * PAGE_SIZE {
            return Err(Status::BadArgument);
        }
        Some(from)
    };
    let (hpa, moved) = locate(k, vm, address, linear, len, Some(movable))?;
    let current = direct::bytes(hpa, len).ok_or(Status::BadAddress)?;
    let mut bytes = [0u8; virt::patch::MAX_PATCH];
    bytes[..len].copy_from_slice(current);
    virt::patch::swap(&mut bytes[..len], &expected[..len], &new[..len]).map_err(patch_status)?;
    direct::copy_to(hpa, &bytes[..len]).ok_or(Status::BadAddress)?;
    // The vCPUs that stood at `from` go on at `to`, in the stub.
    for t in moved {
        if let Some(vcpu) = k.threads.get_mut(t).and_then(|t| t.vcpu.as_mut()) {
            let mut w = [0u64; word::COUNT];
            vcpu.hw.read(&vcpu.ctx.gprs, mtd::RIP, &mut w);
            w[word::RIP] = to;
            vcpu.hw.write(&mut vcpu.ctx.gprs, mtd::RIP, &w);
        }
    }
    Ok(0)
}

/// `vm_read(vm, address, len | flags)`: guest bytes into the caller's UTCB words 0-7.
pub fn vm_read(
    k: &mut Kernel,
    me: ThreadId,
    space: SpaceId,
    a: args::VmRead,
) -> Result<u64, Status> {
    let (vm, address, linear, len) =
        guest_range(k, space, (a.vm, a.address, a.len_flags), Rights::READ)?;
    let (hpa, _) = locate(k, vm, address, linear, len, None)?;
    let current = direct::bytes(hpa, len).ok_or(Status::BadAddress)?;
    let mut bytes = [0u8; virt::patch::MAX_PATCH];
    bytes[..len].copy_from_slice(current);
    let utcb = k.threads.get(me).ok_or(Status::BadSelector)?.utcb;
    utcb.write(0, MsgTag::new(0, 8, false).0);
    for i in 0..8 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[8 * i..8 * i + 8]);
        utcb.write(8 + i, u64::from_le_bytes(w));
    }
    Ok(len as u64)
}

fn guest_range(
    k: &Kernel,
    space: SpaceId,
    (vm_sel, address, len_flags): (Sel, u64, u64),
    right: Rights,
) -> Result<(VmId, u64, bool, usize), Status> {
    let vm = k.lookup::<VmId>(space, vm_sel, right)?;
    let linear = len_flags & vmabi::PATCH_VIRTUAL != 0;
    let len = len_flags & !vmabi::PATCH_VIRTUAL;
    if len == 0 || len > virt::patch::MAX_PATCH as u64 {
        return Err(Status::BadArgument);
    }
    Ok((vm, address, linear, len as usize))
}

/// The host address of `len` guest bytes at `address` (guest-linear when `linear`), after the
/// patch rules (one page; with `writing`, no vCPU resuming inside the range).
fn locate(
    k: &Kernel,
    vm: VmId,
    address: u64,
    linear: bool,
    len: usize,
    writing: Option<Option<u64>>,
) -> Result<(u64, Vec<ThreadId>), Status> {
    let v = k.vms.get(vm).ok_or(Status::BadSelector)?;
    // Every vCPU of the Vm is stopped while the kernel runs (one CPU); where each resumes, in
    // the patch's address space. With `writing` = Some(Some(from)), vCPUs at guest-linear
    // `from` do not count: the caller moves them.
    let mut rips = Vec::new();
    let mut moved = Vec::new();
    let mut regs = None;
    for t in &v.vcpus {
        let Some(vcpu) = k.threads.get(*t).and_then(|t| t.vcpu.as_ref()) else {
            continue;
        };
        let mut w = [0u64; word::COUNT];
        vcpu.hw
            .read(&vcpu.ctx.gprs, mtd::RIP | mtd::CONTROL, &mut w);
        if let Some(s) = v.shadow.as_deref() {
            guest_view(s, &mut w);
        }
        let r = (w[word::CR0], w[word::CR3], w[word::CR4], w[word::EFER]);
        regs.get_or_insert(r);
        if writing == Some(Some(w[word::RIP])) {
            moved.push(*t);
            continue;
        }
        let rip = if linear {
            Some(w[word::RIP])
        } else {
            shadow::linear_to_physical(&v.nested, r, w[word::RIP])
        };
        rips.extend(rip);
    }
    if writing.is_none() {
        rips.clear();
    }
    virt::patch::check(address, len, &rips).map_err(patch_status)?;
    let gpa = if linear {
        let r = regs.ok_or(Status::BadAddress)?;
        shadow::linear_to_physical(&v.nested, r, address).ok_or(Status::BadAddress)?
    } else {
        address
    };
    // The range lies in one page (checked above for `address`; the translation keeps the page
    // offset), so one host page backs it. A write needs the mapping's WRITE right: the kernel
    // never writes through a read-only capability.
    let hpa = shadow::physical_to_host(&v.nested, gpa).ok_or(Status::BadAddress)?;
    if writing.is_some() && shadow::physical_to_host_writable(&v.nested, gpa).is_none() {
        return Err(Status::NoRights);
    }
    Ok((hpa, moved))
}

/// `vm_window(vm, linear, physical, pages)`: sets (or with 0 pages removes) the DMP window of a
/// shadow-mode Vm.
pub fn vm_window(k: &mut Kernel, space: SpaceId, a: args::VmWindow) -> Result<u64, Status> {
    let args::VmWindow {
        vm: vm_sel,
        linear: gla,
        physical: gpa,
        pages,
    } = a;
    let vm = k.lookup::<VmId>(space, vm_sel, Rights::PATCH)?;
    let v = k.vms.get_mut(vm).ok_or(Status::BadSelector)?;
    let Vm { nested, shadow, .. } = v;
    let s = shadow.as_deref_mut().ok_or(Status::BadArgument)?;
    if pages == 0 {
        if s.forward {
            // The guest's #PF gate leads into the window.
            return Err(Status::Busy);
        }
        s.window = None;
    } else {
        if pages > vmabi::WINDOW_MAX_PAGES
            || !gla.is_multiple_of(PAGE_SIZE)
            || !gpa.is_multiple_of(PAGE_SIZE)
        {
            return Err(Status::BadArgument);
        }
        let canonical = |x: u64| ((x << 16) as i64 >> 16) as u64 == x;
        let last = gla
            .checked_add(pages * PAGE_SIZE - 1)
            .ok_or(Status::BadAddress)?;
        if !canonical(gla) || !canonical(last) || (gla ^ last) >> 63 != 0 {
            return Err(Status::BadAddress);
        }
        for i in 0..pages {
            let page = gpa.checked_add(i * PAGE_SIZE).ok_or(Status::BadAddress)?;
            shadow::physical_to_host(nested, page).ok_or(Status::BadAddress)?;
            // The kernel writes the window's words into its first page, and scratch pages are
            // guest-writable: only memory mapped with WRITE may back a window.
            shadow::physical_to_host_writable(nested, page).ok_or(Status::NoRights)?;
        }
        let window = shadow::Window {
            gla,
            gpa,
            pages,
            scratch: 0,
        };
        if s.view
            .is_some_and(|v| dmp_view(v.gla, v.size, Some(window)).is_none())
            || s.forward
        {
            return Err(Status::Busy);
        }
        s.window = Some(window);
        s.publish(nested);
    }
    flush_vm(k, vm);
    Ok(0)
}

/// `VmDmp(vm, op, arg)`: the DMP view and #PF forwarding of a shadow-mode Vm
/// (`abi::vm::dmp_op`); needs PATCH.
pub fn vm_dmp(k: &mut Kernel, space: SpaceId, a: args::VmDmp) -> Result<u64, Status> {
    let args::VmDmp {
        vm: vm_sel,
        op,
        arg,
    } = a;
    let vm = k.lookup::<VmId>(space, vm_sel, Rights::PATCH)?;
    // The view covers guest RAM: up to the end of the highest mapping, in 2 MiB steps.
    let top = k
        .vm_mappings
        .iter()
        .filter(|m| m.vm == vm)
        .map(|m| m.gpa + m.pages * PAGE_SIZE)
        .max()
        .unwrap_or(0)
        .next_multiple_of(2 << 20);
    let v = k.vms.get_mut(vm).ok_or(Status::BadSelector)?;
    let Vm { nested, shadow, .. } = v;
    let s = shadow.as_deref_mut().ok_or(Status::BadArgument)?;
    match op {
        vmabi::dmp_op::VIEW if arg == 0 => {
            if s.forward {
                return Err(Status::Busy);
            }
            s.view = None;
        }
        vmabi::dmp_op::VIEW => {
            let view = dmp_view(arg, top, s.window).ok_or(Status::BadAddress)?;
            s.view = Some(view);
        }
        vmabi::dmp_op::REGION_FILLS if arg <= 1 => s.regions = arg == 1,
        vmabi::dmp_op::SCRATCH => {
            let w = s.window.as_mut().ok_or(Status::BadArgument)?;
            if arg > w.pages {
                return Err(Status::BadArgument);
            }
            w.scratch = arg;
        }
        vmabi::dmp_op::FORWARD_FAULTS if arg <= 1 => {
            if arg == 1 && (s.window.is_none() || s.view.is_none()) {
                return Err(Status::BadArgument);
            }
            s.forward = arg == 1;
        }
        _ => return Err(Status::BadArgument),
    }
    s.publish(nested);
    flush_vm(k, vm);
    Ok(0)
}

/// The view at guest-linear `base` over `size` bytes of guest RAM, if it is 2 MiB-aligned,
/// canonical in the upper half, and clear of the window.
fn dmp_view(base: u64, size: u64, window: Option<shadow::Window>) -> Option<shadow::View> {
    let window = window.map(|w| (w.gla, w.pages * PAGE_SIZE));
    virt::hypercall::view_fits(base, size, window).then_some(shadow::View { gla: base, size })
}

fn patch_status(e: virt::patch::PatchError) -> Status {
    use virt::patch::PatchError;
    match e {
        PatchError::BadLength | PatchError::CrossesPage => Status::BadArgument,
        PatchError::VcpuInside => Status::Busy,
        PatchError::Mismatch => Status::Mismatch,
    }
}
