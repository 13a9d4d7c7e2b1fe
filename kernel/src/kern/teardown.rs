//! What goes when objects and capabilities go: the aftermath of removed capabilities, domains
//! and Vms ended with everything their quota paid for, guest memory unmapped through a revoked
//! memory capability, and a Vm's cached translations flushed after its memory changed.

use alloc::vec::Vec;

use abi::Status;
use abi::PAGE_SIZE;
use cap::{Removed, SpaceId};

use super::cost;
use super::ids::{PdId, VmId};
use super::memory;
use super::memory::QuotaTables;
use super::obj::Obj;
use super::shadow;
use super::state::Kernel;
use crate::mem::frames;

/// Destroys objects whose original capability went away and closes ports whose capability did.
pub fn settle_removed(k: &mut Kernel, removed: Vec<Removed<Obj>>) {
    for r in removed {
        match r.object {
            Obj::Memory { .. } => {
                memory::unmap_through(k, r.space, r.sel);
                unmap_guest_through(k, r.space, r.sel);
            }
            Obj::Vm(v) if r.original => destroy_vm(k, v),
            Obj::Vcpu(t) if r.original => k.kill(t),
            Obj::IoPorts { .. } => {
                let mut owner = None;
                k.pds.for_each(|id, d| {
                    if d.space == r.space {
                        owner = Some(id);
                    }
                });
                if let Some(pd) = owner {
                    memory::rebuild_io_bitmap(k, pd);
                }
            }
            Obj::Thread(t) if r.original => k.kill(t),
            Obj::Portal(p) if r.original => {
                k.abort_portal_callers(p);
                if let Some(portal) = k.portals.remove(p) {
                    k.release(portal.owner, cost::PORTAL);
                }
            }
            Obj::Semaphore(s) if r.original => {
                if let Some(sem) = k.sems.remove(s) {
                    k.release(sem.owner, cost::SEMAPHORE);
                    for w in sem.waiters {
                        k.set_result(w, Status::Aborted, 0);
                        k.wake(w);
                    }
                }
            }
            Obj::Pd(pd) if r.original => destroy_pd(k, pd),
            _ => {}
        }
    }
}

/// Ends a domain: its threads, its capabilities (and what was derived from them), its page
/// tables; its quota returns to its parent.
pub fn destroy_pd(k: &mut Kernel, pd: PdId) {
    let Some(domain) = k.pds.get(pd) else { return };
    let (threads, space) = (domain.threads.clone(), domain.space);
    for t in threads {
        k.kill(t);
    }
    destroy_charged_to(k, pd);
    let mut removed = Vec::new();
    let _ = k.caps.destroy_space(space, &mut |r| removed.push(r));
    settle_removed(k, removed);
    k.mappings.retain(|m| m.pd != pd);
    memory::shrink(&mut k.mappings);
    k.forget_loaded(pd);
    if let Some(domain) = k.pds.remove(pd) {
        for frame in &domain.table_frames {
            crate::mem::frames::free(*frame, 1);
        }
        if let Some(parent) = domain.parent.and_then(|p| k.pds.get_mut(p)) {
            let mut quota = domain.quota;
            quota.release(quota.used());
            parent.quota.join(quota);
        }
    }
}

/// Destroys every object `pd`'s quota paid for, wherever its capabilities are: objects die with
/// the quota that paid for them, so destroying a domain can never hand its parent back room
/// that live objects still use. Capabilities to them elsewhere go stale (`BadSelector`).
fn destroy_charged_to(k: &mut Kernel, pd: PdId) {
    let mut children = Vec::new();
    k.pds.for_each(|id, d| {
        if d.parent == Some(pd) {
            children.push(id);
        }
    });
    for child in children {
        destroy_pd(k, child);
    }
    let mut vms = Vec::new();
    k.vms.for_each(|id, v| {
        if v.owner == pd {
            vms.push(id);
        }
    });
    for v in vms {
        destroy_vm(k, v);
    }
    let mut threads = Vec::new();
    k.threads.for_each(|id, t| {
        if t.charged_to == Some(pd) {
            threads.push(id);
        }
    });
    for t in threads {
        k.kill(t);
    }
    let mut portals = Vec::new();
    k.portals.for_each(|id, p| {
        if p.owner == pd {
            portals.push(id);
        }
    });
    for p in portals {
        k.abort_portal_callers(p);
        k.portals.remove(p);
    }
    let mut sems = Vec::new();
    k.sems.for_each(|id, s| {
        if s.owner == pd {
            sems.push(id);
        }
    });
    for s in sems {
        if let Some(sem) = k.sems.remove(s) {
            for w in sem.waiters {
                k.set_result(w, Status::Aborted, 0);
                k.wake(w);
            }
        }
    }
}

/// The quota a shadow-mode Vm's table pool takes.
pub fn shadow_cost() -> u64 {
    cost::PAGE_TABLE * shadow::POOL_FRAMES as u64
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
        k.release(v.owner, cost::MAP_RECORD * records);
        for frame in &v.table_frames {
            frames::free(*frame, 1);
        }
        let shadow = if v.shadow.is_some() { shadow_cost() } else { 0 };
        k.release(
            v.owner,
            cost::VM + shadow + cost::PAGE_TABLE * v.table_frames.len() as u64,
        );
    }
}

/// Makes every vCPU of `vm` flush its guest TLB on its next entry (and drops every shadow
/// translation: one may point at memory that is gone).
pub fn flush_vm(k: &mut Kernel, vm: VmId) {
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

/// Removes the guest mappings made through the memory capability at (`space`, `sel`).
pub fn unmap_guest_through(k: &mut Kernel, space: SpaceId, sel: u64) {
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
                v.nested.unmap(&mut tables, m.gpa + page * PAGE_SIZE);
            }
        }
        flush_vm(k, m.vm);
    }
}
