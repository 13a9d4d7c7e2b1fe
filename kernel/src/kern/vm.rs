//! Vm and vCPU objects: creation, guest-physical mappings, exits delivered as calls on exit
//! portals, and replies validated and written back into the hardware state.
//!
//! A vCPU is a thread whose `vcpu` part is set: it is scheduled like any thread, and when the
//! scheduler picks it the kernel enters the guest instead of returning to user mode. An exit
//! the kernel does not handle itself (physical interrupts, reflected #DB/#AC) becomes a call
//! from the vCPU on its exit portal; the vCPU waits in `AwaitingReply` until the VMM answers.
//! Every value of a reply is checked before any of it is written (`validate`).

use alloc::boxed::Box;
use alloc::vec::Vec;

use abi::profile::{pack_words, ProfileBatch};
use abi::utcb::{MsgTag, MSG_WORDS};
use abi::vm::{self as vmabi, inject, mtd, word, Exit, EXIT_COUNT};
use abi::{Rights, Status};
use cap::SpaceId;
use virt::confine::{self, Breach, Expected};
use virt::decode;
use virt::ept::Access;
use virt::exit::{CrAccess, Exit as HwReason};
use virt::nested::{Format, NestedError, NestedTables};
use virt::profile::ExitProfile;
use virt::tags::{Held, TagSpace};

use super::memory::QuotaTables;
use super::objects::{cost, Obj, PdId, State, Thread, ThreadId};
use super::shadow::{self, CrError, FaultOutcome, Shadow};
use super::slab::Id;
use super::{ipc, Kernel};
use crate::arch::vm::{self as hw, Backend, HwVcpu, RunContext};
use crate::mem::{direct, frames};

pub type VmId = Id<Vm>;

const PAGE: u64 = 4096;
/// Most pages one `VmMap` call maps (bounds the time the kernel spends in one call).
const MAX_MAP_PAGES: u64 = 1 << 18;

/// A guest-physical address space.
pub struct Vm {
    pub owner: PdId,
    pub backend: Backend,
    pub nested: NestedTables,
    pub table_frames: Vec<u64>,
    pub vcpus: Vec<ThreadId>,
    /// Shadow mode: the vTLB (the nested tables then only record where guest memory lives).
    pub shadow: Option<Box<Shadow>>,
    /// Exits by reason and the hottest (reason, guest RIP) sites, the kernel's own exits
    /// (shadow paging) included.
    pub profile: Box<ExitProfile>,
}

/// A guest-physical mapping made with `VmMap`, undone when the memory capability goes.
#[derive(Clone, Copy, Debug)]
pub struct VmMapRecord {
    pub vm: VmId,
    pub gpa: u64,
    pub pages: u64,
    pub space: SpaceId,
    pub sel: u64,
}

/// The virtualization part of a vCPU thread.
pub struct Vcpu {
    pub vm: VmId,
    pub hw: HwVcpu,
    pub ctx: RunContext,
    /// Exit portals: selectors `exit_base + reason` in this space.
    pub exit_space: SpaceId,
    pub exit_base: u64,
    pub masks: [u64; EXIT_COUNT as usize],
    /// The frame the exit messages are built in (the vCPU's UTCB).
    pub message_frame: u64,
    pub started: bool,
    pub recall: bool,
    /// Exits so far, by neutral reason.
    pub exits: [u64; EXIT_COUNT as usize],
    /// The TSC right after the last hardware exit (the message's `EXIT_TSC`).
    pub exit_tsc: u64,
    /// TSC ticks spent in the guest, summed from entry to exit (instructions under `-icount`).
    pub guest_tsc: u64,
    /// Exits profiled since the last `Profile` message (one is due at `PROFILE_PERIOD`), and
    /// the messages' sequence number.
    pub unprofiled: u64,
    pub profile_sequence: u64,
    /// The exit TSC when the last profile was due.
    pub profile_tsc: u64,
    /// The kernel answers this vCPU's DMP hypercalls (`VcpuOp::Hypercalls`).
    pub hypercalls: bool,
    /// The hardware lets the guest's #PF through (its Vm's `Shadow::forward`).
    pub forwarding: bool,
    /// The Vm's shadow tables were emptied or its DMP controls changed outside this vCPU's
    /// exits: before the next entry, apply the controls and map what the guest needs to take a
    /// fault (`Shadow::prefill_critical`).
    pub resync: bool,
    /// The exit whose reply the vCPU waits for (or last waited for).
    pub answering: Exit,
    /// Its ASID or VPID (renewed before an entry when its generation is over).
    pub tag: Held,
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        frames::free(self.message_frame, 1);
        let hw = core::mem::replace(&mut self.hw, HwVcpu::Empty);
        hw.free();
    }
}

/// The CPU's ASIDs/VPIDs, handed out in generations (`virt::tags`): never exhausted.
static TAGS: spin::Mutex<Option<TagSpace>> = spin::Mutex::new(None);

/// A tag for a vCPU holding `held`, and whether it is fresh (flush its entries before use).
fn refresh_tag(held: Option<Held>) -> (Held, bool) {
    let mut tags = TAGS.lock();
    let space = tags.get_or_insert_with(|| {
        let limit = match hw::backend() {
            Some(Backend::Svm) => hw::svm::asid_count().min(4096),
            _ => 4096,
        };
        TagSpace::new(limit as u16)
    });
    space.refresh(held)
}

fn lookup_pd(k: &Kernel, space: SpaceId, sel: u64) -> Result<PdId, Status> {
    match k
        .caps
        .lookup(space, sel, Rights::CONTROL)
        .map_err(Status::from)?
    {
        Obj::Pd(pd) => Ok(*pd),
        _ => Err(Status::WrongKind),
    }
}

fn lookup_vm(k: &Kernel, space: SpaceId, sel: u64) -> Result<VmId, Status> {
    match k
        .caps
        .lookup(space, sel, Rights::CONTROL)
        .map_err(Status::from)?
    {
        Obj::Vm(vm) => Ok(*vm),
        _ => Err(Status::WrongKind),
    }
}

fn check_free(k: &Kernel, space: SpaceId, sel: u64) -> Result<(), Status> {
    match k.caps.get(space, sel) {
        Err(cap::CapError::Empty) => Ok(()),
        Ok(_) => Err(Status::SelectorInUse),
        Err(e) => Err(e.into()),
    }
}

fn charge(k: &mut Kernel, pd: PdId, bytes: u64) -> Result<(), Status> {
    if !crate::mem::heap::has_room(bytes) {
        return Err(Status::OutOfMemory);
    }
    k.pds
        .get_mut(pd)
        .ok_or(Status::BadSelector)?
        .quota
        .charge(bytes)
        .map_err(Status::from)
}

fn release(k: &mut Kernel, pd: PdId, bytes: u64) {
    if let Some(d) = k.pds.get_mut(pd) {
        d.quota.release(bytes);
    }
}

