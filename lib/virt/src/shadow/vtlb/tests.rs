use super::*;
use crate::shadow::cache::cr3_write_flushes;
use crate::shadow::fake::Frames;
use crate::shadow::PageSize;

const PTE: u64 = 0x5_0000_0000 | PRESENT | WRITABLE | USER;

fn frames(n: u64) -> Vec<u64> {
    (0..n).map(|i| 0x100_0000 + i * 0x1000).collect()
}

fn key(n: u64) -> Key {
    Key::new(n << 12, false)
}

/// Every present entry reachable from `root` points into the pool's frames (no dangling
/// table), and tables are only reachable from one root.
fn check_tree(mem: &Frames, root: u64, pool: &[u64]) -> usize {
    let mut tables = 1;
    for i in 0..512 {
        let e = mem.read(root, i);
        if e & PRESENT != 0 {
            let t = e & ADDR;
            assert!(pool.contains(&t));
            tables += check_level(mem, t, 3, pool);
        }
    }
    tables
}

fn check_level(mem: &Frames, table: u64, level: u32, pool: &[u64]) -> usize {
    if level == 1 {
        return 1;
    }
    let mut n = 1;
    for i in 0..512 {
        let e = mem.read(table, i);
        if e & PRESENT != 0 {
            assert!(pool.contains(&(e & ADDR)));
            n += check_level(mem, e & ADDR, level - 1, pool);
        }
    }
    n
}

#[test]
fn refuses_too_few_frames_or_slots() {
    assert_eq!(
        Vtlb::<8, 2>::new(&frames(3)).err(),
        Some(VtlbError::TooFewFrames)
    );
    assert_eq!(
        Vtlb::<8, 0>::new(&frames(8)).err(),
        Some(VtlbError::BadSlotCount)
    );
    assert_eq!(
        Vtlb::<8, 255>::new(&frames(8)).err(),
        Some(VtlbError::BadSlotCount)
    );
    // Unaligned frames do not count.
    let mut f = frames(3);
    f.push(0x123);
    assert!(Vtlb::<8, 2>::new(&f).is_err());
}

#[test]
fn install_builds_the_path_and_lookup_finds_the_leaf() {
    let mut mem = Frames::default();
    let pool = frames(16);
    let mut v = Vtlb::<16, 2>::new(&pool).unwrap();
    let mut cold = Frames::default();
    assert_eq!(v.install(&mut cold, 0x1000, PTE), Install::NoRoot);
    let s = v.switch(&mut mem, key(1), true);
    assert_eq!(v.root(), Some(s.root));
    assert!(!s.reused && !s.recycled);
    assert_eq!(
        v.install(&mut mem, 0x7f00_0000_1000, PTE),
        Install::Installed
    );
    assert_eq!(v.lookup(&mem, 0x7f00_0000_1abc), PTE);
    assert_eq!(v.lookup(&mem, 0x7f00_0000_2000), 0);
    assert_eq!(check_tree(&mem, s.root, &pool), 4);
    // A neighbour shares the tables.
    v.install(&mut mem, 0x7f00_0000_2000, PTE);
    assert_eq!(check_tree(&mem, s.root, &pool), 4);
    assert_eq!(v.free_frames(), 12);
    // Upper entries are permissive: the leaf decides.
    let pml4e = mem.read(s.root, index(0x7f00_0000_1000, 4));
    assert_eq!(pml4e & !ADDR, TABLE);
}

#[test]
fn invlpg_drops_the_leaf_in_every_tree() {
    let mut mem = Frames::default();
    let mut v = Vtlb::<32, 4>::new(&frames(32)).unwrap();
    v.switch(&mut mem, key(1), true);
    v.install(&mut mem, 0x4000, PTE);
    v.install(&mut mem, 0x5000, PTE);
    v.switch(&mut mem, key(2), true);
    v.install(&mut mem, 0x4000, PTE);
    v.invlpg(&mut mem, 0x4123);
    assert_eq!(v.lookup(&mem, 0x4000), 0);
    let back = v.switch(&mut mem, Key::new(1 << 12, false), false);
    assert!(back.reused);
    assert_eq!(v.lookup(&mem, 0x4000), 0);
    assert_eq!(v.lookup(&mem, 0x5000), PTE);
    // No tree under the address: nothing happens.
    v.invlpg(&mut mem, 0x7000_0000_0000);
}

