//! The vTLB of a shadow-mode Vm against fake host memory: guest tables built by
//! [`fake::Guest`], copied into a [`fake::Machine`]'s memory and reached through real nested
//! tables, as the kernel reaches them through its direct map.

use super::*;
use crate::ept::Access;
use crate::nested::Format;
use crate::shadow::bits::*;
use crate::shadow::fake::{Guest, Machine, NestedBuild, HOST_OFFSET, OPEN};
use crate::shadow::machine::{physical_to_host, physical_to_host_writable};
use crate::shadow::PageSize;

type TestShadow<'a> = Shadow<&'a Machine, 16, 2>;

const CR0: u64 = CR0_PE | CR0_WP | CR0_PG;
const CR4: u64 = CR4_PAE;
const EFER: u64 = EFER_LME | EFER_LMA | EFER_NXE;
/// Guest RAM the nested tables map (the fake guest's tables and the test's pages are below).
const RAM_PAGES: u64 = 0x800;
const RW: Access = Access {
    read: true,
    write: true,
    execute: true,
};
const RO: Access = Access {
    read: true,
    write: false,
    execute: true,
};

/// #PF error-code bits.
const ERR_PRESENT: u32 = 1;
const ERR_WRITE: u32 = 1 << 1;
const ERR_USER: u32 = 1 << 2;
const ERR_FETCH: u32 = 1 << 4;

const LA: u64 = 0x4000_0000;
const DATA: u64 = 0x40_0000;

/// Nested tables mapping guest RAM `[0, RAM_PAGES)` pages writable, except `read_only` pages.
fn nested(m: &Machine, read_only: &[u64]) -> NestedTables {
    let mut build = NestedBuild(m);
    let mut n = NestedTables::new(&mut build, Format::Npt, 1 << 40).unwrap();
    for p in 0..RAM_PAGES {
        let gpa = p * 4096;
        let access = if read_only.contains(&gpa) { RO } else { RW };
        n.map(&mut build, gpa, gpa + HOST_OFFSET, access).unwrap();
    }
    n
}

/// A loaded vTLB over `m` running guest `g`.
fn shadow<'a>(m: &'a Machine, g: &Guest) -> TestShadow<'a> {
    m.load(g);
    let mut s = TestShadow::new(m).unwrap();
    s.load(CR0, g.cr3, CR4, EFER).unwrap();
    s
}

fn hpa_of(leaf: u64) -> u64 {
    leaf & ADDR
}

#[test]
fn new_takes_frames_and_gives_them_back() {
    let m = Machine::new();
    let before = m.out.borrow().len();
    let s = TestShadow::new(&m).unwrap();
    assert_eq!(m.out.borrow().len(), before + 16);
    drop(s);
    assert_eq!(m.out.borrow().len(), before);
    // Memory runs short half-way: nothing is kept.
    m.budget.set(10);
    assert!(TestShadow::new(&m).is_none());
    assert_eq!(m.out.borrow().len(), before);
    // Too few frames for a vTLB: refused, nothing kept.
    m.budget.set(usize::MAX);
    assert!(Shadow::<&Machine, 3, 2>::new(&m).is_none());
    assert_eq!(m.out.borrow().len(), before);
}

#[test]
fn hardware_root_only_after_a_long_mode_load() {
    let m = Machine::new();
    let g = Guest::new();
    m.load(&g);
    let mut s = TestShadow::new(&m).unwrap();
    assert_eq!(s.hardware_root(), None);
    let hw = s.load(CR0 & !CR0_WP, g.cr3, CR4, EFER).unwrap();
    assert_eq!(hw.cr0, CR0, "CR0.WP is forced on");
    assert_eq!(Some(hw.cr3), s.hardware_root());
    assert!(m.out.borrow().contains(&hw.cr3), "the root is a pool frame");
    assert_eq!(
        s.read_cr(0),
        Some(CR0 & !CR0_WP),
        "the guest sees its own CR0"
    );
    assert_eq!(s.read_cr(3), Some(g.cr3));
    assert_eq!(s.read_cr(2), None);
}

#[test]
fn a_fault_fills_the_leaf_after_the_guest_walk() {
    let m = Machine::new();
    let g = Guest::new();
    let leaf_at = g.map(LA, DATA, PageSize::Size4K, [OPEN; 3], WRITABLE | USER);
    let n = nested(&m, &[]);
    let mut s = shadow(&m, &g);
    assert_eq!(s.leaf(LA), 0);

    let out = s.page_fault(&n, LA + 0x10, 0, false, 0);
    assert_eq!(
        out,
        FaultOutcome::Resume {
            flush: false,
            page: None
        }
    );
    let leaf = s.leaf(LA);
    assert_eq!(hpa_of(leaf), DATA + HOST_OFFSET);
    assert_ne!(leaf & PRESENT, 0);
    assert_ne!(leaf & USER, 0);
    // A read of a clean page maps it read-only, so the first write comes back to set D.
    assert_eq!(leaf & WRITABLE, 0);
    assert_eq!(s.stats.fills, 1);
    // The walk set A in the guest's own leaf, in guest memory.
    assert_ne!(m.get(leaf_at + HOST_OFFSET) & ACCESSED, 0);
    assert_eq!(m.get(leaf_at + HOST_OFFSET) & DIRTY, 0);

    // The write: D set in the guest's leaf, the shadow leaf made writable and the old
    // read-only translation invalidated.
    let out = s.page_fault(&n, LA, ERR_WRITE | ERR_PRESENT, false, 0);
    assert_eq!(
        out,
        FaultOutcome::Resume {
            flush: false,
            page: Some(LA)
        }
    );
    assert_ne!(s.leaf(LA) & WRITABLE, 0);
    assert_ne!(m.get(leaf_at + HOST_OFFSET) & DIRTY, 0);
    assert_eq!(s.stats.fills, 2);
}

