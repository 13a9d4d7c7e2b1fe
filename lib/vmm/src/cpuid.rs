//! The CPUID a guest sees: the host's values (the vmm-server executes CPUID itself, which works in
//! ring 3) filtered down to what this VMM can stand behind, plus a hypervisor leaf of our own.
//!
//! - XSAVE is offered with the state the kernel saves for a guest, x87 and SSE (leaf `0xd`:
//!   XCR0 bits 0 and 1 where the host supports them, 576-byte areas, no XSAVEOPT/XSAVEC/XSAVES);
//!   OSXSAVE (1.ECX[27]) mirrors the guest's CR4.OSXSAVE ([`with_cr4`]; as the VMM last saw it,
//!   `crate::intercept::Intercepts::cr4`).
//! - Features the guest cannot use under this VMM are hidden: VMX and SVM (no nested
//!   virtualization), MONITOR/MWAIT, AVX and everything else that needs more XSAVE state (AVX2,
//!   AVX-512, AMX, ...: the kernel does not save it), PCID, INVPCID, x2APIC, TSC-deadline, LA57, protection
//!   keys (PCID, INVPCID, LA57 and PKU are what the kernel's shadow paging does not follow), machine-check (no MCE MSRs), the performance-monitoring,
//!   debug-store and thermal features (no MSRs behind them) and SMX, and hyper-threading
//!   (the guest has one vCPU).
//! - Leaf 1 reports initial APIC ID 0 and one logical processor.
//! - The hypervisor bit (1.ECX[31]) is set; leaf `0x4000_0000` returns the highest hypervisor
//!   leaf (`0x4000_0001`) and the signature [`SIGNATURE`] in EBX, ECX, EDX; `0x4000_0001` is all
//!   zeros (no paravirtual features).
//! - The highest basic leaf is clamped to [`BASIC_MAX`] and the highest extended leaf to
//!   [`EXTENDED_MAX`]. Leaves this filter does not pass (above the maximum, inside the range but
//!   describing hidden features such as 5, 6, 0xa, 0xb, 0x1f, or any other range) return
//!   zeros. Intel hardware would answer a leaf above the maximum with the highest basic leaf's
//!   values; zeros are simpler and what AMD does.

/// The hypervisor signature, in EBX, ECX, EDX of leaf `0x4000_0000`.
pub const SIGNATURE: &[u8; 12] = b"DMPmicroHV01";
/// Highest basic leaf the guest sees (at most): leaves 0-4, 7 and 0xd are passed.
pub const BASIC_MAX: u32 = 0xd;
/// XSAVE area size for x87 and SSE: the 512-byte legacy region and the 64-byte header.
pub const XSAVE_SIZE: u32 = 576;
/// Highest extended leaf the guest sees (at most).
pub const EXTENDED_MAX: u32 = 0x8000_0008;
/// First and highest hypervisor leaf.
pub const HYPERVISOR_BASE: u32 = 0x4000_0000;
pub const HYPERVISOR_MAX: u32 = 0x4000_0001;

/// Register indices in a CPUID result.
const EAX: usize = 0;
const EBX: usize = 1;
const ECX: usize = 2;
const EDX: usize = 3;

/// Bits of leaf 1.
pub mod leaf1 {
    pub const ECX_DTES64: u32 = 1 << 2;
    pub const ECX_MONITOR: u32 = 1 << 3;
    pub const ECX_DS_CPL: u32 = 1 << 4;
    pub const ECX_VMX: u32 = 1 << 5;
    pub const ECX_SMX: u32 = 1 << 6;
    pub const ECX_EST: u32 = 1 << 7;
    pub const ECX_TM2: u32 = 1 << 8;
    pub const ECX_FMA: u32 = 1 << 12;
    pub const ECX_PDCM: u32 = 1 << 15;
    pub const ECX_PCID: u32 = 1 << 17;
    pub const ECX_X2APIC: u32 = 1 << 21;
    pub const ECX_TSC_DEADLINE: u32 = 1 << 24;
    pub const ECX_XSAVE: u32 = 1 << 26;
    pub const ECX_OSXSAVE: u32 = 1 << 27;
    pub const ECX_AVX: u32 = 1 << 28;
    pub const ECX_F16C: u32 = 1 << 29;
    pub const ECX_HYPERVISOR: u32 = 1 << 31;
    pub const EDX_MCE: u32 = 1 << 7;
    pub const EDX_MCA: u32 = 1 << 14;
    pub const EDX_DS: u32 = 1 << 21;
    pub const EDX_ACPI: u32 = 1 << 22;
    pub const EDX_HTT: u32 = 1 << 28;
    pub const EDX_TM: u32 = 1 << 29;
    pub const EDX_PBE: u32 = 1 << 31;

