//! What an [`Exit`] comes to for the kernel: taken by the host, reflected into the guest, or
//! delivered to the VMM as an [`abi::vm::Exit`] with its two qualification words; and which
//! exits a shadow-mode vCPU's vTLB takes first, counted under which reason.

use abi::vm::{self as vmabi, inject, other, Exit as VmExit};

use super::{CrAccess, Exit};

/// The words of a hardware exit the mapping reads, as the back end reported them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reported {
    pub exit: Exit,
    /// The back end's raw reason (SVM EXITCODE, VMX basic exit reason).
    pub raw: u64,
    /// For an exception exit: vector | error code << 32.
    pub exception: u64,
    /// The second raw qualification word (SVM EXITINFO2, VMX exit qualification).
    pub info2: u64,
}

/// What the kernel does before it delivers an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Before {
    Nothing,
    /// The interrupt window opened: stop asking for it.
    CloseWindow,
    /// VM entry failed (hardware reason `reason`): log the guest state it refused.
    LogEntryFailure {
        reason: u32,
    },
    /// The nested tables are misconfigured at `gpa`, a kernel bug: report it.
    ReportMisconfiguration {
        gpa: u64,
    },
}

impl Before {
    /// Whether the exit message may carry the guest state the hardware structure holds. Not
    /// after a failed entry: the hardware may have left the host's state there (QEMU does after
    /// a refused VMRUN), and no VMM may read it.
    pub fn carries_state(self) -> bool {
        !matches!(self, Before::LogEntryFailure { .. })
    }
}

/// What an exit the vTLB did not take comes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An external interrupt, or the VMX preemption timer (which bounds a guest's run when a
    /// host interrupt may be pending): the host takes what is pending, so its timer keeps
    /// ticking and the scheduler can preempt the vCPU; the guest runs on.
    HostInterrupt,
    /// An NMI (taken by the host on the way out): the guest runs on.
    Resume,
    /// #DB or #AC, intercepted only so that a guest cannot hang the CPU in a chain of them:
    /// injected straight back with this event-injection word (error code 0).
    Reflect { inject: u64 },
    /// Exit `exit` for the VMM with its qualifications, after `before`.
    Deliver {
        exit: VmExit,
        qual0: u64,
        qual1: u64,
        before: Before,
    },
}

/// The [`Outcome`] of exit `e`. `other_kind` names an exit the neutral form does not know
/// (the back end's `abi::vm::other` code for its raw reason), for [`VmExit::Other`].
pub fn neutral(e: &Reported, other_kind: impl FnOnce(u64) -> u64) -> Outcome {
    let deliver = |exit, qual0, qual1| Outcome::Deliver {
        exit,
        qual0,
        qual1,
        before: Before::Nothing,
    };
    match e.exit {
        Exit::ExternalInterrupt | Exit::PreemptionTimer => Outcome::HostInterrupt,
        Exit::Nmi => Outcome::Resume,
        Exit::Exception { vector } if vector == 1 || vector == 17 => {
            let error_flag = if vector == 17 { inject::HAS_ERROR } else { 0 };
            Outcome::Reflect {
                inject: u64::from(vector) | inject::KIND_EXCEPTION | error_flag | inject::VALID,
            }
        }
        Exit::InterruptWindow => Outcome::Deliver {
            exit: VmExit::InterruptWindow,
            qual0: 0,
            qual1: 0,
            before: Before::CloseWindow,
        },
        Exit::Cpuid => deliver(VmExit::Cpuid, 0, 0),
        Exit::Io(io) => deliver(
            VmExit::Io,
            vmabi::IoQual::new(io.port, io.size, io.input, io.string, io.rep).0,
            0,
        ),
        Exit::Rdmsr => deliver(VmExit::Rdmsr, 0, 0),
        Exit::Wrmsr => deliver(VmExit::Wrmsr, 0, 0),
        Exit::Hlt => deliver(VmExit::Hlt, 0, 0),
        Exit::Hypercall => deliver(VmExit::Hypercall, 0, 0),
        Exit::NestedPageFault(f) => deliver(
            VmExit::MemoryFault,
            f.gpa,
            access(f.write, f.execute, f.present),
        ),
        Exit::TripleFault => deliver(VmExit::Shutdown, 0, 0),
        Exit::Exception { .. } => deliver(VmExit::Exception, e.exception, e.info2),
        Exit::EntryFailure { reason } => Outcome::Deliver {
            exit: VmExit::EntryFailure,
            qual0: vmabi::entry_error::INVALID_GUEST_STATE,
            qual1: u64::from(reason),
            before: Before::LogEntryFailure { reason },
        },
        Exit::NestedMisconfiguration { gpa } => Outcome::Deliver {
            exit: VmExit::EntryFailure,
            qual0: vmabi::entry_error::HARDWARE,
            qual1: e.raw,
            before: Before::ReportMisconfiguration { gpa },
        },
        // A nested-mode MOV CR the kernel intercepts (shadow mode's are the vTLB's, see
        // `shadow_reason`) and every MOV DR: the VMM gives the architectural result.
        Exit::Cr(CrAccess::Write { cr, gpr }) => deliver(
            VmExit::Other,
            other::CONTROL_REGISTER,
            other::MovAccess::new(cr, true, gpr).0,
        ),
        Exit::Cr(CrAccess::Read { cr, gpr }) => deliver(
            VmExit::Other,
            other::CONTROL_REGISTER,
            other::MovAccess::new(cr, false, gpr).0,
        ),
        Exit::Dr { dr, write, gpr } => deliver(
            VmExit::Other,
            other::DEBUG_REGISTER,
            other::MovAccess::new(dr, write, gpr).0,
        ),
        Exit::Invlpg | Exit::Cr(CrAccess::Other { .. }) | Exit::Unknown { .. } => {
            deliver(VmExit::Other, other_kind(e.raw), e.raw)
        }
    }
}

/// The [`vmabi::access`] bits of a memory-fault exit: the access (a write, else a fetch, else
/// a read) and whether the page was mapped without it.
pub fn access(write: bool, execute: bool, present: bool) -> u64 {
    let kind = if write {
        vmabi::access::WRITE
    } else if execute {
        vmabi::access::EXEC
    } else {
        vmabi::access::READ
    };
    kind | if present { vmabi::access::PRESENT } else { 0 }
}

/// The reason a shadow-mode vCPU's vTLB takes exit `exit` under (counted in the exit profile),
/// None when it is not the vTLB's: #PF, control-register access, INVLPG, and hypercalls when
/// the vCPU's VMM enabled them (`hypercalls`). CR8 accesses are not the vTLB's.
pub fn shadow_reason(exit: &Exit, hypercalls: bool) -> Option<VmExit> {
    match exit {
        Exit::Hypercall if hypercalls => Some(VmExit::Hypercall),
        Exit::Exception { vector: 14 } => Some(VmExit::PageFault),
        // CR0, CR3 and CR4 (and CLTS/LMSW) are the vTLB's; CR8 (the task priority, which
        // VMX intercepts) is the VMM's, as in nested mode.
        Exit::Cr(CrAccess::Write { cr, .. } | CrAccess::Read { cr, .. }) if *cr == 8 => None,
        Exit::Cr(_) => Some(VmExit::ControlRegister),
        Exit::Invlpg => Some(VmExit::Invlpg),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
