//! The checks VMRUN applies to a guest state (AMD APM vol. 2, "Canonicalization and Consistency
//! Checks"), done by the kernel before VMRUN so that a VMM's nonsense becomes a typed error
//! instead of a VMEXIT_INVALID (or worse, on an emulator that checks less than hardware).

/// The guest-state values the checks look at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestState {
    pub efer: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub dr6: u64,
    pub dr7: u64,
    /// CS attributes: long mode (L) and default size (D).
    pub cs_long: bool,
    pub cs_default32: bool,
    pub asid: u32,
    /// Whether the VMCB intercepts VMRUN (required).
    pub intercepts_vmrun: bool,
}

/// The first rule a guest state breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateError {
    SvmeClear,
    CacheDisableWithoutNotWriteThrough,
    Cr0UpperBits,
    Cr3ReservedBits,
    Cr4ReservedBits,
    DebugUpperBits,
    EferReservedBits,
    LongModeWithoutPae,
    LongModeWithoutProtectedMode,
    LongModeCodeWithDefault32,
    AsidZero,
    VmrunNotIntercepted,
}

const EFER_SCE: u64 = 1 << 0;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
const EFER_SVME: u64 = 1 << 12;
const EFER_LMSLE: u64 = 1 << 13;
const EFER_FFXSR: u64 = 1 << 14;
const EFER_TCE: u64 = 1 << 15;
const EFER_DEFINED: u64 =
    EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE | EFER_SVME | EFER_LMSLE | EFER_FFXSR | EFER_TCE;
const CR0_PE: u64 = 1 << 0;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
/// CR4 bits this kernel lets a guest set (VME..SMAP, without the ones it does not virtualise).
const CR4_ALLOWED: u64 = 0x0037_07ff;
/// CR3 bits that must be zero in long mode: above the 52-bit physical address.
const CR3_LONG_MBZ: u64 = 0xfff0_0000_0000_0000;

/// What the host CPU supports of the bits a guest state names: VMRUN refuses an EFER or CR4
/// bit the CPU does not implement and CR3 bits above its physical-address width (APM vol. 2,
/// 15.5.1: "any MBZ bit of CR3/CR4/EFER is set"; which bits are MBZ follows CPUID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// EFER bits the CPU implements.
    pub efer: u64,
    /// CR4 bits the CPU implements.
    pub cr4: u64,
    /// MAXPHYADDR (CPUID Fn8000_0008_EAX[7:0]).
    pub maxphyaddr: u8,
}

impl Features {
    /// A CPU with every bit this checker knows of and 52 physical-address bits.
    pub const ALL: Features = Features {
        efer: EFER_DEFINED,
        cr4: CR4_ALLOWED,
        maxphyaddr: 52,
    };

    /// The EFER bits a guest may never set, whatever the CPU: LMSLE (long-mode segment limits,
    /// which KVM does not offer either and QEMU's VMRUN refuses).
    pub const NEVER_EFER: u64 = EFER_LMSLE;
}

/// Checks `s` as VMRUN would on a CPU with every feature ([`Features::ALL`]).
pub fn check(s: &GuestState) -> Result<(), StateError> {
    check_on(s, &Features::ALL)
}

/// Checks `s` as VMRUN would on a CPU with `features`; `Ok` means VMRUN will not fail on these
/// fields.
pub fn check_on(s: &GuestState, features: &Features) -> Result<(), StateError> {
    let long_mode = s.efer & EFER_LME != 0 && s.cr0 & CR0_PG != 0;
    if s.efer & EFER_SVME == 0 {
        return Err(StateError::SvmeClear);
    }
    if s.efer & !(EFER_DEFINED & features.efer) != 0 {
        return Err(StateError::EferReservedBits);
    }
    if s.cr0 & CR0_CD == 0 && s.cr0 & CR0_NW != 0 {
        return Err(StateError::CacheDisableWithoutNotWriteThrough);
    }
    if s.cr0 >> 32 != 0 {
        return Err(StateError::Cr0UpperBits);
    }
    let cr3_mbz = CR3_LONG_MBZ | !0u64 << features.maxphyaddr.clamp(32, 52);
    if long_mode && s.cr3 & cr3_mbz != 0 {
        return Err(StateError::Cr3ReservedBits);
    }
    if s.cr4 & !(CR4_ALLOWED & features.cr4) != 0 {
        return Err(StateError::Cr4ReservedBits);
    }
    if s.dr6 >> 32 != 0 || s.dr7 >> 32 != 0 {
        return Err(StateError::DebugUpperBits);
    }
    if long_mode && s.cr4 & CR4_PAE == 0 {
        return Err(StateError::LongModeWithoutPae);
    }
    if long_mode && s.cr0 & CR0_PE == 0 {
        return Err(StateError::LongModeWithoutProtectedMode);
    }
    if long_mode && s.cr4 & CR4_PAE != 0 && s.cs_long && s.cs_default32 {
        return Err(StateError::LongModeCodeWithDefault32);
    }
    if s.asid == 0 {
        return Err(StateError::AsidZero);
    }
    if !s.intercepts_vmrun {
        return Err(StateError::VmrunNotIntercepted);
    }
    Ok(())
}

