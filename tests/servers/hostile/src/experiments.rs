//! Experiments on rights and stale capabilities: reduced memory rights, read-only guest pages,
//! reduced Vm rights, the limits of VmMap, and capabilities whose objects are gone.

use core::sync::atomic::{AtomicU64, Ordering};

use abi::vm::{dmp_op, Exit, MemoryMode, GUEST_PHYS_LIMIT};
use abi::{well_known, Rights, Sel, Status};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use rt::{syscall, thread, vm, Error, Start};

use crate::exits;
use crate::mem::{self, page, ALIAS_VA, PAGE};
use crate::vcpu::{self, remove, run_nested, start, status_of, vm_with_page, NESTED_GPA};
use crate::{ensure, ok, refused, sleep, Ctx, Outcome, ECHO, EXIT_BASE, LOG, PRIORITY, SCRATCH};

const VM: Sel = Sel::new(140);
const VM2: Sel = Sel::new(141);
const MEM: Sel = Sel::new(142);
const MEM2: Sel = Sel::new(143);
const RO: Sel = Sel::new(144);
const SPARE: Sel = Sel::new(145);
const VCPU: Sel = Sel::new(146);
const VCPU2: Sel = Sel::new(147);
const CHILD: Sel = Sel::new(148);
const SEM: Sel = Sel::new(149);
const PORTAL: Sel = Sel::new(150);
const HELPER: Sel = Sel::new(151);

fn rw() -> Rights {
    Rights::READ | Rights::WRITE
}

/// (9) A READ-only copy of a memory capability (delegated to this server itself) cannot be
/// mapped writable, into this server (`Map`) or into a Vm (`VmMap`): both `NoRights`; it cannot
/// be passed on or carved (no GRANT); READ mappings through it work.
pub fn map_reduced_rights(ctx: &mut Ctx) -> Outcome {
    let _ = ctx;
    let result = (|| {
        ok("carve", syscall::carve(SCRATCH, MEM, page::REDUCED, 1))?;
        ok(
            "delegate a READ copy to this server",
            syscall::delegate(MEM, well_known::SELF_PD, RO, Rights::READ),
        )?;
        let info = ok("lookup the copy", syscall::lookup(RO))?;
        ensure!(
            info.rights == Rights::READ,
            "the copy has {:?}",
            info.rights
        );
        refused(
            "Map READ|WRITE through the READ copy",
            syscall::map(RO, well_known::SELF_PD, ALIAS_VA, 0, 1, rw()),
            Status::NoRights,
        )?;
        ok(
            "create vm",
            vm::create_vm(VM, well_known::SELF_PD, MemoryMode::Nested),
        )?;
        refused(
            "VmMap READ|WRITE through the READ copy",
            vm::vm_map(VM, RO, 0, 1, NESTED_GPA, rw()),
            Status::NoRights,
        )?;
        refused(
            "VmMap READ|EXEC through the READ copy",
            vm::vm_map(VM, RO, 0, 1, NESTED_GPA, Rights::READ | Rights::EXEC),
            Status::NoRights,
        )?;
        refused(
            "delegate the READ copy (no GRANT)",
            syscall::delegate(RO, well_known::SELF_PD, SPARE, Rights::READ),
            Status::NoRights,
        )?;
        refused(
            "carve the READ copy (no GRANT)",
            syscall::carve(RO, SPARE, 0, 1),
            Status::NoRights,
        )?;
        mem::write(page::REDUCED, 0, &[0x6b]);
        ok(
            "Map READ through the READ copy",
            syscall::map(RO, well_known::SELF_PD, ALIAS_VA, 0, 1, Rights::READ),
        )?;
        let seen = mem::read_at(ALIAS_VA);
        ensure!(seen == 0x6b, "the READ mapping shows {seen:#x}, not 0x6b");
        ok(
            "VmMap READ through the READ copy",
            vm::vm_map(VM, RO, 0, 1, NESTED_GPA, Rights::READ),
        )?;
        Ok("Map and VmMap READ|WRITE refused (no rights), READ|EXEC too; no delegation or carving without GRANT; READ mappings work".into())
    })();
    remove(&[SPARE, RO, MEM, VM]);
    result
}

