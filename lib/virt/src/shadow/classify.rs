//! What a hardware #PF taken while the guest runs on the shadow tables means.
//!
//! The shadow tables only ever hold translations the guest's tables allow (or fewer rights),
//! so every hardware fault is decided again against the guest's tables: if they fault too, the
//! guest sees its own fault (the error code its tables give, not the hardware's); if not, the
//! fault was the vTLB's own (a missing shadow entry, a clean page written, the CR0.WP = 0 form
//! of a leaf) and a fill resolves it, after the walk has set A/D in the guest's entries.

use super::leaf::{fill, fill_region, Fill, FillError, HostMemory, RegionFill};
use super::walk::{walk, Access, ErrorCode, GuestPhys, PageFault, Paging, Privilege, WalkError};
use super::AccessKind;

/// The decision for one hardware #PF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// A genuine guest fault: inject #PF with this error code and CR2 = `addr`.
    Inject(PageFault),
    /// A hidden fault: install the leaf (see `vtlb::Vtlb::install`) and resume.
    Fill(Fill),
    /// The guest-physical page (or page-table word) at `gpa` has no backing, or a write hit a
    /// read-only backing: a memory-fault exit for the VMM.
    MemoryFault { gpa: u64, write: bool },
    /// Non-canonical address: #GP(0). A hardware #PF never reports one; here for emulated
    /// accesses.
    NonCanonical,
    /// The guest kept changing its entries under the walk: resume, it faults again if needed.
    Retry,
}

/// The access a hardware #PF error code describes. `cpl3`: the guest's CPL was 3, so a
/// supervisor-mode fault there was an implicit access (SMAP ignores AC for it). At CPL < 3 an
/// implicit access cannot be told from an explicit one and is taken as explicit.
pub fn access_of(hw_error: u32, cpl3: bool) -> Access {
    let code = ErrorCode(hw_error);
    let kind = if code.has(ErrorCode::FETCH) {
        AccessKind::Execute
    } else if code.has(ErrorCode::WRITE) {
        AccessKind::Write
    } else {
        AccessKind::Read
    };
    let privilege = if code.has(ErrorCode::USER) {
        Privilege::User
    } else if cpl3 {
        Privilege::Implicit
    } else {
        Privilege::Supervisor
    };
    Access { kind, privilege }
}

/// Decides a hardware #PF at linear address `la` (CR2) with error code `hw_error`, taken while
/// the guest ran on the shadow tables with controls `paging`.
pub fn classify(
    guest: &impl GuestPhys,
    host: &impl HostMemory,
    paging: &Paging,
    la: u64,
    hw_error: u32,
    cpl3: bool,
) -> Resolution {
    resolve(guest, host, paging, la, access_of(hw_error, cpl3))
}

/// [`classify`] for an access known exactly (e.g. an emulated one).
pub fn resolve(
    guest: &impl GuestPhys,
    host: &impl HostMemory,
    paging: &Paging,
    la: u64,
    access: Access,
) -> Resolution {
    match walk(guest, paging, la, access) {
        Err(e) => walk_failed(e),
        Ok(t) => match fill(host, &t, la, access, paging) {
            Ok(f) => Resolution::Fill(f),
            Err(e) => fill_failed(e, access),
        },
    }
}

fn walk_failed(e: WalkError) -> Resolution {
    match e {
        WalkError::Fault(f) => Resolution::Inject(f),
        WalkError::NotBacked { gpa } => Resolution::MemoryFault { gpa, write: false },
        WalkError::NonCanonical => Resolution::NonCanonical,
        WalkError::Contended => Resolution::Retry,
    }
}

fn fill_failed(e: FillError, access: Access) -> Resolution {
    match e {
        FillError::NotBacked { gpa } => Resolution::MemoryFault {
            gpa,
            write: access.kind == AccessKind::Write,
        },
        FillError::ReadOnly { gpa } => Resolution::MemoryFault { gpa, write: true },
        // A fetch from memory mapped without EXEC: the VMM's memory fault (as a read).
        FillError::NotExecutable { gpa } => Resolution::MemoryFault { gpa, write: false },
    }
}

/// What [`classify_region`] decided.
// The region is 4 KiB of leaves made once per fault and installed at once; the crate has no
// allocator to box it.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionResolution {
    /// A hidden fault on a large guest page: install all 512 leaves of its 2 MiB part.
    Region(RegionFill),
    /// Anything else, as [`classify`] says.
    Single(Resolution),
}

