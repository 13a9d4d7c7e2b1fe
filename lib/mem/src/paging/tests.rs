use std::collections::HashMap;

use super::*;

const KERNEL_BASE: u64 = 0xffff_8000_0000_0000;
const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
const G1: u64 = 1 << 30;

const RW: Flags = Flags {
    writable: true,
    executable: false,
    user: false,
    global: false,
    uncached: false,
};
const RX: Flags = Flags {
    writable: false,
    executable: true,
    user: false,
    global: false,
    uncached: false,
};
const USER_RW: Flags = Flags {
    writable: true,
    executable: false,
    user: true,
    global: false,
    uncached: false,
};

/// Page tables in a hash map, with an optional cap on how many tables may exist.
struct TestMem {
    tables: HashMap<u64, [u64; 512]>,
    next: u64,
    limit: usize,
    freed: Vec<u64>,
    /// Hand out this (bad) address once.
    bad_next: Option<u64>,
}

impl TestMem {
    fn new() -> Self {
        Self::with_limit(usize::MAX)
    }

    fn with_limit(limit: usize) -> Self {
        Self {
            tables: HashMap::new(),
            next: 0x10_0000,
            limit,
            freed: Vec::new(),
            bad_next: None,
        }
    }

    fn count(&self) -> usize {
        self.tables.len()
    }
}

impl TableMemory for TestMem {
    fn alloc_table(&mut self) -> Option<u64> {
        if let Some(bad) = self.bad_next.take() {
            return Some(bad);
        }
        if self.tables.len() >= self.limit {
            return None;
        }
        let t = self.next;
        self.next += 0x1000;
        self.tables.insert(t, [0; 512]);
        Some(t)
    }

    fn read(&self, table: u64, index: usize) -> u64 {
        self.tables.get(&table).expect("read from a non-table")[index]
    }

    fn write(&mut self, table: u64, index: usize, value: u64) {
        self.tables.get_mut(&table).expect("write to a non-table")[index] = value;
    }

    fn free_table(&mut self, table: u64) {
        self.tables.remove(&table);
        self.freed.push(table);
    }
}

fn setup() -> (TestMem, AddressSpace) {
    let mut mem = TestMem::new();
    let space = AddressSpace::new(&mut mem).unwrap();
    (mem, space)
}

/// The raw entry at `level` on the walk for `virt` (which must be present above it).
fn entry(mem: &TestMem, root: u64, virt: u64, level: usize) -> Pte {
    let mut table = root;
    for l in (level + 1..=4).rev() {
        table = Pte(mem.read(table, index(virt, l))).addr();
    }
    Pte(mem.read(table, index(virt, level)))
}

fn set_entry(mem: &mut TestMem, root: u64, virt: u64, level: usize, f: impl Fn(&mut Pte)) {
    let mut table = root;
    for l in (level + 1..=4).rev() {
        table = Pte(mem.read(table, index(virt, l))).addr();
    }
    let mut e = Pte(mem.read(table, index(virt, level)));
    f(&mut e);
    mem.write(table, index(virt, level), e.0);
}

#[test]
fn pte_bits() {
    let mut e = Pte(0);
    e.set_present(true);
    e.set_writable(true);
    e.set_user(true);
    e.set_write_through(true);
    e.set_cache_disable(true);
    e.set_accessed(true);
    e.set_dirty(true);
    e.set_huge(true);
    e.set_global(true);
    e.set_no_execute(true);
    assert_eq!(e.0, 0x8000_0000_0000_01ff);
    e.set_addr(0xffff_ffff_ffff_ffff);
    assert_eq!(e.addr(), 0x000f_ffff_ffff_f000);
    assert_eq!(e.frame(), 0xff_ffff_ffff);
    assert_eq!(e.0, 0x800f_ffff_ffff_f1ff);
    e.set_addr(0x1234_5000);
    assert_eq!(e.addr(), 0x1234_5000);
    assert!(e.no_execute() && e.global() && e.huge());
    e.set_frame(0x1_ffff_ffff_ffff); // too wide: cut to 40 bits
    assert_eq!(e.addr(), 0x000f_ffff_ffff_f000);
}

