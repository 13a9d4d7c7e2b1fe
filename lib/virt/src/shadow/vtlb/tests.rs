use super::*;
use crate::shadow::cache::cr3_write_flushes;
use crate::shadow::fake::Frames;

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