    /// ECX bits the guest never sees.
    pub const ECX_HIDDEN: u32 = ECX_DTES64
        | ECX_MONITOR
        | ECX_DS_CPL
        | ECX_VMX
        | ECX_SMX
        | ECX_EST
        | ECX_TM2
        | ECX_FMA
        | ECX_PDCM
        | ECX_PCID
        | ECX_X2APIC
        | ECX_TSC_DEADLINE
        | ECX_OSXSAVE
        | ECX_AVX
        | ECX_F16C;
    /// EDX bits the guest never sees.
    pub const EDX_HIDDEN: u32 = EDX_MCE | EDX_MCA | EDX_DS | EDX_ACPI | EDX_HTT | EDX_TM | EDX_PBE;
}

/// Bits of leaf 7, subleaf 0.
pub mod leaf7 {
    pub const EBX_AVX2: u32 = 1 << 5;
    pub const EBX_INVPCID: u32 = 1 << 10;
    pub const EBX_RTM: u32 = 1 << 11;
    pub const EBX_PQM: u32 = 1 << 12;
    pub const EBX_MPX: u32 = 1 << 14;
    pub const EBX_PQE: u32 = 1 << 15;
    /// AVX-512 F, DQ, IFMA, PF, ER, CD, BW, VL.
    pub const EBX_AVX512: u32 =
        1 << 16 | 1 << 17 | 1 << 21 | 1 << 26 | 1 << 27 | 1 << 28 | 1 << 30 | 1 << 31;
    pub const EBX_INTEL_PT: u32 = 1 << 25;
    pub const ECX_AVX512_VBMI: u32 = 1 << 1;
    /// Protection keys for user pages and OSPKE: the kernel's vTLB does not implement them (and
    /// refuses CR4.PKE), so no guest may see them in either memory mode.
    pub const ECX_PKU: u32 = 1 << 3 | 1 << 4;
    pub const ECX_WAITPKG: u32 = 1 << 5;
    pub const ECX_AVX512_VBMI2: u32 = 1 << 6;
    /// VAES, VPCLMULQDQ, AVX512 VNNI, BITALG, VPOPCNTDQ (VEX/EVEX forms need XSAVE state).
    pub const ECX_VEX_MORE: u32 = 1 << 9 | 1 << 10 | 1 << 11 | 1 << 12 | 1 << 14;
    pub const ECX_LA57: u32 = 1 << 16;
    /// AVX512 4VNNIW/4FMAPS, VP2INTERSECT, AMX (BF16, TILE, INT8), AVX512 FP16.
    pub const EDX_AVX_AMX: u32 = 1 << 2 | 1 << 3 | 1 << 8 | 1 << 22 | 1 << 23 | 1 << 24 | 1 << 25;

    pub const EBX_HIDDEN: u32 =
        EBX_AVX2 | EBX_INVPCID | EBX_RTM | EBX_PQM | EBX_MPX | EBX_PQE | EBX_AVX512 | EBX_INTEL_PT;
    pub const ECX_HIDDEN: u32 =
        ECX_AVX512_VBMI | ECX_PKU | ECX_WAITPKG | ECX_AVX512_VBMI2 | ECX_VEX_MORE | ECX_LA57;
    pub const EDX_HIDDEN: u32 = EDX_AVX_AMX;
}

/// Bits of leaf `0x8000_0001`.
pub mod ext1 {
    pub const ECX_SVM: u32 = 1 << 2;
    /// Extended APIC space, OS-visible workaround, IBS, skinit, watchdog, LWP, perf counters.
    pub const ECX_PLATFORM: u32 =
        1 << 3 | 1 << 9 | 1 << 10 | 1 << 12 | 1 << 13 | 1 << 15 | 1 << 23 | 1 << 24 | 1 << 28;
    /// XOP, FMA4, TBM (VEX-encoded, need XSAVE state).
    pub const ECX_VEX: u32 = 1 << 11 | 1 << 16 | 1 << 21;
    /// RDTSCP is passed through: where the CPU has it, the kernel switches TSC_AUX per vCPU
    /// (the MSR areas on VMX, around VMRUN on SVM), so the guest reads the value it wrote.
    pub const EDX_RDTSCP: u32 = 1 << 27;

    pub const ECX_HIDDEN: u32 = ECX_SVM | ECX_PLATFORM | ECX_VEX;
    pub const EDX_HIDDEN: u32 = 0;
}

