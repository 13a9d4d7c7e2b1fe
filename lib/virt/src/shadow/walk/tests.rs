use super::*;
use crate::shadow::fake::{Guest, OPEN, RAM};

const LA: u64 = 0x0000_7f80_1234_5678;
const P: u32 = ErrorCode::PRESENT;
const W: u32 = ErrorCode::WRITE;
const U: u32 = ErrorCode::USER;
const R: u32 = ErrorCode::RESERVED;
const I: u32 = ErrorCode::FETCH;

fn read() -> Access {
    Access::supervisor(AccessKind::Read)
}

/// A 4 KiB page at LA -> 0x9000 with the given rights per level (PML4E, PDPTE, PDE, PTE).
fn four_levels(flags: [u64; 4]) -> Guest {
    let g = Guest::new();
    g.map(
        LA,
        0x9000,
        PageSize::Size4K,
        [flags[0], flags[1], flags[2]],
        flags[3],
    );
    g
}

fn fault_code(g: &Guest, p: &Paging, la: u64, access: Access) -> u32 {
    let before = g.snapshot();
    let r = walk(g, p, la, access);
    assert_eq!(g.snapshot(), before, "a faulting walk changes nothing");
    match r {
        Err(WalkError::Fault(f)) => {
            assert_eq!(f.addr, la);
            f.code.0
        }
        other => panic!("expected a fault, got {other:?}"),
    }
}

fn ok(g: &Guest, p: &Paging, access: Access) -> Translation {
    walk(g, p, LA, access).unwrap_or_else(|e| panic!("{access:?}: {e:?}"))
}

#[test]
fn translates_4k_and_sets_accessed_everywhere() {
    let g = four_levels([OPEN; 4]);
    let t = ok(&g, &g.paging(), read());
    assert_eq!(t.gpa, 0x9678);
    assert_eq!(t.size, PageSize::Size4K);
    assert!(t.writable && t.user && t.executable);
    let expected: Vec<u64> = (1..=4).rev().map(|l| g.entry(LA, l)).collect();
    let walked: Vec<u64> = t.walked().iter().map(|e| e.gpa).collect();
    assert_eq!(walked, expected);
    for e in t.walked() {
        assert_eq!(g.get(e.gpa), e.value);
        assert_ne!(e.value & ACCESSED, 0);
        assert_eq!(e.value & DIRTY, 0, "a read sets no D");
    }
    assert_eq!(t.leaf(), g.get(g.entry(LA, 1)));
}

#[test]
fn write_sets_dirty_in_the_leaf_only() {
    let g = four_levels([OPEN; 4]);
    let t = ok(&g, &g.paging(), Access::user(AccessKind::Write));
    for (n, e) in t.walked().iter().enumerate() {
        assert_ne!(e.value & ACCESSED, 0);
        assert_eq!(e.value & DIRTY != 0, n == 3);
        assert_eq!(g.get(e.gpa), e.value);
    }
    // Everything already set: no compare-and-swap at all.
    let calls = g.cas_calls.get();
    ok(&g, &g.paging(), Access::user(AccessKind::Write));
    assert_eq!(g.cas_calls.get(), calls);
}

#[test]
fn large_pages_and_their_dirty_bits() {
    let g = Guest::new();
    let la2m = 0x40_0000_0000 + 0x60_0000 + 0x1_2345;
    let pde = g.map(
        la2m & !0x1f_ffff,
        0x80_0000,
        PageSize::Size2M,
        [OPEN; 3],
        WRITABLE,
    );
    let la1g = 0x80_0000_0000 + 0x1234_5678;
    let pdpte = g.map(
        la1g & !0x3fff_ffff,
        0x4000_0000,
        PageSize::Size1G,
        [OPEN; 3],
        PAT_LARGE,
    );
    let p = g.paging();
    let t = walk(&g, &p, la2m, Access::supervisor(AccessKind::Write)).unwrap();
    assert_eq!((t.gpa, t.size, t.levels), (0x81_2345, PageSize::Size2M, 3));
    assert!(t.writable && !t.user);
    assert_eq!(g.get(pde) & (ACCESSED | DIRTY), ACCESSED | DIRTY);
    let t = walk(&g, &p, la1g, read()).unwrap();
    assert_eq!(
        (t.gpa, t.size, t.levels),
        (0x5234_5678, PageSize::Size1G, 2)
    );
    assert_eq!(g.get(pdpte) & (ACCESSED | DIRTY), ACCESSED);
}

