//! The MSRs a guest may read and write: an allow-list. Everything not listed here raises #GP in
//! the guest, as on a CPU that lacks the MSR.
//!
//! The kernel never lets these exit: FS_BASE, GS_BASE, KERNEL_GS_BASE, STAR, LSTAR, CSTAR,
//! SFMASK, SYSENTER_CS/ESP/EIP and (where the CPU has RDTSCP) TSC_AUX go straight to the guest's
//! own copies.
//!
//! | MSR | read | write |
//! |---|---|---|
//! | `IA32_TSC` (0x10) | the guest clock the caller gives | ignored |
//! | `IA32_APIC_BASE` (0x1b) | `0xfee0_0900` (xAPIC enabled, BSP) | the same value: ignored; anything else #GP |
//! | `IA32_FEATURE_CONTROL` (0x3a) | 1 (locked, VMX off) | #GP |
//! | `IA32_BIOS_SIGN_ID` (0x8b) | 0 (no microcode revision) | ignored |
//! | `IA32_MTRRCAP` (0xfe) | 0 (no variable or fixed MTRRs, no WC) | #GP |
//! | `IA32_MCG_CAP` (0x179) | 0 (no machine-check banks) | #GP |
//! | `IA32_MCG_STATUS` (0x17a) | stored | stored |
//! | `IA32_MISC_ENABLE` (0x1a0) | [`MISC_ENABLE_VALUE`] at reset, then what the guest wrote | stored; the "BTS/PEBS unavailable" bits (11, 12) stay set |
//! | `IA32_PAT` (0x277) | the vCPU's PAT | valid memory types only, into the vCPU's PAT |
//! | `IA32_MTRR_DEF_TYPE` (0x2ff) | stored | type and enable bits only |
//! | `IA32_EFER` (0xc000_0080) | the vCPU's EFER | SCE, LME, NXE; LMA ignored; LME may not change while paging is on |
//! | AMD legacy performance counters `PERF_CTL0..3`, `PERF_CTR0..3` (0xc001_0000..=0xc001_0007) | 0 (no counters run) | ignored |
//!
//! Where this leaves a choice, it answers as KVM does without a virtual PMU or machine-check
//! banks: kernels probe these MSRs on every CPU (Linux's perf and MCE set-up) and stop on #GP.

/// MSR numbers.
pub mod index {
    pub const TSC: u32 = 0x10;
    pub const APIC_BASE: u32 = 0x1b;
    pub const FEATURE_CONTROL: u32 = 0x3a;
    pub const BIOS_SIGN_ID: u32 = 0x8b;
    pub const MTRRCAP: u32 = 0xfe;
    pub const MCG_CAP: u32 = 0x179;
    pub const MCG_STATUS: u32 = 0x17a;
    pub const MISC_ENABLE: u32 = 0x1a0;
    pub const PAT: u32 = 0x277;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const EFER: u32 = 0xc000_0080;
    /// AMD's legacy performance-event selects (`PERF_CTL0..3`) and counters (`PERF_CTR0..3`).
    pub const AMD_PERF_FIRST: u32 = 0xc001_0000;
    pub const AMD_PERF_LAST: u32 = 0xc001_0007;
}

/// EFER bits.
pub mod efer {
    pub const SCE: u64 = 1 << 0;
    pub const LME: u64 = 1 << 8;
    pub const LMA: u64 = 1 << 10;
    pub const NXE: u64 = 1 << 11;
}

/// `IA32_APIC_BASE`: base `0xfee0_0000`, enabled (bit 11), bootstrap processor (bit 8).
pub const APIC_BASE_VALUE: u64 = 0xfee0_0900;
/// `IA32_FEATURE_CONTROL`: locked, VMX disabled inside and outside SMX.
pub const FEATURE_CONTROL_VALUE: u64 = 1;
/// `IA32_MISC_ENABLE`: fast strings (bit 0), branch-trace storage unavailable (11), PEBS
/// unavailable (12).
pub const MISC_ENABLE_VALUE: u64 = 1 | 1 << 11 | 1 << 12;
/// `IA32_MISC_ENABLE` bits that report what the CPU lacks: a write cannot clear them.
const MISC_ENABLE_FIXED: u64 = 1 << 11 | 1 << 12;
/// `IA32_MTRR_DEF_TYPE` at reset: MTRRs disabled, default type uncacheable.
pub const MTRR_DEF_TYPE_RESET: u64 = 0;
/// `IA32_PAT` at reset.
pub const PAT_RESET: u64 = 0x0007_0406_0007_0406;