/// [`classify`], except that a hidden fault on a 2 MiB or 1 GiB guest page is resolved for the
/// whole 2 MiB part holding `la` at once (a guest kernel's large direct map then costs one fill
/// per 2 MiB instead of one per 4 KiB page touched).
pub fn classify_region(
    guest: &impl GuestPhys,
    host: &impl HostMemory,
    paging: &Paging,
    la: u64,
    hw_error: u32,
    cpl3: bool,
) -> RegionResolution {
    let access = access_of(hw_error, cpl3);
    let t = match walk(guest, paging, la, access) {
        Ok(t) => t,
        Err(e) => return RegionResolution::Single(walk_failed(e)),
    };
    let filled = if t.size == super::PageSize::Size4K {
        fill(host, &t, la, access, paging).map(|f| RegionResolution::Single(Resolution::Fill(f)))
    } else {
        fill_region(host, &t, la, access, paging).map(RegionResolution::Region)
    };
    filled.unwrap_or_else(|e| RegionResolution::Single(fill_failed(e, access)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::bits::*;
    use crate::shadow::fake::{Guest, Host, HOST_OFFSET, OPEN};
    use crate::shadow::walk::FaultCause;
    use crate::shadow::PageSize;

    const LA: u64 = 0x1234_5000;
    const W: u32 = ErrorCode::WRITE;
    const U: u32 = ErrorCode::USER;
    const P: u32 = ErrorCode::PRESENT;
    const I: u32 = ErrorCode::FETCH;

    #[test]
    fn error_code_decodes_to_the_access() {
        assert_eq!(access_of(0, false), Access::supervisor(AccessKind::Read));
        assert_eq!(access_of(P | W | U, false), Access::user(AccessKind::Write));
        assert_eq!(access_of(I | U, true), Access::user(AccessKind::Execute));
        assert_eq!(access_of(W, true), Access::implicit(AccessKind::Write));
    }

    #[test]
    fn a_hidden_fault_on_a_2m_page_fills_its_whole_region() {
        let g = Guest::new();
        let la = 0x4000_0000 + 0x12_3456;
        g.map(
            la & !0x1f_ffff,
            0x60_0000,
            PageSize::Size2M,
            [OPEN; 3],
            WRITABLE,
        );
        let r = classify_region(&g, &Host::all(), &g.paging(), la, 0, false);
        let RegionResolution::Region(region) = r else {
            panic!("{r:?}")
        };
        assert_eq!(region.la, 0x4000_0000);
        assert_eq!(region.gpa, 0x60_0000 + 0x12_3000);
        for (i, pte) in region.ptes.iter().enumerate() {
            assert_eq!(pte & ADDR, 0x60_0000 + i as u64 * 4096 + HOST_OFFSET);
        }
    }

    #[test]
    fn region_classification_of_4k_pages_and_faults_matches_classify() {
        let g = Guest::new();
        g.map(LA, 0x8000, PageSize::Size4K, [OPEN; 3], WRITABLE | USER);
        for (la, error) in [(LA, U), (LA, P | W | U), (LA + 0x1000, U), (LA, I | U)] {
            let single = classify(&g, &Host::all(), &g.paging(), la, error, true);
            let r = classify_region(&g, &Host::all(), &g.paging(), la, error, true);
            assert_eq!(r, RegionResolution::Single(single), "{la:#x} {error:#x}");
        }
    }

    #[test]
    fn missing_shadow_entry_is_filled() {
        let g = Guest::new();
        let leaf = g.map(LA, 0x8000, PageSize::Size4K, [OPEN; 3], WRITABLE | USER);
        let r = classify(&g, &Host::all(), &g.paging(), LA + 0x10, U, true);
        let Resolution::Fill(f) = r else {
            panic!("{r:?}")
        };
        assert_eq!((f.la, f.gpa), (LA, 0x8000));
        assert_eq!(f.pte & ADDR, 0x8000 + HOST_OFFSET);
        assert_eq!(f.pte & (WRITABLE | USER), USER, "clean: read-only");
        assert_eq!(g.get(leaf) & (ACCESSED | DIRTY), ACCESSED);
        // The first write faults on the read-only shadow leaf: hidden, D is set, writable fill.
        let r = classify(&g, &Host::all(), &g.paging(), LA, P | W | U, true);
        let Resolution::Fill(f) = r else {
            panic!("{r:?}")
        };
        assert_ne!(f.pte & WRITABLE, 0);
        assert_eq!(g.get(leaf) & (ACCESSED | DIRTY), ACCESSED | DIRTY);
    }

    #[test]
    fn genuine_faults_carry_the_guests_error_code() {
        let g = Guest::new();
        let leaf = g.map(LA, 0x8000, PageSize::Size4K, [OPEN; 3], USER);
        let before = g.snapshot();
        // Hardware said "not present" (empty shadow), the guest's tables say "present, read-only".
        let r = classify(&g, &Host::all(), &g.paging(), LA, W | U, true);
        assert_eq!(
            r,
            Resolution::Inject(PageFault {
                addr: LA,
                code: ErrorCode(P | W | U),
                cause: FaultCause::Protection,
            })
        );
        // Not present in the guest: P clear, whatever the hardware said.
        g.set(leaf, 0);
        let r = classify(&g, &Host::all(), &g.paging(), LA + 8, P | U, true);
        let Resolution::Inject(f) = r else {
            panic!("{r:?}")
        };
        assert_eq!((f.addr, f.code), (LA + 8, ErrorCode(U)));
        g.set(leaf, before.iter().find(|w| w.0 == leaf).unwrap().1);
        assert_eq!(g.snapshot(), before, "faults set no A/D");
    }

    #[test]
    fn fetch_faults_report_i_d_as_the_guest_would() {
        let g = Guest::new();
        g.map(LA, 0x8000, PageSize::Size4K, [OPEN; 3], USER | NO_EXECUTE);
        let r = classify(&g, &Host::all(), &g.paging(), LA, I | U, true);
        let Resolution::Inject(f) = r else {
            panic!("{r:?}")
        };
        assert_eq!(f.code, ErrorCode(P | U | I));
    }

    #[test]
    fn smap_implicit_at_cpl3_ignores_ac() {
        let g = Guest::new();
        g.map(LA, 0x8000, PageSize::Size4K, [OPEN; 3], USER | WRITABLE);
        let mut p = g.paging();
        p.smap = true;
        p.ac = true;
        // CPL 0 with AC: explicit, allowed.
        assert!(matches!(
            classify(&g, &Host::all(), &p, LA, 0, false),
            Resolution::Fill(_)
        ));
        // CPL 3 supervisor-mode access: implicit, SMAP applies.
        assert!(matches!(
            classify(&g, &Host::all(), &p, LA, 0, true),
            Resolution::Inject(PageFault {
                code: ErrorCode(1),
                ..
            })
        ));
    }

    #[test]
    fn unbacked_memory_goes_to_the_vmm() {
        let g = Guest::new();
        g.map(
            LA,
            0x3000_0000,
            PageSize::Size4K,
            [OPEN; 3],
            WRITABLE | USER,
        );
        let host = Host {
            limit: 0x2000_0000,
            no_exec: Vec::new(),
            read_only: vec![0x8000],
        };
        assert_eq!(
            classify(&g, &host, &g.paging(), LA, W | U, true),
            Resolution::MemoryFault {
                gpa: 0x3000_0000,
                write: true
            }
        );
        // A read-only backing refuses writes only.
        g.map(
            LA + 0x1000,
            0x8000,
            PageSize::Size4K,
            [OPEN; 3],
            WRITABLE | USER,
        );
        assert!(matches!(
            classify(&g, &host, &g.paging(), LA + 0x1000, U, true),
            Resolution::Fill(_)
        ));
        assert_eq!(
            classify(&g, &host, &g.paging(), LA + 0x1000, P | W | U, true),
            Resolution::MemoryFault {
                gpa: 0x8000,
                write: true
            }
        );
        // A page table outside guest RAM.
        let pml4e = g.entry(LA, 4);
        g.set(pml4e, 0x7000_0000 | OPEN);
        assert_eq!(
            classify(&g, &host, &g.paging(), LA, U, true),
            Resolution::MemoryFault {
                gpa: 0x7000_0000,
                write: false
            }
        );
    }

    #[test]
    fn wp0_flips_between_supervisor_writable_and_user_read_only() {
        let g = Guest::new();
        g.map(LA, 0x8000, PageSize::Size4K, [OPEN; 3], USER);
        let mut p = g.paging();
        p.wp = false;
        let host = Host::all();
        let Resolution::Fill(sup) = classify(&g, &host, &p, LA, W, false) else {
            panic!()
        };
        assert_eq!(sup.pte & (WRITABLE | USER), WRITABLE);
        let Resolution::Fill(usr) = classify(&g, &host, &p, LA, P | U, true) else {
            panic!()
        };
        assert_eq!(usr.pte & (WRITABLE | USER), USER);
        // A user write is a genuine fault.
        assert!(matches!(
            classify(&g, &host, &p, LA, P | W | U, true),
            Resolution::Inject(_)
        ));
    }

    #[test]
    fn contention_and_non_canonical() {
        let g = Guest::new();
        let leaf = g.map(LA, 0x8000, PageSize::Size4K, [OPEN; 3], USER);
        g.race.set(Some(leaf));
        g.races_left.set(100);
        assert_eq!(
            classify(&g, &Host::all(), &g.paging(), LA, U, true),
            Resolution::Retry
        );
        assert_eq!(
            resolve(
                &g,
                &Host::all(),
                &g.paging(),
                0x8000_0000_0000,
                Access::user(AccessKind::Read)
            ),
            Resolution::NonCanonical
        );
    }
}