#[test]
fn the_guests_own_faults_and_unbacked_memory_are_not_filled() {
    let m = Machine::new();
    let g = Guest::new();
    g.map(LA, DATA, PageSize::Size4K, [OPEN; 3], 0);
    // Backed by nothing: beyond the RAM the nested tables map.
    g.map(
        LA + 0x1000,
        RAM_PAGES * 4096,
        PageSize::Size4K,
        [OPEN; 3],
        WRITABLE,
    );
    let n = nested(&m, &[]);
    let mut s = shadow(&m, &g);

    // Not present in the guest's tables.
    assert_eq!(
        s.page_fault(&n, LA + 0x20_0000, 0, false, 0),
        FaultOutcome::InjectPageFault {
            address: LA + 0x20_0000,
            error: 0
        }
    );
    // A user write to a supervisor read-only page: the guest's protection fault.
    assert_eq!(
        s.page_fault(&n, LA, ERR_WRITE | ERR_USER, true, 0),
        FaultOutcome::InjectPageFault {
            address: LA,
            error: ERR_PRESENT | ERR_WRITE | ERR_USER
        }
    );
    assert_eq!(s.stats.guest_faults, 2);
    assert_eq!(
        s.page_fault(&n, LA + 0x1000, 0, false, 0),
        FaultOutcome::MemoryFault {
            gpa: RAM_PAGES * 4096,
            write: false
        }
    );
    assert_eq!(s.stats.fills, 0);
    assert_eq!(s.leaf(LA), 0);
    assert_eq!(s.leaf(LA + 0x1000), 0);
    // Non-canonical addresses are #GP, not #PF.
    assert_eq!(
        s.page_fault(&n, 0x8000_0000_0000, 0, false, 0),
        FaultOutcome::InjectGeneralProtection
    );
}

#[test]
fn invlpg_drops_the_translation_the_guest_changed() {
    let m = Machine::new();
    let g = Guest::new();
    let leaf_at = g.map(LA, DATA, PageSize::Size4K, [OPEN; 3], WRITABLE);
    let n = nested(&m, &[]);
    let mut s = shadow(&m, &g);
    s.page_fault(&n, LA, 0, false, 0);
    assert_eq!(hpa_of(s.leaf(LA)), DATA + HOST_OFFSET);

    // The guest points the page elsewhere: like a TLB, the shadow keeps the old translation
    // until the guest invalidates it.
    m.set(leaf_at + HOST_OFFSET, (DATA + 0x1000) | PRESENT | WRITABLE);
    assert_eq!(hpa_of(s.leaf(LA)), DATA + HOST_OFFSET);
    assert!(!s.invlpg(LA + 0x123), "one 4 KiB page: no full flush");
    assert_eq!(s.leaf(LA), 0);
    assert_eq!(s.stats.invlpgs, 1);
    s.page_fault(&n, LA, 0, false, 0);
    assert_eq!(hpa_of(s.leaf(LA)), DATA + 0x1000 + HOST_OFFSET);
}

#[test]
fn invlpg_in_a_large_page_drops_all_of_it() {
    let m = Machine::new();
    let g = Guest::new();
    g.map(LA, 0x20_0000, PageSize::Size2M, [OPEN; 3], WRITABLE);
    let n = nested(&m, &[]);
    let mut s = shadow(&m, &g);
    s.page_fault(&n, LA, 0, false, 0);
    s.page_fault(&n, LA + 0x5000, 0, false, 0);
    assert_eq!(hpa_of(s.leaf(LA + 0x5000)), 0x20_5000 + HOST_OFFSET);
    assert!(
        s.invlpg(LA + 0x1f_f000),
        "a large page: flush the hardware TLB"
    );
    assert_eq!(s.leaf(LA), 0);
    assert_eq!(s.leaf(LA + 0x5000), 0);
}

/// A second address space sharing the first's PDPTs, its PML4 at guest page `at`.
fn second_space(m: &Machine, g: &Guest, at: u64) -> u64 {
    for i in 0..512 {
        let e = g.get(g.cr3 + i * 8);
        if e != 0 {
            m.set(at + HOST_OFFSET + i * 8, e);
        }
    }
    at
}

#[test]
fn cr3_loads_switch_between_cached_roots() {
    let m = Machine::new();
    let g = Guest::new();
    g.map(LA, DATA, PageSize::Size4K, [OPEN; 3], WRITABLE);
    let n = nested(&m, &[]);
    let mut s = shadow(&m, &g);
    let a = g.cr3;
    let b = second_space(&m, &g, 0x70_0000);
    let root_a = s.hardware_root().unwrap();
    s.page_fault(&n, LA, 0, false, 0);

    let (hw, flush) = s.write_cr(3, b).unwrap();
    assert!(flush);
    assert_ne!(hw.cr3, root_a, "another address space, another root");
    assert_eq!(s.read_cr(3), Some(b));
    assert_eq!(s.leaf(LA), 0, "the new tree starts empty");
    s.page_fault(&n, LA, 0, false, 0);
    assert_eq!(hpa_of(s.leaf(LA)), DATA + HOST_OFFSET);

    // Back to A: its cached root again, emptied (no PCIDs: MOV CR3 flushes).
    let (hw, _) = s.write_cr(3, a).unwrap();
    assert_eq!(hw.cr3, root_a);
    assert_eq!(s.leaf(LA), 0);
    assert_eq!(s.stats.cr3_loads, 2);
    assert_eq!(s.stats.flushes, 1, "only the load flushed everything");

    // Past the physical width: #GP, nothing changes.
    assert_eq!(s.write_cr(3, 1 << 46), Err(CrError::GeneralProtection));
    assert_eq!(s.read_cr(3), Some(a));
    assert_eq!(s.stats.cr3_loads, 2);
}