/// The guest's view of CPUID `leaf`/`subleaf`, given the host's answer `host` (EAX, EBX, ECX,
/// EDX) to the same question. Any input is fine: nothing here panics.
pub fn filter(leaf: u32, subleaf: u32, host: [u32; 4]) -> [u32; 4] {
    let mut r = host;
    match leaf {
        0 => r[EAX] = r[EAX].min(BASIC_MAX),
        1 => {
            // Initial APIC ID 0, one logical processor; keep brand index and CLFLUSH size.
            r[EBX] = (r[EBX] & 0x0000_ffff) | 1 << 16;
            r[ECX] = (r[ECX] & !leaf1::ECX_HIDDEN) | leaf1::ECX_HYPERVISOR;
            r[EDX] &= !leaf1::EDX_HIDDEN;
        }
        2..=4 => {
            if leaf == 4 {
                // Cache topology: one core per package, one thread per cache.
                r[EAX] &= 0x0000_3fff;
            }
        }
        7 if subleaf == 0 => {
            r[EAX] = 0; // highest subleaf
            r[EBX] &= !leaf7::EBX_HIDDEN;
            r[ECX] &= !leaf7::ECX_HIDDEN;
            r[EDX] &= !leaf7::EDX_HIDDEN;
        }
        HYPERVISOR_BASE => {
            let word = |i: usize| {
                u32::from_le_bytes([
                    SIGNATURE[i],
                    SIGNATURE[i + 1],
                    SIGNATURE[i + 2],
                    SIGNATURE[i + 3],
                ])
            };
            r = [HYPERVISOR_MAX, word(0), word(4), word(8)];
        }
        0x8000_0000 => r[EAX] = r[EAX].clamp(0x8000_0000, EXTENDED_MAX),
        0x8000_0001 => {
            r[ECX] &= !ext1::ECX_HIDDEN;
            r[EDX] &= !ext1::EDX_HIDDEN;
        }
        // XSAVE: x87 and SSE only (what the kernel saves: `virt::xcr0`).
        0xd if subleaf == 0 && r[EAX] & 1 != 0 => {
            r = [r[EAX] & 0b11, XSAVE_SIZE, XSAVE_SIZE, 0];
        }
        // Brand string, L1/L2/L3 cache and TLB, power management (invariant TSC).
        0x8000_0002..=0x8000_0007 => {}
        // Address sizes only: no core count, no speculation-control features.
        0x8000_0008 => r = [r[EAX], 0, 0, 0],
        _ => r = [0; 4],
    }
    r
}

/// Whether `leaf` is answered from the host's values at all (callers may skip executing CPUID
/// for the others; [`filter`] ignores the host values of those leaves anyway).
pub fn uses_host(leaf: u32) -> bool {
    matches!(leaf, 0..=4 | 7 | 0xd | 0x8000_0000..=0x8000_0008)
}

/// Leaf 1 with OSXSAVE (ECX[27]) set as the guest's CR4.OSXSAVE (`cr4`) is, as the CPU
/// reports it; other leaves unchanged.
pub fn with_cr4(leaf: u32, mut r: [u32; 4], cr4: u64) -> [u32; 4] {
    if leaf == 1 && r[ECX] & leaf1::ECX_XSAVE != 0 && cr4 & (1 << 18) != 0 {
        r[ECX] |= leaf1::ECX_OSXSAVE;
    }
    r
}

