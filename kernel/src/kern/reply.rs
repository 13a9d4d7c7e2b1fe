//! Reply checking: a VMM's answer to an exit is read (only the words its tag names), checked
//! whole against the vCPU's mode and confinement, and only then written into the hardware state.

use abi::utcb::MsgTag;
use abi::vm::{self as vmabi, inject, mtd, word, Exit};
use abi::Status;

use super::exit::guest_view;
use super::ids::ThreadId;
use super::shadow::Shadow;
use super::state::Kernel;
use super::vcpu::Vcpu;
use super::vm::Vm;

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
                .preview_in(
                    nested,
                    w[word::CR0],
                    w[word::CR3],
                    w[word::CR4],
                    w[word::EFER],
                )
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
            .load_in(
                nested,
                guest[word::CR0],
                guest[word::CR3],
                guest[word::CR4],
                guest[word::EFER],
            )
            .map_err(|_| Status::BadArgument)?;
        let Some(n) = nested else {
            return Err(Status::BadArgument);
        };
        s.publish(n);
        vcpu.hw.shadow_control(&super::shadow::hardware(&c, s, n));
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
