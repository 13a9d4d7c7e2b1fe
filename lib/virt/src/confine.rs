//! The last check before every VM entry: does the hardware state confine the guest to its Vm?
//!
//! A nested-mode guest is confined by nested paging (NPT/EPT) at its Vm's root, whatever its
//! own paging does. A shadow-mode guest whose own paging is on has no nested paging: only the
//! shadow tables stand between it and host-physical memory, so the hardware must run it with
//! paging on, in the format of the shadow tables, with CR3 at the Vm's current shadow root:
//! 4-level long mode for a long-mode guest, PAE paging without long mode (CR3 a PDPT below
//! 4 GiB) for a guest in 32-bit or PAE paging. Anything else (paging off, 32-bit paging on the
//! hardware, the other format, 5-level paging, another root) would let the guest address host
//! memory directly or read shadow tables as something they are not. A shadow-mode guest whose own paging is off
//! (real mode, protected mode without paging) runs on the Vm's nested tables as a nested-mode
//! guest does, and with hardware paging off: the vTLB must see the guest turn paging on. The kernel calls [`check`] with what it reads back from the
//! VMCB/VMCS right before VMRUN/VMLAUNCH/VMRESUME, so no reply path, missed reply or forgotten
//! update can get around it.

/// What the Vm says the vCPU must run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Nested paging at this root (host-physical address of the top table).
    Nested { root: u64 },
    /// Shadow paging at the vTLB's current root; None while it has none.
    Shadow { root: Option<u64> },
    /// A shadow-mode Vm whose guest uses 32-bit or PAE paging: the hardware runs PAE paging
    /// without long mode on the vTLB's PAE-format root (a PDPT below 4 GiB); None while it has
    /// none.
    ShadowLegacy { root: Option<u64> },
    /// A shadow-mode Vm whose guest has paging off: nested paging at the Vm's own root (as
    /// `Nested`), and CR0.PG clear (the guest's CR0 writes exit to the vTLB).
    ShadowUnpaged { root: u64 },
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
    /// A shadow-mode vCPU on nested tables with hardware paging on: its paging belongs on the
    /// vTLB.
    PagingOnNested = 8,
    /// A guest in 32-bit or PAE paging, and the hardware not in PAE paging without long mode
    /// (CR4.PAE clear, LA57 or PCIDE set, EFER.LME or LMA set, or long mode).
    NotLegacyPae = 9,
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
        Expected::ShadowUnpaged { root } => {
            match hw.nested_root {
                None => return Err(Breach::NestedOff),
                Some(r) if r != root => return Err(Breach::ForeignNestedRoot),
                Some(_) => {}
            }
            if hw.cr0 & CR0_PG != 0 || hw.long_mode || hw.efer & EFER_LMA != 0 {
                return Err(Breach::PagingOnNested);
            }
            Ok(())
        }
        Expected::ShadowLegacy { root } => {
            if hw.nested_root.is_some() {
                return Err(Breach::NestedInShadowMode);
            }
            let root = root.ok_or(Breach::NoShadowRoot)?;
            if hw.cr0 & CR0_PG == 0 || hw.cr0 & CR0_PE == 0 {
                return Err(Breach::PagingOff);
            }
            let pae = hw.cr4 & CR4_PAE != 0
                && hw.cr4 & (CR4_LA57 | CR4_PCIDE) == 0
                && hw.efer & (EFER_LME | EFER_LMA) == 0
                && !hw.long_mode;
            if !pae {
                return Err(Breach::NotLegacyPae);
            }
            // PAE's CR3 is 32 bits wide: the root must lie below 4 GiB, exactly at CR3.
            if root >> 32 != 0 || hw.cr3 & !0x18 != root {
                return Err(Breach::ForeignShadowRoot);
            }
            Ok(())
        }
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

    fn unpaged() -> HwPaging {
        HwPaging {
            nested_root: Some(ROOT),
            cr0: CR0_PE,
            ..HwPaging::default()
        }
    }

    #[test]
    fn shadow_unpaged_runs_on_its_own_nested_root_with_paging_off() {
        let expected = Expected::ShadowUnpaged { root: ROOT };
        assert_eq!(check(expected, &unpaged()), Ok(()));
        // Real mode, and any CR3/CR4/EFER.LME the guest set before turning paging on.
        let real = HwPaging {
            cr0: 0x10,
            cr3: 0xdead_b000,
            cr4: CR4_PAE,
            efer: EFER_LME,
            ..unpaged()
        };
        assert_eq!(check(expected, &real), Ok(()));
    }

    #[test]
    fn shadow_unpaged_refuses_every_breach() {
        let expected = Expected::ShadowUnpaged { root: ROOT };
        let base = unpaged();
        let cases = [
            (
                HwPaging {
                    nested_root: None,
                    ..base
                },
                Breach::NestedOff,
            ),
            // Nested paging off with paging off: host-physical memory, whatever CR3 says.
            (
                HwPaging {
                    nested_root: None,
                    cr0: 0,
                    ..base
                },
                Breach::NestedOff,
            ),
            (
                HwPaging {
                    nested_root: Some(ROOT + 0x1000),
                    ..base
                },
                Breach::ForeignNestedRoot,
            ),
            (
                HwPaging {
                    nested_root: Some(0),
                    ..base
                },
                Breach::ForeignNestedRoot,
            ),
            (
                HwPaging {
                    cr0: CR0_PE | CR0_PG,
                    ..base
                },
                Breach::PagingOnNested,
            ),
            (
                HwPaging {
                    efer: EFER_LME | EFER_LMA,
                    ..base
                },
                Breach::PagingOnNested,
            ),
            (
                HwPaging {
                    long_mode: true,
                    ..base
                },
                Breach::PagingOnNested,
            ),
            // The long-mode state of a paging guest is not an unpaged one either.
            (
                HwPaging {
                    nested_root: Some(ROOT),
                    ..long_mode()
                },
                Breach::PagingOnNested,
            ),
        ];
        for (hw, breach) in cases {
            assert_eq!(check(expected, &hw), Err(breach), "{hw:?}");
        }
        // And an unpaged state does not pass where the vTLB is expected.
        assert_eq!(check(shadow(), &base), Err(Breach::NestedInShadowMode));
    }

    const PDPT: u64 = 0x7654_3000;

    fn legacy() -> HwPaging {
        HwPaging {
            nested_root: None,
            cr0: CR0_PG | CR0_PE | (1 << 16),
            cr3: PDPT,
            cr4: CR4_PAE,
            efer: 0,
            long_mode: false,
        }
    }

    #[test]
    fn shadow_legacy_runs_pae_paging_on_its_pdpt_below_4g() {
        let expected = Expected::ShadowLegacy { root: Some(PDPT) };
        assert_eq!(check(expected, &legacy()), Ok(()));
        // PWT/PCD and EFER.NXE (PAE has XD) are fine.
        let flags = HwPaging {
            cr3: PDPT | 0x18,
            efer: 1 << 11,
            ..legacy()
        };
        assert_eq!(check(expected, &flags), Ok(()));
    }

    #[test]
    fn shadow_legacy_refuses_every_breach() {
        let expected = Expected::ShadowLegacy { root: Some(PDPT) };
        let base = legacy();
        let cases = [
            (
                expected,
                HwPaging {
                    nested_root: Some(PDPT),
                    ..base
                },
                Breach::NestedInShadowMode,
            ),
            (
                Expected::ShadowLegacy { root: None },
                base,
                Breach::NoShadowRoot,
            ),
            (
                expected,
                HwPaging {
                    cr0: CR0_PE,
                    ..base
                },
                Breach::PagingOff,
            ),
            (
                expected,
                HwPaging {
                    cr0: CR0_PG,
                    ..base
                },
                Breach::PagingOff,
            ),
            // 32-bit paging on the hardware would read the PDPT as a 4-byte page directory.
            (expected, HwPaging { cr4: 0, ..base }, Breach::NotLegacyPae),
            (
                expected,
                HwPaging {
                    cr4: CR4_PAE | CR4_LA57,
                    ..base
                },
                Breach::NotLegacyPae,
            ),
            (
                expected,
                HwPaging {
                    cr4: CR4_PAE | CR4_PCIDE,
                    ..base
                },
                Breach::NotLegacyPae,
            ),
            // Long mode would read the PDPT as a PML4.
            (
                expected,
                HwPaging {
                    efer: EFER_LME,
                    ..base
                },
                Breach::NotLegacyPae,
            ),
            (
                expected,
                HwPaging {
                    efer: EFER_LMA,
                    ..base
                },
                Breach::NotLegacyPae,
            ),
            (
                expected,
                HwPaging {
                    long_mode: true,
                    ..base
                },
                Breach::NotLegacyPae,
            ),
            (
                expected,
                HwPaging { cr3: 0, ..base },
                Breach::ForeignShadowRoot,
            ),
            (
                expected,
                HwPaging {
                    cr3: PDPT + 0x1000,
                    ..base
                },
                Breach::ForeignShadowRoot,
            ),
            (
                expected,
                HwPaging {
                    cr3: PDPT | 0x20,
                    ..base
                },
                Breach::ForeignShadowRoot,
            ),
            (
                expected,
                HwPaging {
                    cr3: PDPT | 1 << 32,
                    ..base
                },
                Breach::ForeignShadowRoot,
            ),
            // A root above 4 GiB cannot be a PAE CR3, even if CR3 held it.
            (
                Expected::ShadowLegacy {
                    root: Some(PDPT | 1 << 32),
                },
                HwPaging {
                    cr3: PDPT | 1 << 32,
                    ..base
                },
                Breach::ForeignShadowRoot,
            ),
        ];
        for (expected, hw, breach) in cases {
            assert_eq!(check(expected, &hw), Err(breach), "{hw:?}");
        }
        // Neither the long-mode nor the unpaged state passes where PAE paging is expected.
        assert_eq!(
            check(
                expected,
                &HwPaging {
                    cr3: PDPT,
                    ..long_mode()
                }
            ),
            Err(Breach::NotLegacyPae)
        );
        assert_eq!(check(expected, &unpaged()), Err(Breach::NestedInShadowMode));
        // And the PAE state does not pass where long mode is expected.
        assert_eq!(
            check(Expected::Shadow { root: Some(PDPT) }, &base),
            Err(Breach::NotLongMode)
        );
    }

    /// Property: over random states, a legacy shadow state passes only when every rule holds.
    #[test]
    fn shadow_legacy_random_states_pass_only_when_confined() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let expected = Expected::ShadowLegacy { root: Some(PDPT) };
        for _ in 0..100_000 {
            let pick = |r: u64, a: u64, b: u64| if r & 1 == 0 { a } else { b };
            let r = next();
            let hw = HwPaging {
                nested_root: (r & 3 == 0).then_some(PDPT),
                cr0: pick(r >> 2, next(), CR0_PG | CR0_PE),
                cr3: pick(r >> 3, next(), PDPT | (next() & 0x18)),
                cr4: pick(r >> 4, next(), CR4_PAE),
                efer: pick(r >> 5, next(), next() & !(EFER_LME | EFER_LMA)),
                long_mode: r >> 6 & 3 == 0,
            };
            let confined = hw.nested_root.is_none()
                && hw.cr0 & CR0_PG != 0
                && hw.cr0 & CR0_PE != 0
                && hw.cr4 & CR4_PAE != 0
                && hw.cr4 & (CR4_LA57 | CR4_PCIDE) == 0
                && hw.efer & (EFER_LME | EFER_LMA) == 0
                && !hw.long_mode
                && hw.cr3 & !0x18 == PDPT;
            assert_eq!(check(expected, &hw).is_ok(), confined, "{hw:?}");
        }
    }

    /// Property: over random states, an unpaged shadow state passes only when every rule holds.
    #[test]
    fn shadow_unpaged_random_states_pass_only_when_confined() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let expected = Expected::ShadowUnpaged { root: ROOT };
        for _ in 0..100_000 {
            let r = next();
            let pick = |r: u64, a: u64, b: u64| if r & 1 == 0 { a } else { b };
            let hw = HwPaging {
                nested_root: match r & 3 {
                    0 => None,
                    1 => Some(next() & !0xfff),
                    _ => Some(ROOT),
                },
                cr0: pick(r >> 2, next(), next() & !CR0_PG),
                cr3: next(),
                cr4: next(),
                efer: pick(r >> 3, next(), next() & !EFER_LMA),
                long_mode: r >> 4 & 3 == 0,
            };
            let confined = hw.nested_root == Some(ROOT)
                && hw.cr0 & CR0_PG == 0
                && hw.efer & EFER_LMA == 0
                && !hw.long_mode;
            assert_eq!(check(expected, &hw).is_ok(), confined, "{hw:?}");
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
