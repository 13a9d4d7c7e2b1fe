//! Experiments on kernel memory: mappings that cost the kernel memory without end, and objects
//! paid by a domain that goes away.

use abi::syscall::stats;
use abi::vm::MemoryMode;
use abi::{well_known, Rights, Sel, Status};
use alloc::format;
use alloc::vec::Vec;
use rt::{syscall, vm, Error};

use crate::mem::page;
use crate::vcpu::{remove, NESTED_GPA};
use crate::{ensure, ok, stat, Ctx, Outcome, SCRATCH};

const VM: Sel = Sel::new(110);
const MEM: Sel = Sel::new(111);
const WARM: Sel = Sel::new(112);
const CHILD: Sel = Sel::new(113);
/// destroy-child-quota keeps one (stale) Vm capability per round from here.
const CHILD_VMS: Sel = Sel::new(120);
/// Quota moved to each child.
const CHILD_QUOTA: u64 = 64 * 1024;

/// (3) VmMap of the same page at the same guest-physical address, again and again: each call
/// leaves a record in the kernel (the mapping remembers its capability), so the calls must end
/// with `QuotaExceeded` before the kernel runs out of anything; revoking the capability they
/// went through gives every byte of quota back.
pub fn vmmap_remap_quota(ctx: &mut Ctx) -> Outcome {
    let limit = ctx.scale.remaps;
    let q0 = stat(stats::QUOTA_USED);
    let rw = Rights::READ | Rights::WRITE;
    let result = (|| {
        ok(
            "create vm",
            vm::create_vm(VM, well_known::SELF_PD, MemoryMode::Nested),
        )?;
        // A first mapping builds the nested tables (the Vm keeps them until it goes).
        ok("carve", syscall::carve(SCRATCH, WARM, page::REMAP, 1))?;
        ok("first map", vm::vm_map(VM, WARM, 0, 1, NESTED_GPA, rw))?;
        ok("revoke the first carve", syscall::revoke(WARM, true))?;
        let q1 = stat(stats::QUOTA_USED);
        let h1 = stat(stats::HEAP_USED);
        ok("carve", syscall::carve(SCRATCH, MEM, page::REMAP, 1))?;
        let mut maps = 0u64;
        let mut refusal = None;
        while maps < limit {
            match vm::vm_map(VM, MEM, 0, 1, NESTED_GPA, rw) {
                Ok(()) => maps += 1,
                Err(e) => {
                    refusal = Some(e);
                    break;
                }
            }
        }
        let q_peak = stat(stats::QUOTA_USED);
        let h_peak = stat(stats::HEAP_USED);
        // The system still answers at the limit.
        let echo = ok("echo at the limit", ctx.utcb.call(crate::ECHO, 1, &[7]));
        ok("revoke the carve", syscall::revoke(MEM, true))?;
        let q2 = stat(stats::QUOTA_USED);
        let h2 = stat(stats::HEAP_USED);
        echo?;
        let heap = h_peak as i64 - h1 as i64;
        let Some(refusal) = refusal else {
            return Err(format!(
                "{maps} VmMaps of one page at one address all succeeded: quota used {:+} bytes, kernel heap {heap:+} bytes (records not charged)",
                q_peak as i64 - q1 as i64
            ));
        };
        ensure!(
            refusal == Error::Kernel(Status::QuotaExceeded),
            "after {maps} VmMaps the refusal was {refusal}, expected quota exceeded"
        );
        ensure!(
            q2 == q1,
            "after revoking the carved capability quota used is {q2}, {:+} against before the loop",
            q2 as i64 - q1 as i64
        );
        Ok(format!(
            "{maps} remaps until quota exceeded ({} bytes of quota, {} per remap, heap {heap:+}); quota back after revoke (heap {:+})",
            q_peak - q1,
            (q_peak - q1) / maps.max(1),
            h2 as i64 - h1 as i64
        ))
    })();
    remove(&[MEM, WARM, VM]);
    let q3 = stat(stats::QUOTA_USED);
    let note = result?;
    ensure!(
        q3 == q0,
        "after removing the Vm quota used is {q3}, {:+} against before",
        q3 as i64 - q0 as i64
    );
    Ok(note)
}

/// (4) A child domain pays for a Vm whose capability this server keeps, then the child is
/// destroyed: the quota comes back exactly, the Vm goes with its payer (its capability is stale:
/// VmMap through it is refused with BadSelector), and after `child_rounds` rounds the kernel has
/// no fewer free frames than before, before the stale capabilities are even removed.
pub fn destroy_child_quota(ctx: &mut Ctx) -> Outcome {
    let rounds = ctx.scale.child_rounds;
    let q0 = stat(stats::QUOTA_USED);
    let f0 = stat(stats::FREE_FRAMES);
    let mut kept: Vec<Sel> = Vec::new();
    let result = (|| {
        for r in 0..rounds {
            let vm_sel = CHILD_VMS.offset(r);
            ok("create child", syscall::create_pd(CHILD, CHILD_QUOTA))?;
            ok(
                "create vm paid by the child",
                vm::create_vm(vm_sel, CHILD, MemoryMode::Nested),
            )?;
            kept.push(vm_sel);
            ok("carve", syscall::carve(SCRATCH, MEM, page::REMAP, 1))?;
            ok(
                "map into the child's vm",
                vm::vm_map(vm_sel, MEM, 0, 1, NESTED_GPA, Rights::READ | Rights::WRITE),
            )?;
            ok("destroy the child", syscall::revoke(CHILD, true))?;
            let q = stat(stats::QUOTA_USED);
            ensure!(
                q == q0,
                "round {}: after destroying the child quota used is {q}, {:+} against before",
                r + 1,
                q as i64 - q0 as i64
            );
            crate::refused(
                &format!(
                    "round {}: VmMap through the Vm of the destroyed child",
                    r + 1
                ),
                vm::vm_map(vm_sel, MEM, 0, 1, NESTED_GPA, Rights::READ | Rights::WRITE),
                Status::BadSelector,
            )?;
            ok("revoke the carve", syscall::revoke(MEM, true))?;
        }
        let f1 = stat(stats::FREE_FRAMES);
        // At least as many free (an innocent guest that ended meanwhile gave some back).
        ensure!(
            f1 >= f0,
            "after {rounds} rounds free frames are {f1}, {:+} against before (the destroyed children's Vms still hold their frames while this server keeps their capabilities)",
            f1 as i64 - f0 as i64
        );
        Ok(format!(
            "{rounds} children destroyed: quota back exactly, VmMap through their Vms refused (bad selector), {f1} free frames (before {f0})"
        ))
    })();
    remove(&[MEM, CHILD]);
    remove(&kept);
    result
}