#[test]
fn not_present_at_each_level() {
    for level in 1..=4u64 {
        let g = four_levels([OPEN; 4]);
        let at = g.entry(LA, level);
        // Reserved bits are not checked in a non-present entry.
        g.set(at, (g.get(at) & !PRESENT) | NO_EXECUTE | (1 << 51));
        let mut p = g.paging();
        p.nxe = false;
        for (access, code) in [
            (read(), 0),
            (Access::user(AccessKind::Write), W | U),
            (Access::user(AccessKind::Execute), U),
            (Access::implicit(AccessKind::Read), 0),
        ] {
            assert_eq!(fault_code(&g, &p, LA, access), code, "level {level}");
        }
        let Err(WalkError::Fault(f)) = translate(&g, &p, LA, read()) else {
            panic!()
        };
        assert_eq!(f.cause, FaultCause::NotPresent { level: level as u8 });
    }
}

#[test]
fn bits_above_maxphyaddr_are_reserved_at_each_level() {
    for level in 1..=4u64 {
        let g = four_levels([OPEN; 4]);
        let at = g.entry(LA, level);
        g.set(at, g.get(at) | (1 << 46));
        let p = g.paging(); // MAXPHYADDR 46
        assert_eq!(fault_code(&g, &p, LA, read()), P | R, "level {level}");
        assert_eq!(
            fault_code(&g, &p, LA, Access::user(AccessKind::Write)),
            P | R | W | U
        );
        let Err(WalkError::Fault(f)) = translate(&g, &p, LA, read()) else {
            panic!()
        };
        assert_eq!(f.cause, FaultCause::Reserved { level: level as u8 });
        // Bit 45 is an address bit with MAXPHYADDR 46: no reserved-bit fault (the walk may
        // leave guest RAM instead).
        g.set(at, (g.get(at) & !(1 << 46)) | (1 << 45));
        assert!(!matches!(
            translate(&g, &p, LA, read()),
            Err(WalkError::Fault(_))
        ));
        // With MAXPHYADDR 52 nothing below bit 52 is reserved.
        g.set(at, (g.get(at) & !(1 << 45)) | (1 << 51));
        let mut wide = p;
        wide.features.maxphyaddr = 52;
        assert!(!matches!(
            translate(&g, &wide, LA, read()),
            Err(WalkError::Fault(_))
        ));
    }
}

#[test]
fn xd_is_reserved_without_nxe() {
    for level in 1..=4u64 {
        let g = four_levels([OPEN; 4]);
        let at = g.entry(LA, level);
        g.set(at, g.get(at) | NO_EXECUTE);
        let mut p = g.paging();
        p.nxe = false;
        // Every access, not only fetches; I/D stays clear without NXE and SMEP.
        assert_eq!(fault_code(&g, &p, LA, read()), P | R);
        assert_eq!(
            fault_code(&g, &p, LA, Access::user(AccessKind::Execute)),
            P | R | U
        );
        p.smep = true;
        assert_eq!(
            fault_code(&g, &p, LA, Access::user(AccessKind::Execute)),
            P | R | U | I
        );
    }
}

