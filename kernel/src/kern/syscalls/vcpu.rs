//! The vCPU syscalls: `create_vcpu` and `vcpu_control`.

use alloc::boxed::Box;

use abi::vm::{mtd, Exit, EXIT_COUNT};
use abi::{Rights, Status};
use cap::SpaceId;

use crate::arch::vm::{self as hw, HwVcpu, RunContext};
use crate::kern::cost;
use crate::kern::entry::refresh_tag;
use crate::kern::ids::{PdId, VmId};
use crate::kern::obj::Obj;
use crate::kern::obj::VcpuRef;
use crate::kern::state::Kernel;
use crate::kern::thread::{State, Thread};
use crate::kern::vcpu::Vcpu;
use crate::mem::{direct, frames};
use abi::syscall::args;
use abi::vm::VcpuOp;

/// `create_vcpu(dest, vm, pd, priority, exit_base)`.
pub fn create_vcpu(
    k: &mut Kernel,
    my_pd: PdId,
    space: SpaceId,
    a: args::CreateVcpu,
) -> Result<u64, Status> {
    let args::CreateVcpu {
        dest,
        vm: vm_sel,
        pd: pd_sel,
        priority,
        exit_base,
    } = a;
    k.check_free(space, dest)?;
    let vm = k.lookup::<VmId>(space, vm_sel, Rights::CONTROL)?;
    let payer = k.lookup::<PdId>(space, pd_sel, Rights::CONTROL)?;
    if priority > abi::syscall::MAX_PRIORITY || exit_base.raw() >= abi::CAP_SPACE_SLOTS {
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
    k.charge(payer, cost::VCPU)?;
    let fail = |k: &mut Kernel, status| {
        k.release(payer, cost::VCPU);
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
        exit_base: exit_base.raw(),
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
        .insert_original(space, dest.raw(), Obj::Vcpu(t), Rights::ALL)
    {
        k.kill(t);
        return Err(e.into());
    }
    k.wake(t);
    Ok(0)
}

/// `vcpu_control(vcpu, op, a, b)`.
pub fn vcpu_control(k: &mut Kernel, space: SpaceId, a: args::VcpuControl) -> Result<u64, Status> {
    let args::VcpuControl {
        vcpu: vcpu_sel,
        op,
        a: x,
        b: y,
    } = a;
    let VcpuRef(t) = k.lookup(space, vcpu_sel, Rights::CONTROL)?;
    let vcpu = k
        .threads
        .get_mut(t)
        .and_then(|t| t.vcpu.as_mut())
        .ok_or(Status::BadSelector)?;
    match op.get()? {
        VcpuOp::SetMask => {
            if x >= EXIT_COUNT || y & !mtd::ALL != 0 {
                return Err(Status::BadArgument);
            }
            vcpu.masks[x as usize] = y;
        }
        VcpuOp::Recall => vcpu.recall = true,
        VcpuOp::Hypercalls => {
            let shadowed = k.vms.get(vcpu.vm).is_some_and(|v| v.shadow.is_some());
            if x > 1 || (x == 1 && !shadowed) {
                return Err(Status::BadArgument);
            }
            vcpu.hypercalls = x == 1;
        }
    }
    Ok(0)
}
