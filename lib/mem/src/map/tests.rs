use super::*;

const MIB: u64 = 1 << 20;

fn region(start: u64, len: u64, kind: RegionKind) -> MemoryRegion {
    MemoryRegion { start, len, kind }
}

fn usable(start: u64, len: u64) -> MemoryRegion {
    region(start, len, RegionKind::Usable)
}

fn reserved(start: u64, len: u64) -> MemoryRegion {
    region(start, len, RegionKind::Reserved)
}

fn r(start: u64, end: u64) -> PhysRange {
    PhysRange { start, end }
}

fn ranges(regions: &[MemoryRegion], exclude: &[PhysRange]) -> Result<Vec<PhysRange>, MapError> {
    usable_ranges(regions, exclude).map(|v| v.to_vec())
}

#[test]
fn phys_range_basics() {
    assert_eq!(PhysRange::new(0x1000, 0x2000), Some(r(0x1000, 0x3000)));
    assert_eq!(PhysRange::new(u64::MAX, 0), Some(r(u64::MAX, u64::MAX)));
    assert_eq!(PhysRange::new(u64::MAX, 1), None);
    assert_eq!(PhysRange::new(1, u64::MAX), None);
    assert_eq!(PhysRange::from_bounds(2, 1), None);
    let a = r(0x1000, 0x3000);
    assert_eq!(a.len(), 0x2000);
    assert!(!a.is_empty());
    assert!(r(5, 5).is_empty());
    assert!(r(6, 5).is_empty());
    assert_eq!(r(6, 5).len(), 0);
    assert!(a.contains(0x1000) && a.contains(0x2fff));
    assert!(!a.contains(0x3000) && !a.contains(0xfff));
    assert!(a.overlaps(&r(0x2fff, 0x4000)));
    assert!(a.overlaps(&r(0, 0x1001)));
    assert!(a.overlaps(&r(0x1800, 0x1900)));
    assert!(
        !a.overlaps(&r(0x3000, 0x4000)),
        "adjacent is not overlapping"
    );
    assert!(!a.overlaps(&r(0, 0x1000)));
    assert!(!a.overlaps(&r(0x2000, 0x2000)), "empty overlaps nothing");
    assert!(a.contains_range(&r(0x1000, 0x3000)));
    assert!(!a.contains_range(&r(0x1000, 0x3001)));
    assert_eq!(r(0x1001, 0x3fff).page_inner(), r(0x2000, 0x3000));
    assert!(r(0x1001, 0x2fff).page_inner().is_empty());
    assert!(r(u64::MAX - 10, u64::MAX).page_inner().is_empty());
}

