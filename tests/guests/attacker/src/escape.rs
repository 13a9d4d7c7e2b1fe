//! Attempt 4: instructions that would reach a hypervisor or enable virtualization. VMCALL,
//! VMMCALL and XSETBV must raise #UD (no VMX/SVM call interface, no XSAVE); setting EFER.SVME
//! must fault or not stick (SVM is hidden).
//!
//! Not attempted: setting CR4.VMXE. Real hardware without VMX raises #GP, but QEMU 7.2 under TCG
//! neither faults nor completes the write (the guest spins on that instruction), which would
//! end the attacker before its last step for a reason that is QEMU's.

use grt::trap::{try_rdmsr, try_vmcall, try_vmmcall, try_wrmsr, try_xsetbv, Fault};

use crate::Report;

const MSR_EFER: u32 = 0xc000_0080;
const EFER_SVME: u64 = 1 << 12;

pub fn run(report: &mut Report) {
    expect_ud(report, "vmcall", try_vmcall());
    expect_ud(report, "vmmcall", try_vmmcall());
    expect_ud(report, "xsetbv", try_xsetbv(0, 0b11));

    match try_rdmsr(MSR_EFER) {
        Ok(efer) => {
            // SAFETY: SVME changes nothing this program relies on; it is cleared right after.
            let set = unsafe { try_wrmsr(MSR_EFER, efer | EFER_SVME) };
            let stuck = try_rdmsr(MSR_EFER).is_ok_and(|v| v & EFER_SVME != 0);
            if stuck {
                // SAFETY: the EFER this program ran with.
                let _ = unsafe { try_wrmsr(MSR_EFER, efer) };
            }
            report.attempt(
                "set EFER.SVME",
                !stuck,
                format_args!("{}", Outcome(set, stuck)),
            );
        }
        Err(fault) => report.attempt(
            "set EFER.SVME",
            false,
            format_args!("reading EFER raised {}", fault),
        ),
    }
}

fn expect_ud(report: &mut Report, what: &str, result: Result<(), Fault>) {
    match result {
        Err(Fault::UD) => report.attempt(what, true, format_args!("#UD")),
        Err(fault) => report.attempt(what, false, format_args!("raised {}, #UD expected", fault)),
        Ok(()) => report.attempt(
            what,
            false,
            format_args!("executed without fault, #UD expected"),
        ),
    }
}

/// A control-bit write's outcome.
struct Outcome(Result<(), Fault>, bool);

impl core::fmt::Display for Outcome {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            Outcome(Err(fault), _) => write!(f, "raised {}", fault),
            Outcome(Ok(()), true) => f.write_str("accepted, the bit stuck"),
            Outcome(Ok(()), false) => f.write_str("accepted without fault, the bit did not stick"),
        }
    }
}