#[test]
fn canonical_addresses() {
    assert!(is_canonical(0));
    assert!(is_canonical(0x0000_7fff_ffff_ffff));
    assert!(!is_canonical(0x0000_8000_0000_0000));
    assert!(!is_canonical(0xffff_7fff_ffff_ffff));
    assert!(is_canonical(0xffff_8000_0000_0000));
    assert!(is_canonical(u64::MAX));
    assert!(!is_canonical(0x8000_0000_0000_0000));
}

#[test]
fn map_and_translate_each_size() {
    for (size, virt, phys) in [
        (PageSize::Size4K, KERNEL_BASE + 0x5000, 0x7000),
        (PageSize::Size2M, KERNEL_BASE + 3 * M2, 5 * M2),
        (PageSize::Size1G, KERNEL_BASE + 7 * G1, 2 * G1),
        (PageSize::Size4K, 0x40_0000, 0xf_ffff_ffff_f000),
    ] {
        let (mut mem, mut space) = setup();
        space.map(&mut mem, virt, phys, size, RW).unwrap();
        let t = space.translate(&mem, virt).unwrap();
        assert_eq!(t.phys, phys);
        assert_eq!(t.size, size);
        assert_eq!(t.flags, RW);
        for offset in [1, 0x123, size.bytes() / 2, size.bytes() - 1] {
            let t = space.translate(&mem, virt + offset).unwrap();
            assert_eq!(t.phys, phys + offset, "{size:?} + {offset:#x}");
        }
        assert_eq!(space.translate(&mem, virt + size.bytes()), None);
        assert_eq!(space.translate(&mem, virt - 1), None);
        // Tables: root plus one per level above the leaf.
        assert_eq!(mem.count(), 1 + 4 - size.level());
    }
}

#[test]
fn leaf_flags_are_encoded() {
    let (mut mem, mut space) = setup();
    let flags = Flags {
        writable: false,
        executable: false,
        user: true,
        global: true,
        uncached: true,
    };
    space
        .map(&mut mem, 0x1000, 0xfee0_0000, PageSize::Size4K, flags)
        .unwrap();
    let e = entry(&mem, space.root(), 0x1000, 1);
    assert!(e.present() && !e.writable() && e.user() && e.global());
    assert!(e.cache_disable() && e.write_through() && e.no_execute() && !e.huge());
    assert_eq!(space.translate(&mem, 0x1000).unwrap().flags, flags);
    space
        .map(&mut mem, 0x20_0000, 0, PageSize::Size2M, RX)
        .unwrap();
    let e = entry(&mem, space.root(), 0x20_0000, 2);
    assert!(e.huge() && !e.no_execute() && !e.writable() && !e.user());
}

#[test]
fn intermediate_entries_let_the_leaf_decide() {
    let (mut mem, mut space) = setup();
    let virt = 0x7f00_1234_5000;
    space
        .map(&mut mem, virt, 0x9000, PageSize::Size4K, USER_RW)
        .unwrap();
    for level in 2..=4 {
        let e = entry(&mem, space.root(), virt, level);
        assert!(e.present() && e.writable() && e.user(), "level {level}");
        assert!(!e.no_execute() && !e.huge() && !e.global(), "level {level}");
    }
    // Supervisor leaves get supervisor intermediates...
    let kvirt = KERNEL_BASE + 0x1000;
    space
        .map(&mut mem, kvirt, 0xa000, PageSize::Size4K, RX)
        .unwrap();
    assert!(!entry(&mem, space.root(), kvirt, 4).user());
    // ...which gain the user bit when a user leaf is mapped below them.
    space
        .map(&mut mem, kvirt + 0x1000, 0xb000, PageSize::Size4K, USER_RW)
        .unwrap();
    for level in 2..=4 {
        assert!(entry(&mem, space.root(), kvirt, level).user());
    }
    // The supervisor leaf stays supervisor.
    assert!(!space.translate(&mem, kvirt).unwrap().flags.user);
    assert!(space.translate(&mem, kvirt + 0x1000).unwrap().flags.user);
}

