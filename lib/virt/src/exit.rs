//! VM exits of both back ends, decoded into one architecture-neutral [`Exit`].
//!
//! VMX reports a basic exit reason and an exit qualification (Intel SDM vol. 3, "Basic VM-Exit
//! Information" and the qualification tables); SVM reports EXITCODE, EXITINFO1 and EXITINFO2
//! (AMD APM vol. 2, appendix C and section 15.10). Both are inputs the kernel does not control,
//! so every value decodes to something, [`Exit::Unknown`] at worst.
//!
//! [`neutral`] then says what the kernel does with an exit: take it, reflect it, or deliver
//! it to the VMM as an `abi::vm::Exit`; [`shadow_reason`] which exits a shadow-mode vTLB takes.

mod neutral;

pub use neutral::{access, neutral, shadow_reason, Before, Outcome, Reported};

/// Direction and width of a port access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortIo {
    pub port: u16,
    /// 1, 2 or 4.
    pub size: u8,
    pub input: bool,
    /// INS/OUTS.
    pub string: bool,
    pub rep: bool,
}

/// A move to or from a control register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrAccess {
    /// `mov crN, gpr` (`gpr` = None when the hardware does not say which, as SVM without decode
    /// assists).
    Write {
        cr: u8,
        gpr: Option<u8>,
    },
    Read {
        cr: u8,
        gpr: Option<u8>,
    },
    /// CLTS or LMSW (VMX only reports these separately).
    Other {
        cr: u8,
    },
}

/// What a nested-paging fault says about the guest-physical access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NestedFault {
    pub gpa: u64,
    pub write: bool,
    pub execute: bool,
    /// The translation existed but did not allow the access (else: not present).
    pub present: bool,
}

/// An architecture-neutral VM exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Exception {
        vector: u8,
    },
    ExternalInterrupt,
    Nmi,
    TripleFault,
    InterruptWindow,
    Cpuid,
    Hlt,
    Invlpg,
    Hypercall,
    Cr(CrAccess),
    /// MOV to or from debug register `dr` (`gpr` = None when the hardware does not say which,
    /// as SVM without decode assists).
    Dr {
        dr: u8,
        write: bool,
        gpr: Option<u8>,
    },
    Io(PortIo),
    Rdmsr,
    Wrmsr,
    NestedPageFault(NestedFault),
    /// EPT misconfiguration: a kernel bug in the tables it built.
    NestedMisconfiguration {
        gpa: u64,
    },
    PreemptionTimer,
    /// VM entry failed (VMX: bit 31 of the exit reason; SVM: VMEXIT_INVALID).
    EntryFailure {
        reason: u32,
    },
    Unknown {
        reason: u64,
    },
}

/// Decodes a VMX exit: `reason` (the VM-exit reason field), `qualification`, and the guest
/// physical address field (meaningful for EPT exits only).
pub fn decode_vmx(reason: u32, qualification: u64, guest_physical: u64) -> Exit {
    if reason & (1 << 31) != 0 {
        return Exit::EntryFailure {
            reason: reason & 0xffff,
        };
    }
    match reason & 0xffff {
        0 => Exit::Exception { vector: 0 }, // the vector is in the interruption-information field
        1 => Exit::ExternalInterrupt,
        2 => Exit::TripleFault,
        7 => Exit::InterruptWindow,
        10 => Exit::Cpuid,
        12 => Exit::Hlt,
        14 => Exit::Invlpg,
        18 => Exit::Hypercall,
        28 => Exit::Cr(vmx_cr(qualification)),
        // Bits 2:0 the debug register, bit 4 the direction (1: MOV from DR), bits 11:8 the GPR.
        29 => Exit::Dr {
            dr: (qualification & 0b111) as u8,
            write: qualification & (1 << 4) == 0,
            gpr: Some(((qualification >> 8) & 0xf) as u8),
        },
        30 => Exit::Io(vmx_io(qualification)),
        31 => Exit::Rdmsr,
        32 => Exit::Wrmsr,
        48 => Exit::NestedPageFault(NestedFault {
            gpa: guest_physical,
            write: qualification & (1 << 1) != 0,
            execute: qualification & (1 << 2) != 0,
            // Bits 5:3: the entry's read/write/execute permissions; any set means present.
            present: qualification & 0b11_1000 != 0,
        }),
        49 => Exit::NestedMisconfiguration {
            gpa: guest_physical,
        },
        52 => Exit::PreemptionTimer,
        other => Exit::Unknown {
            reason: u64::from(other),
        },
    }
}

fn vmx_cr(q: u64) -> CrAccess {
    let cr = (q & 0xf) as u8;
    let gpr = Some(((q >> 8) & 0xf) as u8);
    match (q >> 4) & 0b11 {
        0 => CrAccess::Write { cr, gpr },
        1 => CrAccess::Read { cr, gpr },
        _ => CrAccess::Other { cr },
    }
}

