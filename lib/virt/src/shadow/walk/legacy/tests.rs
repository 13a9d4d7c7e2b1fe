//! The PAE and 32-bit walks against guest tables built word by word in a fake guest.

use super::super::{reg, walk};
use super::*;
use crate::shadow::fake::{Guest, RAM};
use crate::shadow::AccessKind;

const P: u32 = ErrorCode::PRESENT;
const W: u32 = ErrorCode::WRITE;
const U: u32 = ErrorCode::USER;
const R: u32 = ErrorCode::RESERVED;
const I: u32 = ErrorCode::FETCH;

const FEATURES: Features = Features {
    maxphyaddr: 36,
    gb_pages: false,
    cr4: u64::MAX,
};
const PDPT: u64 = 0x2_0fe0; // 32-byte aligned, not page aligned
const PD: u64 = 0x3_0000;
const PT: u64 = 0x4_0000;
/// 3 GiB + 4 MiB + 5 pages + 0x123: PDPTE 3, PDE 2, PTE 5.
const LA: u64 = 0xc040_5123;
const PAGE: u64 = 0x9000;

fn read() -> Access {
    Access::supervisor(AccessKind::Read)
}

fn set32(g: &Guest, gpa: u64, value: u64) {
    let shift = (gpa & 4) * 8;
    let word = g.get(gpa & !7);
    g.set(
        gpa & !7,
        (word & !(0xffff_ffff << shift)) | ((value & 0xffff_ffff) << shift),
    );
}

fn get32(g: &Guest, gpa: u64) -> u64 {
    (g.get(gpa & !7) >> ((gpa & 4) * 8)) & 0xffff_ffff
}

fn pae(g: &Guest, nxe: bool, cr0_extra: u64) -> Paging {
    let pdptes = load_pdptes(g, PDPT, FEATURES).unwrap();
    let efer = if nxe { reg::EFER_NXE } else { 0 };
    Paging::legacy(
        reg::CR0_PG | 1 | cr0_extra,
        PDPT,
        reg::CR4_PAE,
        efer,
        0,
        FEATURES,
        pdptes,
    )
    .unwrap()
}

/// PAE tables mapping LA -> PAGE (4 KiB) with `pde` and `pte` flags.
fn pae_guest(pde: u64, pte: u64) -> Guest {
    let g = Guest::new();
    g.set(PDPT + 3 * 8, PD | PRESENT);
    g.set(PD + 2 * 8, PT | pde | PRESENT);
    g.set(PT + 5 * 8, PAGE | pte | PRESENT);
    g
}

fn fault(r: Result<Translation, WalkError>) -> (u32, FaultCause) {
    match r {
        Err(WalkError::Fault(f)) => (f.code.0, f.cause),
        other => panic!("expected a fault, got {other:?}"),
    }
}

#[test]
fn legacy_paging_picks_the_format_from_the_registers() {
    let p = |cr4: u64, efer: u64| {
        Paging::legacy(reg::CR0_PG | 1, 0x1000, cr4, efer, 0, FEATURES, [7; 4]).map(|p| p.format)
    };
    assert_eq!(p(reg::CR4_PAE, 0), Some(Format::Pae { pdptes: [7; 4] }));
    assert_eq!(p(0, 0), Some(Format::Bits32 { pse: false }));
    assert_eq!(p(reg::CR4_PSE, 0), Some(Format::Bits32 { pse: true }));
    assert_eq!(
        p(reg::CR4_PAE, reg::EFER_LMA),
        None,
        "long mode is not legacy"
    );
    assert_eq!(
        Paging::legacy(1, 0, 0, 0, 0, FEATURES, [0; 4]),
        None,
        "paging off"
    );
    // 32-bit paging has no XD bit whatever EFER.NXE says; PAE uses it.
    let nx32 = Paging::legacy(reg::CR0_PG | 1, 0, 0, reg::EFER_NXE, 0, FEATURES, [0; 4]);
    assert!(!nx32.unwrap().nxe);
    let nx_pae = Paging::legacy(
        reg::CR0_PG | 1,
        0,
        reg::CR4_PAE,
        reg::EFER_NXE,
        0,
        FEATURES,
        [0; 4],
    );
    assert!(nx_pae.unwrap().nxe);
}

