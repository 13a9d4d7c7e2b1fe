//! VMX control fields and the capability MSRs that bound them (Intel SDM vol. 3, appendix A).
//!
//! Each control MSR reports, in bits 31:0, the controls that must be 1 (allowed 0-settings) and,
//! in bits 63:32, the controls that may be 1 (allowed 1-settings). When bit 55 of IA32_VMX_BASIC
//! is set, the "true" MSRs report the same for the pin-based, primary processor-based, exit and
//! entry controls with fewer forced bits, and must be used instead.

/// MSR numbers.
pub mod msr {
    pub const BASIC: u32 = 0x480;
    pub const PINBASED_CTLS: u32 = 0x481;
    pub const PROCBASED_CTLS: u32 = 0x482;
    pub const EXIT_CTLS: u32 = 0x483;
    pub const ENTRY_CTLS: u32 = 0x484;
    pub const PROCBASED_CTLS2: u32 = 0x48b;
    pub const EPT_VPID_CAP: u32 = 0x48c;
    pub const TRUE_PINBASED_CTLS: u32 = 0x48d;
    pub const TRUE_PROCBASED_CTLS: u32 = 0x48e;
    pub const TRUE_EXIT_CTLS: u32 = 0x48f;
    pub const TRUE_ENTRY_CTLS: u32 = 0x490;
}

/// IA32_VMX_BASIC bit 55: the true control MSRs exist.
const BASIC_TRUE_CONTROLS: u64 = 1 << 55;

/// The four control words whose bounds have a "true" MSR, and the secondary controls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Controls {
    PinBased,
    PrimaryProcBased,
    SecondaryProcBased,
    Exit,
    Entry,
}

impl Controls {
    /// The MSR that bounds these controls on a CPU whose IA32_VMX_BASIC is `basic`.
    pub const fn capability_msr(self, basic: u64) -> u32 {
        let true_msrs = basic & BASIC_TRUE_CONTROLS != 0;
        match (self, true_msrs) {
            (Controls::PinBased, false) => msr::PINBASED_CTLS,
            (Controls::PinBased, true) => msr::TRUE_PINBASED_CTLS,
            (Controls::PrimaryProcBased, false) => msr::PROCBASED_CTLS,
            (Controls::PrimaryProcBased, true) => msr::TRUE_PROCBASED_CTLS,
            (Controls::Exit, false) => msr::EXIT_CTLS,
            (Controls::Exit, true) => msr::TRUE_EXIT_CTLS,
            (Controls::Entry, false) => msr::ENTRY_CTLS,
            (Controls::Entry, true) => msr::TRUE_ENTRY_CTLS,
            (Controls::SecondaryProcBased, _) => msr::PROCBASED_CTLS2,
        }
    }
}

/// The kernel asked for controls the CPU cannot set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsupported {
    pub controls: Controls,
    /// The requested bits that must stay 0 on this CPU.
    pub bits: u32,
}

impl core::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(
            f,
            "{:?} controls {:#010x} are not supported by this CPU",
            self.controls, self.bits
        )
    }
}

/// The value to write for `wanted` controls: every forced-1 bit set, and an error if a wanted
/// bit may not be 1. Bits neither wanted nor forced stay 0.
pub fn adjust(controls: Controls, wanted: u32, capability: u64) -> Result<u32, Unsupported> {
    let must_be_one = capability as u32;
    let may_be_one = (capability >> 32) as u32;
    let refused = wanted & !may_be_one;
    if refused != 0 {
        return Err(Unsupported {
            controls,
            bits: refused,
        });
    }
    Ok(((wanted | must_be_one) & may_be_one) | must_be_one)
}

/// Whether the CPU may run with `control` set to 1.
pub const fn may_set(capability: u64, control: u32) -> bool {
    (capability >> 32) as u32 & control == control
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(must: u32, may: u32) -> u64 {
        (u64::from(may) << 32) | u64::from(must)
    }

    #[test]
    fn forced_bits_are_added_and_free_bits_follow_the_wish() {
        let c = cap(0b0001, 0b1111);
        assert_eq!(adjust(Controls::Exit, 0, c), Ok(0b0001));
        assert_eq!(adjust(Controls::Exit, 0b0110, c), Ok(0b0111));
    }

    #[test]
    fn bits_that_must_stay_zero_are_refused() {
        let c = cap(0, 0b0011);
        assert_eq!(
            adjust(Controls::PinBased, 0b0101, c),
            Err(Unsupported {
                controls: Controls::PinBased,
                bits: 0b0100
            })
        );
        assert!(may_set(c, 0b0010));
        assert!(!may_set(c, 0b0110));
    }

    #[test]
    fn a_forced_bit_outside_the_allowed_ones_is_still_forced() {
        // Contradictory MSR values (forced but not allowed) must not panic; the forced bit wins
        // so that VM entry, not this function, reports the impossibility.
        let c = cap(0b1000, 0b0001);
        assert_eq!(adjust(Controls::Entry, 0b0001, c), Ok(0b1001));
    }

    #[test]
    fn true_msrs_replace_the_legacy_ones_when_basic_says_so() {
        let legacy = 0;
        let with_true = BASIC_TRUE_CONTROLS;
        assert_eq!(
            Controls::PinBased.capability_msr(legacy),
            msr::PINBASED_CTLS
        );
        assert_eq!(
            Controls::PinBased.capability_msr(with_true),
            msr::TRUE_PINBASED_CTLS
        );
        assert_eq!(
            Controls::PrimaryProcBased.capability_msr(with_true),
            msr::TRUE_PROCBASED_CTLS
        );
        assert_eq!(
            Controls::Exit.capability_msr(with_true),
            msr::TRUE_EXIT_CTLS
        );
        assert_eq!(
            Controls::Entry.capability_msr(with_true),
            msr::TRUE_ENTRY_CTLS
        );
        // Secondary controls have no true MSR.
        assert_eq!(
            Controls::SecondaryProcBased.capability_msr(with_true),
            msr::PROCBASED_CTLS2
        );
    }

    #[test]
    fn every_value_is_handled_without_panicking() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let wanted = (x >> 11) as u32;
            if let Ok(value) = adjust(Controls::Exit, wanted, x) {
                assert_eq!(value & x as u32, x as u32, "forced bits present");
                assert_eq!(value & wanted, wanted, "wanted bits present");
            }
        }
    }
}