#[test]
fn switch_back_reuses_the_tree_only_without_flush() {
    let mut mem = Frames::default();
    let mut v = Vtlb::<32, 4>::new(&frames(32)).unwrap();
    let pcid_a = Key::new(0x10_0000 | 1, true);
    let pcid_b = Key::new(0x20_0000 | 2, true);
    let a = v.switch(&mut mem, pcid_a, true);
    v.install(&mut mem, 0x1000, PTE);
    let b = v.switch(&mut mem, pcid_b, true);
    assert_ne!(a.root, b.root);
    assert_ne!(a.slot, b.slot);
    // MOV CR3 with bit 63 set and PCIDE: the tree survives.
    let value = (1 << 63) | 0x10_0000 | 1;
    let again = v.switch(&mut mem, pcid_a, cr3_write_flushes(value, true));
    assert_eq!(
        (again.root, again.slot, again.reused),
        (a.root, a.slot, true)
    );
    assert_eq!(v.lookup(&mem, 0x1000), PTE);
    // Without bit 63: the same root, emptied.
    let free = v.free_frames();
    let flushed = v.switch(&mut mem, pcid_a, cr3_write_flushes(0x10_0000 | 1, true));
    assert_eq!(
        (flushed.root, flushed.reused, flushed.recycled),
        (a.root, false, true)
    );
    assert_eq!(v.lookup(&mem, 0x1000), 0);
    assert_eq!(v.free_frames(), free + 3);
    // Without PCIDs every switch flushes.
    assert!(cr3_write_flushes(1 << 63, false));
}

#[test]
fn full_cache_evicts_the_least_recently_used_root() {
    let mut mem = Frames::default();
    let mut v = Vtlb::<64, 2>::new(&frames(64)).unwrap();
    let one = v.switch(&mut mem, key(1), true);
    v.install(&mut mem, 0x1000, PTE);
    let two = v.switch(&mut mem, key(2), true);
    v.install(&mut mem, 0x1000, PTE);
    // Back to 1 (no flush) makes 2 the least recently used.
    assert!(v.switch(&mut mem, key(1), false).reused);
    let three = v.switch(&mut mem, key(3), true);
    assert_eq!(three.slot, two.slot);
    assert!(three.recycled);
    assert_eq!(v.lookup(&mem, 0x1000), 0, "a fresh tree");
    // 1 is still cached, 2 is gone.
    let back = v.switch(&mut mem, key(1), false);
    assert_eq!((back.root, back.reused), (one.root, true));
    assert_eq!(v.lookup(&mem, 0x1000), PTE);
    assert!(!v.switch(&mut mem, key(2), false).reused);
    assert_eq!(v.free_frames(), 64 - 4 - 1);
}

#[test]
fn an_empty_pool_takes_frames_from_other_trees_first() {
    let mut mem = Frames::default();
    let pool = frames(8);
    let mut v = Vtlb::<8, 2>::new(&pool).unwrap();
    v.switch(&mut mem, key(1), true);
    v.install(&mut mem, 0x1000, PTE); // 4 frames
    v.switch(&mut mem, key(2), true); // 5
    v.install(&mut mem, 0x1000, PTE); // 8
    assert_eq!(v.free_frames(), 0);
    // A leaf far away needs 3 more tables: tree 1 goes.
    let far = 0x7f00_0000_0000;
    assert_eq!(
        v.install(&mut mem, far, PTE),
        Install::InstalledAfterRecycle
    );
    assert_eq!(v.lookup(&mem, far), PTE);
    assert_eq!(v.lookup(&mem, 0x1000), PTE);
    assert!(!v.switch(&mut mem, key(1), false).reused, "1 was evicted");
}