/// `create_vm(dest, pd, mode)`.
pub fn create_vm(k: &mut Kernel, space: SpaceId, a: [u64; 6]) -> Result<u64, Status> {
    let [dest, pd_sel, mode, ..] = a;
    check_free(k, space, dest)?;
    let payer = lookup_pd(k, space, pd_sel)?;
    let backend = hw::backend().ok_or(Status::BadArgument)?;
    let shadowed = match mode {
        m if m == vmabi::MemoryMode::Nested as u64 => false,
        m if m == vmabi::MemoryMode::Shadow as u64 => true,
        _ => return Err(Status::BadArgument),
    };
    let charged = cost::VM + if shadowed { shadow_cost() } else { 0 };
    charge(k, payer, charged)?;
    let shadow = if shadowed {
        match Shadow::new() {
            Some(s) => Some(Box::new(s)),
            None => {
                release(k, payer, charged);
                return Err(Status::OutOfMemory);
            }
        }
    } else {
        None
    };
    let format = match backend {
        Backend::Svm => Format::Npt,
        Backend::Vmx => Format::Ept,
    };
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
            release(k, payer, charged);
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
        .insert_original(space, dest, Obj::Vm(vm), Rights::ALL)
    {
        destroy_vm(k, vm);
        return Err(e.into());
    }
    Ok(0)
}

/// The quota a shadow-mode Vm's table pool takes.
fn shadow_cost() -> u64 {
    cost::PAGE_TABLE * shadow::POOL_FRAMES as u64
}

/// A vCPU of `vm` ended: the kernel prints the Vm's exit profile (by reason, hottest sites,
/// shadow-paging counts) as `profile:` lines, which the build tool reads.
pub fn report_profile(k: &mut Kernel, vm: VmId) {
    let Some(v) = k.vms.get_mut(vm) else { return };
    let batch = v.profile.take_batch();
    let mut text = alloc::string::String::new();
    if batch.write_text(&mut text).is_ok() {
        for line in text.lines() {
            crate::println!("{line}");
        }
    }
    if let Some(s) = v.shadow.as_deref() {
        let st = s.stats;
        crate::println!(
            "profile: vm={} shadow fills={} guest-faults={} cr3-loads={} invlpgs={} flushes={}",
            vm.raw(),
            st.fills,
            st.guest_faults,
            st.cr3_loads,
            st.invlpgs,
            st.flushes
        );
    }
}

/// Ends a Vm: its vCPUs, its nested tables; its quota goes back.
pub fn destroy_vm(k: &mut Kernel, vm: VmId) {
    let Some(v) = k.vms.get(vm) else { return };
    for t in v.vcpus.clone() {
        k.kill(t);
    }
    let before = k.vm_mappings.len();
    k.vm_mappings.retain(|m| m.vm != vm);
    let records = (before - k.vm_mappings.len()) as u64;
    super::memory::shrink(&mut k.vm_mappings);
    if let Some(v) = k.vms.remove(vm) {
        release(k, v.owner, cost::MAP_RECORD * records);
        for frame in &v.table_frames {
            frames::free(*frame, 1);
        }
        let shadow = if v.shadow.is_some() { shadow_cost() } else { 0 };
        release(
            k,
            v.owner,
            cost::VM + shadow + cost::PAGE_TABLE * v.table_frames.len() as u64,
        );
    }
}

/// `create_vcpu(dest, vm, pd, priority, exit_base)`.
pub fn create_vcpu(
    k: &mut Kernel,
    my_pd: PdId,
    space: SpaceId,
    a: [u64; 6],
) -> Result<u64, Status> {
    let [dest, vm_sel, pd_sel, priority, exit_base, _] = a;
    check_free(k, space, dest)?;
    let vm = lookup_vm(k, space, vm_sel)?;
    let payer = lookup_pd(k, space, pd_sel)?;
    if priority > abi::syscall::MAX_PRIORITY || exit_base >= abi::CAP_SPACE_SLOTS {
        return Err(Status::BadArgument);
    }
    let (backend, root, count) = {
        let v = k.vms.get(vm).ok_or(Status::BadSelector)?;
        let root = (v.shadow.is_none()).then(|| v.nested.root());
        (v.backend, root, v.vcpus.len())
    };
    let (tag, _) = refresh_tag(None);
    if count >= 1 {
        return Err(Status::BadArgument); // one vCPU per Vm: SMP guests are not supported yet
    }
    charge(k, payer, cost::VCPU)?;
    let fail = |k: &mut Kernel, status| {
        release(k, payer, cost::VCPU);
        Err(status)
    };
    let Some(message_frame) = frames::alloc(1) else {
        return fail(k, Status::OutOfMemory);
    };
    direct::zero_frame(message_frame);
    let Some(hw) = HwVcpu::new(backend, root, tag.tag) else {
        frames::free(message_frame, 1);
        return fail(k, Status::OutOfMemory);
    };
    let Some(utcb) = direct::FrameWords::new(message_frame) else {
        frames::free(message_frame, 1);
        hw.free();
        return fail(k, Status::OutOfMemory);
    };
    let vcpu = Box::new(Vcpu {
        vm,
        hw,
        ctx: RunContext {
            gprs: hw::Gprs::default(),
            fpu: hw::FpuArea::initial(),
            entry_tsc: 0,
        },
        exit_space: space,
        exit_base,
        masks: [mtd::ALL; EXIT_COUNT as usize],
        message_frame,
        started: false,
        recall: false,
        exits: [0; EXIT_COUNT as usize],
        exit_tsc: 0,
        guest_tsc: 0,
        unprofiled: 0,
        profile_sequence: 0,
        profile_tsc: crate::arch::cpu::rdtsc(),
        hypercalls: false,
        forwarding: false,
        resync: false,
        answering: Exit::Startup,
        tag,
    });
    let t = k.threads.insert(Thread {
        pd: my_pd,
        regs: Box::default(),
        utcb,
        priority: priority as u8,
        state: State::Ready,
        serving: None,
        faulted: false,
        badge: 0,
        charged_to: Some(payer),
        utcb_page: None,
        vcpu: Some(vcpu),
    });
    if let Some(thread) = k.threads.get_mut(t) {
        thread.badge = t.raw();
    }
    if let Some(domain) = k.pds.get_mut(my_pd) {
        domain.threads.push(t);
    }
    if let Some(v) = k.vms.get_mut(vm) {
        v.vcpus.push(t);
    }
    if let Err(e) = k
        .caps
        .insert_original(space, dest, Obj::Vcpu(t), Rights::ALL)
    {
        k.kill(t);
        return Err(e.into());
    }
    k.wake(t);
    Ok(0)
}