#[test]
fn overlapping_and_adjacent_usable_regions_merge() {
    let got = ranges(&[usable(0x1000, 0x4000), usable(0x3000, 0x5000)], &[]).unwrap();
    assert_eq!(got, [r(0x1000, 0x8000)]);
    let got = ranges(&[usable(0x1000, 0x1000), usable(0x2000, 0x1000)], &[]).unwrap();
    assert_eq!(got, [r(0x1000, 0x3000)]);
    // Two unaligned halves make whole pages once merged.
    let got = ranges(&[usable(0x1000, 0x800), usable(0x1800, 0x1800)], &[]).unwrap();
    assert_eq!(got, [r(0x1000, 0x3000)]);
    // Duplicates and containment.
    let got = ranges(
        &[
            usable(0x1000, 0x8000),
            usable(0x1000, 0x8000),
            usable(0x2000, 0x1000),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(got, [r(0x1000, 0x9000)]);
}

#[test]
fn reserved_wins_in_every_arrangement() {
    let ram = usable(0x10000, 0x10000); // [0x10000, 0x20000)
    let other = usable(0x100000, 0x1000); // keeps the result non-empty
    let cases: &[(MemoryRegion, &[PhysRange])] = &[
        // Inside, aligned.
        (
            reserved(0x14000, 0x1000),
            &[r(0x10000, 0x14000), r(0x15000, 0x20000)],
        ),
        // Inside, unaligned: the pages it touches go.
        (
            reserved(0x14100, 0x100),
            &[r(0x10000, 0x14000), r(0x15000, 0x20000)],
        ),
        (
            reserved(0x13fff, 0x2),
            &[r(0x10000, 0x13000), r(0x15000, 0x20000)],
        ),
        // Straddling the left edge.
        (reserved(0xf000, 0x3000), &[r(0x12000, 0x20000)]),
        (reserved(0xf000, 0x2001), &[r(0x12000, 0x20000)]),
        // Straddling the right edge.
        (reserved(0x1e000, 0x12000), &[r(0x10000, 0x1e000)]),
        (reserved(0x1dfff, 0x12000), &[r(0x10000, 0x1d000)]),
        // Covering exactly, and covering more.
        (reserved(0x10000, 0x10000), &[]),
        (reserved(0x1000, 0x80000), &[]),
        // Touching on either side: no effect.
        (reserved(0xf000, 0x1000), &[r(0x10000, 0x20000)]),
        (reserved(0x20000, 0x1000), &[r(0x10000, 0x20000)]),
        // Elsewhere, or empty.
        (reserved(0x50000, 0x1000), &[r(0x10000, 0x20000)]),
        (reserved(0x14000, 0), &[r(0x10000, 0x20000)]),
    ];
    for (res, expected) in cases {
        let mut want = expected.to_vec();
        want.push(r(0x100000, 0x101000));
        // Order of the input must not matter.
        assert_eq!(ranges(&[ram, *res, other], &[]).unwrap(), want, "{res:?}");
        assert_eq!(ranges(&[*res, other, ram], &[]).unwrap(), want, "{res:?}");
    }
}

#[test]
fn every_non_usable_kind_removes_memory() {
    for kind in [
        RegionKind::Reserved,
        RegionKind::AcpiReclaimable,
        RegionKind::AcpiNvs,
        RegionKind::BadMemory,
        RegionKind::BootloaderReclaimable,
        RegionKind::KernelAndModules,
        RegionKind::Framebuffer,
    ] {
        let got = ranges(&[usable(0, 0x10000), region(0x4000, 0x1000, kind)], &[]).unwrap();
        assert_eq!(got, [r(0, 0x4000), r(0x5000, 0x10000)], "{kind:?}");
        // And none of them is usable on its own.
        assert_eq!(
            ranges(&[region(0, 0x10000, kind)], &[]),
            Err(MapError::NoUsableMemory)
        );
    }
}

#[test]
fn unaligned_and_empty_regions() {
    assert_eq!(
        ranges(&[usable(0x1001, 0x2ffe)], &[]).unwrap(),
        [r(0x2000, 0x3000)]
    );
    assert_eq!(
        ranges(&[usable(0x1001, 0x1ffe)], &[]),
        Err(MapError::NoUsableMemory)
    );
    assert_eq!(
        ranges(&[usable(0x1000, 0)], &[]),
        Err(MapError::NoUsableMemory)
    );
    assert_eq!(ranges(&[], &[]), Err(MapError::NoUsableMemory));
    assert_eq!(
        ranges(&[usable(0x1000, 0), usable(0x3000, 0x1000)], &[]).unwrap(),
        [r(0x3000, 0x4000)]
    );
}

#[test]
fn top_of_the_address_space() {
    // Ends exactly at 2^64 - 1: fine, the partial last page is dropped.
    let top = u64::MAX - 0x2000; // 0xffff_ffff_ffff_dfff
    assert_eq!(
        ranges(&[usable(top, 0x2000)], &[]).unwrap(),
        [r(0xffff_ffff_ffff_e000, 0xffff_ffff_ffff_f000)]
    );
    // Ends past 2^64: corrupt.
    assert_eq!(
        ranges(&[usable(u64::MAX - 0xfff, 0x1000)], &[]),
        Err(MapError::RangeOverflow)
    );
    assert_eq!(
        ranges(&[usable(0x1000, 0x1000), usable(1, u64::MAX)], &[]),
        Err(MapError::RangeOverflow)
    );
    // A start in the last page cannot be rounded up.
    assert_eq!(
        ranges(&[usable(u64::MAX - 0x10, 0x10)], &[]),
        Err(MapError::NoUsableMemory)
    );
    // All of memory.
    assert_eq!(
        ranges(&[usable(0, u64::MAX)], &[]).unwrap(),
        [r(0, 0xffff_ffff_ffff_f000)]
    );
    // A reserved region past 2^64 removes everything up to the top.
    assert_eq!(
        ranges(&[usable(0, u64::MAX), reserved(0x8000_0000, u64::MAX)], &[]).unwrap(),
        [r(0, 0x8000_0000)]
    );
}

#[test]
fn exclusions_split_ranges() {
    let regions = [usable(0, 4 << 30)];
    let first_mib = r(0, MIB);
    let kernel = r(2 * MIB, 4 * MIB + 0x123);
    let module = r(8 * MIB + 0x800, 9 * MIB);
    let got = ranges(&regions, &[kernel, first_mib, module, r(5, 5)]).unwrap();
    assert_eq!(
        got,
        [
            r(MIB, 2 * MIB),
            r(4 * MIB + 0x1000, 8 * MIB),
            r(9 * MIB, 4 << 30)
        ]
    );
    // Excluding everything leaves nothing.
    assert_eq!(
        ranges(&regions, &[r(0, 4 << 30)]),
        Err(MapError::NoUsableMemory)
    );
}

#[test]
fn unsorted_input_gives_sorted_output() {
    let regions = [
        usable(0x9000_0000, 0x1000_0000),
        reserved(0x9800_0000, 0x1000),
        usable(0x10_0000, 0x10_0000),
        usable(0x4000_0000, 0x1000),
        reserved(0xa000, 0x1000),
        usable(0x1000, 0x9_0000),
    ];
    let got = ranges(&regions, &[]).unwrap();
    assert_eq!(
        got,
        [
            r(0x1000, 0xa000),
            r(0xb000, 0x9_1000),
            r(0x10_0000, 0x20_0000),
            r(0x4000_0000, 0x4000_1000),
            r(0x9000_0000, 0x9800_0000),
            r(0x9800_1000, 0xa000_0000),
        ]
    );
    let mut reversed = regions;
    reversed.reverse();
    assert_eq!(ranges(&reversed, &[]).unwrap(), got);
}

#[test]
fn too_many_ranges() {
    let pieces =
        |n: u64| -> Vec<MemoryRegion> { (0..n).map(|i| usable(i * 0x2000, 0x1000)).collect() };
    assert_eq!(
        ranges(&pieces(MAX_USABLE as u64), &[]).unwrap().len(),
        MAX_USABLE
    );
    assert_eq!(
        ranges(&pieces(MAX_USABLE as u64 + 1), &[]),
        Err(MapError::TooManyRanges)
    );
    assert_eq!(ranges(&pieces(1000), &[]), Err(MapError::TooManyRanges));
    // More pieces than fit in the result on the way, fewer at the end.
    let mut many = pieces(200);
    many.push(reserved(0, 100 * 0x2000));
    assert_eq!(ranges(&many, &[]).unwrap().len(), 100);
    // One range cut by holes.
    let holes = |n: u64| -> Vec<PhysRange> {
        (1..=n)
            .map(|i| r(i * 0x2000, i * 0x2000 + 0x1000))
            .collect()
    };
    let big = [usable(0, 1 << 30)];
    assert_eq!(
        ranges(&big, &holes(MAX_USABLE as u64 - 1)).unwrap().len(),
        MAX_USABLE
    );
    assert_eq!(
        ranges(&big, &holes(MAX_USABLE as u64)),
        Err(MapError::TooManyRanges)
    );
}

#[test]
fn check_modules_finds_overlaps() {
    let kernel = r(0x20_0000, 0x40_0000);
    let m0 = r(0x40_0000, 0x41_0000);
    let m1 = r(0x41_0000, 0x42_0000);
    assert_eq!(check_modules(kernel, &[m0, m1]), Ok(()));
    assert_eq!(check_modules(kernel, &[]), Ok(()));
    assert_eq!(
        check_modules(kernel, &[m0, r(0x3f_ffff, 0x40_0001)]),
        Err(MapError::ModuleOverlapsKernel { module: 1 })
    );
    assert_eq!(
        check_modules(kernel, &[m0, m1, r(0x40_f000, 0x41_1000)]),
        Err(MapError::ModuleOverlapsModule { a: 0, b: 2 })
    );
    assert_eq!(
        check_modules(kernel, &[m1, m1]),
        Err(MapError::ModuleOverlapsModule { a: 0, b: 1 })
    );
    // Empty modules overlap nothing.
    assert_eq!(
        check_modules(
            kernel,
            &[r(0x30_0000, 0x30_0000), m0, r(0x40_8000, 0x40_8000)]
        ),
        Ok(())
    );
}

#[test]
fn errors_display_on_one_line() {
    for e in [
        MapError::NoUsableMemory,
        MapError::TooManyRanges,
        MapError::ModuleOverlapsKernel { module: 1 },
        MapError::ModuleOverlapsModule { a: 0, b: 1 },
        MapError::RangeOverflow,
    ] {
        let text = e.to_string();
        assert!(!text.is_empty() && !text.contains('\n'), "{e:?}");
    }
}

/// Compares `usable_ranges` with a brute-force model on random small maps: memory is cut into
/// 256-byte units, a unit is usable if a usable region covers it and nothing else does, and a
/// page is usable if all 16 of its units are.
#[test]
fn matches_a_brute_force_model() {
    const UNIT: u64 = 256;
    const PAGES: u64 = 64;
    const UNITS: u64 = PAGES * PAGE_SIZE / UNIT;
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for case in 0..500 {
        let mut regions = Vec::new();
        let mut exclude = Vec::new();
        let mut usable_units = [false; UNITS as usize];
        let mut blocked_units = [false; UNITS as usize];
        for _ in 0..1 + rand(12) {
            let start = rand(UNITS);
            let len = rand(UNITS - start + 1);
            let kind = match rand(4) {
                0 | 1 => RegionKind::Usable,
                2 => RegionKind::Reserved,
                _ => RegionKind::AcpiNvs,
            };
            let units = (start..start + len).map(|u| u as usize);
            if kind == RegionKind::Usable {
                units.for_each(|u| usable_units[u] = true);
            } else {
                units.for_each(|u| blocked_units[u] = true);
            }
            regions.push(region(start * UNIT, len * UNIT, kind));
        }
        for _ in 0..rand(3) {
            let start = rand(UNITS);
            let len = rand(UNITS - start + 1);
            (start..start + len).for_each(|u| blocked_units[u as usize] = true);
            exclude.push(r(start * UNIT, (start + len) * UNIT));
        }
        let per_page = (PAGE_SIZE / UNIT) as usize;
        let model: Vec<bool> = (0..PAGES as usize)
            .map(|p| {
                (p * per_page..(p + 1) * per_page).all(|u| usable_units[u] && !blocked_units[u])
            })
            .collect();

        match usable_ranges(&regions, &exclude) {
            Ok(got) => {
                let mut pages = vec![false; PAGES as usize];
                for (i, g) in got.iter().enumerate() {
                    assert!(g.start < g.end, "case {case}: empty {g:?}");
                    assert_eq!(g.start % PAGE_SIZE, 0, "case {case}");
                    assert_eq!(g.end % PAGE_SIZE, 0, "case {case}");
                    if let Some(next) = got.get(i + 1) {
                        assert!(g.end < next.start, "case {case}: not sorted or adjacent");
                    }
                    for p in g.start / PAGE_SIZE..g.end / PAGE_SIZE {
                        pages[p as usize] = true;
                    }
                }
                assert_eq!(pages, model, "case {case}: {regions:?} {exclude:?}");
            }
            Err(e) => {
                assert_eq!(e, MapError::NoUsableMemory, "case {case}");
                assert!(model.iter().all(|&p| !p), "case {case}");
            }
        }
    }
}

/// The hardware page size this library defines is the ABI's unit of mapping.
#[test]
fn page_size_is_the_abis() {
    assert_eq!(PAGE_SIZE, abi::PAGE_SIZE);
}