#[test]
fn a_global_region_survives_cr3_loads() {
    let m = Machine::new();
    let g = Guest::new();
    g.map(
        LA,
        0x20_0000,
        PageSize::Size2M,
        [OPEN; 3],
        WRITABLE | GLOBAL,
    );
    g.map(
        LA + 0x20_0000,
        0x40_0000,
        PageSize::Size2M,
        [OPEN; 3],
        WRITABLE,
    );
    let n = nested(&m, &[]);
    m.load(&g);
    let mut s = TestShadow::new(&m).unwrap();
    s.load(CR0, g.cr3, CR4 | CR4_PGE, EFER).unwrap();
    s.regions = true;
    let b = second_space(&m, &g, 0x70_0000);
    s.page_fault(&n, LA, 0, false, 0);
    s.page_fault(&n, LA + 0x20_0000, 0, false, 0);
    // Region fills: the whole 2 MiB at once.
    assert_eq!(hpa_of(s.leaf(LA + 0x1f_f000)), 0x3f_f000 + HOST_OFFSET);
    assert_eq!(hpa_of(s.leaf(LA + 0x3f_f000)), 0x5f_f000 + HOST_OFFSET);
    s.write_cr(3, b).unwrap();
    assert_eq!(hpa_of(s.leaf(LA + 0x1f_f000)), 0x3f_f000 + HOST_OFFSET);
    assert_eq!(
        s.leaf(LA + 0x3f_f000),
        0,
        "not global: gone with the CR3 load"
    );
    // A CR4 change that stales every translation drops the global region too.
    let (_, flush) = s.write_cr(4, CR4).unwrap();
    assert!(flush);
    assert_eq!(s.leaf(LA + 0x1f_f000), 0);
}

#[test]
fn control_register_writes_the_vtlb_cannot_follow() {
    let m = Machine::new();
    let g = Guest::new();
    let mut s = shadow(&m, &g);
    assert_eq!(
        s.write_cr(0, CR0 & !CR0_PE),
        Err(CrError::GeneralProtection),
        "paging without protection"
    );
    assert_eq!(
        s.write_cr(0, CR0 | 1 << 32),
        Err(CrError::GeneralProtection)
    );
    assert_eq!(
        s.write_cr(4, CR4 | CR4_PCIDE),
        Err(CrError::GeneralProtection)
    );
    assert_eq!(s.write_cr(4, 0), Err(CrError::GeneralProtection), "PAE off");
    // Reserved and never-offered CR4 bits (bit 31, SMXE, CET), NW without CD, PG without PE:
    // #GP as on the CPU, not a stopped guest.
    // OSXSAVE is the guest's where the CPU has it (this fake CPU has every bit).
    assert!(s.write_cr(4, CR4 | 1 << 18).is_ok());
    assert!(s.write_cr(4, CR4).is_ok());
    for bit in [31, 14, 23] {
        assert_eq!(
            s.write_cr(4, CR4 | 1 << bit),
            Err(CrError::GeneralProtection),
            "CR4 bit {bit}"
        );
    }
    assert_eq!(
        s.write_cr(0, CR0 | 1 << 29),
        Err(CrError::GeneralProtection),
        "NW without CD"
    );
    assert_eq!(
        s.write_cr(0, CR0 & !CR0_PE),
        Err(CrError::GeneralProtection),
        "PG without PE"
    );
    assert_eq!(s.write_cr(8, 0), Err(CrError::Unsupported));
    assert_eq!((s.cr0, s.cr4), (CR0, CR4));
    // Toggling CR0.WP changes what every leaf allows: flush.
    let flushes = s.stats.flushes;
    let (hw, flush) = s.write_cr(0, CR0 & !CR0_WP).unwrap();
    assert!(flush);
    assert_eq!(hw.cr0, CR0, "the hardware keeps WP");
    assert_eq!(s.stats.flushes, flushes + 1);
    // CR4.OSFXSR (bit 9) changes no translation: no flush.
    let (_, flush) = s.write_cr(4, CR4 | 1 << 9).unwrap();
    assert!(!flush);
}

#[test]
fn preview_then_load_refuses_a_bad_state_without_changing_anything() {
    let m = Machine::new();
    let g = Guest::new();
    g.map(LA, DATA, PageSize::Size4K, [OPEN; 3], WRITABLE);
    let n = nested(&m, &[]);
    let mut s = shadow(&m, &g);
    s.page_fault(&n, LA, 0, false, 0);
    let before = (
        s.cr0,
        s.cr3,
        s.cr4,
        s.efer,
        s.stats,
        s.hardware_root(),
        s.leaf(LA),
    );
    let unchanged = |s: &TestShadow| {
        assert_eq!(
            (
                s.cr0,
                s.cr3,
                s.cr4,
                s.efer,
                s.stats,
                s.hardware_root(),
                s.leaf(LA)
            ),
            before
        );
    };

    let bad = [
        (CR0 & !CR0_PG, CR4, EFER, CrError::GeneralProtection),
        (CR0 & !CR0_PE, CR4, EFER, CrError::GeneralProtection),
        (CR0, CR4 & !CR4_PAE, EFER, CrError::Unsupported),
        (CR0, CR4, EFER & !EFER_LMA, CrError::Unsupported),
        (CR0, CR4 | CR4_LA57, EFER, CrError::GeneralProtection),
        (CR0 | 1 << 40, CR4, EFER, CrError::GeneralProtection),
        (CR0, CR4 | 1 << 33, EFER, CrError::GeneralProtection),
    ];
    for (cr0, cr4, efer, error) in bad {
        assert_eq!(s.preview(cr0, cr4, efer), Err(error));
        unchanged(&s);
        assert_eq!(s.load(cr0, 0x70_0000, cr4, efer), Err(error));
        unchanged(&s);
    }

    // A good state: the preview answers what the load will, still changing nothing.
    let preview = s.preview(CR0 & !CR0_WP, CR4 | CR4_SMEP, EFER).unwrap();
    unchanged(&s);
    assert_eq!(
        preview,
        HwControl {
            cr0: CR0,
            cr3: before.5.unwrap(),
            cr4: CR4 | CR4_SMEP,
            efer: EFER,
            nested: false,
        }
    );
    let loaded = s.load(CR0 & !CR0_WP, g.cr3, CR4 | CR4_SMEP, EFER).unwrap();
    assert_eq!((loaded.cr0, loaded.cr4), (preview.cr0, preview.cr4));
    assert_eq!(s.leaf(LA), 0, "a load starts from empty shadow tables");
    assert_eq!(s.stats.flushes, before.4.flushes + 1);
}