#[test]
fn effective_flags_combine_all_levels() {
    let (mut mem, mut space) = setup();
    let virt = 0x4000_0000_0000;
    let leaf = Flags {
        writable: true,
        user: true,
        ..Flags::default()
    };
    space
        .map(&mut mem, virt, 0x5000, PageSize::Size4K, leaf)
        .unwrap();
    let root = space.root();
    assert_eq!(space.translate(&mem, virt).unwrap().flags, leaf);

    set_entry(&mut mem, root, virt, 4, |e| e.set_writable(false));
    let f = space.translate(&mem, virt).unwrap().flags;
    assert!(!f.writable && f.user);

    set_entry(&mut mem, root, virt, 3, |e| e.set_user(false));
    let f = space.translate(&mem, virt).unwrap().flags;
    assert!(!f.writable && !f.user);

    // An executable leaf under an NX table entry is not executable.
    let xvirt = virt + 0x20_0000;
    space
        .map(&mut mem, xvirt, 0x6000, PageSize::Size4K, RX)
        .unwrap();
    assert!(space.translate(&mem, xvirt).unwrap().flags.executable);
    set_entry(&mut mem, root, xvirt, 2, |e| e.set_no_execute(true));
    assert!(!space.translate(&mem, xvirt).unwrap().flags.executable);
    // The sibling under the other PD entry is unaffected except by the PML4/PDPT changes.
    assert!(!space.translate(&mem, virt).unwrap().flags.executable);
    set_entry(&mut mem, root, virt, 1, |e| e.set_no_execute(false));
    assert!(space.translate(&mem, virt).unwrap().flags.executable);
}

#[test]
fn writable_and_executable_is_refused() {
    let (mut mem, mut space) = setup();
    let wx = Flags {
        writable: true,
        executable: true,
        ..Flags::default()
    };
    assert_eq!(
        space.map(&mut mem, 0x1000, 0x1000, PageSize::Size4K, wx),
        Err(MapError::WritableAndExecutable)
    );
    assert_eq!(
        space.map_range(&mut mem, 0x1000, 0x1000, 0x3000, wx),
        Err(MapError::WritableAndExecutable)
    );
    assert_eq!(mem.count(), 1);
    assert_eq!(space.translate(&mem, 0x1000), None);
}

#[test]
fn misaligned_is_refused() {
    let (mut mem, mut space) = setup();
    let cases = [
        (0x1001, 0x1000, PageSize::Size4K),
        (0x1000, 0x1800, PageSize::Size4K),
        (0x1000, 0x20_0000, PageSize::Size2M),
        (0x20_0000, 0x1000, PageSize::Size2M),
        (0x20_0000, 0x20_0000, PageSize::Size1G),
        (0x4000_0000, 0x4010_0000, PageSize::Size1G),
    ];
    for (virt, phys, size) in cases {
        assert_eq!(
            space.map(&mut mem, virt, phys, size, RW),
            Err(MapError::Misaligned),
            "{virt:#x} -> {phys:#x} {size:?}"
        );
    }
    for (virt, phys, len) in [(0x1001, 0, 0x1000), (0, 0x10, 0x1000), (0, 0, 0x1001)] {
        assert_eq!(
            space.map_range(&mut mem, virt, phys, len, RW),
            Err(MapError::Misaligned)
        );
    }
    assert_eq!(
        space.unmap(&mut mem, 0x1000, PageSize::Size2M),
        Err(MapError::Misaligned)
    );
    assert_eq!(mem.count(), 1);
}