#[test]
fn ps_and_large_page_reserved_bits() {
    let p = Guest::new().paging();
    // PS in a PML4E.
    let g = four_levels([OPEN; 4]);
    let pml4e = g.entry(LA, 4);
    g.set(pml4e, g.get(pml4e) | PAGE_SIZE);
    assert_eq!(fault_code(&g, &p, LA, read()), P | R);

    // 1 GiB page: bits 29:13 reserved, bit 12 is PAT.
    let g = Guest::new();
    let pdpte = g.map(0x40_0000_0000, 0x4000_0000, PageSize::Size1G, [OPEN; 3], 0);
    let la = 0x40_0000_0123;
    g.set(pdpte, g.get(pdpte) | PAT_LARGE);
    assert!(translate(&g, &p, la, read()).is_ok());
    for bit in [13, 20, 29] {
        g.set(pdpte, (0x4000_0000 | PRESENT | PAGE_SIZE) | (1 << bit));
        assert_eq!(fault_code(&g, &p, la, read()), P | R, "bit {bit}");
    }
    // Without 1 GiB pages PS itself is reserved in a PDPTE.
    g.set(pdpte, 0x4000_0000 | PRESENT | PAGE_SIZE);
    let mut no_gb = p;
    no_gb.features.gb_pages = false;
    assert_eq!(fault_code(&g, &no_gb, la, read()), P | R);
    assert!(translate(&g, &p, la, read()).is_ok());

    // 2 MiB page: bits 20:13 reserved, bit 12 is PAT.
    let g = Guest::new();
    let pde = g.map(0x20_0000, 0x40_0000, PageSize::Size2M, [OPEN; 3], PAT_LARGE);
    assert!(translate(&g, &p, 0x20_0000, read()).is_ok());
    for bit in [13, 20] {
        g.set(pde, g.get(pde) | (1 << bit));
        assert_eq!(fault_code(&g, &p, 0x20_0000, read()), P | R, "bit {bit}");
        g.set(pde, g.get(pde) & !(1 << bit));
    }
    // Bit 21 is an address bit of a 2 MiB page.
    g.set(pde, g.get(pde) | (1 << 21));
    assert_eq!(translate(&g, &p, 0x20_0000, read()).unwrap().gpa, 0x60_0000);

    // In a 4 KiB PTE bit 7 is PAT, and bits 62:52 are ignored everywhere.
    let g = four_levels([OPEN; 4]);
    let pte = g.entry(LA, 1);
    g.set(pte, g.get(pte) | PAT_4K | (0x7ff << 52));
    let pde = g.entry(LA, 2);
    g.set(pde, g.get(pde) | (0x7ff << 52));
    assert_eq!(translate(&g, &p, LA, read()).unwrap().gpa, 0x9678);
}

#[test]
fn reserved_bit_above_beats_not_present_below() {
    let g = four_levels([OPEN; 4]);
    let pdpte = g.entry(LA, 3);
    let pte = g.entry(LA, 1);
    g.set(pte, 0);
    g.set(pdpte, g.get(pdpte) | (1 << 50));
    assert_eq!(fault_code(&g, &g.paging(), LA, read()), P | R);
}

#[test]
fn user_accesses() {
    let p = Guest::new().paging();
    let ua = |k| Access::user(k);
    // Supervisor page at any level: every user access faults with P set.
    for level in 0..4 {
        let mut flags = [OPEN; 4];
        flags[level] &= !USER;
        let g = four_levels(flags);
        assert_eq!(fault_code(&g, &p, LA, ua(AccessKind::Read)), P | U);
        assert_eq!(fault_code(&g, &p, LA, ua(AccessKind::Write)), P | W | U);
        assert_eq!(fault_code(&g, &p, LA, ua(AccessKind::Execute)), P | U | I);
        assert!(!ok(&g, &p, read()).user);
    }
    // Read-only at any level: user writes fault, whatever CR0.WP says.
    for level in 0..4 {
        let mut flags = [OPEN; 4];
        flags[level] &= !WRITABLE;
        let g = four_levels(flags);
        let mut p0 = p;
        p0.wp = false;
        for p in [p, p0] {
            assert_eq!(fault_code(&g, &p, LA, ua(AccessKind::Write)), P | W | U);
            let t = ok(&g, &p, ua(AccessKind::Read));
            assert!(!t.writable);
        }
    }
    // NX at any level: user fetches fault (I/D set since NXE).
    for level in 0..4 {
        let mut flags = [OPEN; 4];
        flags[level] |= NO_EXECUTE;
        let g = four_levels(flags);
        assert_eq!(fault_code(&g, &p, LA, ua(AccessKind::Execute)), P | U | I);
        let t = ok(&g, &p, ua(AccessKind::Write));
        assert!(!t.executable && t.writable && t.user);
    }
}

#[test]
fn supervisor_writes_follow_cr0_wp() {
    for level in 0..4 {
        let mut flags = [OPEN; 4];
        flags[level] &= !WRITABLE;
        let g = four_levels(flags);
        let mut p = g.paging();
        let sw = Access::supervisor(AccessKind::Write);
        assert_eq!(fault_code(&g, &p, LA, sw), P | W);
        p.wp = false;
        let t = ok(&g, &p, sw);
        assert!(
            !t.writable,
            "the translation stays read-only; WP=0 only lets it through"
        );
        assert_ne!(g.get(g.entry(LA, 1)) & DIRTY, 0, "the write happened");
    }
}