/// The window of the tests: 4 pages at `WIN_LA`, backed by guest pages from `WIN_GPA` on.
const WIN_LA: u64 = 0xffff_8000_0000_0000;
const WIN_GPA: u64 = 0x60_0000;

fn window(scratch: u64) -> Window {
    Window {
        gla: WIN_LA,
        gpa: WIN_GPA,
        pages: 4,
        scratch,
    }
}

#[test]
fn window_rights_rules() {
    let w = window(1);
    let scratch = WIN_LA + 3 * 4096;
    assert_eq!(w.rights(WIN_LA, EFER, true), 0, "stubs: read and execute");
    assert_eq!(w.rights(scratch, EFER, true), WRITABLE | NO_EXECUTE);
    assert_eq!(w.rights(scratch, EFER & !EFER_NXE, true), WRITABLE);
    assert_eq!(w.rights(scratch, EFER, false), 0, "read-only backing");
    assert_eq!(w.rights(WIN_LA + 4 * 4096, EFER, true), 0, "past the end");
    assert!(w.contains(WIN_LA + 4 * 4096 - 1));
    assert!(!w.contains(WIN_LA + 4 * 4096));
    assert!(!w.contains(WIN_LA - 1));
}

#[test]
fn window_faults_map_the_window_whatever_the_guests_tables_say() {
    let m = Machine::new();
    let g = Guest::new();
    // The read-only page under the scratch page of the second window.
    let n = nested(&m, &[WIN_GPA + 3 * 4096]);
    let mut s = shadow(&m, &g);
    s.window = Some(window(2));
    let stub = WIN_LA + 0x10;
    let scratch = WIN_LA + 2 * 4096;

    // Stubs: supervisor read and fetch, never write, never user.
    assert!(matches!(
        s.page_fault(&n, stub, ERR_FETCH, false, 0),
        FaultOutcome::Resume { .. }
    ));
    let leaf = s.leaf(stub);
    assert_eq!(hpa_of(leaf), WIN_GPA + HOST_OFFSET);
    assert_eq!(leaf & (WRITABLE | USER | NO_EXECUTE), 0);
    assert_ne!(leaf & PRESENT, 0);
    assert_eq!(
        s.page_fault(&n, WIN_LA + 4096, ERR_WRITE, false, 0),
        FaultOutcome::InjectPageFault {
            address: WIN_LA + 4096,
            error: ERR_WRITE | ERR_PRESENT
        }
    );
    assert_eq!(
        s.page_fault(&n, WIN_LA + 4096, ERR_USER, true, 0),
        FaultOutcome::InjectPageFault {
            address: WIN_LA + 4096,
            error: ERR_USER | ERR_PRESENT
        }
    );
    // Scratch: written, never fetched.
    assert!(matches!(
        s.page_fault(&n, scratch, ERR_WRITE, false, 0),
        FaultOutcome::Resume { .. }
    ));
    assert_eq!(
        s.leaf(scratch) & (WRITABLE | NO_EXECUTE | USER),
        WRITABLE | NO_EXECUTE
    );
    assert!(matches!(
        s.page_fault(&n, scratch, ERR_FETCH, false, 0),
        FaultOutcome::InjectPageFault { .. }
    ));
    // Scratch on read-only backing: read-only, a write is the guest's protection fault.
    let ro = WIN_LA + 3 * 4096;
    assert!(matches!(
        s.page_fault(&n, ro, ERR_WRITE, false, 0),
        FaultOutcome::InjectPageFault { .. }
    ));
    assert_eq!(s.leaf(ro), 0);
    assert!(matches!(
        s.page_fault(&n, ro, 0, false, 0),
        FaultOutcome::Resume { .. }
    ));
    assert_eq!(s.leaf(ro) & WRITABLE, 0);
    assert_eq!(s.stats.fills, 3);
    assert_eq!(s.stats.guest_faults, 4);

    // A CR3 load empties the tree; the prefill maps the whole window again.
    s.write_cr(3, g.cr3).unwrap();
    assert_eq!(s.leaf(stub), 0);
    s.prefill_window(&n);
    assert_ne!(s.leaf(stub) & PRESENT, 0);
    assert_eq!(s.leaf(scratch) & WRITABLE, WRITABLE);
    assert_eq!(s.leaf(ro) & WRITABLE, 0);
}