#[test]
fn the_current_tree_is_emptied_when_it_alone_fills_the_pool() {
    let mut mem = Frames::default();
    let pool = frames(6);
    let mut v = Vtlb::<6, 3>::new(&pool).unwrap();
    let s = v.switch(&mut mem, key(1), true);
    v.install(&mut mem, 0x1000, PTE); // root + 3
    v.install(&mut mem, 0x4000_0000, PTE); // + PD and PT under the same PDPT
    assert_eq!(v.free_frames(), 0);
    let far = 0x7f00_0000_0000;
    assert_eq!(
        v.install(&mut mem, far, PTE),
        Install::InstalledAfterRecycle
    );
    assert_eq!(v.root(), Some(s.root), "the root stays");
    assert_eq!(v.lookup(&mem, far), PTE);
    assert_eq!(v.lookup(&mem, 0x1000), 0);
    assert_eq!(v.lookup(&mem, 0x4000_0000), 0);
    assert_eq!(check_tree(&mem, s.root, &pool), 4);
    assert_eq!(v.free_frames(), 2);
}

#[test]
fn switching_with_an_empty_pool_recycles() {
    let mut mem = Frames::default();
    let pool = frames(4);
    let mut v = Vtlb::<4, 4>::new(&pool).unwrap();
    v.switch(&mut mem, key(1), true);
    v.install(&mut mem, 0x1000, PTE);
    assert_eq!(v.free_frames(), 0);
    let s = v.switch(&mut mem, key(2), true);
    assert!(s.recycled);
    assert_eq!(v.free_frames(), 3);
    assert_eq!(v.lookup(&mem, 0x1000), 0);
    // Many address spaces through a tiny pool: never fails, never leaks.
    for round in 0..50u64 {
        let k = key(round % 7);
        v.switch(&mut mem, k, round % 3 == 0);
        v.install(&mut mem, round << 30, PTE);
        v.install(&mut mem, (round << 39) & 0x7fff_ffff_ffff, PTE);
        assert_eq!(v.lookup(&mem, (round << 39) & 0x7fff_ffff_ffff), PTE);
        let root = v.root().unwrap();
        let used = check_tree(&mem, root, &pool);
        assert!(used + v.free_frames() <= 4);
    }
}

#[test]
fn flush_all_keeps_only_the_empty_current_root() {
    let mut mem = Frames::default();
    let mut v = Vtlb::<32, 4>::new(&frames(32)).unwrap();
    for k in 1..=3 {
        v.switch(&mut mem, key(k), true);
        v.install(&mut mem, 0x1000 * k, PTE);
    }
    let root = v.root().unwrap();
    v.flush_all(&mut mem);
    assert_eq!(v.root(), Some(root));
    assert_eq!(v.free_frames(), 31);
    assert_eq!(v.lookup(&mem, 0x3000), 0);
    assert!(!v.switch(&mut mem, key(1), false).reused);
}