#[test]
fn non_canonical_is_refused() {
    let (mut mem, mut space) = setup();
    for virt in [
        0x0000_8000_0000_0000,
        0xffff_7fff_ffff_f000,
        0x8000_0000_0000_0000,
    ] {
        assert_eq!(
            space.map(&mut mem, virt, 0, PageSize::Size4K, RW),
            Err(MapError::NonCanonical)
        );
        assert_eq!(space.translate(&mem, virt), None);
        assert_eq!(
            space.unmap(&mut mem, virt, PageSize::Size4K),
            Err(MapError::NonCanonical)
        );
    }
    // Ranges that run into the hole or past the top.
    for (virt, len) in [
        (0x0000_7fff_ffff_f000, 0x2000),
        (0xffff_ffff_ffff_f000, 0x2000),
        (0xffff_7fff_ffff_f000, 0x1000),
        (0, 0x0000_8000_0000_1000),
    ] {
        assert_eq!(
            space.map_range(&mut mem, virt, 0, len, RW),
            Err(MapError::NonCanonical),
            "{virt:#x} + {len:#x}"
        );
    }
    // The last page of each half is fine.
    space
        .map_range(&mut mem, 0x0000_7fff_ffff_f000, 0, 0x1000, RW)
        .unwrap();
    space
        .map_range(&mut mem, 0xffff_ffff_ffff_f000, 0, 0x1000, RW)
        .unwrap();
}

#[test]
fn physical_addresses_beyond_52_bits_are_refused() {
    let (mut mem, mut space) = setup();
    assert_eq!(
        space.map(&mut mem, 0x1000, MAX_PHYS, PageSize::Size4K, RW),
        Err(MapError::PhysTooLarge)
    );
    assert_eq!(
        space.map_range(&mut mem, 0x1000, MAX_PHYS - 0x1000, 0x2000, RW),
        Err(MapError::PhysTooLarge)
    );
    assert_eq!(
        space.map_range(&mut mem, 0x1000, !0xfff, 0x2000, RW),
        Err(MapError::PhysTooLarge)
    );
    space
        .map_range(&mut mem, 0x1000, MAX_PHYS - 0x1000, 0x1000, RW)
        .unwrap();
}

#[test]
fn double_map_is_refused() {
    let (mut mem, mut space) = setup();
    space
        .map(&mut mem, 0x1000, 0x1000, PageSize::Size4K, RW)
        .unwrap();
    let tables = mem.count();
    assert_eq!(
        space.map(&mut mem, 0x1000, 0x2000, PageSize::Size4K, RX),
        Err(MapError::AlreadyMapped { virt: 0x1000 })
    );
    // A 2 MiB page where a page table already is.
    assert_eq!(
        space.map(&mut mem, 0, 0, PageSize::Size2M, RW),
        Err(MapError::AlreadyMapped { virt: 0 })
    );
    // A 1 GiB page where a page directory already is.
    assert_eq!(
        space.map(&mut mem, 0, 0, PageSize::Size1G, RW),
        Err(MapError::AlreadyMapped { virt: 0 })
    );
    assert_eq!(mem.count(), tables);
    assert_eq!(space.translate(&mem, 0x1000).unwrap().phys, 0x1000);
    assert_eq!(
        space.map_range(&mut mem, 0, 0, 0x4000, RW),
        Err(MapError::AlreadyMapped { virt: 0x1000 })
    );
    // The page mapped before the failure was taken back.
    assert_eq!(space.translate(&mem, 0), None);
}

#[test]
fn huge_page_in_the_way() {
    let (mut mem, mut space) = setup();
    space
        .map(&mut mem, 0x4000_0000, 0, PageSize::Size1G, RW)
        .unwrap();
    space
        .map(&mut mem, 0x20_0000, 0, PageSize::Size2M, RW)
        .unwrap();
    for (virt, size) in [
        (0x4000_1000, PageSize::Size4K),
        (0x4020_0000, PageSize::Size2M),
        (0x20_1000, PageSize::Size4K),
    ] {
        assert_eq!(
            space.map(&mut mem, virt, 0, size, RW),
            Err(MapError::HugePageInTheWay { virt })
        );
        assert_eq!(
            space.unmap(&mut mem, virt, size),
            Err(MapError::HugePageInTheWay { virt })
        );
    }
    assert_eq!(
        space.map(&mut mem, 0x4000_0000, 0, PageSize::Size1G, RW),
        Err(MapError::AlreadyMapped { virt: 0x4000_0000 })
    );
}