/// (8) A guest page mapped READ only: `VmPatch` on it is refused with `NoRights` and its bytes
/// stay as they were; `VmWindow` over it in a shadow-mode Vm is refused with `NoRights` (the
/// window's scratch pages could be made guest-writable). A writable page of the same Vm can be
/// patched (the control).
pub fn patch_readonly(ctx: &mut Ctx) -> Outcome {
    let result = (|| {
        mem::fill(page::READONLY, 0x5a);
        mem::fill(page::WRITABLE, 0x3c);
        vm_with_page(
            VM,
            MemoryMode::Nested,
            MEM,
            page::READONLY,
            0x2000,
            Rights::READ,
        )?;
        ok("carve", syscall::carve(SCRATCH, MEM2, page::WRITABLE, 1))?;
        ok("vm map writable", vm::vm_map(VM, MEM2, 0, 1, 0x3000, rw()))?;
        let patch = vm::vm_patch(&mut ctx.utcb, VM, 0x2010, false, &[0x5a; 8], &[0xcc; 8]);
        let (changed, first) = mem::differ(page::READONLY, 0x5a);
        ensure!(
            changed == 0,
            "VmPatch wrote {changed} bytes (first at {:#x}) into a page the Vm maps READ only (it returned {})",
            first.unwrap_or(0),
            status_of(&patch)
        );
        refused("VmPatch of a READ-only guest page", patch, Status::NoRights)?;
        let mut back = [0u8; 8];
        ok(
            "VmRead of the READ-only page",
            vm::vm_read(&mut ctx.utcb, VM, 0x2010, false, &mut back),
        )?;
        ensure!(
            back == [0x5a; 8],
            "VmRead of the READ-only page gave {back:?}"
        );
        ok(
            "VmPatch of the writable page (control)",
            vm::vm_patch(&mut ctx.utcb, VM, 0x3010, false, &[0x3c; 8], &[0xcc; 8]),
        )?;
        ensure!(
            mem::read(page::WRITABLE, 0x10) == 0xcc,
            "the control patch did not reach the writable page"
        );
        ok(
            "create shadow vm",
            vm::create_vm(VM2, well_known::SELF_PD, MemoryMode::Shadow),
        )?;
        ok(
            "map the READ-only page into the shadow vm",
            vm::vm_map(VM2, MEM, 0, 1, 0x2000, Rights::READ),
        )?;
        let window = vm::vm_window(VM2, vmm::layout::DMP_WINDOW_LINEAR, 0x2000, 1);
        if window.is_ok() {
            let _ = vm::vm_window(VM2, 0, 0, 0);
        }
        refused(
            "VmWindow over a READ-only guest page",
            window,
            Status::NoRights,
        )?;
        Ok("VmPatch of the READ-only page refused (no rights), its 4096 bytes unchanged; the writable page patched; VmWindow over the READ-only page refused (no rights)".into())
    })();
    remove(&[VM, VM2, MEM, MEM2]);
    result
}