const CR0_PG: u64 = 1 << 31;

/// The vCPU state an MSR access may read (from the exit message's CONTROL and MSRS groups).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MsrContext {
    /// The guest's time-stamp counter (the exit's guest clock).
    pub tsc: u64,
    pub pat: u64,
    pub efer: u64,
    pub cr0: u64,
}

/// A write that lands in the vCPU state (a reply group), not in the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateWrite {
    /// New PAT (reply group MSRS).
    Pat(u64),
    /// New EFER (reply group CONTROL).
    Efer(u64),
}

/// What an MSR access does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrAction {
    /// A read: the value (EDX:EAX).
    Value(u64),
    /// A write into the vCPU state.
    WriteState(StateWrite),
    /// A write the policy took (stored or ignored).
    Ok,
    /// Raise #GP(0) in the guest.
    GeneralProtection,
}

/// The allow-list and the few MSR values it stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsrPolicy {
    mtrr_def_type: u64,
    misc_enable: u64,
    mcg_status: u64,
}

impl Default for MsrPolicy {
    fn default() -> Self {
        MsrPolicy::new()
    }
}

/// Whether `t` is a memory type valid in PAT (UC, WC, WT, WP, WB, UC-).
fn valid_pat_type(t: u8) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6 | 7)
}

/// Whether `t` is a memory type valid in an MTRR (UC, WC, WT, WP, WB).
fn valid_mtrr_type(t: u8) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6)
}

impl MsrPolicy {
    pub const fn new() -> MsrPolicy {
        MsrPolicy {
            mtrr_def_type: MTRR_DEF_TYPE_RESET,
            misc_enable: MISC_ENABLE_VALUE,
            mcg_status: 0,
        }
    }

    /// RDMSR `msr`.
    pub fn read(&self, msr: u32, ctx: &MsrContext) -> MsrAction {
        MsrAction::Value(match msr {
            index::TSC => ctx.tsc,
            index::APIC_BASE => APIC_BASE_VALUE,
            index::FEATURE_CONTROL => FEATURE_CONTROL_VALUE,
            index::BIOS_SIGN_ID | index::MTRRCAP | index::MCG_CAP => 0,
            index::MCG_STATUS => self.mcg_status,
            index::MISC_ENABLE => self.misc_enable,
            index::AMD_PERF_FIRST..=index::AMD_PERF_LAST => 0,
            index::PAT => ctx.pat,
            index::MTRR_DEF_TYPE => self.mtrr_def_type,
            index::EFER => ctx.efer,
            _ => return MsrAction::GeneralProtection,
        })
    }