#[test]
fn map_range_picks_large_pages() {
    let (mut mem, mut space) = setup();
    // 4K up to a 2M boundary, 2M up to a 1G boundary, 1G, 2M, 4K.
    let virt = G1 - M2 - K4;
    let phys = 3 * G1 - M2 - K4;
    let len = K4 + M2 + G1 + M2 + K4;
    space.map_range(&mut mem, virt, phys, len, RW).unwrap();
    let expect = [
        (virt, PageSize::Size4K),
        (virt + K4, PageSize::Size2M),
        (virt + K4 + M2, PageSize::Size1G),
        (virt + K4 + M2 + G1, PageSize::Size2M),
        (virt + K4 + 2 * M2 + G1, PageSize::Size4K),
    ];
    for (v, size) in expect {
        let t = space.translate(&mem, v).unwrap();
        assert_eq!((t.phys, t.size), (phys + (v - virt), size), "{v:#x}");
    }
    assert_eq!(space.translate(&mem, virt + len), None);
    assert_eq!(space.translate(&mem, virt - 1), None);
    // root, PDPT, PD for [0, 1G) with a PT, PD for [2G, 3G) with a PT.
    assert_eq!(mem.count(), 6);

    // 4 GiB of identity map needs root, one PDPT and nothing else.
    let (mut mem, mut space) = setup();
    space.map_range(&mut mem, 0, 0, 4 * G1, RW).unwrap();
    assert_eq!(mem.count(), 2);
    assert_eq!(
        space.translate(&mem, 3 * G1 + 5).unwrap().size,
        PageSize::Size1G
    );

    // Addresses aligned differently: only 4K pages.
    let (mut mem, mut space) = setup();
    space
        .map_range(&mut mem, 2 * M2, 2 * M2 + K4, 2 * M2, RW)
        .unwrap();
    assert_eq!(
        space.translate(&mem, 2 * M2).unwrap().size,
        PageSize::Size4K
    );
    assert_eq!(mem.count(), 1 + 3 + 1); // root, PDPT, PD, two PTs
    assert_eq!(
        space.translate(&mem, 4 * M2 - 1).unwrap().phys,
        4 * M2 + K4 - 1
    );

    // Empty range: nothing happens.
    let (mut mem, mut space) = setup();
    space.map_range(&mut mem, 0, 0, 0, RW).unwrap();
    assert_eq!(mem.count(), 1);
}