/// (15) Copies of a Vm capability with fewer rights: READ only can read guest memory but not
/// patch it, map into it, give it a vCPU, a window or DMP controls; READ|PATCH cannot map or make
/// vCPUs (CONTROL). Capabilities of other kinds in the Vm's place are refused.
pub fn vm_cap_reduced_rights(ctx: &mut Ctx) -> Outcome {
    let result = (|| {
        vm_with_page(VM, MemoryMode::Nested, MEM, page::NESTED, NESTED_GPA, rw())?;
        ok(
            "READ copy",
            syscall::delegate(VM, well_known::SELF_PD, VM2, Rights::READ),
        )?;
        ok(
            "READ|PATCH copy",
            syscall::delegate(VM, well_known::SELF_PD, SPARE, Rights::READ | Rights::PATCH),
        )?;
        let mut b = [0u8; 4];
        ok(
            "VmRead through the READ copy",
            vm::vm_read(&mut ctx.utcb, VM2, NESTED_GPA, false, &mut b),
        )?;
        refused(
            "VmPatch through the READ copy",
            vm::vm_patch(&mut ctx.utcb, VM2, NESTED_GPA, false, &b, &[1, 2, 3, 4]),
            Status::NoRights,
        )?;
        for (what, sel) in [("READ", VM2), ("READ|PATCH", SPARE)] {
            refused(
                &format!("VmMap through the {what} copy"),
                vm::vm_map(sel, MEM, 0, 1, 0x8000, rw()),
                Status::NoRights,
            )?;
            refused(
                &format!("CreateVcpu on the {what} copy"),
                vm::create_vcpu(
                    VCPU,
                    sel,
                    well_known::SELF_PD,
                    u64::from(PRIORITY),
                    EXIT_BASE,
                ),
                Status::NoRights,
            )?;
        }
        refused(
            "VmWindow through the READ copy",
            vm::vm_window(VM2, vmm::layout::DMP_WINDOW_LINEAR, NESTED_GPA, 1),
            Status::NoRights,
        )?;
        refused(
            "VmDmp through the READ copy",
            vm::vm_dmp(VM2, dmp_op::REGION_FILLS, 1),
            Status::NoRights,
        )?;
        let mut kinds = Vec::new();
        let wrong = [
            (
                "VmMap on a portal",
                vm::vm_map(ECHO, MEM, 0, 1, 0x8000, rw()),
            ),
            (
                "VmMap of a portal as memory",
                vm::vm_map(VM, ECHO, 0, 1, 0x8000, rw()),
            ),
            (
                "VmRead on memory",
                vm::vm_read(&mut ctx.utcb, SCRATCH, 0, false, &mut b),
            ),
            ("recall on a Vm", vm::vcpu_recall(VM)),
            (
                "CreateVcpu paid by a portal",
                vm::create_vcpu(VCPU, VM, ECHO, 1, EXIT_BASE),
            ),
            (
                "CreateVm paid by a Vm",
                vm::create_vm(VCPU, VM, MemoryMode::Nested),
            ),
            (
                "VmMap on the log portal",
                vm::vm_map(LOG, MEM, 0, 1, 0, rw()),
            ),
        ];
        for (what, r) in wrong {
            let s = crate::any_refusal(what, r)?;
            kinds.push(s);
        }
        Ok(format!(
            "READ copy: read only; READ|PATCH copy: no map, no vCPU (no rights); wrong kinds refused ({})",
            kinds
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })();
    remove(&[VCPU, SPARE, VM2, VM, MEM]);
    result
}

/// Raw `VmRead` (the runtime's wrapper refuses bad lengths before the kernel sees them).
fn raw_vm_read(vm_sel: Sel, address: u64, len: u64) -> Result<u64, Error> {
    let (status, value) = crate::raw::vm_read(vm_sel, address, len);
    Error::from_kernel(status).map(|()| value)
}

/// (16) VmMap at the edges: beyond `GUEST_PHYS_LIMIT`, unaligned, past the capability's end,
/// overflowing page counts, bad rights; nothing of a refused call is mapped. The last page below
/// the limit maps; `VmRead` lengths of 0 and 65 and page-crossing ranges are refused.
pub fn vmmap_limits(ctx: &mut Ctx) -> Outcome {
    let result = (|| {
        ok(
            "create vm",
            vm::create_vm(VM, well_known::SELF_PD, MemoryMode::Nested),
        )?;
        ok("carve", syscall::carve(SCRATCH, MEM, page::NESTED, 1))?;
        let last = GUEST_PHYS_LIMIT - PAGE;
        let cases: [(&str, Result<(), Error>, Status); 11] = [
            (
                "at the limit",
                vm::vm_map(VM, MEM, 0, 1, GUEST_PHYS_LIMIT, rw()),
                Status::BadAddress,
            ),
            (
                "two pages across the limit",
                vm::vm_map(VM, SCRATCH, 0, 2, last, rw()),
                Status::BadAddress,
            ),
            (
                "at the top of the address space",
                vm::vm_map(VM, MEM, 0, 1, !0xfff, rw()),
                Status::BadAddress,
            ),
            (
                "unaligned",
                vm::vm_map(VM, MEM, 0, 1, NESTED_GPA + 1, rw()),
                Status::BadAddress,
            ),
            (
                "past the capability's end",
                vm::vm_map(VM, MEM, 0, 2, NESTED_GPA, rw()),
                Status::BadArgument,
            ),
            (
                "from page 1 of a 1-page capability",
                vm::vm_map(VM, MEM, 1, 1, NESTED_GPA, rw()),
                Status::BadArgument,
            ),
            (
                "first + pages overflowing",
                vm::vm_map(VM, MEM, u64::MAX, 2, NESTED_GPA, rw()),
                Status::BadArgument,
            ),
            (
                "zero pages",
                vm::vm_map(VM, MEM, 0, 0, NESTED_GPA, rw()),
                Status::BadArgument,
            ),
            (
                "pages * 4096 overflowing",
                vm::vm_map(VM, SCRATCH, 0, 1 << 60, 0, rw()),
                Status::BadArgument,
            ),
            (
                "WRITE without READ",
                vm::vm_map(VM, MEM, 0, 1, NESTED_GPA, Rights::WRITE),
                Status::BadArgument,
            ),
            (
                "an undefined rights bit",
                vm::vm_map(VM, MEM, 0, 1, NESTED_GPA, Rights(0x80)),
                Status::BadArgument,
            ),
        ];
        for (what, got, want) in cases {
            refused(&format!("VmMap {what}"), got, want)?;
        }
        refused(
            "VmRead where a refused VmMap pointed",
            raw_vm_read(VM, NESTED_GPA, 8),
            Status::BadAddress,
        )?;
        ok(
            "VmMap of the last page below the limit",
            vm::vm_map(VM, MEM, 0, 1, last, rw()),
        )?;
        ok(
            "VmRead of the last page",
            raw_vm_read(VM, last + PAGE - 8, 8),
        )?;
        refused(
            "VmRead at the limit",
            raw_vm_read(VM, GUEST_PHYS_LIMIT, 8),
            Status::BadAddress,
        )?;
        refused(
            "VmRead of 0 bytes",
            raw_vm_read(VM, last, 0),
            Status::BadArgument,
        )?;
        refused(
            "VmRead of 65 bytes",
            raw_vm_read(VM, last, 65),
            Status::BadArgument,
        )?;
        refused(
            "VmRead across a page",
            raw_vm_read(VM, last - 4, 8),
            Status::BadArgument,
        )?;
        let _ = ctx;
        Ok("11 bad VmMaps refused with the documented status, none mapped anything; the last page below 512 GiB maps; bad VmRead lengths and ranges refused".into())
    })();
    remove(&[VM, MEM]);
    result
}

static HELPER_MEM: [thread::ThreadMem<{ 8 * 1024 }>; 2] =
    [thread::ThreadMem::new(), thread::ThreadMem::new()];
/// The helper's wait result: 0 not yet, else status + 1.
static HELPER_RESULT: AtomicU64 = AtomicU64::new(0);

/// Waits on semaphore `arg` forever, records how the wait ended, and ends.
fn helper_main(start: Start) -> ! {
    let code = match syscall::sem_down(Sel::new(start.arg), 0) {
        Ok(()) => 0,
        Err(Error::Kernel(s)) => s as u64,
        Err(_) => 0xff,
    };
    HELPER_RESULT.store(code + 1, Ordering::Release);
    syscall::thread_exit()
}

/// Collects a failure: a call on a stale capability that succeeded.
fn must_fail<T>(fails: &mut Vec<String>, what: &str, r: Result<T, Error>) {
    if r.is_ok() {
        fails.push(String::from(what));
    }
}

/// (11) Capabilities whose objects are gone: a vCPU ended by STOP (and another vCPU made in its
/// Vm afterwards), a Vm whose paying domain was destroyed, a removed Vm, a vCPU whose Vm was
/// removed while its Startup waited for a reply (the late reply goes nowhere), a portal whose
/// handler ended, a semaphore removed under a waiter. Every call is refused; none reaches a
/// new object in a reused slot.
pub fn stale_caps(ctx: &mut Ctx) -> Outcome {
    HELPER_RESULT.store(0, Ordering::Release);
    let mut fails: Vec<String> = Vec::new();
    let result = (|| {
        // A vCPU ended by STOP.
        vm_with_page(VM, MemoryMode::Nested, MEM, page::NESTED, NESTED_GPA, rw())?;
        start(ctx, VCPU, VM, EXIT_BASE)?;
        exits::stop(ctx);
        exits::settle(ctx);
        let stale = [
            ("recall", vm::vcpu_recall(VCPU)),
            ("set mask", vm::vcpu_set_mask(VCPU, Exit::Cpuid, 1)),
            ("hypercalls off", vm::vcpu_hypercalls(VCPU, false)),
        ];
        for (what, r) in stale {
            must_fail(&mut fails, &format!("{what} on a stopped vCPU"), r);
        }
        start(ctx, VCPU2, VM, EXIT_BASE)?;
        must_fail(
            &mut fails,
            "recall on a stopped vCPU after a new vCPU took its Vm",
            vm::vcpu_recall(VCPU),
        );
        run_nested(ctx)?;
        exits::stop(ctx);
        exits::settle(ctx);
        remove(&[VCPU, VCPU2, VM]);

        // A Vm paid by a destroyed child.
        ok("create child", syscall::create_pd(CHILD, 64 * 1024))?;
        ok(
            "create vm paid by the child",
            vm::create_vm(VM, CHILD, MemoryMode::Nested),
        )?;
        ok("destroy the child", syscall::revoke(CHILD, true))?;
        let vcpu = vm::create_vcpu(
            VCPU,
            VM,
            well_known::SELF_PD,
            u64::from(PRIORITY),
            EXIT_BASE,
        );
        if vcpu.is_ok() {
            fails.push("CreateVcpu on the Vm of a destroyed child".into());
            if let Some(e) = exits::next_exit(ctx, ctx.scale.expected) {
                let _ = e;
                exits::stop(ctx);
            }
            exits::settle(ctx);
        }
        let mut b = [0u8; 8];
        let orphan = [
            ("VmMap", vm::vm_map(VM, MEM, 0, 1, NESTED_GPA, rw())),
            ("VmRead", vm::vm_read(&mut ctx.utcb, VM, 0, false, &mut b)),
            (
                "VmPatch",
                vm::vm_patch(&mut ctx.utcb, VM, 0, false, &[0], &[1]),
            ),
            (
                "VmWindow",
                vm::vm_window(VM, vmm::layout::DMP_WINDOW_LINEAR, 0, 1),
            ),
            ("VmDmp", vm::vm_dmp(VM, dmp_op::REGION_FILLS, 1)),
        ];
        for (what, r) in orphan {
            must_fail(
                &mut fails,
                &format!("{what} on the Vm of a destroyed child"),
                r,
            );
        }
        remove(&[VCPU, VM]);

        // A removed Vm: the selector is empty.
        ok(
            "create vm",
            vm::create_vm(VM, well_known::SELF_PD, MemoryMode::Nested),
        )?;
        ok("remove it", syscall::revoke(VM, true))?;
        refused(
            "VmMap on a removed Vm",
            vm::vm_map(VM, MEM, 0, 1, 0, rw()),
            Status::BadSelector,
        )?;

        // A Vm removed while its vCPU's Startup waits for the reply; the reply comes late.
        vm_with_page(
            VM2,
            MemoryMode::Nested,
            MEM2,
            page::NESTED,
            NESTED_GPA,
            rw(),
        )?;
        start(ctx, VCPU, VM2, EXIT_BASE)?;
        ok("remove the Vm under its vCPU", syscall::revoke(VM2, true))?;
        exits::answer(ctx, &vcpu::real_mode(vcpu::NESTED_RIP));
        if let Some(e) = exits::next_exit(ctx, ctx.scale.unexpected) {
            fails.push(format!(
                "the vCPU of a removed Vm still exited: {}",
                e.describe()
            ));
        }
        must_fail(
            &mut fails,
            "recall on the vCPU of a removed Vm",
            vm::vcpu_recall(VCPU),
        );
        remove(&[VCPU, MEM2]);

        // A portal whose handler ended, a semaphore removed under its waiter.
        ok("create semaphore", syscall::create_semaphore(SEM, 0))?;
        let mem = &HELPER_MEM[(ctx.round as usize - 1).min(1)];
        ok(
            "start the helper",
            thread::spawn(mem, HELPER, PRIORITY, helper_main, SEM.raw()),
        )?;
        ok(
            "portal of the helper",
            syscall::create_portal(PORTAL, HELPER, 0),
        )?;
        sleep(3);
        ok(
            "remove the semaphore under its waiter",
            syscall::revoke(SEM, true),
        )?;
        let mut waited = 0;
        while HELPER_RESULT.load(Ordering::Acquire) == 0 && waited < 100 {
            sleep(1);
            waited += 1;
        }
        let woke = HELPER_RESULT.load(Ordering::Acquire);
        ensure!(
            woke == Status::Aborted as u64 + 1,
            "the waiter of a removed semaphore woke with {} (expected aborted)",
            match woke {
                0 => String::from("nothing (still waiting)"),
                n => Status::from_u64(n - 1)
                    .map_or(format!("code {}", n - 1), |s| String::from(s.name())),
            }
        );
        refused(
            "signal a removed semaphore",
            syscall::sem_up(SEM),
            Status::BadSelector,
        )?;
        let call = ctx.utcb.call(PORTAL, 1, &[]);
        must_fail(&mut fails, "call a portal whose handler ended", call);
        let call_status = status_of(&call);
        remove(&[PORTAL, HELPER]);
        Ok(call_status)
    })();
    exits::settle(ctx);
    remove(&[VCPU, VCPU2, VM, VM2, MEM, MEM2, CHILD, SEM, PORTAL, HELPER]);
    let call_status = result?;
    ensure!(
        fails.is_empty(),
        "calls on stale capabilities succeeded: {}",
        fails.join("; ")
    );
    Ok(format!(
        "a stopped vCPU (3 controls), the Vm of a destroyed child (CreateVcpu and 5 calls), a removed Vm, a late reply to a removed vCPU, a dead portal ({call_status}), a removed semaphore: all refused; its waiter aborted"
    ))
}
