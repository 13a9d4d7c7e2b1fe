//! The last check before every VM entry: does the hardware state confine the guest to its Vm?
//!
//! A nested-mode guest is confined by nested paging (NPT/EPT) at its Vm's root, whatever its
//! own paging does. A shadow-mode guest has no nested paging: only the shadow tables stand
//! between it and host-physical memory, so the hardware must run it with paging on, in long
//! mode (the shadow tables are 4-level), with CR3 at the Vm's current shadow root. Anything
//! else (paging off, 32-bit or PAE paging, 5-level paging, another root) would let the guest
//! address host memory directly. The kernel calls [`check`] with what it reads back from the
//! VMCB/VMCS right before VMRUN/VMLAUNCH/VMRESUME, so no reply path, missed reply or forgotten
//! update can get around it.

/// What the Vm says the vCPU must run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Nested paging at this root (host-physical address of the top table).
    Nested { root: u64 },
    /// Shadow paging at the vTLB's current root; None while it has none.
    Shadow { root: Option<u64> },
}

/// The paging state the hardware would enter with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwPaging {
    /// The nested root when nested paging is on (NPT's N_CR3, EPT's pointer without flags).
    pub nested_root: Option<u64>,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// The guest enters in long mode (EFER.LMA on SVM; the IA-32e entry control on VMX).
    pub long_mode: bool,
}

/// Which rule the state breaks (the `UNCONFINED` entry failure's second qualification).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Breach {
    /// A nested-mode vCPU with nested paging off.
    NestedOff = 1,
    /// Nested paging on, at a root that is not the Vm's.
    ForeignNestedRoot = 2,
    /// A shadow-mode vCPU with nested paging on (the kernel never builds such a state).
    NestedInShadowMode = 3,
    /// Shadow mode before the vTLB has a root (no control state was ever loaded).
    NoShadowRoot = 4,
    /// CR3 is not the vTLB's current root.
    ForeignShadowRoot = 5,
    /// CR0.PG or CR0.PE is clear: the guest would address host-physical memory.
    PagingOff = 6,
    /// Paging is on but not 4-level long-mode paging (PAE or LME/LMA clear, or LA57 set).
    NotLongMode = 7,
}