#[test]
fn unmap_returns_the_physical_address() {
    let (mut mem, mut space) = setup();
    space
        .map(&mut mem, 0x1000, 0x7000, PageSize::Size4K, RW)
        .unwrap();
    space
        .map(&mut mem, 0x40_0000, 0x80_0000, PageSize::Size2M, RW)
        .unwrap();
    space
        .map(
            &mut mem,
            0x80_0000_0000,
            0x1_0000_0000,
            PageSize::Size1G,
            RW,
        )
        .unwrap();
    // PAT bit (12) in a huge entry does not leak into the address.
    set_entry(&mut mem, space.root(), 0x40_0000, 2, |e| e.0 |= 1 << 12);
    assert_eq!(space.translate(&mem, 0x40_0000).unwrap().phys, 0x80_0000);

    assert_eq!(space.unmap(&mut mem, 0x1000, PageSize::Size4K), Ok(0x7000));
    assert_eq!(
        space.unmap(&mut mem, 0x40_0000, PageSize::Size2M),
        Ok(0x80_0000)
    );
    assert_eq!(
        space.unmap(&mut mem, 0x80_0000_0000, PageSize::Size1G),
        Ok(0x1_0000_0000)
    );
    for virt in [0x1000, 0x40_0000, 0x80_0000_0000] {
        assert_eq!(space.translate(&mem, virt), None);
    }
    assert_eq!(
        space.unmap(&mut mem, 0x1000, PageSize::Size4K),
        Err(MapError::NotMapped { virt: 0x1000 })
    );
    // Nothing there at all, and a table where a 2M page is asked for.
    assert_eq!(
        space.unmap(&mut mem, 0x7000_0000_0000, PageSize::Size4K),
        Err(MapError::NotMapped {
            virt: 0x7000_0000_0000
        })
    );
    assert_eq!(
        space.unmap(&mut mem, 0, PageSize::Size2M),
        Err(MapError::NotMapped { virt: 0 })
    );
    // The slot can be used again, with another size, reusing the tables.
    let tables = mem.count();
    space
        .map(&mut mem, 0x40_0000, 0x9000, PageSize::Size4K, RX)
        .unwrap();
    space
        .map(&mut mem, 0x2000, 0x9000, PageSize::Size4K, RX)
        .unwrap();
    assert_eq!(mem.count(), tables + 1);
}

#[test]
fn out_of_table_memory_leaves_nothing_mapped() {
    // Root plus 2 tables: a 4K mapping needs 3.
    let mut mem = TestMem::with_limit(3);
    let mut space = AddressSpace::new(&mut mem).unwrap();
    assert_eq!(
        space.map(&mut mem, 0x1000, 0x1000, PageSize::Size4K, RW),
        Err(MapError::OutOfTableMemory)
    );
    assert_eq!(space.translate(&mem, 0x1000), None);
    assert!(mem.tables[&space.root()].iter().all(|&e| e == 0));
    assert_eq!(mem.freed.len(), 2);
    assert_eq!(mem.count(), 1);
    // A 2M page needs only 2: fits.
    space
        .map(&mut mem, 0x20_0000, 0, PageSize::Size2M, RW)
        .unwrap();

    // map_range: the first pages fit, a later one needs a new page table.
    let mut mem = TestMem::with_limit(4);
    let mut space = AddressSpace::new(&mut mem).unwrap();
    assert_eq!(
        space.map_range(&mut mem, M2 - 2 * K4, 0, 4 * K4, RW),
        Err(MapError::OutOfTableMemory)
    );
    for i in 0..4 {
        assert_eq!(space.translate(&mem, M2 - 2 * K4 + i * K4), None);
    }

    // An address space needs its root.
    let mut mem = TestMem::with_limit(0);
    assert_eq!(
        AddressSpace::new(&mut mem).unwrap_err(),
        MapError::OutOfTableMemory
    );
}

#[test]
fn unusable_table_addresses_are_refused() {
    for bad in [0x1234, MAX_PHYS, 0x8000_0000_0000_1000] {
        let (mut mem, mut space) = setup();
        mem.bad_next = Some(bad);
        assert_eq!(
            space.map(&mut mem, 0x1000, 0x1000, PageSize::Size4K, RW),
            Err(MapError::OutOfTableMemory)
        );
        assert_eq!(mem.freed, [bad]);
        assert!(mem.tables[&space.root()].iter().all(|&e| e == 0));
    }
}

#[test]
fn from_root_sees_the_same_tables() {
    let (mut mem, mut space) = setup();
    space
        .map(&mut mem, 0x1000, 0x5000, PageSize::Size4K, RW)
        .unwrap();
    let again = AddressSpace::from_root(space.root());
    assert_eq!(again.root(), space.root());
    assert_eq!(again.translate(&mem, 0x1000).unwrap().phys, 0x5000);
}

#[test]
fn huge_bit_in_pml4_does_not_translate() {
    let (mut mem, mut space) = setup();
    space
        .map(&mut mem, 0x1000, 0x5000, PageSize::Size4K, RW)
        .unwrap();
    set_entry(&mut mem, space.root(), 0x1000, 4, |e| e.set_huge(true));
    assert_eq!(space.translate(&mem, 0x1000), None);
}