#[test]
fn pdptes_load_from_cr3_bits_31_5_and_reserved_bits_are_refused() {
    let g = Guest::new();
    g.set(PDPT, 0x5000 | PRESENT | WRITE_THROUGH | CACHE_DISABLE);
    g.set(PDPT + 8, 0);
    // Not present: the other bits do not matter.
    g.set(PDPT + 16, 0xffff_ffff_ffff_fffe);
    g.set(PDPT + 24, 0x6000 | PRESENT);
    // CR3's low bits (PWT/PCD, bits 4:0) and bits 63:32 are not part of the address.
    let cr3 = (1 << 40) | PDPT | 0x18;
    assert_eq!(
        load_pdptes(&g, cr3, FEATURES),
        Ok([
            0x5000 | PRESENT | WRITE_THROUGH | CACHE_DISABLE,
            0,
            0xffff_ffff_ffff_fffe,
            0x6000 | PRESENT
        ])
    );
    // Each reserved bit of a present PDPTE: R/W, U/S, A, D, PS, G-position, XD, above
    // MAXPHYADDR.
    for bit in [1, 2, 5, 6, 7, 8, 63, 36, 51] {
        g.set(PDPT + 24, 0x6000 | PRESENT | 1 << bit);
        assert_eq!(
            load_pdptes(&g, PDPT, FEATURES),
            Err(PdpteError::Reserved { index: 3 }),
            "bit {bit}"
        );
    }
    // Ignored bits 11:9 are fine.
    g.set(PDPT + 24, 0x6000 | PRESENT | 0xe00);
    assert!(load_pdptes(&g, PDPT, FEATURES).is_ok());
    // A PDPT outside RAM.
    assert_eq!(
        load_pdptes(&g, RAM, FEATURES),
        Err(PdpteError::NotBacked { gpa: RAM })
    );
}

#[test]
fn pae_translates_4k_sets_accessed_below_the_pdptes_and_dirty_on_write() {
    let g = pae_guest(WRITABLE | USER, WRITABLE | USER);
    let pdpt_before = g.get(PDPT + 24);
    let p = pae(&g, true, 0);
    let t = walk(&g, &p, LA, read()).unwrap();
    assert_eq!(t.gpa, PAGE | 0x123);
    assert_eq!(t.size, PageSize::Size4K);
    assert_eq!(t.levels, 2, "the PDE and the PTE; the PDPTE is a register");
    assert_eq!(t.walked()[0].gpa, PD + 16);
    assert_eq!(t.walked()[1].gpa, PT + 40);
    assert!(t.writable && t.user && t.executable);
    assert_ne!(g.get(PD + 16) & ACCESSED, 0);
    assert_ne!(g.get(PT + 40) & ACCESSED, 0);
    assert_eq!(g.get(PT + 40) & DIRTY, 0);
    assert_eq!(g.get(PDPT + 24), pdpt_before, "PDPTEs have no A bit");
    walk(&g, &p, LA, Access::user(AccessKind::Write)).unwrap();
    assert_ne!(g.get(PT + 40) & DIRTY, 0);
    assert_eq!(g.get(PD + 16) & DIRTY, 0, "D only in the leaf");
}

#[test]
fn pae_walks_use_the_loaded_pdptes_not_memory() {
    let g = pae_guest(WRITABLE, WRITABLE);
    let p = pae(&g, false, 0);
    // The guest clears the PDPTE in memory without reloading CR3: the CPU keeps its copy.
    g.set(PDPT + 24, 0);
    assert_eq!(walk(&g, &p, LA, read()).unwrap().gpa, PAGE | 0x123);
    // A not-present PDPTE: #PF without P, W/R and U/S from the access.
    let p = pae(&g, false, 0);
    let r = walk(&g, &p, LA, Access::user(AccessKind::Write));
    assert_eq!(fault(r), (W | U, FaultCause::NotPresent { level: 3 }));
    // Linear addresses are 32 bits wide.
    assert_eq!(walk(&g, &p, 1 << 32, read()), Err(WalkError::NonCanonical));
}