#[test]
fn faults_fill_the_tree_end_to_end() {
    use crate::shadow::classify::{classify, Resolution};
    use crate::shadow::fake::{Guest, Host, HOST_OFFSET, OPEN};
    use crate::shadow::walk::ErrorCode;
    use crate::shadow::PageSize;

    let guest = Guest::new();
    let la = 0x7f00_dead_b000;
    guest.map(la, 0x3_3000, PageSize::Size4K, [OPEN; 3], WRITABLE | USER);
    let paging = guest.paging();
    let mut mem = Frames::default();
    let mut v = Vtlb::<16, 2>::new(&frames(16)).unwrap();
    v.switch(&mut mem, Key::new(paging.cr3, false), true);
    // User read on an empty shadow: fill read-only (clean page).
    let user = ErrorCode::USER;
    let Resolution::Fill(f) = classify(&guest, &Host::all(), &paging, la + 8, user, true) else {
        panic!()
    };
    assert_eq!(v.install(&mut mem, f.la, f.pte), Install::Installed);
    let leaf = v.lookup(&mem, la);
    assert_eq!(leaf & ADDR, 0x3_3000 + HOST_OFFSET);
    assert_eq!(leaf & (WRITABLE | USER), USER);
    // The write faults on the present read-only leaf: refilled writable.
    let code = ErrorCode::PRESENT | ErrorCode::WRITE | user;
    let Resolution::Fill(f) = classify(&guest, &Host::all(), &paging, la, code, true) else {
        panic!()
    };
    v.install(&mut mem, f.la, f.pte);
    assert_eq!(v.lookup(&mem, la) & (WRITABLE | USER), WRITABLE | USER);
    // The guest unmaps the page and invalidates it: the next access is the guest's fault.
    guest.set(guest.entry(la, 1), 0);
    v.invlpg(&mut mem, la);
    assert_eq!(v.lookup(&mem, la), 0);
    assert!(matches!(
        classify(&guest, &Host::all(), &paging, la, user, true),
        Resolution::Inject(_)
    ));
}

/// The entry at `level` (4 = PML4E .. 1 = PTE) for `la` under `root`, 0 past a missing table.
fn entry(mem: &Frames, root: u64, la: u64, level: u32) -> u64 {
    let mut table = root;
    for l in (level + 1..=4).rev() {
        let e = mem.read(table, index(la, l));
        if e & PRESENT == 0 {
            return 0;
        }
        table = e & ADDR;
    }
    mem.read(table, index(la, level))
}

/// 512 leaves, piece `i` at its own frame, every seventh one unmapped.
fn region_ptes() -> [u64; 512] {
    let mut ptes = [0; 512];
    for (i, p) in ptes.iter_mut().enumerate() {
        if i % 7 != 3 {
            *p = PTE + ((i as u64) << 12);
        }
    }
    ptes
}

const REGION: u64 = 0x7f00_0020_0000;

#[test]
fn install_region_writes_every_leaf_and_marks_the_pde() {
    let mut mem = Frames::default();
    let pool = frames(16);
    let mut v = Vtlb::<16, 2>::new(&pool).unwrap();
    let ptes = region_ptes();
    assert_eq!(
        v.install_region(&mut mem, REGION, &ptes, PageSize::Size2M),
        Install::NoRoot
    );
    let s = v.switch(&mut mem, key(1), true);
    // Any address of the region selects it.
    assert_eq!(
        v.install_region(&mut mem, REGION + 0x1_2345, &ptes, PageSize::Size2M),
        Install::Installed
    );
    for (i, &pte) in ptes.iter().enumerate() {
        assert_eq!(
            v.lookup(&mem, REGION + ((i as u64) << 12)),
            pte,
            "piece {i}"
        );
    }
    assert_eq!(v.lookup(&mem, REGION - 0x1000), 0);
    assert_eq!(v.lookup(&mem, REGION + 0x20_0000), 0);
    assert_eq!(check_tree(&mem, s.root, &pool), 4);
    let pde = entry(&mem, s.root, REGION, 2);
    assert_eq!(pde & !ADDR, TABLE | LARGE_ORIGIN);
    assert_eq!(entry(&mem, s.root, REGION, 3) & LARGE_ORIGIN, 0);
    assert_eq!(entry(&mem, s.root, REGION, 4) & !ADDR, TABLE);
    // Part of a 1 GiB page: the PDPTE is marked too.
    let gb = 0x40_0000_0000 + 0x60_0000;
    v.install_region(&mut mem, gb, &ptes, PageSize::Size1G);
    assert_eq!(entry(&mem, s.root, gb, 2) & !ADDR, TABLE | LARGE_ORIGIN);
    assert_eq!(entry(&mem, s.root, gb, 3) & !ADDR, TABLE | LARGE_ORIGIN);
    // From 4 KiB guest pages nothing is marked.
    let small = 0x1_0000_0000;
    v.install_region(&mut mem, small, &ptes, PageSize::Size4K);
    assert_eq!(entry(&mem, s.root, small, 2) & !ADDR, TABLE);
    assert_eq!(v.lookup(&mem, small + 0x1ff_000), ptes[511]);
}