/// `vm_map(vm, mem, first_page, pages, gpa, rights)`.
pub fn vm_map(k: &mut Kernel, space: SpaceId, a: [u64; 6]) -> Result<u64, Status> {
    let [vm_sel, mem_sel, first, pages, gpa, rights] = a;
    let rights = Rights::from_bits(rights).ok_or(Status::BadArgument)?;
    let mappable = Rights::READ | Rights::WRITE | Rights::EXEC;
    if !mappable.contains(rights) || !rights.contains(Rights::READ) {
        return Err(Status::BadArgument);
    }
    let vm = lookup_vm(k, space, vm_sel)?;
    let (base, total) = match k
        .caps
        .lookup(space, mem_sel, rights)
        .map_err(Status::from)?
    {
        Obj::Memory { base, pages } => (*base, *pages),
        _ => return Err(Status::WrongKind),
    };
    let last = first.checked_add(pages).ok_or(Status::BadArgument)?;
    if pages == 0 || pages > MAX_MAP_PAGES || last > total {
        return Err(Status::BadArgument);
    }
    let end = pages
        .checked_mul(PAGE)
        .and_then(|len| gpa.checked_add(len))
        .ok_or(Status::BadAddress)?;
    if !gpa.is_multiple_of(PAGE) || end > vmabi::GUEST_PHYS_LIMIT {
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
    charge(k, owner, cost::MAP_RECORD)?;
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
                gpa + i * PAGE,
                base + (first + i) * PAGE,
                access,
            );
            if let Err(e) = mapped {
                // Undo this call's pages: all or nothing.
                for j in 0..i {
                    v.nested.unmap(&mut tables, gpa + j * PAGE);
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
        release(k, owner, cost::MAP_RECORD);
        return Err(e);
    }
    k.vm_mappings.push(VmMapRecord {
        vm,
        gpa,
        pages,
        space,
        sel: mem_sel,
    });
    Ok(0)
}

/// Makes every vCPU of `vm` flush its guest TLB on its next entry (and drops every shadow
/// translation: one may point at memory that is gone).
fn flush_vm(k: &mut Kernel, vm: VmId) {
    let Some(v) = k.vms.get_mut(vm) else {
        return;
    };
    if let Some(s) = v.shadow.as_mut() {
        s.flush();
    }
    let vcpus = v.vcpus.clone();
    for t in vcpus {
        if let Some(vcpu) = k.threads.get_mut(t).and_then(|t| t.vcpu.as_mut()) {
            vcpu.hw.flush_on_entry();
            vcpu.resync = true;
        }
    }
}

/// Before entering vCPU `t` after its Vm's shadow state changed from outside (see
/// `Vcpu::resync`): the #PF intercept follows `Shadow::forward`, and the window and the pages
/// event delivery needs are mapped again.
fn resync(k: &mut Kernel, t: ThreadId) {
    let Kernel { threads, vms, .. } = k;
    let Some(vcpu) = threads.get_mut(t).and_then(|t| t.vcpu.as_mut()) else {
        return;
    };
    vcpu.resync = false;
    let Some(Vm {
        nested,
        shadow: Some(shadow),
        ..
    }) = vms.get_mut(vcpu.vm)
    else {
        return;
    };
    let mut w = [0u64; word::COUNT];
    vcpu.hw.read(
        &vcpu.ctx.gprs,
        mtd::GPRS | mtd::RIP | mtd::SEGMENTS | mtd::TABLES,
        &mut w,
    );
    shadow.idtr = (w[word::IDTR_BASE], w[word::IDTR_LIMIT]);
    if shadow.forward != vcpu.forwarding {
        vcpu.forwarding = shadow.forward;
        vcpu.hw.intercept_page_faults(!shadow.forward);
    }
    shadow.publish(nested);
    shadow.prefill_critical(nested, &w);
    vcpu.hw.flush_on_entry();
}

/// Removes the guest mappings made through the memory capability at (`space`, `sel`).
pub fn unmap_through(k: &mut Kernel, space: SpaceId, sel: u64) {
    let mut gone = Vec::new();
    k.vm_mappings.retain(|m| {
        let through = m.space == space && m.sel == sel;
        if through {
            gone.push(*m);
        }
        !through
    });
    super::memory::shrink(&mut k.vm_mappings);
    for m in gone {
        {
            let Kernel { vms, pds, .. } = &mut *k;
            let Some(v) = vms.get_mut(m.vm) else { continue };
            let Some(domain) = pds.get_mut(v.owner) else {
                continue;
            };
            domain.quota.release(cost::MAP_RECORD);
            let mut tables = QuotaTables {
                quota: &mut domain.quota,
                frames: &mut v.table_frames,
            };
            for page in 0..m.pages {
                v.nested.unmap(&mut tables, m.gpa + page * PAGE);
            }
        }
        flush_vm(k, m.vm);
    }
}

/// `vm_patch(vm, address, len | flags)`: compare-and-swap of guest bytes (see
/// `abi::syscall::Syscall::VmPatch`); the expected and new bytes are in the caller's UTCB.
pub fn vm_patch(k: &mut Kernel, me: ThreadId, space: SpaceId, a: [u64; 6]) -> Result<u64, Status> {
    let (vm, address, linear, len) = guest_range(k, space, a, Rights::PATCH)?;
    let utcb = k.threads.get(me).ok_or(Status::BadSelector)?.utcb;
    let mut expected = [0u8; virt::patch::MAX_PATCH];
    let mut new = [0u8; virt::patch::MAX_PATCH];
    for i in 0..8 {
        expected[8 * i..8 * i + 8].copy_from_slice(&utcb.read(8 + i).to_le_bytes());
        new[8 * i..8 * i + 8].copy_from_slice(&utcb.read(16 + i).to_le_bytes());
    }
    let (from, to) = (a[3], a[4]);
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
        if !linear || !inside || to.wrapping_sub(window.gla) >= window.pages * PAGE {
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
pub fn vm_read(k: &mut Kernel, me: ThreadId, space: SpaceId, a: [u64; 6]) -> Result<u64, Status> {
    let (vm, address, linear, len) = guest_range(k, space, a, Rights::READ)?;
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

/// The Vm, address, linear flag and length of a `VmPatch` / `VmRead` call, the Vm capability
/// checked for `right`.
/// The Vm that capability `sel` of `space` names, if it holds `right`.
fn vm_cap(k: &Kernel, space: SpaceId, sel: u64, right: Rights) -> Result<VmId, Status> {
    match k.caps.lookup(space, sel, right).map_err(Status::from)? {
        Obj::Vm(vm) => Ok(*vm),
        _ => Err(Status::WrongKind),
    }
}

fn guest_range(
    k: &Kernel,
    space: SpaceId,
    a: [u64; 6],
    right: Rights,
) -> Result<(VmId, u64, bool, usize), Status> {
    let [vm_sel, address, len_flags, ..] = a;
    let vm = vm_cap(k, space, vm_sel, right)?;
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
pub fn vm_window(k: &mut Kernel, space: SpaceId, a: [u64; 6]) -> Result<u64, Status> {
    let [vm_sel, gla, gpa, pages, ..] = a;
    let vm = vm_cap(k, space, vm_sel, Rights::PATCH)?;
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
        if pages > vmabi::WINDOW_MAX_PAGES || !gla.is_multiple_of(PAGE) || !gpa.is_multiple_of(PAGE)
        {
            return Err(Status::BadArgument);
        }
        let canonical = |x: u64| ((x << 16) as i64 >> 16) as u64 == x;
        let last = gla
            .checked_add(pages * PAGE - 1)
            .ok_or(Status::BadAddress)?;
        if !canonical(gla) || !canonical(last) || (gla ^ last) >> 63 != 0 {
            return Err(Status::BadAddress);
        }
        for i in 0..pages {
            let page = gpa.checked_add(i * PAGE).ok_or(Status::BadAddress)?;
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
pub fn vm_dmp(k: &mut Kernel, space: SpaceId, a: [u64; 6]) -> Result<u64, Status> {
    let [vm_sel, op, arg, ..] = a;
    let vm = vm_cap(k, space, vm_sel, Rights::PATCH)?;
    // The view covers guest RAM: up to the end of the highest mapping, in 2 MiB steps.
    let top = k
        .vm_mappings
        .iter()
        .filter(|m| m.vm == vm)
        .map(|m| m.gpa + m.pages * PAGE)
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
    let window = window.map(|w| (w.gla, w.pages * PAGE));
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

/// `vcpu_control(vcpu, op, a, b)`.
pub fn vcpu_control(k: &mut Kernel, space: SpaceId, a: [u64; 6]) -> Result<u64, Status> {
    let [vcpu_sel, op, x, y, ..] = a;
    let t = match k
        .caps
        .lookup(space, vcpu_sel, Rights::CONTROL)
        .map_err(Status::from)?
    {
        Obj::Vcpu(t) => *t,
        _ => return Err(Status::WrongKind),
    };
    let vcpu = k
        .threads
        .get_mut(t)
        .and_then(|t| t.vcpu.as_mut())
        .ok_or(Status::BadSelector)?;
    match op {
        o if o == vmabi::VcpuOp::SetMask as u64 => {
            if x >= EXIT_COUNT || y & !mtd::ALL != 0 {
                return Err(Status::BadArgument);
            }
            vcpu.masks[x as usize] = y;
        }
        o if o == vmabi::VcpuOp::Recall as u64 => vcpu.recall = true,
        o if o == vmabi::VcpuOp::Hypercalls as u64 => {
            let shadowed = k.vms.get(vcpu.vm).is_some_and(|v| v.shadow.is_some());
            if x > 1 || (x == 1 && !shadowed) {
                return Err(Status::BadArgument);
            }
            vcpu.hypercalls = x == 1;
        }
        _ => return Err(Status::BadArgument),
    }
    Ok(0)
}

/// Before the scheduler enters vCPU `t`: a vCPU that has not started, or was recalled, calls
/// its VMM first. Returns whether the guest may be entered now.
pub fn ready_to_enter(k: &mut Kernel, t: ThreadId) -> bool {
    let Some(vcpu) = k.threads.get_mut(t).and_then(|t| t.vcpu.as_mut()) else {
        return false;
    };
    let synthetic = if !vcpu.started {
        vcpu.started = true;
        Some(Exit::Startup)
    } else if vcpu.recall {
        vcpu.recall = false;
        Some(Exit::Recall)
    } else {
        None
    };
    let enter = match synthetic {
        Some(reason) => {
            vcpu.exit_tsc = crate::arch::cpu::rdtsc();
            deliver_exit(k, t, reason, 0, 0, 0);
            false
        }
        // Every PROFILE_PERIOD exits (or PROFILE_TSC_PERIOD ticks with an exit), whether or not
        // anyone takes the message.
        None if vcpu.unprofiled >= vmabi::PROFILE_PERIOD
            || (vcpu.unprofiled > 0
                && vcpu.exit_tsc.wrapping_sub(vcpu.profile_tsc) >= vmabi::PROFILE_TSC_PERIOD) =>
        {
            vcpu.unprofiled = 0;
            vcpu.profile_tsc = vcpu.exit_tsc;
            !deliver_profile(k, t)
        }
        None if vcpu.resync => {
            resync(k, t);
            true
        }
        None => true,
    };
    if !enter {
        return false;
    }
    if let Some(vcpu) = k.threads.get_mut(t).and_then(|t| t.vcpu.as_mut()) {
        let (tag, fresh) = refresh_tag(Some(vcpu.tag));
        if fresh {
            vcpu.tag = tag;
            vcpu.hw.retag(tag.tag);
        }
    }
    match confinement(k, t) {
        Ok(()) => true,
        Err(breach) => {
            // Never entered: the VMM learns why, as from a failed entry.
            log::warn!("vm: vCPU {t:?} not entered: its state would not confine it ({breach:?})");
            if let Some(vcpu) = k.threads.get_mut(t).and_then(|t| t.vcpu.as_mut()) {
                vcpu.exit_tsc = crate::arch::cpu::rdtsc();
            }
            deliver_exit(
                k,
                t,
                Exit::EntryFailure,
                vmabi::entry_error::UNCONFINED,
                breach as u64,
                0,
            );
            false
        }
    }
}

/// Sends the Vm's exit profile to the portal at `exit_base + Profile`, if there is one; true if
/// the vCPU now waits for its reply.
fn deliver_profile(k: &mut Kernel, t: ThreadId) -> bool {
    let Some(vcpu) = k.threads.get_mut(t).and_then(|t| t.vcpu.as_mut()) else {
        return false;
    };
    let (space, sel) = (vcpu.exit_space, vcpu.exit_base + Exit::Profile as u64);
    let portal = match k.caps.lookup(space, sel, Rights::CALL) {
        Ok(Obj::Portal(p)) => *p,
        _ => return false,
    };
    // Offered, never queued: the profile portal may be another domain's (the DMP service),
    // which may be busy with another guest and then waits on a different portal; a queued
    // vCPU would wait for it forever. Profiles are cumulative, so a skipped one costs nothing.
    if !ipc::receiving(k, portal) {
        return false;
    }
    let Some(vcpu) = k.threads.get_mut(t).and_then(|t| t.vcpu.as_mut()) else {
        return false;
    };
    vcpu.profile_sequence += 1;
    let sequence = vcpu.profile_sequence;
    let Some(v) = k.vms.get(vcpu.vm) else {
        return false;
    };
    let mut batch = ProfileBatch::new(v.profile.vm_tag(), sequence);
    batch.exits_total = v.profile.total();
    batch.by_reason = *v.profile.by_reason_all();
    for site in v.profile.top(vmabi::PROFILE_SITES) {
        let _ = batch.sites.push(site);
    }
    let mut bytes = [0u8; abi::profile::MAX_ENCODED_LEN];
    let mut words = [0u64; MSG_WORDS];
    words[word::MASK] = 0;
    words[word::REASON] = Exit::Profile as u64;
    let Ok(used) = batch
        .encode(&mut bytes)
        .and_then(|e| pack_words(e, &mut words[vmabi::PROFILE_WORDS..]))
    else {
        return false;
    };
    let Some(msg) = k.threads.get(t).map(|x| x.utcb) else {
        return false;
    };
    let count = vmabi::PROFILE_WORDS + used;
    msg.write(0, MsgTag::new(vmabi::EXIT_LABEL, count, false).0);
    for (i, w) in words[..count].iter().enumerate() {
        msg.write(8 + i, *w);
    }
    if let Some(vcpu) = k.threads.get_mut(t).and_then(|t| t.vcpu.as_mut()) {
        vcpu.answering = Exit::Profile;
    }
    match ipc::send_exit(k, t, portal) {
        Ok(()) => true,
        Err(status) => {
            log::warn!("vm: exit profile of vCPU {t:?} not delivered ({status})");
            false
        }
    }
}

/// Enters the guest of vCPU `t`, which the scheduler chose; never returns.
///
/// # Safety
///
/// `t` is the current thread and a live vCPU; the kernel lock is released, and nothing frees
/// the vCPU before its exit is handled (only the kernel, on a later entry, can).
pub unsafe fn enter(vcpu: *mut Vcpu) -> ! {
    // SAFETY: as the caller guarantees: the box lives until the vCPU's thread is removed, which
    // happens only in the kernel, which does not run until the guest exits.
    let vcpu = unsafe { &mut *vcpu };
    // SAFETY: as above.
    unsafe { hw::enter(&mut vcpu.hw, &mut vcpu.ctx) }
}

/// Handles the exit of the current thread, a vCPU.
pub fn handle_exit(k: &mut Kernel) {
    let exit_tsc = crate::arch::cpu::rdtsc();
    let t = k.current();
    let Some(vcpu) = k.threads.get_mut(t).and_then(|t| t.vcpu.as_mut()) else {
        return;
    };
    vcpu.guest_tsc += exit_tsc.wrapping_sub(vcpu.ctx.entry_tsc);
    vcpu.exit_tsc = exit_tsc;
    hw::save_fpu(&mut vcpu.ctx.fpu);
    vcpu.hw.after_exit();
    let e = vcpu.hw.exit(&vcpu.ctx.gprs);
    // An event the exit interrupted is delivered again on the next entry unless the VMM
    // injects something else.
    vcpu.hw.redeliver();
    match shadow_exit(k, t, &e) {
        ShadowExit::Handled => return,
        ShadowExit::Deliver(reason, qual0, qual1) => {
            deliver_exit(k, t, reason, qual0, qual1, e.instruction_len);
            return;
        }
        ShadowExit::NotShadow => {}
    }
    let Some(vcpu) = k.threads.get_mut(t).and_then(|t| t.vcpu.as_mut()) else {
        return;
    };
    let (reason, qual0, qual1) = match e.exit {
        HwReason::ExternalInterrupt => {
            hw::take_pending_interrupt();
            return;
        }
        HwReason::Nmi | HwReason::PreemptionTimer => return,
        HwReason::Exception { vector } if vector == 1 || vector == 17 => {
            // Reflected straight back (see the backends: these are intercepted only so that a
            // guest cannot hang the CPU in a chain of them).
            let error_flag = if vector == 17 { inject::HAS_ERROR } else { 0 };
            vcpu.hw.inject(
                u64::from(vector) | inject::KIND_EXCEPTION | error_flag | inject::VALID,
                0,
            );
            return;
        }
        HwReason::InterruptWindow => {
            vcpu.hw.request_window(false);
            (Exit::InterruptWindow, 0, 0)
        }
        HwReason::Cpuid => (Exit::Cpuid, 0, 0),
        HwReason::Io(io) => (
            Exit::Io,
            vmabi::IoQual::new(io.port, io.size, io.input, io.string, io.rep).0,
            0,
        ),
        HwReason::Rdmsr => (Exit::Rdmsr, 0, 0),
        HwReason::Wrmsr => (Exit::Wrmsr, 0, 0),
        HwReason::Hlt => (Exit::Hlt, 0, 0),
        HwReason::Hypercall => (Exit::Hypercall, 0, 0),
        HwReason::NestedPageFault(f) => {
            let mut access = if f.write {
                vmabi::access::WRITE
            } else if f.execute {
                vmabi::access::EXEC
            } else {
                vmabi::access::READ
            };
            if f.present {
                access |= vmabi::access::PRESENT;
            }
            (Exit::MemoryFault, f.gpa, access)
        }
        HwReason::TripleFault => (Exit::Shutdown, 0, 0),
        HwReason::Exception { .. } => (Exit::Exception, e.exception, e.info2),
        HwReason::EntryFailure { reason } => {
            let mut w = [0u64; word::COUNT];
            vcpu.hw.read(&vcpu.ctx.gprs, mtd::ALL, &mut w);
            log::warn!(
                "vm: entry failed (reason {reason:#x}, raw {:#x}): rip {:#x} rflags {:#x} cr0 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} cs {:#x} ss {:#x} tr {:#x}",
                e.raw, w[word::RIP], w[word::RFLAGS], w[word::CR0], w[word::CR3], w[word::CR4],
                w[word::EFER], w[word::SEGMENTS], w[word::SEGMENTS + 2], w[word::SEGMENTS + 12]
            );
            (
                Exit::EntryFailure,
                vmabi::entry_error::INVALID_GUEST_STATE,
                u64::from(reason),
            )
        }
        HwReason::NestedMisconfiguration { gpa } => {
            crate::println!(
                "kernel: nested-table misconfiguration at {gpa:#x} (exit info {:#x}); vCPU stopped",
                e.info1
            );
            (Exit::EntryFailure, vmabi::entry_error::HARDWARE, e.raw)
        }
        _ => (Exit::Other, vcpu.hw.other_kind(e.raw), e.raw),
    };
    deliver_exit(k, t, reason, qual0, qual1, e.instruction_len);
}

/// What the vTLB made of an exit.
enum ShadowExit {
    /// Not a shadow Vm, or not an exit the vTLB takes.
    NotShadow,
    /// Done here: the guest runs on.
    Handled,
    /// An exit for the VMM after all.
    Deliver(Exit, u64, u64),
}

/// #PF, control-register and INVLPG exits of a shadow-mode vCPU: the kernel's vTLB answers
/// them without the VMM.
fn shadow_exit(k: &mut Kernel, t: ThreadId, e: &hw::HwExit) -> ShadowExit {
    // Only these exits can be the vTLB's: every other one leaves at once (this runs on the path
    // of every exit).
    if !matches!(
        e.exit,
        HwReason::Hypercall
            | HwReason::Exception { vector: 14 }
            | HwReason::Cr(_)
            | HwReason::Invlpg
    ) {
        return ShadowExit::NotShadow;
    }
    let Kernel { threads, vms, .. } = k;
    let Some(vcpu) = threads.get_mut(t).and_then(|t| t.vcpu.as_mut()) else {
        return ShadowExit::NotShadow;
    };
    let Some(vm) = vms.get_mut(vcpu.vm) else {
        return ShadowExit::NotShadow;
    };
    let reason = match e.exit {
        HwReason::Hypercall if vcpu.hypercalls => Exit::Hypercall,
        HwReason::Exception { vector: 14 } => Exit::PageFault,
        HwReason::Cr(_) => Exit::ControlRegister,
        HwReason::Invlpg => Exit::Invlpg,
        _ => return ShadowExit::NotShadow,
    };
    let Some(forward) = vm.shadow.as_ref().map(|s| s.forward) else {
        return ShadowExit::NotShadow;
    };
    // The descriptor tables only where they are used (this is the exit path): a CR3 load
    // publishes the IDTR, and while faults are forwarded a flush maps what delivery needs.
    let tables = forward || matches!(e.exit, HwReason::Cr(_));
    let mut groups = mtd::GPRS | mtd::RIP | mtd::SEGMENTS;
    if tables {
        groups |= mtd::TABLES;
    }
    let mut w = [0u64; word::COUNT];
    vcpu.hw.read(&vcpu.ctx.gprs, groups, &mut w);
    if reason == Exit::Hypercall && w[word::GPRS] >= vmabi::hypercall::VMM_FIRST {
        // The VMM's hypercalls (DMP device stubs) go to it as ordinary exits.
        return ShadowExit::NotShadow;
    }
    let rflags = w[word::RFLAGS];
    let cpl3 = (vmabi::segment::attributes(w[word::SEGMENTS + 2]) >> 5) & 3 == 3;
    vm.profile.record(reason, w[word::RIP]);
    vcpu.exits[reason as usize] += 1;
    vcpu.unprofiled += 1;
    let Vm { nested, shadow, .. } = vm;
    let Some(shadow) = shadow.as_mut() else {
        return ShadowExit::NotShadow;
    };
    if tables {
        shadow.idtr = (w[word::IDTR_BASE], w[word::IDTR_LIMIT]);
    }
    match e.exit {
        HwReason::Exception { vector: 14 } => {
            let error = (e.exception >> 32) as u32;
            let la = e.address.unwrap_or(0);
            match shadow.page_fault(nested, la, error, cpl3, rflags) {
                FaultOutcome::Resume { flush, page } => {
                    if flush {
                        shadow.prefill_critical(nested, &w);
                        vcpu.hw.flush_on_entry();
                    } else if let Some(la) = page {
                        vcpu.hw.invalidate_page(la);
                    }
                }
                FaultOutcome::InjectPageFault { address, error } => {
                    vcpu.hw.set_cr2(address);
                    vcpu.hw.inject(
                        14 | inject::KIND_EXCEPTION | inject::HAS_ERROR | inject::VALID,
                        u64::from(error),
                    );
                }
                FaultOutcome::InjectGeneralProtection => inject_gp(&mut vcpu.hw),
                FaultOutcome::MemoryFault { gpa, write } => return memory_fault(gpa, write),
            }
            ShadowExit::Handled
        }
        HwReason::Cr(access) => {
            let (cr, gpr, write, len) = match access {
                CrAccess::Write { cr, gpr: Some(g) } => (cr, g, true, e.instruction_len),
                CrAccess::Read { cr, gpr: Some(g) } => (cr, g, false, e.instruction_len),
                CrAccess::Other { cr: 0 } if e.instruction_len == 2 => {
                    // CLTS (VMX reports it apart; LMSW is longer): clears CR0.TS.
                    let value = shadow.cr0 & !(1 << 3);
                    return cr_write(vcpu, shadow, nested, 0, value, e.instruction_len, &w);
                }
                _ => match decode_at_rip(shadow, nested, &w).map(|d| (d.kind, u64::from(d.len))) {
                    Some((decode::Kind::MovToCr { cr, gpr }, len)) => (cr, gpr, true, len),
                    Some((decode::Kind::MovFromCr { cr, gpr }, len)) => (cr, gpr, false, len),
                    Some((decode::Kind::Clts, len)) => {
                        let value = shadow.cr0 & !(1 << 3);
                        return cr_write(vcpu, shadow, nested, 0, value, len, &w);
                    }
                    _ => return ShadowExit::Deliver(Exit::Other, vmabi::other::UNKNOWN, e.raw),
                },
            };
            let gpr = usize::from(gpr & 15);
            if write {
                let value = w[word::GPRS + gpr];
                cr_write(vcpu, shadow, nested, cr, value, len, &w)
            } else {
                let Some(value) = shadow.read_cr(cr) else {
                    return ShadowExit::Deliver(Exit::Other, vmabi::other::UNKNOWN, e.raw);
                };
                w[word::GPRS + gpr] = value;
                w[word::RIP] = w[word::RIP].wrapping_add(len);
                vcpu.hw.write(&mut vcpu.ctx.gprs, mtd::GPRS | mtd::RIP, &w);
                ShadowExit::Handled
            }
        }
        HwReason::Hypercall if vcpu.hypercalls && w[word::GPRS] == vmabi::hypercall::FAULT => {
            forwarded_fault(vcpu, shadow, nested, &mut w, e.instruction_len)
        }
        HwReason::Hypercall if vcpu.hypercalls => {
            let g = word::GPRS;
            let regs = [w[g], w[g + 3], w[g + 1], w[g + 2]]; // RAX RBX RCX RDX
            let r = shadow.hypercall(nested, regs);
            if r.flush {
                vcpu.hw.flush_on_entry();
            }
            w[g] = r.status;
            w[g + 3] = r.applied;
            w[word::RIP] = w[word::RIP].wrapping_add(e.instruction_len);
            vcpu.hw.write(&mut vcpu.ctx.gprs, mtd::GPRS | mtd::RIP, &w);
            ShadowExit::Handled
        }
        HwReason::Invlpg => {
            let (la, len) = if let (Some(la), 1..) = (e.address, e.instruction_len) {
                (la, e.instruction_len)
            } else {
                match decode_invlpg(shadow, nested, &w) {
                    Some(x) => x,
                    None => return ShadowExit::Deliver(Exit::Other, vmabi::other::UNKNOWN, e.raw),
                }
            };
            if shadow.invlpg(la) {
                vcpu.hw.flush_on_entry();
            } else {
                vcpu.hw.invalidate_page(la);
            }
            w[word::RIP] = w[word::RIP].wrapping_add(len);
            vcpu.hw.write(&mut vcpu.ctx.gprs, mtd::RIP, &w);
            ShadowExit::Handled
        }
        _ => ShadowExit::NotShadow,
    }
}

/// Hypercall `FAULT` from the guest's patched #PF gate (RBX = CR2, RCX = the hardware error
/// code): resolved here like an intercepted #PF. RAX = `OK` for a hidden fault now filled, or
/// `GUEST_FAULT` with RCX = the error code of the guest's own fault. The arguments are the
/// guest's word only: a lie costs the guest at most a wrong answer about its own tables.
fn forwarded_fault(
    vcpu: &mut Vcpu,
    shadow: &mut Shadow,
    nested: &NestedTables,
    w: &mut [u64; word::COUNT],
    len: u64,
) -> ShadowExit {
    let g = word::GPRS;
    let (la, error) = (w[g + 3], w[g + 1] as u32);
    let user = error & (1 << 2) != 0;
    shadow.stats.hypercalls += 1;
    match shadow.page_fault(nested, la, error, user, w[word::RFLAGS]) {
        FaultOutcome::Resume { flush, page } => {
            if flush {
                shadow.prefill_critical(nested, w);
                vcpu.hw.flush_on_entry();
            } else if let Some(la) = page {
                vcpu.hw.invalidate_page(la);
            }
            w[g] = vmabi::hypercall::OK;
        }
        FaultOutcome::InjectPageFault { error, .. } => {
            w[g] = vmabi::hypercall::GUEST_FAULT;
            w[g + 1] = u64::from(error);
        }
        FaultOutcome::InjectGeneralProtection => {
            w[g] = vmabi::hypercall::GUEST_FAULT;
        }
        // Not RAM (MMIO or beyond): the VMM's business. The exit reports the stub's RIP.
        FaultOutcome::MemoryFault { gpa, write } => return memory_fault(gpa, write),
    }
    w[word::RIP] = w[word::RIP].wrapping_add(len);
    vcpu.hw.write(&mut vcpu.ctx.gprs, mtd::GPRS | mtd::RIP, w);
    ShadowExit::Handled
}

/// The VMM's memory-fault exit for guest-physical `gpa`.
fn memory_fault(gpa: u64, write: bool) -> ShadowExit {
    let access = if write {
        vmabi::access::WRITE
    } else {
        vmabi::access::READ
    };
    ShadowExit::Deliver(Exit::MemoryFault, gpa, access)
}

/// MOV to CR`cr` of `value` by the guest (message words `w` hold its registers).
fn cr_write(
    vcpu: &mut Vcpu,
    shadow: &mut Shadow,
    nested: &NestedTables,
    cr: u8,
    value: u64,
    len: u64,
    w: &[u64; word::COUNT],
) -> ShadowExit {
    match shadow.write_cr(cr, value) {
        Ok((c, flush)) => {
            if cr == 3 {
                shadow.publish(nested);
                shadow.prefill_critical(nested, w);
            }
            vcpu.hw
                .shadow_control(c.cr0, c.cr3, c.cr4, shadow.cr0, shadow.cr4);
            if flush {
                vcpu.hw.flush_on_entry();
            }
            let mut next = *w;
            next[word::RIP] = w[word::RIP].wrapping_add(len);
            vcpu.hw.write(&mut vcpu.ctx.gprs, mtd::RIP, &next);
            ShadowExit::Handled
        }
        Err(CrError::GeneralProtection) => {
            inject_gp(&mut vcpu.hw);
            ShadowExit::Handled
        }
        Err(CrError::Unsupported) => {
            log::warn!("vm: shadow paging: guest left long-mode paging (CR{cr} = {value:#x}); vCPU stopped");
            ShadowExit::Deliver(Exit::Other, vmabi::other::UNSHADOWED_MODE, u64::from(cr))
        }
    }
}

fn inject_gp(hw: &mut HwVcpu) {
    hw.inject(
        13 | inject::KIND_EXCEPTION | inject::HAS_ERROR | inject::VALID,
        0,
    );
}

/// The instruction at the guest's RIP (SVM without decode assists reports neither operands nor
/// length): fetched through the guest's tables, decoded by `virt::decode`.
fn decode_at_rip(
    shadow: &Shadow,
    nested: &NestedTables,
    w: &[u64; word::COUNT],
) -> Option<decode::Decoded> {
    let cs = vmabi::segment::attributes(w[word::SEGMENTS]);
    let mode = decode::Mode::from_cs(
        shadow.efer & (1 << 10) != 0,
        cs & vmabi::segment::LONG != 0,
        cs & vmabi::segment::DB != 0,
    )?;
    let rflags = w[word::RFLAGS];
    let fetched = decode::fetch(mode, w[word::RIP], |la, buf| {
        shadow.read_virtual(nested, la, rflags, buf) == buf.len()
    });
    decode::decode(fetched.bytes(), mode).ok()
}

/// SVM without decode assists: the INVLPG operand's linear address and the length.
fn decode_invlpg(
    shadow: &Shadow,
    nested: &NestedTables,
    w: &[u64; word::COUNT],
) -> Option<(u64, u64)> {
    let d = decode_at_rip(shadow, nested, w)?;
    let decode::Kind::Invlpg(mem) = d.kind else {
        return None;
    };
    let len = u64::from(d.len);
    let mut gprs = [0u64; 16];
    gprs.copy_from_slice(&w[word::GPRS..word::GPRS + 16]);
    // Message order of segments: CS SS DS ES FS GS (abi::vm::SEGMENT_ORDER).
    let base = |s: decode::Segment| {
        let i = match s {
            decode::Segment::Cs => 0,
            decode::Segment::Ss => 1,
            decode::Segment::Ds => 2,
            decode::Segment::Es => 3,
            decode::Segment::Fs => 4,
            decode::Segment::Gs => 5,
        };
        w[word::SEGMENTS + 2 * i + 1]
    };
    let next_rip = w[word::RIP].wrapping_add(len);
    Some((mem.linear(&gprs, next_rip, base), len))
}

/// Sends exit `reason` of vCPU `t` to its exit portal; ends the vCPU if there is none.
pub fn deliver_exit(k: &mut Kernel, t: ThreadId, reason: Exit, qual0: u64, qual1: u64, len: u64) {
    let Some(vcpu) = k.threads.get_mut(t).and_then(|t| t.vcpu.as_mut()) else {
        return;
    };
    vcpu.exits[reason as usize] += 1;
    vcpu.unprofiled += 1;
    let mask = if reason == Exit::Startup {
        mtd::ALL
    } else {
        vcpu.masks[reason as usize]
    };
    let mut words = [0u64; word::COUNT];
    words[word::MASK] = mask;
    words[word::REASON] = reason as u64;
    words[word::QUAL0] = qual0;
    words[word::QUAL1] = qual1;
    words[word::INSTRUCTION_LEN] = len;
    words[word::EXIT_TSC] = vcpu.exit_tsc;
    words[word::GUEST_TSC] = vcpu.guest_tsc;
    // The profile needs the RIP; the message carries it unless the mask leaves it out.
    vcpu.hw.read(&vcpu.ctx.gprs, mask | mtd::RIP, &mut words);
    let vm = vcpu.vm;
    if let Some(v) = k.vms.get_mut(vm) {
        v.profile.record(reason, words[word::RIP]);
    }
    if mask & mtd::RIP == 0 {
        words[word::RIP] = 0;
        words[word::RFLAGS] = 0;
    }
    if mask & mtd::CONTROL != 0 {
        if let Some(s) = k.vms.get(vm).and_then(|v| v.shadow.as_deref()) {
            guest_view(s, &mut words);
        }
    }
    let Some(vcpu) = k.threads.get(t).and_then(|t| t.vcpu.as_ref()) else {
        return;
    };
    let (space, sel) = (vcpu.exit_space, vcpu.exit_base + reason as u64);
    let Some(msg) = k.threads.get(t).map(|x| x.utcb) else {
        return;
    };
    msg.write(0, MsgTag::new(vmabi::EXIT_LABEL, word::COUNT, false).0);
    for (i, w) in words.iter().enumerate() {
        msg.write(8 + i, *w);
    }
    let portal = match k.caps.lookup(space, sel, Rights::CALL) {
        Ok(Obj::Portal(p)) => Some(*p),
        _ => None,
    };
    let Some(portal) = portal else {
        crate::println!(
            "kernel: vCPU {t:?} has no exit portal for {}; vCPU stopped",
            reason.name()
        );
        k.kill(t);
        return;
    };
    // An exit carries the guest's state and its reply changes it: only the VMM that made
    // the vCPU (its domain's threads) may serve it, never a portal it merely may call.
    let own = k.threads.get(t).map(|x| x.pd);
    let handler = k.portals.get(portal).map(|p| p.handler);
    if handler.and_then(|h| k.threads.get(h)).map(|h| h.pd) != own {
        crate::println!(
            "kernel: vCPU {t:?}: the exit portal for {} belongs to another domain; vCPU stopped",
            reason.name()
        );
        k.kill(t);
        return;
    }
    if let Some(vcpu) = k.threads.get_mut(t).and_then(|t| t.vcpu.as_mut()) {
        vcpu.answering = reason;
    }
    if let Err(status) = ipc::send_exit(k, t, portal) {
        crate::println!("kernel: exit of vCPU {t:?} not delivered ({status}); vCPU stopped");
        k.kill(t);
    }
}

/// The VMM answered an exit of vCPU `vcpu_t`: checks its reply (in `handler`'s UTCB) and writes
/// it into the vCPU. `Ok(false)`: the reply asked to stop the vCPU.
///
/// Only the reply's own words are read (its tag's count); a reply shorter than the groups its
/// mask names is refused. Everything is checked before anything is written: a refused reply
/// leaves the vCPU and its shadow state as they were.
pub fn finish_exit(k: &mut Kernel, handler: ThreadId, vcpu_t: ThreadId) -> Result<bool, Status> {
    let Some(reply) = k.threads.get(handler).map(|h| h.utcb) else {
        return Err(Status::NoPartner);
    };
    let answering = k
        .threads
        .get(vcpu_t)
        .and_then(|t| t.vcpu.as_ref())
        .ok_or(Status::NoPartner)?
        .answering;
    if answering == Exit::Profile {
        // A profile message carries no vCPU state, so its reply changes nothing (it may come
        // from another domain: the DMP service).
        return Ok(true);
    }
    let count = MsgTag(reply.read(0))
        .words()
        .ok_or(Status::BadArgument)?
        .min(word::COUNT);
    let mut w = [0u64; word::COUNT];
    for (i, slot) in w.iter_mut().enumerate().take(count) {
        *slot = reply.read(8 + i);
    }
    let mask = w[word::MASK];
    if mask & mtd::STOP != 0 {
        return Ok(false);
    }
    if count < vmabi::reply_len(mask) {
        log::warn!("vm: reply refused: {count} words for mask {mask:#x}");
        return Err(Status::BadArgument);
    }
    let Kernel { threads, vms, .. } = k;
    let vcpu = threads
        .get_mut(vcpu_t)
        .and_then(|t| t.vcpu.as_mut())
        .ok_or(Status::NoPartner)?;
    let (nested, shadow) = match vms.get_mut(vcpu.vm) {
        Some(Vm { nested, shadow, .. }) => (Some(&*nested), shadow.as_deref_mut()),
        None => (None, None),
    };
    validate(vcpu, shadow.as_deref(), mask, &w)?;
    // Shadow mode: the VMM sets the guest's own control registers; the hardware gets the
    // shadow root and the forced bits instead. Checked on the values the hardware would get,
    // committed only once everything passed.
    let control = match (shadow, mask & mtd::CONTROL != 0) {
        (Some(s), true) => {
            let c = s
                .preview(w[word::CR0], w[word::CR4], w[word::EFER])
                .map_err(|e| {
                    log::warn!("vm: reply refused: shadow mode cannot run this state ({e:?})");
                    Status::BadArgument
                })?;
            let mut hardware = w;
            hardware[word::CR0] = c.cr0;
            hardware[word::CR3] = c.cr3;
            hardware[word::CR4] = c.cr4;
            vcpu.hw.check(mask, &hardware).map_err(|e| {
                log::warn!("vm: reply refused: {} (mask {mask:#x})", e.0);
                Status::BadArgument
            })?;
            Some(s)
        }
        _ => None,
    };
    let guest = w;
    vcpu.hw.write(&mut vcpu.ctx.gprs, mask, &w);
    if let Some(s) = control {
        let c = s
            .load(
                guest[word::CR0],
                guest[word::CR3],
                guest[word::CR4],
                guest[word::EFER],
            )
            .map_err(|_| Status::BadArgument)?;
        if let Some(n) = nested {
            s.publish(n);
        }
        vcpu.hw.shadow_control(c.cr0, c.cr3, c.cr4, s.cr0, s.cr4);
        vcpu.hw.flush_on_entry();
    }
    if mask & mtd::INJECT != 0 {
        let event = w[word::INJECT];
        if event & inject::VALID != 0 {
            vcpu.hw.inject(event & 0xffff_ffff, w[word::INJECT_ERROR]);
        } else {
            vcpu.hw.inject(0, 0);
        }
        if event & inject::WINDOW != 0 {
            vcpu.hw.request_window(true);
        }
    }
    Ok(true)
}

/// The last check before vCPU `t` is entered: its hardware state confines the guest to its Vm
/// (`virt::confine`), whatever its VMM replied or failed to reply.
fn confinement(k: &Kernel, t: ThreadId) -> Result<(), Breach> {
    let vcpu = k
        .threads
        .get(t)
        .and_then(|t| t.vcpu.as_ref())
        .ok_or(Breach::NestedOff)?;
    let v = k.vms.get(vcpu.vm).ok_or(Breach::NestedOff)?;
    let expected = match v.shadow.as_deref() {
        Some(s) => Expected::Shadow {
            root: s.hardware_root(),
        },
        None => Expected::Nested {
            root: v.nested.root(),
        },
    };
    confine::check(expected, &vcpu.hw.paging())
}

/// The guest's own CR0, CR3 and CR4 in message words that hold the hardware's.
fn guest_view(s: &Shadow, w: &mut [u64; word::COUNT]) {
    w[word::CR0] = s.cr0;
    w[word::CR3] = s.cr3;
    w[word::CR4] = s.cr4;
}

/// Checks a reply's groups against what the hardware accepts; nothing is written here.
fn validate(
    vcpu: &Vcpu,
    shadow: Option<&Shadow>,
    mask: u64,
    w: &[u64; word::COUNT],
) -> Result<(), Status> {
    let mut current = [0u64; word::COUNT];
    vcpu.hw.read(&vcpu.ctx.gprs, mtd::ALL, &mut current);
    if let Some(s) = shadow {
        guest_view(s, &mut current);
    }
    if let Err(e) = virt::reply::check(w, &current) {
        log::warn!("vm: reply refused: {e:?} (mask {mask:#x})");
        return Err(Status::BadArgument);
    }
    vcpu.hw.check(mask, w).map_err(|e| {
        log::warn!("vm: reply refused: {} (mask {mask:#x})", e.0);
        Status::BadArgument
    })
}