#[cfg(test)]
#[path = "svm_state_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_the_cpu_lacks_are_refused() {
        let cpu = Features {
            efer: EFER_DEFINED & !(EFER_FFXSR | EFER_TCE | EFER_LMSLE),
            cr4: CR4_ALLOWED & !((1 << 16) | (1 << 21)),
            maxphyaddr: 40,
        };
        let good = long_mode();
        assert_eq!(check_on(&good, &cpu), Ok(()));
        for bit in [EFER_FFXSR, EFER_TCE, EFER_LMSLE] {
            let s = GuestState {
                efer: good.efer | bit,
                ..good
            };
            assert_eq!(check(&s), Ok(()), "{bit:#x} on a CPU that has it");
            assert_eq!(check_on(&s, &cpu), Err(StateError::EferReservedBits));
        }
        for bit in [1u64 << 16, 1 << 21] {
            let s = GuestState {
                cr4: good.cr4 | bit,
                ..good
            };
            assert_eq!(check(&s), Ok(()));
            assert_eq!(check_on(&s, &cpu), Err(StateError::Cr4ReservedBits));
        }
        let high = GuestState {
            cr3: 1 << 40,
            ..good
        };
        assert_eq!(check(&high), Ok(()));
        assert_eq!(check_on(&high, &cpu), Err(StateError::Cr3ReservedBits));
        let below = GuestState {
            cr3: (1 << 40) - 0x1000,
            ..good
        };
        assert_eq!(check_on(&below, &cpu), Ok(()));
        // Out of long mode CR3 is 32 bits wide whatever MAXPHYADDR says.
        let protected = GuestState {
            efer: EFER_SVME,
            cr0: CR0_PE,
            cr3: 0xffff_f000,
            cs_long: false,
            ..good
        };
        assert_eq!(check_on(&protected, &cpu), Ok(()));
    }

    /// A 64-bit guest as the loader of a long-mode ELF would start it.
    fn long_mode() -> GuestState {
        GuestState {
            efer: EFER_SVME | EFER_LME | EFER_LMA | EFER_NXE,
            cr0: CR0_PE | CR0_PG | (1 << 16),
            cr3: 0x1000,
            cr4: CR4_PAE,
            dr6: 0xffff_0ff0,
            dr7: 0x400,
            cs_long: true,
            cs_default32: false,
            asid: 1,
            intercepts_vmrun: true,
        }
    }

    #[test]
    fn good_states_pass() {
        assert_eq!(check(&long_mode()), Ok(()));
        // Real mode: paging and protection off, no long mode.
        let real = GuestState {
            efer: EFER_SVME,
            cr0: 0x10,
            cr4: 0,
            cs_long: false,
            ..long_mode()
        };
        assert_eq!(check(&real), Ok(()));
    }

    #[test]
    fn each_rule_is_enforced() {
        let cases: [(GuestState, StateError); 11] = [
            (
                GuestState {
                    efer: EFER_LME,
                    ..long_mode()
                },
                StateError::SvmeClear,
            ),
            (
                GuestState {
                    efer: EFER_SVME | (1 << 20),
                    ..long_mode()
                },
                StateError::EferReservedBits,
            ),
            (
                GuestState {
                    cr0: CR0_PE | CR0_PG | CR0_NW,
                    ..long_mode()
                },
                StateError::CacheDisableWithoutNotWriteThrough,
            ),
            (
                GuestState {
                    cr0: CR0_PE | CR0_PG | (1 << 40),
                    ..long_mode()
                },
                StateError::Cr0UpperBits,
            ),
            (
                GuestState {
                    cr3: 1 << 60,
                    ..long_mode()
                },
                StateError::Cr3ReservedBits,
            ),
            (
                GuestState {
                    cr4: CR4_PAE | (1 << 12),
                    ..long_mode()
                },
                StateError::Cr4ReservedBits,
            ),
            (
                GuestState {
                    dr7: 1 << 33,
                    ..long_mode()
                },
                StateError::DebugUpperBits,
            ),
            (
                GuestState {
                    cr4: 0,
                    ..long_mode()
                },
                StateError::LongModeWithoutPae,
            ),
            (
                GuestState {
                    cr0: CR0_PG,
                    ..long_mode()
                },
                StateError::LongModeWithoutProtectedMode,
            ),
            (
                GuestState {
                    cs_default32: true,
                    ..long_mode()
                },
                StateError::LongModeCodeWithDefault32,
            ),
            (
                GuestState {
                    asid: 0,
                    ..long_mode()
                },
                StateError::AsidZero,
            ),
        ];
        for (state, error) in cases {
            assert_eq!(check(&state), Err(error), "{state:?}");
        }
        let no_intercept = GuestState {
            intercepts_vmrun: false,
            ..long_mode()
        };
        assert_eq!(check(&no_intercept), Err(StateError::VmrunNotIntercepted));
    }

    #[test]
    fn cd_with_nw_is_allowed() {
        let s = GuestState {
            cr0: CR0_PE | CR0_PG | CR0_CD | CR0_NW,
            ..long_mode()
        };
        assert_eq!(check(&s), Ok(()));
    }
}