#[test]
fn a_region_replaces_what_its_table_held() {
    let mut mem = Frames::default();
    let mut v = Vtlb::<16, 2>::new(&frames(16)).unwrap();
    v.switch(&mut mem, key(1), true);
    v.install(&mut mem, REGION + 0x3000, PTE | DIRTY);
    let free = v.free_frames();
    let ptes = region_ptes();
    v.install_region(&mut mem, REGION, &ptes, PageSize::Size2M);
    assert_eq!(v.free_frames(), free, "the table is reused");
    assert_eq!(v.lookup(&mem, REGION + 0x3000), ptes[3]);
    assert_eq!(ptes[3], 0, "zero entries unmap");
}

#[test]
fn invlpg_anywhere_in_a_marked_region_empties_it_in_every_tree() {
    let mut mem = Frames::default();
    let mut v = Vtlb::<32, 4>::new(&frames(32)).unwrap();
    let ptes = region_ptes();
    let next = REGION + 0x20_0000;
    let one = v.switch(&mut mem, key(1), true);
    v.install_region(&mut mem, REGION, &ptes, PageSize::Size2M);
    v.install(&mut mem, next, PTE);
    let two = v.switch(&mut mem, key(2), true);
    v.install_region(&mut mem, REGION, &ptes, PageSize::Size2M);
    let free = v.free_frames();
    // An address whose own piece is unmapped still drops the whole page.
    let la = REGION + 0x3456;
    assert_eq!(v.lookup(&mem, la), 0);
    assert_eq!(
        v.invalidate(&mut mem, la),
        Invalidated::Large {
            base: REGION,
            size: PageSize::Size2M
        }
    );
    for root in [one.root, two.root] {
        for i in 0..512u64 {
            assert_eq!(entry(&mem, root, REGION + (i << 12), 1), 0);
        }
        let pde = entry(&mem, root, REGION, 2);
        assert_eq!(pde & !ADDR, TABLE, "mark cleared, table kept");
    }
    assert_eq!(v.free_frames(), free);
    assert_eq!(entry(&mem, one.root, next, 1), PTE, "the next region stays");
    // Unmarked now: a 4 KiB leaf installed there is dropped alone.
    v.install(&mut mem, REGION, PTE);
    v.install(&mut mem, REGION + 0x1000, PTE);
    assert_eq!(v.invalidate(&mut mem, REGION), Invalidated::Page);
    assert_eq!(v.lookup(&mem, REGION + 0x1000), PTE);
}

#[test]
fn invlpg_in_an_unmarked_table_drops_one_leaf() {
    let mut mem = Frames::default();
    let mut v = Vtlb::<16, 2>::new(&frames(16)).unwrap();
    v.switch(&mut mem, key(1), true);
    v.install_region(&mut mem, REGION, &region_ptes(), PageSize::Size4K);
    assert_eq!(v.invalidate(&mut mem, REGION + 0x5678), Invalidated::Page);
    assert_eq!(v.lookup(&mem, REGION + 0x5000), 0);
    assert_eq!(v.lookup(&mem, REGION + 0x4000), region_ptes()[4]);
    assert_eq!(v.lookup(&mem, REGION + 0x6000), region_ptes()[6]);
    // Nothing under the address at all.
    assert_eq!(v.invalidate(&mut mem, 0x7000_0000_0000), Invalidated::Page);
}