fn translation(writable: bool, executable: bool, user: bool) -> Translation {
    Translation {
        phys: 0,
        size: PageSize::Size4K,
        flags: Flags {
            writable,
            executable,
            user,
            ..Flags::default()
        },
    }
}

#[test]
fn check_access_matrix_under_strict_controls() {
    use AccessKind::{Execute, Read, Write};
    for bits in 0..8 {
        let (w, x, u) = (bits & 1 != 0, bits & 2 != 0, bits & 4 != 0);
        let t = translation(w, x, u);
        for kind in [Read, Write, Execute] {
            let user_ok = u
                && match kind {
                    Read => true,
                    Write => w,
                    Execute => x,
                };
            // Under SMEP and SMAP the kernel touches no user page at all.
            let supervisor_ok = !u
                && match kind {
                    Read => true,
                    Write => w,
                    Execute => x,
                };
            let ctx = format!("w={w} x={x} u={u} {kind:?}");
            assert_eq!(
                check_access(&t, Access::user(kind)).is_ok(),
                user_ok,
                "user {ctx}"
            );
            assert_eq!(
                check_access(&t, Access::supervisor(kind)).is_ok(),
                supervisor_ok,
                "supervisor {ctx}"
            );
        }
    }
    // The reasons.
    let user_ro = translation(false, false, true);
    let kernel_ro = translation(false, false, false);
    assert_eq!(
        check_access(&kernel_ro, Access::user(Read)),
        Err(AccessFault::SupervisorPage)
    );
    assert_eq!(
        check_access(&user_ro, Access::user(Write)),
        Err(AccessFault::ReadOnly)
    );
    assert_eq!(
        check_access(&user_ro, Access::user(Execute)),
        Err(AccessFault::NoExecute)
    );
    assert_eq!(
        check_access(&kernel_ro, Access::supervisor(Write)),
        Err(AccessFault::ReadOnly)
    );
    assert_eq!(
        check_access(&kernel_ro, Access::supervisor(Execute)),
        Err(AccessFault::NoExecute)
    );
    assert_eq!(
        check_access(&user_ro, Access::supervisor(Read)),
        Err(AccessFault::Smap)
    );
    assert_eq!(
        check_access(&translation(false, true, true), Access::supervisor(Execute)),
        Err(AccessFault::Smep)
    );
}

#[test]
fn check_access_follows_the_controls() {
    use AccessKind::{Execute, Read, Write};
    let with = |kind, user, f: fn(&mut Controls)| {
        let mut controls = Controls::STRICT;
        f(&mut controls);
        Access {
            kind,
            user,
            controls,
        }
    };
    let kernel_ro = translation(false, false, false);
    let user_ro = translation(false, false, true);
    let user_rw = translation(true, false, true);
    let user_rx = translation(false, true, true);

    // CR0.WP clear: the kernel writes read-only pages, users still may not.
    assert_eq!(
        check_access(&kernel_ro, with(Write, false, |c| c.wp = false)),
        Ok(())
    );
    assert_eq!(
        check_access(
            &user_ro,
            with(Write, false, |c| {
                c.wp = false;
                c.smap = false;
            })
        ),
        Ok(())
    );
    assert_eq!(
        check_access(&user_ro, with(Write, true, |c| c.wp = false)),
        Err(AccessFault::ReadOnly)
    );
    // SMAP off, or AC set: the kernel reads and writes user pages, but WP still holds.
    for f in [
        |c: &mut Controls| c.smap = false,
        |c: &mut Controls| c.ac = true,
    ] {
        assert_eq!(check_access(&user_ro, with(Read, false, f)), Ok(()));
        assert_eq!(check_access(&user_rw, with(Write, false, f)), Ok(()));
        assert_eq!(
            check_access(&user_ro, with(Write, false, f)),
            Err(AccessFault::ReadOnly)
        );
    }
    // AC does not matter without SMAP, nor for instruction fetches.
    assert_eq!(
        check_access(&user_rx, with(Execute, false, |c| c.ac = true)),
        Err(AccessFault::Smep)
    );
    // SMEP off: the kernel executes user code (still subject to NX).
    assert_eq!(
        check_access(&user_rx, with(Execute, false, |c| c.smep = false)),
        Ok(())
    );
    assert_eq!(
        check_access(&user_ro, with(Execute, false, |c| c.smep = false)),
        Err(AccessFault::NoExecute)
    );
    // EFER.NXE clear: NX is a reserved bit, every access to such a page faults.
    for kind in [Read, Write, Execute] {
        for user in [false, true] {
            assert_eq!(
                check_access(&user_rw, with(kind, user, |c| c.nxe = false)),
                Err(AccessFault::ReservedNx)
            );
        }
    }
    assert_eq!(
        check_access(&user_rx, with(Read, true, |c| c.nxe = false)),
        Ok(())
    );
    assert_eq!(Controls::default(), Controls::STRICT);
}

