use std::collections::HashSet;

use super::*;

const MIB: u64 = 1 << 20;

fn r(start: u64, end: u64) -> PhysRange {
    PhysRange { start, end }
}

/// Allocates single frames until none is left.
fn drain(fa: &mut FrameAllocator) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(a) = fa.alloc(1) {
        out.push(a);
    }
    out
}

#[test]
fn empty_allocator() {
    let mut fa = FrameAllocator::new();
    assert_eq!(fa.alloc(1), None);
    assert_eq!((fa.total_frames(), fa.free_frames()), (0, 0));
    fa.add_range(r(0x1001, 0x1fff));
    fa.add_range(r(0x5000, 0x5000));
    fa.add_range(r(0x6000, 0x5000));
    assert_eq!(fa.total_frames(), 0);
    assert_eq!(fa.alloc(1), None);
}

#[test]
fn add_range_rounds_inward() {
    let mut fa = FrameAllocator::new();
    fa.add_range(r(0x1001, 0x5fff));
    assert_eq!(fa.total_frames(), 3); // 0x2000..0x5000
    let got: HashSet<_> = drain(&mut fa).into_iter().collect();
    assert_eq!(got, HashSet::from([0x2000, 0x3000, 0x4000]));
}

#[test]
fn alloc_free_round_trip() {
    let mut fa = FrameAllocator::new();
    fa.add_range(r(MIB, 2 * MIB));
    assert_eq!(fa.total_frames(), 256);
    assert_eq!(fa.free_frames(), 256);
    let a = fa.alloc(1).unwrap();
    assert!(r(MIB, 2 * MIB).contains(a));
    assert_eq!(a % PAGE_SIZE, 0);
    assert_eq!(fa.free_frames(), 255);
    fa.free(a, 1);
    assert_eq!(fa.free_frames(), 256);
    // Everything coalesced again: the whole MiB is one block.
    assert_eq!(fa.alloc(256), Some(MIB));
    assert_eq!(fa.free_frames(), 0);
    assert_eq!(fa.try_free(MIB, 256), Ok(()));
    assert_eq!(fa.free_frames(), 256);
}

#[test]
fn every_frame_is_handed_out_once() {
    let ranges = [
        r(MIB, 2 * MIB),
        r(0x30_5000, 0x31_0000),
        r(0x1_0000_0000 + 0x3000, 0x1_0000_0000 + 0x2_1000),
    ];
    let mut fa = FrameAllocator::new();
    for &range in &ranges {
        fa.add_range(range);
    }
    let total = 256 + 11 + 30;
    assert_eq!(fa.total_frames(), total);
    for round in 0..2 {
        let got = drain(&mut fa);
        assert_eq!(got.len(), total, "round {round}");
        let unique: HashSet<_> = got.iter().copied().collect();
        assert_eq!(
            unique.len(),
            total,
            "round {round}: a frame was handed out twice"
        );
        for &a in &got {
            assert_eq!(a % PAGE_SIZE, 0);
            assert!(
                ranges.iter().any(|range| range.contains(a)),
                "{a:#x} outside"
            );
        }
        assert_eq!(fa.free_frames(), 0);
        assert_eq!(fa.alloc(1), None, "exhausted");
        for a in got {
            fa.free(a, 1);
        }
        assert_eq!(fa.free_frames(), total);
    }
}

#[test]
fn multi_frame_blocks_are_contiguous_and_aligned() {
    let mut fa = FrameAllocator::new();
    fa.add_range(r(0, 4 * MIB));
    let mut blocks = Vec::new();
    for (count, block) in [(4, 4), (3, 4), (5, 8), (1, 1), (16, 16), (512, 512)] {
        let before = fa.free_frames();
        let a = fa.alloc(count).unwrap();
        assert_eq!(a % (block as u64 * PAGE_SIZE), 0, "count {count}");
        assert_eq!(before - fa.free_frames(), block, "count {count}");
        blocks.push((r(a, a + block as u64 * PAGE_SIZE), count));
    }
    for (i, (x, _)) in blocks.iter().enumerate() {
        assert!(r(0, 4 * MIB).contains_range(x));
        for (y, _) in &blocks[i + 1..] {
            assert!(!x.overlaps(y), "{x:?} overlaps {y:?}");
        }
    }
    for (b, count) in blocks {
        assert_eq!(fa.try_free(b.start, count), Ok(()));
    }
    assert_eq!(fa.free_frames(), 1024);
    assert_eq!(fa.alloc(1024), Some(0));
}