    /// WRMSR `msr` with `value` (EDX:EAX).
    pub fn write(&mut self, msr: u32, value: u64, ctx: &MsrContext) -> MsrAction {
        match msr {
            index::TSC | index::BIOS_SIGN_ID => MsrAction::Ok,
            index::AMD_PERF_FIRST..=index::AMD_PERF_LAST => MsrAction::Ok,
            index::MISC_ENABLE => {
                self.misc_enable = value | MISC_ENABLE_FIXED;
                MsrAction::Ok
            }
            index::MCG_STATUS => {
                self.mcg_status = value;
                MsrAction::Ok
            }
            index::APIC_BASE if value == APIC_BASE_VALUE => MsrAction::Ok,
            index::PAT => {
                if value.to_le_bytes().iter().all(|&t| valid_pat_type(t)) {
                    MsrAction::WriteState(StateWrite::Pat(value))
                } else {
                    MsrAction::GeneralProtection
                }
            }
            index::MTRR_DEF_TYPE => {
                // Type (bits 0-7), fixed-range enable (10), enable (11).
                let reserved = !(0xff | 1 << 10 | 1 << 11);
                if value & reserved != 0 || !valid_mtrr_type(value as u8) {
                    return MsrAction::GeneralProtection;
                }
                self.mtrr_def_type = value;
                MsrAction::Ok
            }
            index::EFER => {
                let writable = efer::SCE | efer::LME | efer::NXE;
                if value & !(writable | efer::LMA) != 0 {
                    return MsrAction::GeneralProtection;
                }
                let paging = ctx.cr0 & CR0_PG != 0;
                if paging && (value ^ ctx.efer) & efer::LME != 0 {
                    return MsrAction::GeneralProtection;
                }
                let new = (value & writable) | (ctx.efer & efer::LMA);
                MsrAction::WriteState(StateWrite::Efer(new))
            }
            _ => MsrAction::GeneralProtection,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> MsrContext {
        MsrContext {
            tsc: 12345,
            pat: PAT_RESET,
            efer: efer::LME | efer::LMA,
            cr0: CR0_PG | 1,
        }
    }

    #[test]
    fn reads() {
        let p = MsrPolicy::new();
        let c = ctx();
        assert_eq!(p.read(index::TSC, &c), MsrAction::Value(12345));
        assert_eq!(p.read(index::APIC_BASE, &c), MsrAction::Value(0xfee0_0900));
        assert_eq!(p.read(index::FEATURE_CONTROL, &c), MsrAction::Value(1));
        assert_eq!(p.read(index::MTRRCAP, &c), MsrAction::Value(0));
        assert_eq!(p.read(index::PAT, &c), MsrAction::Value(PAT_RESET));
        assert_eq!(p.read(index::EFER, &c), MsrAction::Value(0x500));
        assert_eq!(
            p.read(index::MISC_ENABLE, &c),
            MsrAction::Value(MISC_ENABLE_VALUE)
        );
    }

    #[test]
    fn probed_msrs_answer_as_kvm_does() {
        let mut p = MsrPolicy::new();
        let c = ctx();
        for msr in index::AMD_PERF_FIRST..=index::AMD_PERF_LAST {
            assert_eq!(p.write(msr, 0x43_0076, &c), MsrAction::Ok, "{msr:#x}");
            assert_eq!(p.read(msr, &c), MsrAction::Value(0), "{msr:#x}");
        }
        assert_eq!(
            p.read(index::AMD_PERF_LAST + 1, &c),
            MsrAction::GeneralProtection
        );
        assert_eq!(
            p.read(index::AMD_PERF_FIRST - 1, &c),
            MsrAction::GeneralProtection
        );
        assert_eq!(p.read(index::MCG_CAP, &c), MsrAction::Value(0));
        assert_eq!(p.write(index::MCG_CAP, 0, &c), MsrAction::GeneralProtection);
        assert_eq!(p.write(index::MCG_STATUS, 4, &c), MsrAction::Ok);
        assert_eq!(p.read(index::MCG_STATUS, &c), MsrAction::Value(4));
        // MISC_ENABLE keeps what the guest writes, but not a claim to have BTS or PEBS.
        assert_eq!(p.write(index::MISC_ENABLE, 1 << 3, &c), MsrAction::Ok);
        assert_eq!(
            p.read(index::MISC_ENABLE, &c),
            MsrAction::Value(1 << 3 | 1 << 11 | 1 << 12)
        );
    }

    #[test]
    fn unknown_msrs_fault() {
        let mut p = MsrPolicy::new();
        let c = ctx();
        for msr in [
            0,
            0x1,
            0x3b,
            0x17b,
            0x480,
            0xc001_0114,
            0xc000_0081,
            u32::MAX,
        ] {
            assert_eq!(p.read(msr, &c), MsrAction::GeneralProtection, "{msr:#x}");
            assert_eq!(
                p.write(msr, 0, &c),
                MsrAction::GeneralProtection,
                "{msr:#x}"
            );
        }
    }

    #[test]
    fn read_only_msrs() {
        let mut p = MsrPolicy::new();
        let c = ctx();
        assert_eq!(
            p.write(index::FEATURE_CONTROL, 5, &c),
            MsrAction::GeneralProtection
        );
        assert_eq!(p.write(index::MTRRCAP, 0, &c), MsrAction::GeneralProtection);
        assert_eq!(p.write(index::TSC, 0, &c), MsrAction::Ok);
        assert_eq!(p.read(index::TSC, &c), MsrAction::Value(12345));
        assert_eq!(p.write(index::MISC_ENABLE, 0, &c), MsrAction::Ok);
        assert_eq!(
            p.write(index::APIC_BASE, APIC_BASE_VALUE, &c),
            MsrAction::Ok
        );
        // Enabling x2APIC or moving the APIC is refused.
        assert_eq!(
            p.write(index::APIC_BASE, APIC_BASE_VALUE | 1 << 10, &c),
            MsrAction::GeneralProtection
        );
    }

    #[test]
    fn mtrr_def_type_is_stored() {
        let mut p = MsrPolicy::new();
        let c = ctx();
        assert_eq!(p.write(index::MTRR_DEF_TYPE, 0xc06, &c), MsrAction::Ok);
        assert_eq!(p.read(index::MTRR_DEF_TYPE, &c), MsrAction::Value(0xc06));
        assert_eq!(
            p.write(index::MTRR_DEF_TYPE, 2, &c),
            MsrAction::GeneralProtection
        );
        assert_eq!(
            p.write(index::MTRR_DEF_TYPE, 1 << 12, &c),
            MsrAction::GeneralProtection
        );
        assert_eq!(p.read(index::MTRR_DEF_TYPE, &c), MsrAction::Value(0xc06));
    }

    #[test]
    fn pat_validation() {
        let mut p = MsrPolicy::new();
        let c = ctx();
        assert_eq!(
            p.write(index::PAT, 0x0007_0106_0007_0406, &c),
            MsrAction::WriteState(StateWrite::Pat(0x0007_0106_0007_0406))
        );
        assert_eq!(p.write(index::PAT, 0x02, &c), MsrAction::GeneralProtection);
        assert_eq!(
            p.write(index::PAT, 0x08 << 56, &c),
            MsrAction::GeneralProtection
        );
    }

    #[test]
    fn efer_rules() {
        let mut p = MsrPolicy::new();
        let c = ctx();
        // NXE and SCE may change; LMA is kept as it is.
        assert_eq!(
            p.write(index::EFER, efer::LME | efer::NXE | efer::SCE, &c),
            MsrAction::WriteState(StateWrite::Efer(0xd01))
        );
        assert_eq!(
            p.write(
                index::EFER,
                efer::LME,
                &MsrContext {
                    efer: efer::LME,
                    ..c
                }
            ),
            MsrAction::WriteState(StateWrite::Efer(efer::LME))
        );
        // SVME, LMSLE, FFXSR, reserved bits.
        for bit in [12, 13, 14, 1, 63] {
            assert_eq!(
                p.write(index::EFER, efer::LME | 1 << bit, &c),
                MsrAction::GeneralProtection,
                "bit {bit}"
            );
        }
        // LME cannot change while paging is on, but can before.
        assert_eq!(p.write(index::EFER, 0, &c), MsrAction::GeneralProtection);
        let real = MsrContext {
            efer: 0,
            cr0: 0x11,
            ..c
        };
        assert_eq!(
            p.write(index::EFER, efer::LME, &real),
            MsrAction::WriteState(StateWrite::Efer(efer::LME))
        );
        // Writing LMA is ignored, not an error.
        assert_eq!(
            p.write(index::EFER, efer::LMA, &real),
            MsrAction::WriteState(StateWrite::Efer(0))
        );
    }
}