#[test]
fn a_piece_of_a_large_page_marks_its_table() {
    let mut mem = Frames::default();
    let mut v = Vtlb::<16, 2>::new(&frames(16)).unwrap();
    let s = v.switch(&mut mem, key(1), true);
    assert_eq!(
        v.install_piece(&mut mem, REGION + 0x5000, PTE, PageSize::Size2M),
        Install::Installed
    );
    assert_eq!(v.lookup(&mem, REGION + 0x5000), PTE);
    assert_ne!(entry(&mem, s.root, REGION, 2) & LARGE_ORIGIN, 0);
    assert_eq!(entry(&mem, s.root, REGION, 3) & LARGE_ORIGIN, 0);
    // A 4 KiB guest page there later (the guest remapped without invalidating) keeps the mark.
    v.install(&mut mem, REGION + 0x6000, PTE);
    assert_ne!(entry(&mem, s.root, REGION, 2) & LARGE_ORIGIN, 0);
    // INVLPG of another piece of the page drops both.
    assert!(matches!(
        v.invalidate(&mut mem, REGION + 0x1f_f000),
        Invalidated::Large { .. }
    ));
    assert_eq!(v.lookup(&mem, REGION + 0x5000), 0);
    assert_eq!(v.lookup(&mem, REGION + 0x6000), 0);
    // install keeps its old meaning: no mark.
    v.install(&mut mem, REGION, PTE);
    assert_eq!(entry(&mem, s.root, REGION, 2) & LARGE_ORIGIN, 0);
}

#[test]
fn invlpg_in_a_1g_page_empties_every_table_of_its_directory() {
    let mut mem = Frames::default();
    let pool = frames(32);
    let mut v = Vtlb::<32, 2>::new(&pool).unwrap();
    let gb = 0x40_0000_0000;
    let s = v.switch(&mut mem, key(1), true);
    let ptes = region_ptes();
    v.install_region(&mut mem, gb + 0x20_0000, &ptes, PageSize::Size1G);
    v.install_piece(&mut mem, gb + 0x3fe0_0000, PTE, PageSize::Size1G);
    // A table of 4 KiB guest pages in the same directory (the guest's tables changed) goes too.
    v.install(&mut mem, gb + 0x1000_0000, PTE);
    v.install(&mut mem, gb + 0x4000_0000, PTE); // the next GiB
    let free = v.free_frames();
    // An address in a part of the page never filled.
    assert_eq!(
        v.invalidate(&mut mem, gb + 0x2000_1234),
        Invalidated::Large {
            base: gb,
            size: PageSize::Size1G
        }
    );
    assert_eq!(v.lookup(&mem, gb + 0x20_0000), 0);
    assert_eq!(v.lookup(&mem, gb + 0x21_0000), 0);
    assert_eq!(v.lookup(&mem, gb + 0x3fe0_0000), 0);
    assert_eq!(v.lookup(&mem, gb + 0x1000_0000), 0);
    assert_eq!(v.lookup(&mem, gb + 0x4000_0000), PTE);
    assert_eq!(v.free_frames(), free, "tables are kept, emptied");
    assert_eq!(entry(&mem, s.root, gb, 3) & !ADDR, TABLE);
    assert_eq!(entry(&mem, s.root, gb + 0x20_0000, 2) & !ADDR, TABLE);
    assert_eq!(check_tree(&mem, s.root, &pool), 32 - free);
}

#[test]
fn the_widest_drop_over_all_trees_is_reported() {
    let mut mem = Frames::default();
    let mut v = Vtlb::<32, 4>::new(&frames(32)).unwrap();
    let gb = 0x40_0000_0000;
    v.switch(&mut mem, key(1), true);
    v.install(&mut mem, gb + 0x1000, PTE);
    v.switch(&mut mem, key(2), true);
    v.install_piece(&mut mem, gb + 0x1000, PTE, PageSize::Size1G);
    v.switch(&mut mem, key(3), true);
    v.install_piece(&mut mem, gb + 0x1000, PTE, PageSize::Size2M);
    assert_eq!(
        v.invalidate(&mut mem, gb + 0x1abc),
        Invalidated::Large {
            base: gb,
            size: PageSize::Size1G
        }
    );
    for k in 1..=3 {
        v.switch(&mut mem, key(k), false);
        assert_eq!(v.lookup(&mem, gb + 0x1000), 0, "tree {k}");
    }
    // invlpg is invalidate without the result.
    v.install_piece(&mut mem, gb + 0x1000, PTE, PageSize::Size2M);
    v.invlpg(&mut mem, gb + 0x5000);
    assert_eq!(v.lookup(&mem, gb + 0x1000), 0);
}