const CR0_PE: u64 = 1 << 0;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const CR4_PCIDE: u64 = 1 << 17;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// CR3's address bits (bits 12-51); the low bits are flags (PWT, PCD) or, with PCIDE, a PCID.
const CR3_ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// Ok when entering with `hw` keeps the guest inside its Vm.
pub fn check(expected: Expected, hw: &HwPaging) -> Result<(), Breach> {
    match expected {
        Expected::Nested { root } => match hw.nested_root {
            None => Err(Breach::NestedOff),
            Some(r) if r != root => Err(Breach::ForeignNestedRoot),
            Some(_) => Ok(()),
        },
        Expected::Shadow { root } => {
            if hw.nested_root.is_some() {
                return Err(Breach::NestedInShadowMode);
            }
            let root = root.ok_or(Breach::NoShadowRoot)?;
            if hw.cr0 & (CR0_PG | CR0_PE) != CR0_PG | CR0_PE {
                return Err(Breach::PagingOff);
            }
            let long = hw.cr4 & CR4_PAE != 0
                && hw.cr4 & (CR4_LA57 | CR4_PCIDE) == 0
                && hw.efer & (EFER_LME | EFER_LMA) == EFER_LME | EFER_LMA
                && hw.long_mode;
            if !long {
                return Err(Breach::NotLongMode);
            }
            if hw.cr3 & CR3_ADDRESS != root || hw.cr3 & !CR3_ADDRESS & !0x18 != 0 {
                return Err(Breach::ForeignShadowRoot);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: u64 = 0x1234_5000;

    fn long_mode() -> HwPaging {
        HwPaging {
            nested_root: None,
            cr0: CR0_PG | CR0_PE | (1 << 16),
            cr3: ROOT,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA,
            long_mode: true,
        }
    }

    fn shadow() -> Expected {
        Expected::Shadow { root: Some(ROOT) }
    }

    #[test]
    fn nested_needs_its_own_root() {
        let on = HwPaging {
            nested_root: Some(ROOT),
            ..HwPaging::default()
        };
        let nested = Expected::Nested { root: ROOT };
        // Real mode with paging off is fine under nested paging.
        assert_eq!(check(nested, &on), Ok(()));
        assert_eq!(check(nested, &HwPaging::default()), Err(Breach::NestedOff));
        let other = HwPaging {
            nested_root: Some(ROOT + 0x1000),
            ..on
        };
        assert_eq!(check(nested, &other), Err(Breach::ForeignNestedRoot));
    }

    #[test]
    fn shadow_accepts_long_mode_on_its_root() {
        assert_eq!(check(shadow(), &long_mode()), Ok(()));
        // PWT/PCD in CR3 are flags, not address bits.
        let flags = HwPaging {
            cr3: ROOT | 0x18,
            ..long_mode()
        };
        assert_eq!(check(shadow(), &flags), Ok(()));
    }

    #[test]
    fn shadow_refuses_every_unconfined_state() {
        let base = long_mode();
        let cases = [
            (Expected::Shadow { root: None }, base, Breach::NoShadowRoot),
            (shadow(), HwPaging { cr0: 0, ..base }, Breach::PagingOff),
            (
                shadow(),
                HwPaging {
                    cr0: CR0_PE,
                    ..base
                },
                Breach::PagingOff,
            ),
            (
                shadow(),
                HwPaging {
                    cr0: CR0_PG,
                    ..base
                },
                Breach::PagingOff,
            ),
            (shadow(), HwPaging { cr4: 0, ..base }, Breach::NotLongMode),
            (
                shadow(),
                HwPaging {
                    cr4: CR4_PAE | CR4_LA57,
                    ..base
                },
                Breach::NotLongMode,
            ),
            (
                shadow(),
                HwPaging {
                    cr4: CR4_PAE | CR4_PCIDE,
                    ..base
                },
                Breach::NotLongMode,
            ),
            (
                shadow(),
                HwPaging {
                    efer: EFER_LME,
                    ..base
                },
                Breach::NotLongMode,
            ),
            (
                shadow(),
                HwPaging {
                    long_mode: false,
                    ..base
                },
                Breach::NotLongMode,
            ),
            (
                shadow(),
                HwPaging { cr3: 0, ..base },
                Breach::ForeignShadowRoot,
            ),
            (
                shadow(),
                HwPaging {
                    cr3: ROOT + 0x1000,
                    ..base
                },
                Breach::ForeignShadowRoot,
            ),
            (
                shadow(),
                HwPaging {
                    cr3: ROOT | 1 << 63,
                    ..base
                },
                Breach::ForeignShadowRoot,
            ),
            (
                shadow(),
                HwPaging {
                    nested_root: Some(0),
                    ..base
                },
                Breach::NestedInShadowMode,
            ),
        ];
        for (expected, hw, breach) in cases {
            assert_eq!(check(expected, &hw), Err(breach), "{hw:?}");
        }
    }

    /// Property: over random states, a shadow-mode state passes only when every rule holds.
    #[test]
    fn shadow_random_states_pass_only_when_confined() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..100_000 {
            let pick = |r: u64, a: u64, b: u64| if r & 1 == 0 { a } else { b };
            let r = next();
            let hw = HwPaging {
                nested_root: (r & 1 == 0 && r & 2 == 0).then_some(ROOT),
                cr0: pick(r >> 2, next(), CR0_PG | CR0_PE),
                cr3: pick(r >> 3, next(), ROOT),
                cr4: pick(r >> 4, next(), CR4_PAE),
                efer: pick(r >> 5, next(), EFER_LME | EFER_LMA),
                long_mode: r >> 6 & 3 != 0,
            };
            let confined = hw.nested_root.is_none()
                && hw.cr0 & CR0_PG != 0
                && hw.cr0 & CR0_PE != 0
                && hw.cr4 & CR4_PAE != 0
                && hw.cr4 & CR4_LA57 == 0
                && hw.cr4 & CR4_PCIDE == 0
                && hw.efer & EFER_LME != 0
                && hw.efer & EFER_LMA != 0
                && hw.long_mode
                && hw.cr3 & !0x18 == ROOT;
            assert_eq!(check(shadow(), &hw).is_ok(), confined, "{hw:?}");
        }
    }
}