#[test]
fn pae_rights_large_pages_and_reserved_bits() {
    // User access to a supervisor page; write to a read-only one with and without CR0.WP.
    let g = pae_guest(WRITABLE, 0);
    let p = pae(&g, true, 0);
    let r = walk(&g, &p, LA, Access::user(AccessKind::Read));
    assert_eq!(fault(r), (P | U, FaultCause::Protection));
    let r = walk(&g, &p, LA, Access::supervisor(AccessKind::Write));
    assert!(r.is_ok(), "CR0.WP clear: supervisor writes ignore R/W");
    let wp = pae(&g, true, reg::CR0_WP);
    let r = walk(&g, &wp, LA, Access::supervisor(AccessKind::Write));
    assert_eq!(fault(r), (P | W, FaultCause::Protection));

    // XD with NXE: a fetch faults with I/D; without NXE XD is a reserved bit.
    let g = pae_guest(WRITABLE, NO_EXECUTE);
    let r = walk(
        &g,
        &pae(&g, true, 0),
        LA,
        Access::supervisor(AccessKind::Execute),
    );
    assert_eq!(fault(r), (P | I, FaultCause::Protection));
    let r = walk(&g, &pae(&g, false, 0), LA, read());
    assert_eq!(fault(r), (P | R, FaultCause::Reserved { level: 1 }));

    // A 2 MiB page; its bits 20:13 are reserved, as are bits above MAXPHYADDR.
    let g = Guest::new();
    g.set(PDPT + 24, PD | PRESENT);
    g.set(PD + 16, 0x60_0000 | PAGE_SIZE | WRITABLE | PRESENT);
    let t = walk(&g, &pae(&g, false, 0), LA, read()).unwrap();
    assert_eq!((t.gpa, t.size, t.levels), (0x60_5123, PageSize::Size2M, 1));
    for bit in [13, 20, 36] {
        g.set(PD + 16, 0x60_0000 | PAGE_SIZE | PRESENT | 1 << bit);
        let r = walk(&g, &pae(&g, false, 0), LA, read());
        assert_eq!(
            fault(r),
            (P | R, FaultCause::Reserved { level: 2 }),
            "bit {bit}"
        );
    }
}

/// 32-bit tables mapping LA -> PAGE: PDE 0x301 in the directory at PD, PTE 5 in PT.
fn bits32_guest(pde: u64, pte: u64) -> Guest {
    let g = Guest::new();
    set32(&g, PD + 0x301 * 4, PT | pde | PRESENT);
    set32(&g, PT + 5 * 4, PAGE | pte | PRESENT);
    g
}

fn bits32(pse: bool, extra_cr0: u64, extra_cr4: u64) -> Paging {
    let cr4 = if pse { reg::CR4_PSE } else { 0 } | extra_cr4;
    Paging::legacy(
        reg::CR0_PG | 1 | extra_cr0,
        PD | 0x18,
        cr4,
        reg::EFER_NXE,
        0,
        FEATURES,
        [0; 4],
    )
    .unwrap()
}

#[test]
fn bits32_translates_4k_with_4_byte_entries_and_leaves_the_neighbours_alone() {
    let g = bits32_guest(WRITABLE | USER, WRITABLE | USER);
    // Neighbours sharing the 8-byte words: PDE 0x300 and PTE 4.
    set32(&g, PD + 0x300 * 4, 0xdead_b000);
    set32(&g, PT + 4 * 4, 0xbeef_f000);
    let t = walk(
        &g,
        &bits32(false, 0, 0),
        LA,
        Access::user(AccessKind::Write),
    )
    .unwrap();
    assert_eq!(t.gpa, PAGE | 0x123);
    assert_eq!(t.size, PageSize::Size4K);
    assert_eq!(t.levels, 2);
    assert_eq!(t.walked()[0].gpa, PD + 0x301 * 4);
    assert_eq!(t.walked()[1].gpa, PT + 5 * 4);
    assert!(t.executable, "32-bit paging has no XD");
    assert_eq!(
        get32(&g, PD + 0x301 * 4),
        PT | WRITABLE | USER | PRESENT | ACCESSED
    );
    assert_eq!(
        get32(&g, PT + 5 * 4),
        PAGE | WRITABLE | USER | PRESENT | ACCESSED | DIRTY
    );
    assert_eq!(get32(&g, PD + 0x300 * 4), 0xdead_b000);
    assert_eq!(get32(&g, PT + 4 * 4), 0xbeef_f000);
    assert_eq!(t.leaf(), get32(&g, PT + 5 * 4));
}