#[test]
fn exhaustion_returns_none() {
    let mut fa = FrameAllocator::new();
    fa.add_range(r(0x10_0000, 0x10_8000)); // 8 frames
    assert_eq!(fa.alloc(16), None);
    assert!(fa.alloc(8).is_some());
    assert_eq!(fa.alloc(1), None);
    assert_eq!(fa.free_frames(), 0);
    // Fragmented: 7 frames free but no 8-frame block.
    let mut fa = FrameAllocator::new();
    fa.add_range(r(0x10_0000, 0x10_7000));
    assert_eq!(fa.free_frames(), 7);
    assert_eq!(fa.alloc(7), None);
    assert_eq!(fa.alloc(4).map(|a| a % 0x4000), Some(0));
}

#[test]
fn bad_counts() {
    let mut fa = FrameAllocator::new();
    fa.add_range(r(0, MIB));
    assert_eq!(fa.alloc(0), None);
    assert_eq!(fa.alloc(MAX_BLOCK_FRAMES + 1), None);
    assert_eq!(fa.alloc(usize::MAX), None);
    assert_eq!(fa.alloc(MAX_BLOCK_FRAMES), None);
    assert_eq!(fa.free_frames(), 256);
}

#[test]
fn overlapping_adds_count_once() {
    let mut fa = FrameAllocator::new();
    fa.add_range(r(0x10_0000, 0x20_0000));
    fa.add_range(r(0x10_0000, 0x20_0000));
    assert_eq!(fa.total_frames(), 256);
    fa.add_range(r(0x18_0000, 0x28_0000)); // half new
    assert_eq!(fa.total_frames(), 384);
    fa.add_range(r(0x8_0000, 0x30_0000)); // new on both sides
    assert_eq!(fa.total_frames(), 0x28_0000 / 0x1000);
    fa.add_range(r(0x40_0000, 0x41_0000));
    fa.add_range(r(0x42_0000, 0x43_0000));
    fa.add_range(r(0x3f_0000, 0x44_0000)); // fills two holes and both ends
    assert_eq!(fa.total_frames(), 0x28_0000 / 0x1000 + 0x50);
    let got = drain(&mut fa);
    let unique: HashSet<_> = got.iter().copied().collect();
    assert_eq!(got.len(), fa.total_frames());
    assert_eq!(unique.len(), got.len());
}

#[test]
fn bad_frees_are_refused() {
    let mut fa = FrameAllocator::new();
    fa.add_range(r(MIB, 2 * MIB));
    let a = fa.alloc(2).unwrap();
    assert_eq!(fa.try_free(a, 0), Err(FrameError::BadCount));
    assert_eq!(fa.try_free(a, usize::MAX), Err(FrameError::BadCount));
    assert_eq!(fa.try_free(a + 1, 1), Err(FrameError::Misaligned));
    assert_eq!(fa.try_free(a + PAGE_SIZE, 2), Err(FrameError::Misaligned));
    assert_eq!(fa.try_free(0, 1), Err(FrameError::NotManaged));
    assert_eq!(fa.try_free(2 * MIB, 1), Err(FrameError::NotManaged));
    assert_eq!(fa.try_free(0, 512), Err(FrameError::NotManaged));
    assert_eq!(
        fa.try_free(!(PAGE_SIZE - 1), 1),
        Err(FrameError::NotManaged)
    );
    assert_eq!(fa.try_free(MIB, 256), Err(FrameError::NotAllocated));
    assert_eq!(fa.free_frames(), 254);
    fa.free(a + 1, 1); // ignored
    assert_eq!(fa.free_frames(), 254);
    assert_eq!(fa.try_free(a, 2), Ok(()));
    assert_eq!(fa.free_frames(), 256);
    assert!(!FrameError::NotAllocated.to_string().contains('\n'));
}

#[test]
fn frame_zero_is_an_ordinary_frame() {
    let mut fa = FrameAllocator::new();
    fa.add_range(r(0, 0x4000));
    assert_eq!(fa.alloc(4), Some(0));
    fa.free(0, 4);
    assert_eq!(fa.free_frames(), 4);
}