/// The guest's view when the host's own maxima are known: leaves above the host's highest basic
/// or extended leaf return zeros instead of whatever the host would answer.
pub fn filter_with_limits(
    leaf: u32,
    subleaf: u32,
    host: [u32; 4],
    host_basic_max: u32,
    host_extended_max: u32,
) -> [u32; 4] {
    let beyond = match leaf {
        0..=0x3fff_ffff => leaf > host_basic_max,
        0x8000_0000..=0x8fff_ffff => leaf > host_extended_max,
        _ => false,
    };
    if beyond {
        [0; 4]
    } else {
        filter(leaf, subleaf, host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [u32; 4] = [u32::MAX; 4];

    #[test]
    fn leaf1_hides_and_marks() {
        let r = filter(1, 0, ALL);
        for bit in [5, 3, 27, 28, 17, 21, 24] {
            assert_eq!(r[ECX] & 1 << bit, 0, "ECX bit {bit}");
        }
        assert_ne!(r[ECX] & leaf1::ECX_XSAVE, 0, "XSAVE is offered");
        assert_eq!(with_cr4(1, r, 0)[ECX] & leaf1::ECX_OSXSAVE, 0);
        assert_ne!(with_cr4(1, r, 1 << 18)[ECX] & leaf1::ECX_OSXSAVE, 0);
        let no_xsave = [0, 0, 0, 0];
        assert_eq!(with_cr4(1, no_xsave, 1 << 18), no_xsave);
        assert_eq!(with_cr4(7, ALL, 1 << 18), ALL);
        assert_ne!(r[ECX] & leaf1::ECX_HYPERVISOR, 0);
        assert_eq!(r[EBX] >> 24, 0, "APIC ID");
        assert_eq!(r[EBX] >> 16 & 0xff, 1, "logical processors");
        assert_eq!(r[EDX] & leaf1::EDX_HTT, 0);
        // Plain features survive (SSE3 in ECX, FPU/PAE/APIC/SSE2 in EDX).
        assert_ne!(r[ECX] & 1, 0);
        assert_ne!(r[EDX] & (1 | 1 << 6 | 1 << 9 | 1 << 26), 0);
        let r = filter(1, 0, [0; 4]);
        assert_eq!(r, [0, 1 << 16, leaf1::ECX_HYPERVISOR, 0]);
    }

    #[test]
    fn leaf7_hides() {
        let r = filter(7, 0, ALL);
        assert_eq!(r[EAX], 0);
        assert_eq!(r[EBX] & 1 << 10, 0, "INVPCID");
        assert_eq!(r[ECX] & 1 << 16, 0, "LA57");
        assert_eq!(r[ECX] & 1 << 3, 0, "PKU");
        assert_ne!(r[EBX] & 1, 0, "FSGSBASE stays");
        assert_eq!(filter(7, 1, ALL), [0; 4]);
    }

    #[test]
    fn svm_hidden() {
        let r = filter(0x8000_0001, 0, ALL);
        assert_eq!(r[ECX] & 1 << 2, 0);
        assert_ne!(r[EDX] & 1 << 27, 0, "RDTSCP is passed through");
        assert_ne!(r[EDX] & 1 << 29, 0, "long mode stays");
    }

    #[test]
    fn hypervisor_leaves() {
        let r = filter(0x4000_0000, 0, ALL);
        assert_eq!(r[EAX], 0x4000_0001);
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&r[EBX].to_le_bytes());
        sig[4..8].copy_from_slice(&r[ECX].to_le_bytes());
        sig[8..].copy_from_slice(&r[EDX].to_le_bytes());
        assert_eq!(&sig, SIGNATURE);
        assert_eq!(filter(0x4000_0001, 0, ALL), [0; 4]);
        assert_eq!(filter(0x4000_0002, 0, ALL), [0; 4]);
    }

    #[test]
    fn maxima_are_clamped() {
        assert_eq!(filter(0, 0, [0x1f, 1, 2, 3]), [BASIC_MAX, 1, 2, 3]);
        assert_eq!(filter(0, 0, [2, 1, 2, 3])[EAX], 2);
        assert_eq!(
            filter(0x8000_0000, 0, [0x8000_0024, 0, 0, 0])[EAX],
            EXTENDED_MAX
        );
        assert_eq!(
            filter(0x8000_0000, 0, [0x8000_0004, 0, 0, 0])[EAX],
            0x8000_0004
        );
        assert_eq!(filter(0x8000_0000, 0, [5, 0, 0, 0])[EAX], 0x8000_0000);
    }

    #[test]
    fn other_leaves_are_zero() {
        for leaf in [
            5,
            6,
            0xa,
            0xb,
            0x1f,
            0x8000_0009,
            0x8000_001f,
            0xc000_0000,
            u32::MAX,
        ] {
            assert_eq!(filter(leaf, 0, ALL), [0; 4], "leaf {leaf:#x}");
        }
        assert_eq!(filter(0x8000_0008, 0, ALL), [u32::MAX, 0, 0, 0]);
        assert_eq!(filter(0x8000_0002, 0, [1, 2, 3, 4]), [1, 2, 3, 4]);
    }

    #[test]
    fn host_limits() {
        assert_eq!(filter_with_limits(4, 0, ALL, 2, 0x8000_0008), [0; 4]);
        assert_ne!(filter_with_limits(2, 0, ALL, 2, 0x8000_0008), [0; 4]);
        assert_eq!(
            filter_with_limits(0x8000_0008, 0, ALL, 7, 0x8000_0004),
            [0; 4]
        );
        assert_eq!(
            filter_with_limits(0x4000_0000, 0, ALL, 0, 0)[EAX],
            0x4000_0001
        );
        assert!(uses_host(1) && !uses_host(0x4000_0000) && uses_host(0xd));
    }

    #[test]
    fn xsave_leaf_offers_x87_and_sse_only() {
        assert_eq!(
            filter(0xd, 0, [0x2ff, 2696, 2696, 0x1]),
            [0b11, 576, 576, 0]
        );
        assert_eq!(filter(0xd, 0, [0x1, 512, 512, 0]), [0b1, 576, 576, 0]);
        assert_eq!(filter(0xd, 0, [0; 4]), [0; 4]);
        // No XSAVEOPT, XSAVEC, XGETBV1, XSAVES; no AVX component.
        assert_eq!(filter(0xd, 1, ALL), [0; 4]);
        assert_eq!(filter(0xd, 2, ALL), [0; 4]);
    }
}