#[test]
fn install_region_recycles_when_the_pool_is_dry() {
    let mut mem = Frames::default();
    let pool = frames(8);
    let mut v = Vtlb::<8, 2>::new(&pool).unwrap();
    let ptes = region_ptes();
    v.switch(&mut mem, key(1), true);
    v.install(&mut mem, 0x1000, PTE); // 4 frames
    v.switch(&mut mem, key(2), true); // 5
    v.install(&mut mem, 0x1000, PTE); // 8
    assert_eq!(v.free_frames(), 0);
    // A region far away needs 3 more tables: tree 1 goes.
    assert_eq!(
        v.install_region(&mut mem, REGION, &ptes, PageSize::Size2M),
        Install::InstalledAfterRecycle
    );
    assert_eq!(v.lookup(&mem, REGION + 0x1ff_000), ptes[511]);
    assert_eq!(v.lookup(&mem, 0x1000), PTE);
    let root = v.root().unwrap();
    assert_ne!(entry(&mem, root, REGION, 2) & LARGE_ORIGIN, 0);
    assert!(!v.switch(&mut mem, key(1), false).reused, "1 was evicted");

    // Alone in the pool: the current tree is emptied and the region built again.
    let mut mem = Frames::default();
    let pool = frames(6);
    let mut v = Vtlb::<6, 1>::new(&pool).unwrap();
    let s = v.switch(&mut mem, key(1), true);
    v.install(&mut mem, 0x1000, PTE);
    v.install(&mut mem, 0x4000_0000, PTE);
    assert_eq!(v.free_frames(), 0);
    assert_eq!(
        v.install_region(&mut mem, REGION, &ptes, PageSize::Size1G),
        Install::InstalledAfterRecycle
    );
    assert_eq!(v.root(), Some(s.root));
    assert_eq!(v.lookup(&mem, 0x1000), 0);
    assert_eq!(v.lookup(&mem, REGION), ptes[0]);
    assert_eq!(entry(&mem, s.root, REGION, 3) & !ADDR, TABLE | LARGE_ORIGIN);
    assert_eq!(check_tree(&mem, s.root, &pool), 4);
}

#[test]
fn a_2m_guest_page_is_filled_by_one_fault_and_dropped_by_one_invlpg() {
    use crate::shadow::classify::{classify, Resolution};
    use crate::shadow::fake::{Guest, Host, HOST_OFFSET, OPEN};
    use crate::shadow::leaf::fill_region;
    use crate::shadow::walk::{walk, Access, ErrorCode};
    use crate::shadow::AccessKind;

    let guest = Guest::new();
    let la = 0x7f00_0040_0000;
    let gpa = 0x80_0000;
    guest.map(la, gpa, PageSize::Size2M, [OPEN; 3], WRITABLE | USER);
    let paging = guest.paging();
    let mut mem = Frames::default();
    let mut v = Vtlb::<16, 2>::new(&frames(16)).unwrap();
    v.switch(&mut mem, Key::new(paging.cr3, false), true);
    let access = Access::user(AccessKind::Write);
    let t = walk(&guest, &paging, la + 0x12_3456, access).unwrap();
    let r = fill_region(&Host::all(), &t, la + 0x12_3456, access, &paging).unwrap();
    assert_eq!(
        v.install_region(&mut mem, r.la, &r.ptes, r.size),
        Install::Installed
    );
    for i in 0..512u64 {
        let leaf = v.lookup(&mem, la + (i << 12));
        assert_eq!(leaf & ADDR, gpa + (i << 12) + HOST_OFFSET);
        assert_eq!(leaf & (WRITABLE | USER), WRITABLE | USER);
    }
    // The guest unmaps the page and invalidates one address of it: all of it is gone.
    guest.set(guest.entry(la, 2), 0);
    assert!(matches!(
        v.invalidate(&mut mem, la + 0x1f_f000),
        Invalidated::Large { .. }
    ));
    for i in 0..512u64 {
        assert_eq!(v.lookup(&mem, la + (i << 12)), 0);
    }
    assert!(matches!(
        classify(&guest, &Host::all(), &paging, la, ErrorCode::USER, true),
        Resolution::Inject(_)
    ));
}

