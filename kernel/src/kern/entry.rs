//! Entering a guest: everything checked and refreshed right before a vCPU runs (pending
//! synthetic exits, shadow resync, its ASID/VPID, confinement), and the entry itself.

use abi::vm::{self as vmabi, mtd, word, Exit};
use virt::confine::{self, Breach, Expected};
use virt::tags::{Held, TagSpace};

use super::exit::{deliver_exit, deliver_profile};
use super::ids::ThreadId;
use super::state::Kernel;
use super::vcpu::Vcpu;
use super::vm::Vm;
use crate::arch::vm::{self as hw};

/// The CPU's ASIDs/VPIDs, handed out in generations (`virt::tags`): never exhausted.
static TAGS: spin::Mutex<Option<TagSpace>> = spin::Mutex::new(None);

/// A tag for a vCPU holding `held`, and whether it is fresh (flush its entries before use).
pub fn refresh_tag(held: Option<Held>) -> (Held, bool) {
    let mut tags = TAGS.lock();
    let space = tags.get_or_insert_with(|| TagSpace::new(hw::tag_count().min(4096) as u16));
    space.refresh(held)
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
    legacy_top(k, t);
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

/// Before entering vCPU `t` of a shadow-mode Vm whose guest uses 32-bit or PAE paging: the
/// hardware runs PAE paging on the PDPT of the vTLB's current tree, whose four PDPTEs the CPU
/// loads at entry, so that top must be complete (a flush or a recycle may have taken it) and
/// the hardware CR3 must name it.
fn legacy_top(k: &mut Kernel, t: ThreadId) {
    let Kernel { threads, vms, .. } = k;
    let Some(vcpu) = threads.get_mut(t).and_then(|t| t.vcpu.as_mut()) else {
        return;
    };
    let Some(Vm {
        nested,
        shadow: Some(shadow),
        ..
    }) = vms.get_mut(vcpu.vm)
    else {
        return;
    };
    let Some((c, recycled)) = shadow.legacy_entry() else {
        return;
    };
    if recycled || vcpu.hw.paging().cr3 != c.cr3 {
        vcpu.hw
            .shadow_control(&super::shadow::hardware(&c, shadow, nested));
        vcpu.hw.flush_on_entry();
    }
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
        Some(s) => s.confinement(v.nested.root()),
        None => Expected::Nested {
            root: v.nested.root(),
        },
    };
    confine::check(expected, &vcpu.hw.paging())
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