#[test]
fn view_faults_show_guest_ram_read_only_and_not_executable() {
    let m = Machine::new();
    let g = Guest::new();
    let n = nested(&m, &[]);
    let mut s = shadow(&m, &g);
    let base = 0xffff_c000_0000_0000;
    s.view = Some(View {
        gla: base,
        size: 0x40_0000,
    });
    for (error, user) in [(ERR_WRITE, false), (ERR_FETCH, false), (0, true)] {
        assert!(matches!(
            s.page_fault(&n, base + 0x1000, error, user, 0),
            FaultOutcome::InjectPageFault { .. }
        ));
    }
    assert!(matches!(
        s.page_fault(&n, base + 0x1000, 0, false, 0),
        FaultOutcome::Resume { .. }
    ));
    // The whole 2 MiB region at once.
    for page in [0x1000, 0x0, 0x1f_f000] {
        let leaf = s.leaf(base + page);
        assert_eq!(hpa_of(leaf), page + HOST_OFFSET);
        assert_eq!(leaf & (WRITABLE | USER), 0);
        assert_ne!(leaf & NO_EXECUTE, 0);
    }
    assert_eq!(s.leaf(base + 0x20_0000), 0);
    // Inside the view but beyond the guest's RAM: the VMM's memory fault.
    let unbacked = RAM_PAGES * 4096;
    s.view = Some(View {
        gla: base,
        size: unbacked + 0x20_0000,
    });
    assert_eq!(
        s.page_fault(&n, base + unbacked, 0, false, 0),
        FaultOutcome::MemoryFault {
            gpa: unbacked,
            write: false
        }
    );
}

#[test]
fn writable_translation_needs_writable_backing() {
    let m = Machine::new();
    let ro = 0x5000;
    let n = nested(&m, &[ro]);
    assert_eq!(
        physical_to_host(&&m, &n, ro + 8),
        Some(ro + 8 + HOST_OFFSET)
    );
    assert_eq!(physical_to_host_writable(&&m, &n, ro + 8), None);
    assert_eq!(
        physical_to_host_writable(&&m, &n, 0x6000),
        Some(0x6000 + HOST_OFFSET)
    );
    let beyond = RAM_PAGES * 4096;
    assert_eq!(physical_to_host(&&m, &n, beyond), None);
    assert_eq!(physical_to_host_writable(&&m, &n, beyond), None);
}

#[test]
fn publish_writes_the_window_words_only_on_writable_backing() {
    let m = Machine::new();
    let g = Guest::new();
    let n = nested(&m, &[WIN_GPA + 4096]);
    let mut s = shadow(&m, &g);
    s.idtr = (0xffff_8000_0001_0000, 0xfff);
    s.window = Some(window(0));
    s.publish(&n);
    let at = WIN_GPA + HOST_OFFSET;
    assert_eq!(m.get(at + abi::vm::WINDOW_CR3), g.cr3);
    assert_eq!(m.get(at + abi::vm::WINDOW_IDTR_BASE), s.idtr.0);
    assert_eq!(m.get(at + abi::vm::WINDOW_IDTR_LIMIT), 0xfff);
    // Bits 46..=51 are beyond the host's 46-bit width; with EFER.NXE, bit 63 is not reserved.
    assert_eq!(
        m.get(at + abi::vm::WINDOW_RESERVED_MASK),
        0x000f_c000_0000_0000
    );
    s.window = Some(Window {
        gpa: WIN_GPA + 4096,
        ..window(0)
    });
    s.publish(&n);
    assert_eq!(m.get(at + 4096 + abi::vm::WINDOW_CR3), 0);
}

