use super::*;
use crate::exit::{decode_svm, decode_vmx, CrAccess, NestedFault, PortIo};

const RAW: u64 = 0x1234;
const EXCEPTION: u64 = 6 | 0xdead << 32;
const INFO2: u64 = 0xcafe;

fn reported(exit: Exit) -> Reported {
    Reported {
        exit,
        raw: RAW,
        exception: EXCEPTION,
        info2: INFO2,
    }
}

fn deliver(exit: VmExit, qual0: u64, qual1: u64) -> Outcome {
    Outcome::Deliver {
        exit,
        qual0,
        qual1,
        before: Before::Nothing,
    }
}

/// Which variant `e` is: the match has no wildcard, so a new hardware reason fails to compile
/// here until the table below says what it comes to.
fn variant(e: &Exit) -> usize {
    match e {
        Exit::Exception { .. } => 0,
        Exit::ExternalInterrupt => 1,
        Exit::Nmi => 2,
        Exit::TripleFault => 3,
        Exit::InterruptWindow => 4,
        Exit::Cpuid => 5,
        Exit::Hlt => 6,
        Exit::Invlpg => 7,
        Exit::Hypercall => 8,
        Exit::Cr(_) => 9,
        Exit::Io(_) => 10,
        Exit::Rdmsr => 11,
        Exit::Wrmsr => 12,
        Exit::NestedPageFault(_) => 13,
        Exit::NestedMisconfiguration { .. } => 14,
        Exit::PreemptionTimer => 15,
        Exit::EntryFailure { .. } => 16,
        Exit::Unknown { .. } => 17,
        Exit::Dr { .. } => 18,
    }
}
const VARIANTS: usize = 19;

/// The "other" kind the fake back end gives: distinct from every real one.
const OTHER: u64 = 0x77;

fn table() -> Vec<(Exit, Outcome)> {
    use vmabi::access::{EXEC, PRESENT, READ, WRITE};
    let io = PortIo {
        port: 0x3f8,
        size: 1,
        input: false,
        string: false,
        rep: true,
    };
    let fault = |write, execute, present| {
        Exit::NestedPageFault(NestedFault {
            gpa: 0x8000,
            write,
            execute,
            present,
        })
    };
    vec![
        (Exit::ExternalInterrupt, Outcome::HostInterrupt),
        (Exit::Nmi, Outcome::Resume),
        (Exit::PreemptionTimer, Outcome::HostInterrupt),
        (
            Exit::Exception { vector: 1 },
            Outcome::Reflect {
                inject: 1 | inject::KIND_EXCEPTION | inject::VALID,
            },
        ),
        (
            Exit::Exception { vector: 17 },
            Outcome::Reflect {
                inject: 17 | inject::KIND_EXCEPTION | inject::HAS_ERROR | inject::VALID,
            },
        ),
        (
            Exit::Exception { vector: 6 },
            deliver(VmExit::Exception, EXCEPTION, INFO2),
        ),
        (
            Exit::Exception { vector: 14 },
            deliver(VmExit::Exception, EXCEPTION, INFO2),
        ),
        (
            Exit::InterruptWindow,
            Outcome::Deliver {
                exit: VmExit::InterruptWindow,
                qual0: 0,
                qual1: 0,
                before: Before::CloseWindow,
            },
        ),
        (Exit::Cpuid, deliver(VmExit::Cpuid, 0, 0)),
        (Exit::Hlt, deliver(VmExit::Hlt, 0, 0)),
        (Exit::Hypercall, deliver(VmExit::Hypercall, 0, 0)),
        (Exit::Rdmsr, deliver(VmExit::Rdmsr, 0, 0)),
        (Exit::Wrmsr, deliver(VmExit::Wrmsr, 0, 0)),
        (Exit::TripleFault, deliver(VmExit::Shutdown, 0, 0)),
        (
            Exit::Io(io),
            deliver(VmExit::Io, 0x3f8 | 1 << 16 | 1 << 26, 0),
        ),
        (
            fault(false, false, false),
            deliver(VmExit::MemoryFault, 0x8000, READ),
        ),
        (
            fault(true, false, true),
            deliver(VmExit::MemoryFault, 0x8000, WRITE | PRESENT),
        ),
        (
            fault(false, true, false),
            deliver(VmExit::MemoryFault, 0x8000, EXEC),
        ),
        (
            fault(true, true, false),
            deliver(VmExit::MemoryFault, 0x8000, WRITE),
        ),
        (
            Exit::EntryFailure { reason: 33 },
            Outcome::Deliver {
                exit: VmExit::EntryFailure,
                qual0: vmabi::entry_error::INVALID_GUEST_STATE,
                qual1: 33,
                before: Before::LogEntryFailure { reason: 33 },
            },
        ),
        (
            Exit::NestedMisconfiguration { gpa: 0x9000 },
            Outcome::Deliver {
                exit: VmExit::EntryFailure,
                qual0: vmabi::entry_error::HARDWARE,
                qual1: RAW,
                before: Before::ReportMisconfiguration { gpa: 0x9000 },
            },
        ),
        (Exit::Invlpg, deliver(VmExit::Other, OTHER, RAW)),
        (
            Exit::Cr(CrAccess::Write { cr: 4, gpr: None }),
            deliver(
                VmExit::Other,
                vmabi::other::CONTROL_REGISTER,
                vmabi::other::MovAccess::new(4, true, None).0,
            ),
        ),
        (
            Exit::Cr(CrAccess::Read {
                cr: 0,
                gpr: Some(3),
            }),
            deliver(
                VmExit::Other,
                vmabi::other::CONTROL_REGISTER,
                vmabi::other::MovAccess::new(0, false, Some(3)).0,
            ),
        ),
        (
            Exit::Cr(CrAccess::Other { cr: 0 }),
            deliver(VmExit::Other, OTHER, RAW),
        ),
        (
            Exit::Dr {
                dr: 7,
                write: true,
                gpr: Some(2),
            },
            deliver(
                VmExit::Other,
                vmabi::other::DEBUG_REGISTER,
                vmabi::other::MovAccess::new(7, true, Some(2)).0,
            ),
        ),
        (
            Exit::Unknown { reason: 55 },
            deliver(VmExit::Other, OTHER, RAW),
        ),
    ]
}