fn vmx_io(q: u64) -> PortIo {
    PortIo {
        port: (q >> 16) as u16,
        // Bits 2:0 hold size - 1 (0, 1 or 3); a reserved value is reported as 4 bytes.
        size: match q & 0b111 {
            0 => 1,
            1 => 2,
            _ => 4,
        },
        input: q & (1 << 3) != 0,
        string: q & (1 << 4) != 0,
        rep: q & (1 << 5) != 0,
    }
}

/// SVM exit codes this module names.
pub mod svm_code {
    pub const CR_READ_FIRST: u64 = 0x00;
    pub const CR_WRITE_FIRST: u64 = 0x10;
    pub const DR_READ_FIRST: u64 = 0x20;
    pub const DR_WRITE_FIRST: u64 = 0x30;
    pub const EXCEPTION_FIRST: u64 = 0x40;
    pub const INTR: u64 = 0x60;
    pub const NMI: u64 = 0x61;
    pub const VINTR: u64 = 0x64;
    pub const CPUID: u64 = 0x72;
    pub const HLT: u64 = 0x78;
    pub const INVLPG: u64 = 0x79;
    pub const IOIO: u64 = 0x7b;
    pub const MSR: u64 = 0x7c;
    pub const SHUTDOWN: u64 = 0x7f;
    pub const VMMCALL: u64 = 0x81;
    pub const NPF: u64 = 0x400;
    /// VMEXIT_INVALID. QEMU's TCG reports it as 0x0000_0000_ffff_ffff, so compare the low half.
    pub const INVALID_LOW: u32 = 0xffff_ffff;
}

/// Decodes an SVM exit from EXITCODE, EXITINFO1 and EXITINFO2.
pub fn decode_svm(code: u64, info1: u64, info2: u64) -> Exit {
    use svm_code::*;
    if code as u32 == INVALID_LOW {
        return Exit::EntryFailure {
            reason: INVALID_LOW,
        };
    }
    match code {
        c if c < CR_WRITE_FIRST => Exit::Cr(CrAccess::Read {
            cr: c as u8,
            gpr: svm_cr_gpr(info1),
        }),
        c if c < CR_WRITE_FIRST + 16 => Exit::Cr(CrAccess::Write {
            cr: (c - CR_WRITE_FIRST) as u8,
            gpr: svm_cr_gpr(info1),
        }),
        c if (DR_READ_FIRST..DR_WRITE_FIRST + 16).contains(&c) => Exit::Dr {
            dr: (c & 0xf) as u8,
            write: c >= DR_WRITE_FIRST,
            gpr: svm_cr_gpr(info1),
        },
        c if (EXCEPTION_FIRST..EXCEPTION_FIRST + 32).contains(&c) => Exit::Exception {
            vector: (c - EXCEPTION_FIRST) as u8,
        },
        INTR => Exit::ExternalInterrupt,
        NMI => Exit::Nmi,
        VINTR => Exit::InterruptWindow,
        CPUID => Exit::Cpuid,
        HLT => Exit::Hlt,
        INVLPG => Exit::Invlpg,
        IOIO => Exit::Io(PortIo {
            port: (info1 >> 16) as u16,
            size: if info1 & (1 << 4) != 0 {
                1
            } else if info1 & (1 << 5) != 0 {
                2
            } else {
                4
            },
            input: info1 & 1 != 0,
            string: info1 & (1 << 2) != 0,
            rep: info1 & (1 << 3) != 0,
        }),
        MSR if info1 == 0 => Exit::Rdmsr,
        MSR => Exit::Wrmsr,
        SHUTDOWN => Exit::TripleFault,
        VMMCALL => Exit::Hypercall,
        NPF => Exit::NestedPageFault(NestedFault {
            gpa: info2,
            // EXITINFO1 holds a page-fault error code: P, W, U/S, RSV, I/D.
            present: info1 & 1 != 0,
            write: info1 & (1 << 1) != 0,
            execute: info1 & (1 << 4) != 0,
        }),
        other => Exit::Unknown { reason: other },
    }
}