#[test]
fn errors_display_on_one_line() {
    for e in [
        MapError::WritableAndExecutable,
        MapError::Misaligned,
        MapError::NonCanonical,
        MapError::PhysTooLarge,
        MapError::AlreadyMapped { virt: 0x1000 },
        MapError::OutOfTableMemory,
        MapError::HugePageInTheWay { virt: 0x1000 },
        MapError::NotMapped { virt: 0x1000 },
    ] {
        let text = e.to_string();
        assert!(!text.is_empty() && !text.contains('\n'), "{e:?}");
    }
}

#[test]
fn map_range_up_to_respects_the_largest_page_size() {
    let (mut mem, mut space) = setup();
    space
        .map_range_up_to(&mut mem, 0, 0, 2 * G1, RW, PageSize::Size2M)
        .unwrap();
    assert_eq!(
        space.translate(&mem, G1 + 5).unwrap().size,
        PageSize::Size2M
    );
    // root, one PDPT, two PDs of 2 MiB pages.
    assert_eq!(mem.count(), 4);

    let (mut mem, mut space) = setup();
    space
        .map_range_up_to(&mut mem, 0, 0, 4 * M2, RW, PageSize::Size4K)
        .unwrap();
    assert_eq!(space.translate(&mem, M2).unwrap().size, PageSize::Size4K);
}

#[test]
fn for_each_leaf_reports_every_mapping_with_effective_rights() {
    let (mut mem, mut space) = setup();
    space
        .map(&mut mem, 0x1000, 0x5000, PageSize::Size4K, USER_RW)
        .unwrap();
    space
        .map(&mut mem, 0x4000, 0x6000, PageSize::Size4K, RX)
        .unwrap();
    space
        .map(&mut mem, KERNEL_BASE + M2, 0, PageSize::Size2M, RW)
        .unwrap();
    space
        .map(&mut mem, KERNEL_BASE + G1, 0, PageSize::Size1G, RX)
        .unwrap();
    let mut seen = Vec::new();
    space.for_each_leaf(&mem, &mut |virt, t| {
        seen.push((virt, t.phys, t.size, t.flags))
    });
    assert_eq!(
        seen,
        vec![
            (0x1000, 0x5000, PageSize::Size4K, USER_RW),
            // RX shares the lower-half tables made user by USER_RW: effective user is false
            // because the leaf itself is supervisor.
            (0x4000, 0x6000, PageSize::Size4K, RX),
            (KERNEL_BASE + M2, 0, PageSize::Size2M, RW),
            (KERNEL_BASE + G1, 0, PageSize::Size1G, RX),
        ]
    );
    // Each leaf agrees with translate.
    for (virt, phys, size, flags) in seen {
        let t = space.translate(&mem, virt).unwrap();
        assert_eq!((t.phys, t.size, t.flags), (phys, size, flags));
    }
}