#[test]
fn a_global_region_stays_across_address_space_switches() {
    let mut mem = Frames::default();
    let pool = frames(16);
    let mut v = Vtlb::<16, 2>::new(&pool).unwrap();
    let ptes = region_ptes();
    v.switch(&mut mem, key(1), true);
    assert_eq!(
        v.install_global_region(&mut mem, REGION + 0x5000, &ptes),
        Install::Installed
    );
    v.install(&mut mem, 0x1000, PTE);
    // A CR3 load that flushes: the space's own leaves go, the global region stays.
    for k in [2, 3, 1] {
        v.switch(&mut mem, key(k), true);
        assert_eq!(v.lookup(&mem, REGION + 0x5000), ptes[5], "space {k}");
        assert_eq!(v.lookup(&mem, 0x1000), 0, "space {k}");
        assert_ne!(entry(&mem, v.root().unwrap(), REGION, 2) & LARGE_ORIGIN, 0);
    }
    // Filling it again reuses its table.
    let free = v.free_frames();
    v.install_global_region(&mut mem, REGION, &ptes);
    assert_eq!(v.free_frames(), free);
}

#[test]
fn invlpg_in_a_global_region_drops_it_everywhere_and_frees_its_table() {
    let mut mem = Frames::default();
    let pool = frames(16);
    let mut v = Vtlb::<16, 2>::new(&pool).unwrap();
    let ptes = region_ptes();
    v.switch(&mut mem, key(1), true);
    v.install_global_region(&mut mem, REGION, &ptes);
    v.switch(&mut mem, key(2), false);
    let before = v.free_frames();
    assert_eq!(
        v.invalidate(&mut mem, REGION + 0x1_0000),
        Invalidated::Large {
            base: REGION,
            size: PageSize::Size2M
        }
    );
    assert_eq!(v.free_frames(), before + 1);
    assert_eq!(v.lookup(&mem, REGION), 0);
    v.switch(&mut mem, key(1), false);
    assert_eq!(
        v.lookup(&mem, REGION),
        0,
        "unlinked from the other tree too"
    );
    assert_eq!(entry(&mem, v.root().unwrap(), REGION, 2), 0);
}

#[test]
fn flushing_everything_drops_global_regions_and_a_dry_pool_takes_them_back() {
    let mut mem = Frames::default();
    let pool = frames(8);
    let mut v = Vtlb::<8, 1>::new(&pool).unwrap();
    let ptes = region_ptes();
    v.switch(&mut mem, key(1), true);
    v.install_global_region(&mut mem, REGION, &ptes);
    v.flush_all(&mut mem);
    v.switch(&mut mem, key(1), true);
    assert_eq!(v.lookup(&mem, REGION), 0);
    assert_eq!(v.free_frames(), 8 - 1, "only the root is in use");
    // Globals fill the pool; installs elsewhere still succeed by taking them back.
    for k in 0..GLOBAL_REGIONS as u64 {
        v.install_global_region(&mut mem, REGION + (k << 21), &ptes);
    }
    for k in 0..8u64 {
        let la = 0x40_0000_0000 + (k << 30);
        assert_ne!(v.install(&mut mem, la, PTE), Install::NoRoot);
        assert_eq!(v.lookup(&mem, la), PTE, "install {k}");
    }
}
