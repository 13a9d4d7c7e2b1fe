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
        s.write_cr(0, CR0 & !CR0_PG),
        Err(CrError::Unsupported),
        "paging off"
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
        (CR0 & !CR0_PG, CR4, EFER, CrError::Unsupported),
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
            cr4: CR4 | CR4_SMEP
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