#[test]
fn read_virtual_reads_through_the_guests_tables() {
    let m = Machine::new();
    let g = Guest::new();
    g.map(LA, DATA, PageSize::Size4K, [OPEN; 3], 0);
    let n = nested(&m, &[]);
    let s = shadow(&m, &g);
    m.set(DATA + HOST_OFFSET + 0xff8, 0x0807_0605_0403_0201);
    let mut out = [0u8; 12];
    // Eight bytes, then the unmapped next page stops the read.
    assert_eq!(s.read_virtual(&n, LA + 0xff8, 0, &mut out), 8);
    assert_eq!(out[..8], [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(s.leaf(LA), 0, "reading fills nothing");
}

#[test]
fn hypercall_pte_write_updates_the_guest_and_drops_the_translation() {
    use abi::vm::hypercall::{BAD_REQUEST, INVLPG, OK, PTE_WRITE};
    let m = Machine::new();
    let g = Guest::new();
    let leaf_at = g.map(LA, DATA, PageSize::Size4K, [OPEN; 3], WRITABLE | USER);
    let n = nested(&m, &[]);
    let mut s = shadow(&m, &g);
    s.page_fault(&n, LA, 0, false, 0);
    let new = (DATA + 0x1000) | PRESENT | WRITABLE | USER;
    let r = s.hypercall(&n, [PTE_WRITE, LA, leaf_at, new]);
    assert_eq!(
        r,
        HypercallResult {
            status: OK,
            applied: 1,
            flush: true
        }
    );
    assert_eq!(m.get(leaf_at + HOST_OFFSET), new);
    assert_eq!(s.leaf(LA), 0);
    assert_eq!(s.stats.updates, 1);
    // INVLPG maps the page again at once when a user read is allowed.
    let r = s.hypercall(&n, [INVLPG, LA, 0, 0]);
    assert_eq!((r.status, r.flush), (OK, true));
    assert_eq!(hpa_of(s.leaf(LA)), DATA + 0x1000 + HOST_OFFSET);
    let r = s.hypercall(&n, [0x99, 0, 0, 0]);
    assert_eq!((r.status, r.applied, r.flush), (BAD_REQUEST, 0, false));
    assert_eq!(s.stats.hypercalls, 3);
}

/// Protected mode without paging, as a Multiboot kernel starts.
const CR0_UNPAGED: u64 = CR0_PE | 1 << 4;

#[test]
fn nothing_to_run_on_before_a_load() {
    let m = Machine::new();
    let s = TestShadow::new(&m).unwrap();
    assert_eq!(
        s.confinement(0x5000),
        crate::confine::Expected::Shadow { root: None }
    );
}

#[test]
fn an_unpaged_guest_runs_on_the_nested_tables_until_it_turns_paging_on() {
    use crate::confine::Expected;
    let m = Machine::new();
    let g = Guest::new();
    g.map(LA, DATA, PageSize::Size4K, [OPEN; 3], WRITABLE);
    m.load(&g);
    let n = nested(&m, &[]);
    let mut s = TestShadow::new(&m).unwrap();
    // Real mode, then protected mode: both on the nested tables, with the guest's own values.
    for cr0 in [1 << 4, CR0_UNPAGED] {
        let hw = s.load(cr0, 0, 0, 0).unwrap();
        assert_eq!(
            hw,
            HwControl {
                cr0,
                cr3: 0,
                cr4: 0,
                efer: 0,
                nested: true
            }
        );
        assert_eq!(s.mode(), GuestMode::Unpaged);
        assert_eq!(
            s.confinement(0x5000),
            Expected::ShadowUnpaged { root: 0x5000 }
        );
        assert_eq!(s.hardware_root(), None);
    }
    // The way into long mode: CR3, CR4.PAE, EFER.LME (a VMM reply), then CR0.PG.
    let (hw, _) = s.write_cr(3, g.cr3).unwrap();
    assert_eq!((hw.cr3, hw.nested), (g.cr3, true));
    let (hw, _) = s.write_cr(4, CR4).unwrap();
    assert_eq!((hw.cr4, hw.nested), (CR4, true));
    let hw = s.load(CR0_UNPAGED, g.cr3, CR4, EFER_LME).unwrap();
    assert!(hw.nested);
    let (hw, flush) = s.write_cr(0, CR0).unwrap();
    assert!(flush, "paging on: the hardware TLB starts afresh");
    assert!(!hw.nested);
    assert_eq!(hw.efer, EFER_LME | EFER_LMA, "long mode is active");
    assert_eq!(s.efer, EFER_LME | EFER_LMA);
    assert_eq!(s.mode(), GuestMode::Long);
    let root = s.hardware_root().unwrap();
    assert_eq!(hw.cr3, root);
    assert_eq!(s.confinement(0x5000), Expected::Shadow { root: Some(root) });
    // The vTLB takes over: a fault fills from the guest's tables.
    assert!(matches!(
        s.page_fault(&n, LA, 0, false, 0),
        FaultOutcome::Resume { .. }
    ));
    assert_ne!(s.leaf(LA), 0);
    // And out again: paging off drops every shadow translation, LMA goes.
    let (hw, flush) = s.write_cr(0, CR0_UNPAGED).unwrap();
    assert!(flush);
    assert!(hw.nested);
    assert_eq!(hw.efer, EFER_LME);
    assert_eq!(s.leaf(LA), 0);
    assert_eq!(
        s.confinement(0x5000),
        Expected::ShadowUnpaged { root: 0x5000 }
    );
}

#[test]
fn mode_changes_the_cpu_refuses_are_general_protection() {
    let m = Machine::new();
    let mut s = TestShadow::new(&m).unwrap();
    s.load(CR0_UNPAGED, 0, 0, EFER_LME).unwrap();
    assert_eq!(
        s.write_cr(0, CR0),
        Err(CrError::GeneralProtection),
        "long mode without PAE"
    );
    assert_eq!(
        s.write_cr(0, CR0_PG | 1 << 4),
        Err(CrError::GeneralProtection),
        "paging without protection"
    );
    assert_eq!(
        s.load(CR0_UNPAGED, 0, CR4, EFER_LME | EFER_LMA),
        Err(CrError::GeneralProtection),
        "long mode active with paging off"
    );
    assert_eq!((s.cr0, s.efer), (CR0_UNPAGED, EFER_LME));
    // In long mode PAE stays on.
    s.write_cr(4, CR4).unwrap();
    s.write_cr(0, CR0).unwrap();
    assert_eq!(s.write_cr(4, 0), Err(CrError::GeneralProtection));
}

/// 32-bit and PAE tables in the tests' guest memory (below `RAM_PAGES`).
const LEGACY_PD: u64 = 0x20_0000;
const LEGACY_PT: u64 = 0x20_1000;
const LEGACY_PDPT: u64 = 0x20_2fe0;
/// PDPTE 3, PDE 2 (PAE) / PDE 0x301 (32-bit), PTE 5.
const LEGACY_LA: u64 = 0xc040_5123;

fn set32(m: &Machine, gpa: u64, value: u64) {
    let at = (gpa & !7) + HOST_OFFSET;
    let shift = (gpa & 4) * 8;
    let word = m.get(at);
    m.set(at, (word & !(0xffff_ffff << shift)) | (value << shift));
}

fn get32(m: &Machine, gpa: u64) -> u64 {
    (m.get((gpa & !7) + HOST_OFFSET) >> ((gpa & 4) * 8)) & 0xffff_ffff
}

/// The PAE-format top under hardware CR3 `pdpt`: four present-only PDPTEs.
fn assert_pae_top(m: &Machine, pdpt: u64) {
    for i in 0..4 {
        let e = m.get(pdpt + 8 * i);
        assert_eq!(e & !ADDR, PRESENT, "PDPTE {i} is {e:#x}");
    }
}

#[test]
fn a_guest_in_32_bit_paging_runs_on_a_pae_format_top() {
    use crate::confine::Expected;
    let m = Machine::new();
    let n = nested(&m, &[]);
    set32(&m, LEGACY_PD + 0x301 * 4, LEGACY_PT | WRITABLE | PRESENT);
    set32(&m, LEGACY_PT + 5 * 4, DATA | WRITABLE | PRESENT);
    let mut s = TestShadow::new(&m).unwrap();
    s.load(CR0_UNPAGED, 0, 0, 0).unwrap();
    s.write_cr_in(Some(&n), 3, LEGACY_PD).unwrap();
    let (hw, flush) = s.write_cr_in(Some(&n), 0, CR0_UNPAGED | CR0_PG).unwrap();
    assert!(flush);
    assert_eq!(s.mode(), GuestMode::Bits32);
    assert!(!hw.nested);
    assert_eq!(hw.cr4, CR4_PAE, "the hardware runs PAE paging");
    assert_eq!(hw.efer & (EFER_LME | EFER_LMA), 0);
    assert_eq!(hw.cr0 & CR0_WP, CR0_WP);
    assert_eq!(s.read_cr(4), Some(0), "the guest sees its own CR4");
    assert_pae_top(&m, hw.cr3);
    assert_eq!(s.hardware_root(), Some(hw.cr3));
    assert_eq!(
        s.confinement(0x5000),
        Expected::ShadowLegacy { root: Some(hw.cr3) }
    );
    // A hidden fault fills from the 4-byte entries and sets their A bits.
    assert!(matches!(
        s.page_fault(&n, LEGACY_LA, 0, false, 0),
        FaultOutcome::Resume { .. }
    ));
    assert_eq!(hpa_of(s.leaf(LEGACY_LA)), DATA + HOST_OFFSET);
    assert_ne!(get32(&m, LEGACY_PT + 5 * 4) & ACCESSED, 0);
    assert_pae_top(&m, hw.cr3);
    // A genuine fault: the guest's own #PF, its error code from the 32-bit walk.
    assert_eq!(
        s.page_fault(&n, 0x1000, ERR_WRITE | ERR_USER, true, 0),
        FaultOutcome::InjectPageFault {
            address: 0x1000,
            error: ERR_WRITE | ERR_USER
        }
    );
    // A user access to the supervisor page: a protection fault.
    assert_eq!(
        s.page_fault(&n, LEGACY_LA, ERR_USER, true, 0),
        FaultOutcome::InjectPageFault {
            address: LEGACY_LA,
            error: ERR_PRESENT | ERR_USER
        }
    );
    // Before an entry the top is complete, and stays so after a flush.
    s.flush();
    let (hw2, _) = s.legacy_entry().unwrap();
    assert_pae_top(&m, hw2.cr3);
    assert_eq!(
        s.confinement(0),
        Expected::ShadowLegacy {
            root: Some(hw2.cr3)
        }
    );
}

#[test]
fn pae_paging_loads_the_pdptes_and_refuses_reserved_ones() {
    let m = Machine::new();
    let n = nested(&m, &[]);
    m.set(LEGACY_PDPT + 3 * 8 + HOST_OFFSET, LEGACY_PD | PRESENT);
    m.set(
        LEGACY_PD + 2 * 8 + HOST_OFFSET,
        LEGACY_PT | WRITABLE | PRESENT,
    );
    m.set(LEGACY_PT + 5 * 8 + HOST_OFFSET, DATA | WRITABLE | PRESENT);
    let mut s = TestShadow::new(&m).unwrap();
    s.load(CR0_UNPAGED, LEGACY_PDPT, CR4, 0).unwrap();
    // Without guest memory the PDPTEs cannot be loaded: the vTLB does not follow.
    assert_eq!(s.write_cr(0, CR0), Err(CrError::Unsupported));
    let (hw, _) = s.write_cr_in(Some(&n), 0, CR0).unwrap();
    assert_eq!(s.mode(), GuestMode::Pae);
    assert_eq!(s.pdptes, [0, 0, 0, LEGACY_PD | PRESENT]);
    assert_pae_top(&m, hw.cr3);
    assert!(matches!(
        s.page_fault(&n, LEGACY_LA, ERR_WRITE, false, 0),
        FaultOutcome::Resume { .. }
    ));
    assert_eq!(hpa_of(s.leaf(LEGACY_LA)), DATA + HOST_OFFSET);
    assert_ne!(m.get(LEGACY_PT + 5 * 8 + HOST_OFFSET) & DIRTY, 0);
    // A PDPT with a reserved bit: MOV CR3 is #GP and changes nothing.
    m.set(0x30_0000 + HOST_OFFSET, LEGACY_PD | PRESENT | WRITABLE);
    assert_eq!(
        s.write_cr_in(Some(&n), 3, 0x30_0000),
        Err(CrError::GeneralProtection)
    );
    assert_eq!(s.cr3, LEGACY_PDPT);
    assert_ne!(s.leaf(LEGACY_LA), 0);
    // So is a PDPT outside guest RAM; and a VMM's load of either is refused.
    assert_eq!(
        s.write_cr_in(Some(&n), 3, RAM_PAGES * 4096),
        Err(CrError::GeneralProtection)
    );
    assert_eq!(
        s.preview_in(Some(&n), CR0, 0x30_0000, CR4, 0),
        Err(CrError::GeneralProtection)
    );
    assert_eq!(
        s.load_in(Some(&n), CR0, 0x30_0000, CR4, 0),
        Err(CrError::GeneralProtection)
    );
    assert_eq!(s.cr3, LEGACY_PDPT);
    // The CPU keeps its PDPTEs until the next load: a guest change in memory is not seen.
    m.set(LEGACY_PDPT + 3 * 8 + HOST_OFFSET, 0);
    s.flush();
    assert!(matches!(
        s.page_fault(&n, LEGACY_LA, 0, false, 0),
        FaultOutcome::Resume { .. }
    ));
    // A MOV CR3 loads them again: now PDPTE 3 is not present.
    s.write_cr_in(Some(&n), 3, LEGACY_PDPT).unwrap();
    assert_eq!(
        s.page_fault(&n, LEGACY_LA, 0, false, 0),
        FaultOutcome::InjectPageFault {
            address: LEGACY_LA,
            error: 0
        }
    );
}

#[test]
fn legacy_and_long_mode_trees_never_mix() {
    let m = Machine::new();
    let g = Guest::new();
    g.map(LA, DATA, PageSize::Size4K, [OPEN; 3], WRITABLE);
    m.load(&g);
    let n = nested(&m, &[]);
    set32(&m, LEGACY_PD + 0x301 * 4, LEGACY_PT | WRITABLE | PRESENT);
    set32(&m, LEGACY_PT + 5 * 4, DATA | WRITABLE | PRESENT);
    let mut s = TestShadow::new(&m).unwrap();
    s.load(CR0_UNPAGED, LEGACY_PD, 0, 0).unwrap();
    s.write_cr_in(Some(&n), 0, CR0_UNPAGED | CR0_PG).unwrap();
    s.page_fault(&n, LEGACY_LA, 0, false, 0);
    assert_ne!(s.leaf(LEGACY_LA), 0);
    // Paging off: back to the nested tables, every shadow translation gone.
    let (hw, flush) = s.write_cr_in(Some(&n), 0, CR0_UNPAGED).unwrap();
    assert!(flush && hw.nested);
    assert_eq!(s.leaf(LEGACY_LA), 0);
    // Into long mode: 4-level upper entries again (writable, user), on the PML4 root.
    s.write_cr_in(Some(&n), 3, g.cr3).unwrap();
    s.write_cr_in(Some(&n), 4, CR4).unwrap();
    s.load_in(Some(&n), CR0_UNPAGED, g.cr3, CR4, EFER_LME)
        .unwrap();
    let (hw, _) = s.write_cr_in(Some(&n), 0, CR0).unwrap();
    assert_eq!(s.mode(), GuestMode::Long);
    assert_eq!(s.legacy_entry(), None);
    s.page_fault(&n, LA, 0, false, 0);
    let pml4e = m.get(hw.cr3);
    let pdpte = m.get((pml4e & ADDR) + 8 * ((LA >> 30) & 0x1ff));
    assert_eq!(
        pdpte & (PRESENT | WRITABLE | USER),
        PRESENT | WRITABLE | USER
    );
    // PAE paging straight from 32-bit paging (CR4.PAE with CR0.PG on, outside long mode) is
    // legal; long mode without PAE is not.
    let mut s = TestShadow::new(&m).unwrap();
    s.load(CR0_UNPAGED | CR0_PG, LEGACY_PD, 0, 0).unwrap();
    assert_eq!(s.mode(), GuestMode::Bits32);
    m.set(LEGACY_PDPT + HOST_OFFSET, LEGACY_PD | PRESENT);
    s.write_cr_in(Some(&n), 3, LEGACY_PDPT).unwrap();
    s.write_cr_in(Some(&n), 4, CR4).unwrap();
    assert_eq!(s.mode(), GuestMode::Pae);
    assert_eq!(s.pdptes[0], LEGACY_PD | PRESENT);
}

#[test]
fn invlpg_of_a_4m_page_drops_both_2m_halves() {
    let m = Machine::new();
    let n = nested(&m, &[]);
    // A 4 MiB page at guest-physical 4 MiB for linear 0xc040_0000 (PDE 0x301).
    set32(
        &m,
        LEGACY_PD + 0x301 * 4,
        0x40_0000 | PAGE_SIZE | WRITABLE | PRESENT,
    );
    let mut s = TestShadow::new(&m).unwrap();
    s.load(CR0_UNPAGED | CR0_PG, LEGACY_PD, CR4_PSE, 0).unwrap();
    let low = 0xc040_0000;
    let high = low + 0x20_0000;
    for la in [low, high] {
        s.page_fault(&n, la, 0, false, 0);
        assert_ne!(s.leaf(la), 0);
    }
    assert_eq!(hpa_of(s.leaf(high)), 0x60_0000 + HOST_OFFSET);
    assert!(s.invlpg(low + 0x1000), "more than a page went");
    assert_eq!((s.leaf(low), s.leaf(high)), (0, 0));
}

#[test]
fn an_unpaged_guest_reads_physical_memory_and_gets_no_hypercalls() {
    let m = Machine::new();
    let g = Guest::new();
    m.load(&g);
    let n = nested(&m, &[]);
    let mut s = TestShadow::new(&m).unwrap();
    s.load(CR0_UNPAGED, 0, 0, 0).unwrap();
    m.set(DATA + HOST_OFFSET, 0x1122_3344_5566_7788);
    let mut bytes = [0u8; 4];
    assert_eq!(s.read_virtual(&n, DATA + 2, 0, &mut bytes), 4);
    assert_eq!(bytes, [0x66, 0x55, 0x44, 0x33]);
    // Linear addresses are 32 bits wide outside long mode.
    assert_eq!(s.read_virtual(&n, (1 << 32) | DATA, 0, &mut bytes), 4);
    assert_eq!(bytes, [0x88, 0x77, 0x66, 0x55]);
    // Beyond RAM: nothing.
    assert_eq!(s.read_virtual(&n, RAM_PAGES * 4096, 0, &mut bytes), 0);
    let r = s.hypercall(&n, [abi::vm::hypercall::INVLPG, 0, 0, 0]);
    assert_eq!(r.status, abi::vm::hypercall::BAD_REQUEST);
    assert!(!r.flush);
}

#[test]
fn lmsw_loads_the_low_four_bits_and_never_clears_pe() {
    // PE set from real mode, MP and TS loaded, the rest of CR0 kept.
    assert_eq!(lmsw(0x10, 0xfff1), 0x11);
    assert_eq!(lmsw(0x8000_0010, 0x000a), 0x8000_001a);
    // PE stays set even when the source clears it; MP, EM and TS follow the source.
    assert_eq!(lmsw(0x8000_001f, 0x0000), 0x8000_0011);
    assert_eq!(lmsw(0x11, 0x4), 0x15);
}

#[test]
fn smsw_writes_the_low_word_or_all_of_cr0() {
    let cr0 = 0x8005_0033;
    assert_eq!(smsw(0x1234_5678_9abc_def0, cr0, 2), 0x1234_5678_9abc_0033);
    assert_eq!(smsw(0x1234_5678_9abc_def0, cr0, 4), 0x8005_0033);
    assert_eq!(smsw(u64::MAX, cr0, 8), 0x8005_0033);
}