#[test]
fn supervisor_fetches_follow_nx_and_smep() {
    let sf = Access::supervisor(AccessKind::Execute);
    // User page: allowed without SMEP, a fault with it (I/D set by SMEP even without NXE).
    let g = four_levels([OPEN; 4]);
    let mut p = g.paging();
    ok(&g, &p, sf);
    p.smep = true;
    assert_eq!(fault_code(&g, &p, LA, sf), P | I);
    p.nxe = false;
    assert_eq!(fault_code(&g, &p, LA, sf), P | I);
    // Supervisor page: SMEP does not apply.
    let g = four_levels([OPEN, OPEN, OPEN, PRESENT]);
    ok(&g, &p, sf);
    // NX on a supervisor page.
    let g = four_levels([OPEN, OPEN | NO_EXECUTE, OPEN, PRESENT]);
    let mut p = g.paging();
    assert_eq!(fault_code(&g, &p, LA, sf), P | I);
    // A user fetch from a supervisor page without NXE and SMEP: I/D is not reported.
    let g = four_levels([OPEN, OPEN, OPEN, PRESENT]);
    p.nxe = false;
    assert_eq!(
        fault_code(&g, &p, LA, Access::user(AccessKind::Execute)),
        P | U
    );
}

#[test]
fn smap_with_ac_and_implicit_accesses() {
    let g = four_levels([OPEN; 4]);
    let mut p = g.paging();
    let sr = Access::supervisor(AccessKind::Read);
    let sw = Access::supervisor(AccessKind::Write);
    let ir = Access::implicit(AccessKind::Read);
    let iw = Access::implicit(AccessKind::Write);
    // SMAP off: all allowed.
    for a in [sr, sw, ir, iw] {
        ok(&g, &p, a);
    }
    p.smap = true;
    assert_eq!(fault_code(&g, &p, LA, sr), P);
    assert_eq!(fault_code(&g, &p, LA, sw), P | W);
    assert_eq!(fault_code(&g, &p, LA, ir), P);
    p.ac = true;
    ok(&g, &p, sr);
    ok(&g, &p, sw);
    // AC does not lift SMAP for implicit accesses.
    assert_eq!(fault_code(&g, &p, LA, ir), P);
    assert_eq!(fault_code(&g, &p, LA, iw), P | W);
    // SMAP does not concern fetches or user accesses.
    ok(&g, &p, Access::supervisor(AccessKind::Execute));
    ok(&g, &p, Access::user(AccessKind::Read));
    // With AC, a supervisor write to a read-only user page follows WP.
    let ro = four_levels([OPEN, OPEN, OPEN, PRESENT | USER]);
    assert_eq!(fault_code(&ro, &p, LA, sw), P | W);
    p.wp = false;
    ok(&ro, &p, sw);
    // Supervisor pages are never subject to SMAP.
    let sup = four_levels([OPEN, OPEN, PRESENT | WRITABLE, OPEN]);
    p.ac = false;
    ok(&sup, &p, ir);
    ok(&sup, &p, sr);
}

#[test]
fn a_lost_compare_and_swap_walks_again_and_keeps_the_guests_change() {
    let g = four_levels([OPEN; 4]);
    let pde = g.entry(LA, 2);
    g.race.set(Some(pde));
    g.races_left.set(1);
    let t = ok(&g, &g.paging(), Access::user(AccessKind::Write));
    assert_eq!(g.get(pde) & ((1 << 9) | ACCESSED), (1 << 9) | ACCESSED);
    assert_eq!(t.walked()[2].value, g.get(pde));
    assert_ne!(g.get(g.entry(LA, 1)) & DIRTY, 0);
}

#[test]
fn endless_contention_gives_up() {
    let g = four_levels([OPEN; 4]);
    g.race.set(Some(g.entry(LA, 1)));
    g.races_left.set(1000);
    assert_eq!(walk(&g, &g.paging(), LA, read()), Err(WalkError::Contended));
}