#[test]
fn bits32_rights_and_error_codes() {
    let g = bits32_guest(WRITABLE, USER);
    let before = g.snapshot();
    let r = walk(&g, &bits32(false, 0, 0), LA, Access::user(AccessKind::Read));
    assert_eq!(fault(r), (P | U, FaultCause::Protection), "U/S at the PDE");
    assert_eq!(g.snapshot(), before, "a faulting walk changes nothing");
    let g = bits32_guest(WRITABLE | USER, USER);
    let r = walk(
        &g,
        &bits32(false, 0, 0),
        LA,
        Access::user(AccessKind::Write),
    );
    assert_eq!(fault(r), (P | W | U, FaultCause::Protection));
    // Supervisor writes honour R/W only with CR0.WP.
    assert!(walk(
        &g,
        &bits32(false, 0, 0),
        LA,
        Access::supervisor(AccessKind::Write)
    )
    .is_ok());
    let r = walk(
        &g,
        &bits32(false, reg::CR0_WP, 0),
        LA,
        Access::supervisor(AccessKind::Write),
    );
    assert_eq!(fault(r), (P | W, FaultCause::Protection));
    // Fetches report I/D only with SMEP (there is no NXE here), and SMEP stops supervisor
    // fetches from user pages.
    let r = walk(
        &g,
        &bits32(false, 0, 0),
        LA,
        Access::supervisor(AccessKind::Execute),
    );
    assert!(r.is_ok());
    let r = walk(
        &g,
        &bits32(false, 0, reg::CR4_SMEP),
        LA,
        Access::supervisor(AccessKind::Execute),
    );
    assert_eq!(fault(r), (P | I, FaultCause::Protection));
    // Not present at either level.
    let g = bits32_guest(0, 0);
    set32(&g, PT + 5 * 4, 0);
    let r = walk(
        &g,
        &bits32(false, 0, 0),
        LA,
        Access::user(AccessKind::Execute),
    );
    assert_eq!(fault(r), (U, FaultCause::NotPresent { level: 1 }));
    set32(&g, PD + 0x301 * 4, 0);
    let r = walk(&g, &bits32(false, 0, 0), LA, read());
    assert_eq!(fault(r), (0, FaultCause::NotPresent { level: 2 }));
}

#[test]
fn bits32_4m_pages_with_pse_and_pse36() {
    let g = Guest::new();
    // 4 MiB page at 0x7_0080_0000 (PSE-36: bits 35:32 = 7 in PDE bits 16:13), PAT (bit 12).
    let pde = 0x0080_0000 | (7 << 13) | PAT_LARGE | PAGE_SIZE | WRITABLE | PRESENT;
    set32(&g, PD + 0x301 * 4, pde);
    let t = walk(&g, &bits32(true, 0, 0), LA, read()).unwrap();
    assert_eq!(t.gpa, 0x7_0080_0000 | (LA & 0x3f_ffff));
    assert_eq!(t.size, PageSize::Size2M, "reported as its 2 MiB half");
    assert_eq!(t.levels, 1);
    assert_ne!(get32(&g, PD + 0x301 * 4) & ACCESSED, 0);
    assert_ne!(t.leaf() & PAT_LARGE, 0);
    // Without CR4.PSE the PS bit is ignored: the PDE points at a page table.
    set32(&g, PD + 0x301 * 4, 0x0080_0000 | PAGE_SIZE | PRESENT);
    set32(&g, 0x0080_0000 + 5 * 4, PAGE | PRESENT);
    let t = walk(&g, &bits32(false, 0, 0), LA, read()).unwrap();
    assert_eq!((t.gpa, t.size), (PAGE | 0x123, PageSize::Size4K));
    // Bit 21, and PSE-36 bits above MAXPHYADDR (36: PDE bits 20:17), are reserved.
    for bit in [21, 17, 20] {
        set32(
            &g,
            PD + 0x301 * 4,
            0x0080_0000 | PAGE_SIZE | PRESENT | 1 << bit,
        );
        let r = walk(&g, &bits32(true, 0, 0), LA, read());
        assert_eq!(
            fault(r),
            (P | R, FaultCause::Reserved { level: 2 }),
            "bit {bit}"
        );
    }
    assert_eq!(pde_4m_reserved(FEATURES), 1 << 21 | 0x1e_0000);
    let wide = Features {
        maxphyaddr: 46,
        gb_pages: true,
        cr4: u64::MAX,
    };
    assert_eq!(pde_4m_reserved(wide), 1 << 21, "40 address bits at most");
}

#[test]
fn bits32_accessed_updates_restart_when_the_other_half_changes() {
    let g = bits32_guest(WRITABLE, WRITABLE);
    // The "other vCPU" changes the PTE word (the other half) at every CAS there, 2 times.
    g.race.set(Some((PT + 5 * 4) & !7));
    g.races_left.set(2);
    let t = walk(&g, &bits32(false, 0, 0), LA, read()).unwrap();
    assert_eq!(t.gpa, PAGE | 0x123);
    assert_ne!(get32(&g, PT + 5 * 4) & ACCESSED, 0);
    // Always changing: the walk gives up rather than overwrite.
    let g = bits32_guest(WRITABLE, WRITABLE);
    g.race.set(Some((PT + 5 * 4) & !7));
    g.races_left.set(100);
    assert_eq!(
        walk(&g, &bits32(false, 0, 0), LA, read()),
        Err(WalkError::Contended)
    );
}