/// With decode assists, EXITINFO1 bit 63 marks a MOV CR or DR and bits 3:0 name its GPR; without them
/// (QEMU's TCG) EXITINFO1 is 0 and the instruction must be decoded.
fn svm_cr_gpr(info1: u64) -> Option<u8> {
    (info1 & (1 << 63) != 0).then_some((info1 & 0xf) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmx_io_qualification() {
        // `in al, dx` from port 0x3fd: size 1, IN.
        let q = (0x3fd << 16) | (1 << 3);
        assert_eq!(
            decode_vmx(30, q, 0),
            Exit::Io(PortIo {
                port: 0x3fd,
                size: 1,
                input: true,
                string: false,
                rep: false
            })
        );
        // `rep outsd` to 0xe9: size 4, string, rep.
        let q = (0xe9 << 16) | 3 | (1 << 4) | (1 << 5);
        assert_eq!(
            decode_vmx(30, q, 0),
            Exit::Io(PortIo {
                port: 0xe9,
                size: 4,
                input: false,
                string: true,
                rep: true
            })
        );
    }

    #[test]
    fn vmx_cr_and_ept_and_failures() {
        // mov cr3, rax (GPR 0), then mov rbx, cr0 (GPR 3).
        assert_eq!(
            decode_vmx(28, 3, 0),
            Exit::Cr(CrAccess::Write {
                cr: 3,
                gpr: Some(0)
            })
        );
        assert_eq!(
            decode_vmx(28, (1 << 4) | (3 << 8), 0),
            Exit::Cr(CrAccess::Read {
                cr: 0,
                gpr: Some(3)
            })
        );
        assert_eq!(
            decode_vmx(28, 2 << 4, 0),
            Exit::Cr(CrAccess::Other { cr: 0 })
        );
        // EPT violation: a write to a present read-only page.
        assert_eq!(
            decode_vmx(48, (1 << 1) | (1 << 3), 0x1000),
            Exit::NestedPageFault(NestedFault {
                gpa: 0x1000,
                write: true,
                execute: false,
                present: true
            })
        );
        assert_eq!(
            decode_vmx(0x8000_0021, 0, 0),
            Exit::EntryFailure { reason: 33 }
        );
        assert_eq!(decode_vmx(9999, 0, 0), Exit::Unknown { reason: 9999 });
        // mov dr7, rcx (to DR: bit 4 clear), then mov r10, dr6 (from DR).
        assert_eq!(
            decode_vmx(29, 7 | (1 << 8), 0),
            Exit::Dr {
                dr: 7,
                write: true,
                gpr: Some(1)
            }
        );
        assert_eq!(
            decode_vmx(29, 6 | (1 << 4) | (10 << 8), 0),
            Exit::Dr {
                dr: 6,
                write: false,
                gpr: Some(10)
            }
        );
    }

    #[test]
    fn svm_codes() {
        // `out dx, al` to 0xf4 (8-bit): TYPE 0, SZ8.
        let info1 = (0xf4 << 16) | (1 << 4);
        assert_eq!(
            decode_svm(svm_code::IOIO, info1, 0),
            Exit::Io(PortIo {
                port: 0xf4,
                size: 1,
                input: false,
                string: false,
                rep: false
            })
        );
        assert_eq!(decode_svm(svm_code::MSR, 1, 0), Exit::Wrmsr);
        assert_eq!(decode_svm(svm_code::MSR, 0, 0), Exit::Rdmsr);
        assert_eq!(decode_svm(0x4e, 0, 0), Exit::Exception { vector: 14 });
        assert_eq!(
            decode_svm(0x27, 0, 0),
            Exit::Dr {
                dr: 7,
                write: false,
                gpr: None
            }
        );
        assert_eq!(
            decode_svm(0x30, (1 << 63) | 9, 0),
            Exit::Dr {
                dr: 0,
                write: true,
                gpr: Some(9)
            }
        );
        assert_eq!(
            decode_svm(0x13, 0, 0),
            Exit::Cr(CrAccess::Write { cr: 3, gpr: None })
        );
        assert_eq!(
            decode_svm(0x13, (1 << 63) | 2, 0),
            Exit::Cr(CrAccess::Write {
                cr: 3,
                gpr: Some(2)
            })
        );
        assert_eq!(
            decode_svm(svm_code::NPF, 0b111 | (1 << 32), 0xdead_0000),
            Exit::NestedPageFault(NestedFault {
                gpa: 0xdead_0000,
                write: true,
                execute: false,
                present: true
            })
        );
        // QEMU's TCG writes VMEXIT_INVALID as 0x0000_0000_ffff_ffff.
        assert_eq!(
            decode_svm(0xffff_ffff, 0, 0),
            Exit::EntryFailure {
                reason: 0xffff_ffff
            }
        );
        assert_eq!(
            decode_svm(u64::MAX, 0, 0),
            Exit::EntryFailure {
                reason: 0xffff_ffff
            }
        );
    }

    #[test]
    fn every_input_decodes() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let _ = decode_vmx(x as u32, x.rotate_left(17), x.rotate_left(31));
            let _ = decode_svm(x & 0xfff, x.rotate_left(9), x.rotate_left(40));
        }
    }
}