#[test]
fn every_hardware_reason_has_its_outcome() {
    let mut seen = [false; VARIANTS];
    for (exit, expected) in table() {
        seen[variant(&exit)] = true;
        let mut asked = None;
        let got = neutral(&reported(exit), |raw| {
            asked = Some(raw);
            OTHER
        });
        assert_eq!(got, expected, "{exit:?}");
        // The back end is asked to name only what the neutral form does not know.
        let other = matches!(
            got,
            Outcome::Deliver {
                exit: VmExit::Other,
                qual0: OTHER,
                ..
            }
        );
        assert_eq!(asked, other.then_some(RAW), "{exit:?}");
    }
    assert_eq!(seen, [true; VARIANTS], "a hardware reason without a row");
}

/// Reasons the kernel handles itself or makes up: never what a hardware exit delivers.
fn kernel_only(e: VmExit) -> bool {
    matches!(
        e,
        VmExit::Startup
            | VmExit::Recall
            | VmExit::PageFault
            | VmExit::ControlRegister
            | VmExit::Invlpg
            | VmExit::Profile
    )
}

#[test]
fn no_decoded_exit_delivers_a_kernel_only_reason() {
    let quals = [0, 1, 0x10, 0x38, u64::MAX];
    let vmx = (0..80u32).chain([1 << 31 | 33, u32::MAX]).flat_map(|r| {
        quals
            .iter()
            .map(move |&q| (decode_vmx(r, q, q.rotate_left(12)), u64::from(r)))
    });
    let svm = (0..0x500u64)
        .chain([0xffff_ffff, u64::MAX])
        .flat_map(|c| quals.iter().map(move |&q| (decode_svm(c, q, !q), c)));
    for (exit, raw) in vmx.chain(svm) {
        let e = Reported {
            exit,
            raw,
            exception: 0,
            info2: 0,
        };
        if let Outcome::Deliver {
            exit: delivered, ..
        } = neutral(&e, |_| OTHER)
        {
            assert!(
                !kernel_only(delivered),
                "{exit:?} delivered as {delivered:?}"
            );
        }
    }
}

#[test]
fn the_vtlb_takes_faults_control_registers_invlpg_and_enabled_hypercalls() {
    let cr = Exit::Cr(CrAccess::Read {
        cr: 0,
        gpr: Some(1),
    });
    for hypercalls in [false, true] {
        assert_eq!(
            shadow_reason(&Exit::Exception { vector: 14 }, hypercalls),
            Some(VmExit::PageFault)
        );
        assert_eq!(
            shadow_reason(&cr, hypercalls),
            Some(VmExit::ControlRegister)
        );
        assert_eq!(
            shadow_reason(&Exit::Invlpg, hypercalls),
            Some(VmExit::Invlpg)
        );
        assert_eq!(
            shadow_reason(&Exit::Hypercall, hypercalls),
            hypercalls.then_some(VmExit::Hypercall)
        );
    }
    let cr8 = Exit::Cr(CrAccess::Write {
        cr: 8,
        gpr: Some(0),
    });
    assert_eq!(shadow_reason(&cr8, true), None, "CR8 is the VMM's");
    for (exit, _) in table() {
        let vtlb = matches!(
            exit,
            Exit::Exception { vector: 14 } | Exit::Cr(_) | Exit::Invlpg | Exit::Hypercall
        );
        assert_eq!(shadow_reason(&exit, true).is_some(), vtlb, "{exit:?}");
    }
}

#[test]
fn memory_fault_access_bits() {
    use vmabi::access::{EXEC, PRESENT, READ, WRITE};
    assert_eq!(access(false, false, false), READ);
    assert_eq!(access(true, false, false), WRITE);
    assert_eq!(access(false, true, true), EXEC | PRESENT);
    assert_eq!(access(true, true, true), WRITE | PRESENT);
}

#[test]
fn only_a_failed_entry_is_delivered_without_state() {
    assert!(!Before::LogEntryFailure { reason: 33 }.carries_state());
    assert!(Before::Nothing.carries_state());
    assert!(Before::CloseWindow.carries_state());
    assert!(Before::ReportMisconfiguration { gpa: 0x1000 }.carries_state());
}
