//! Exit delivery: a hardware exit the kernel does not handle itself becomes a call from the vCPU
//! on its exit portal, and the vCPU waits in `AwaitingReply` until its VMM answers (`reply`).
//! Exit profiles are offered to the profile portal, never queued.

use abi::profile::{pack_words, ProfileBatch};
use abi::utcb::{MsgTag, MSG_WORDS};
use abi::vm::{self as vmabi, mtd, word, Exit};
use abi::Rights;
use virt::exit::{neutral, Before, Outcome, Reported};

use super::ids::PortalId;
use super::ids::{ThreadId, VmId};
use super::ipc;
use super::shadow::Shadow;
use super::shadow_exit::{shadow_exit, ShadowExit};
use super::state::Kernel;
use crate::arch::vm::{self as hw};
use abi::Sel;

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

/// Sends the Vm's exit profile to the portal at `exit_base + Profile`, if there is one; true if
/// the vCPU now waits for its reply.
pub fn deliver_profile(k: &mut Kernel, t: ThreadId) -> bool {
    let Some(vcpu) = k.threads.get_mut(t).and_then(|t| t.vcpu.as_mut()) else {
        return false;
    };
    let (space, sel) = (vcpu.exit_space, vcpu.exit_base + Exit::Profile as u64);
    let Ok(portal) = k.lookup::<PortalId>(space, Sel::new(sel), Rights::CALL) else {
        return false;
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
    let reported = Reported {
        exit: e.exit,
        raw: e.raw,
        exception: e.exception,
        info2: e.info2,
    };
    let (reason, qual0, qual1, before) = match neutral(&reported, |raw| vcpu.hw.other_kind(raw)) {
        Outcome::HostInterrupt => {
            hw::take_pending_interrupt();
            return;
        }
        Outcome::Resume => return,
        Outcome::Reflect { inject } => {
            // Reflected straight back (see the backends: these are intercepted only so that a
            // guest cannot hang the CPU in a chain of them).
            vcpu.hw.inject(inject, 0);
            return;
        }
        Outcome::Deliver {
            exit,
            qual0,
            qual1,
            before,
        } => (exit, qual0, qual1, before),
    };
    match before {
        Before::Nothing => {}
        Before::CloseWindow => vcpu.hw.request_window(false),
        Before::LogEntryFailure { reason } => {
            let mut w = [0u64; word::COUNT];
            vcpu.hw.read(&vcpu.ctx.gprs, mtd::ALL, &mut w);
            log::warn!(
                "vm: entry failed (reason {reason:#x}, raw {:#x}): rip {:#x} rflags {:#x} cr0 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} cs {:#x} ss {:#x} tr {:#x}",
                e.raw, w[word::RIP], w[word::RFLAGS], w[word::CR0], w[word::CR3], w[word::CR4],
                w[word::EFER], w[word::SEGMENTS], w[word::SEGMENTS + 2], w[word::SEGMENTS + 12]
            );
        }
        Before::ReportMisconfiguration { gpa } => {
            crate::println!(
                "kernel: nested-table misconfiguration at {gpa:#x} (exit info {:#x}); vCPU stopped",
                e.info1
            );
        }
    }
    send_exit(
        k,
        t,
        reason,
        [qual0, qual1, e.instruction_len],
        before.carries_state(),
    );
}

/// Sends exit `reason` of vCPU `t` to its exit portal; ends the vCPU if there is none.
pub fn deliver_exit(k: &mut Kernel, t: ThreadId, reason: Exit, qual0: u64, qual1: u64, len: u64) {
    send_exit(k, t, reason, [qual0, qual1, len], true);
}

/// Sends exit `reason` with qualifications and instruction length `q`; with `with_state`, the
/// guest state the vCPU's mask names. A failed hardware entry is sent without state: the
/// hardware may have left the host's state in the VMCB (QEMU does), which no VMM may read.
fn send_exit(k: &mut Kernel, t: ThreadId, reason: Exit, q: [u64; 3], with_state: bool) {
    let [qual0, qual1, len] = q;
    let Some(vcpu) = k.threads.get_mut(t).and_then(|t| t.vcpu.as_mut()) else {
        return;
    };
    vcpu.exits[reason as usize] += 1;
    vcpu.unprofiled += 1;
    let mask = if !with_state {
        0
    } else if reason == Exit::Startup {
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
    if with_state {
        vcpu.hw.read(&vcpu.ctx.gprs, mask | mtd::RIP, &mut words);
    }
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
    let Ok(portal) = k.lookup::<PortalId>(space, Sel::new(sel), Rights::CALL) else {
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

/// The guest's own CR0, CR3 and CR4 in message words that hold the hardware's.
pub fn guest_view(s: &Shadow, w: &mut [u64; word::COUNT]) {
    w[word::CR0] = s.cr0;
    w[word::CR3] = s.cr3;
    w[word::CR4] = s.cr4;
}
