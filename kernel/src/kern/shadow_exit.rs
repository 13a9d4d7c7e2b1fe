//! Exits the kernel handles itself in shadow mode: guest page faults and CR/INVLPG intercepts
//! resolved by the vTLB, forwarded to the guest, or turned into exits for the VMM.

use abi::vm::{self as vmabi, inject, mtd, word, Exit};
use virt::decode;
use virt::exit::{access, shadow_reason, CrAccess, Exit as HwReason};
use virt::nested::NestedTables;

use super::ids::ThreadId;
use super::shadow::{CrError, FaultOutcome, Shadow};
use super::state::Kernel;
use super::vcpu::Vcpu;
use super::vm::Vm;
use crate::arch::vm::{self as hw, HwVcpu};

/// What the vTLB made of an exit.
pub enum ShadowExit {
    /// Not a shadow Vm, or not an exit the vTLB takes.
    NotShadow,
    /// Done here: the guest runs on.
    Handled,
    /// An exit for the VMM after all.
    Deliver(Exit, u64, u64),
}

/// #PF, control-register and INVLPG exits of a shadow-mode vCPU: the kernel's vTLB answers
/// them without the VMM.
pub fn shadow_exit(k: &mut Kernel, t: ThreadId, e: &hw::HwExit) -> ShadowExit {
    // Only these exits can be the vTLB's: every other one leaves at once (this runs on the path
    // of every exit).
    if shadow_reason(&e.exit, true).is_none() {
        return ShadowExit::NotShadow;
    }
    let Kernel { threads, vms, .. } = k;
    let Some(vcpu) = threads.get_mut(t).and_then(|t| t.vcpu.as_mut()) else {
        return ShadowExit::NotShadow;
    };
    let Some(vm) = vms.get_mut(vcpu.vm) else {
        return ShadowExit::NotShadow;
    };
    let Some(reason) = shadow_reason(&e.exit, vcpu.hypercalls) else {
        return ShadowExit::NotShadow;
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
                    // LMSW from a register (how 286-style code enters protected mode); a memory
                    // operand is not read here.
                    Some((decode::Kind::Lmsw(decode::Operand::Reg(g)), len)) => {
                        let source = w[word::GPRS + usize::from(g & 15)];
                        let value = virt::shadow::vm::lmsw(shadow.cr0, source);
                        return cr_write(vcpu, shadow, nested, 0, value, len, &w);
                    }
                    // SMSW to a register (SVM intercepts it as a CR0 read).
                    Some((
                        decode::Kind::Smsw {
                            dst: decode::Operand::Reg(g),
                            size,
                        },
                        len,
                    )) => {
                        let g = word::GPRS + usize::from(g & 15);
                        w[g] = virt::shadow::vm::smsw(w[g], shadow.cr0, size);
                        w[word::RIP] = w[word::RIP].wrapping_add(len);
                        vcpu.hw.write(&mut vcpu.ctx.gprs, mtd::GPRS | mtd::RIP, &w);
                        return ShadowExit::Handled;
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
    ShadowExit::Deliver(Exit::MemoryFault, gpa, access(write, false, false))
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
    let cs = vmabi::segment::attributes(w[word::SEGMENTS]);
    if cr == 0
        && value & (1 << 31) == 0
        && shadow.efer & (1 << 10) != 0
        && cs & vmabi::segment::LONG != 0
    {
        // Paging off is #GP in 64-bit code (only compatibility mode may leave long mode).
        inject_gp(&mut vcpu.hw);
        return ShadowExit::Handled;
    }
    match shadow.write_cr_in(Some(nested), cr, value) {
        Ok((c, flush)) => {
            if cr == 3 {
                shadow.publish(nested);
                shadow.prefill_critical(nested, w);
            }
            vcpu.hw
                .shadow_control(&super::shadow::hardware(&c, shadow, nested));
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
            log::warn!("vm: shadow paging: guest entered a paging mode the vTLB does not shadow (CR{cr} = {value:#x}); vCPU stopped");
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
    // Outside 64-bit code the instruction is at CS.base + EIP (real mode: CS * 16 + IP).
    let base = if mode == decode::Mode::Long {
        0
    } else {
        w[word::SEGMENTS + 1]
    };
    let fetched = decode::fetch(mode, base.wrapping_add(w[word::RIP]), |la, buf| {
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