#[test]
fn a_racing_change_to_not_present_becomes_the_guests_fault() {
    // The other vCPU unmaps the page between our read and our update: the next walk faults.
    struct Unmapping<'a>(&'a Guest, u64);
    impl GuestPhys for Unmapping<'_> {
        fn read(&self, gpa: u64) -> Option<u64> {
            self.0.read(gpa)
        }
        fn compare_exchange(&self, gpa: u64, current: u64, new: u64) -> Result<(), CasError> {
            if gpa == self.1 {
                self.0.set(gpa, 0);
            }
            self.0.compare_exchange(gpa, current, new)
        }
    }
    let g = four_levels([OPEN; 4]);
    let pte = g.entry(LA, 1);
    let r = walk(&Unmapping(&g, pte), &g.paging(), LA, read());
    assert!(matches!(
        r,
        Err(WalkError::Fault(PageFault {
            code: ErrorCode(0),
            ..
        }))
    ));
}

#[test]
fn canonical_addresses_only() {
    let g = four_levels([OPEN; 4]);
    let p = g.paging();
    assert_eq!(
        walk(&g, &p, 0x0000_8000_0000_0000, read()),
        Err(WalkError::NonCanonical)
    );
    assert_eq!(
        walk(&g, &p, 0xfff0_0000_0000_0000, read()),
        Err(WalkError::NonCanonical)
    );
    // The upper half walks from PML4 index 511.
    let hi = 0xffff_ff80_0000_1000;
    g.map(hi, 0xa000, PageSize::Size4K, [OPEN; 3], PRESENT);
    assert_eq!(walk(&g, &p, hi + 5, read()).unwrap().gpa, 0xa005);
    assert_eq!(g.entry(hi, 4), g.cr3 + 511 * 8);
}

#[test]
fn cr3_low_bits_and_bits_above_maxphyaddr_are_not_address() {
    let g = four_levels([OPEN; 4]);
    let mut p = g.paging();
    p.cr3 = g.cr3 | 0x18 | 0xabc | (1 << 63) | (1 << 50);
    assert_eq!(walk(&g, &p, LA, read()).unwrap().gpa, 0x9678);
}

#[test]
fn tables_outside_guest_ram_are_not_backed() {
    let g = four_levels([OPEN; 4]);
    let pdpte = g.entry(LA, 3);
    g.set(pdpte, RAM | OPEN);
    let pd_index = (LA >> 21) & 0x1ff;
    assert_eq!(
        walk(&g, &g.paging(), LA, read()),
        Err(WalkError::NotBacked {
            gpa: RAM + pd_index * 8
        })
    );
}

#[test]
fn long_mode_is_decoded_from_registers() {
    let f = Features {
        maxphyaddr: 39,
        gb_pages: false,
        cr4: u64::MAX,
    };
    let cr0 = reg::CR0_PG | reg::CR0_WP | 1;
    let cr4 = reg::CR4_PAE | reg::CR4_SMEP;
    let efer = reg::EFER_LMA | reg::EFER_NXE | (1 << 8);
    let p = Paging::long_mode(cr0, 0x5000, cr4, efer, reg::RFLAGS_AC, f).unwrap();
    assert_eq!(
        p,
        Paging {
            cr3: 0x5000,
            wp: true,
            smep: true,
            smap: false,
            ac: true,
            nxe: true,
            features: f,
            format: Format::Long,
        }
    );
    assert_eq!(
        Paging::long_mode(cr0 & !reg::CR0_PG, 0, cr4, efer, 0, f),
        None
    );
    assert_eq!(
        Paging::long_mode(cr0, 0, cr4 & !reg::CR4_PAE, efer, 0, f),
        None
    );
    assert_eq!(
        Paging::long_mode(cr0, 0, cr4 | reg::CR4_LA57, efer, 0, f),
        None
    );
    assert_eq!(Paging::long_mode(cr0, 0, cr4, reg::EFER_NXE, 0, f), None);
}

#[test]
fn translate_never_writes() {
    let g = four_levels([OPEN; 4]);
    let before = g.snapshot();
    let t = translate(&g, &g.paging(), LA, Access::user(AccessKind::Write)).unwrap();
    assert_eq!(t.gpa, 0x9678);
    assert_eq!(g.snapshot(), before);
    assert_eq!(g.cas_calls.get(), 0);
}
