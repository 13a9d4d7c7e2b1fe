//! The physical frame allocator: a buddy allocator over 4 KiB frame numbers.
//!
//! Buddy semantics: a request for `count` frames takes a block of `count` rounded up to a power
//! of two, aligned to that size (`alloc(3)` takes 4 frames at a 16 KiB-aligned address), and
//! [`FrameAllocator::free`] must be given the same `count` as the allocation. The counters count
//! whole blocks, so `alloc(3)` lowers [`FrameAllocator::free_frames`] by 4.
//!
//! The allocator remembers which memory it manages: adding a range twice adds it once, and a
//! free outside managed memory, misaligned for its block, or of more frames than are allocated
//! is refused instead of corrupting the free lists. A double free of an allocated-looking block
//! cannot be detected without tracking every allocation; the caller must not do it.
//!
//! The buddy allocator keeps its free lists in `BTreeSet`s and so needs the global allocator.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

use buddy_system_allocator::FrameAllocator as Buddy;

use crate::map::{PhysRange, PAGE_SIZE};

/// Number of buddy size classes: blocks of 1 to 2^(ORDER-1) frames.
const ORDER: usize = 32;
/// Largest single allocation, in frames (8 TiB).
pub const MAX_BLOCK_FRAMES: usize = 1 << (ORDER - 1);

/// Why a free was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// `count` is 0 or more than [`MAX_BLOCK_FRAMES`].
    BadCount,
    /// The address is not aligned to the block size (`count` rounded up to a power of two).
    Misaligned,
    /// The block is not inside memory this allocator manages.
    NotManaged,
    /// The block is larger than everything currently allocated.
    NotAllocated,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadCount => "frame count is zero or too large",
            Self::Misaligned => "frame address is not aligned to its block size",
            Self::NotManaged => "frames are not managed by this allocator",
            Self::NotAllocated => "more frames freed than are allocated",
        })
    }
}

/// Hands out contiguous runs of physical 4 KiB frames.
pub struct FrameAllocator {
    buddy: Buddy<ORDER>,
    /// Managed memory as frame-number ranges `start -> end`, disjoint and non-adjacent.
    managed: BTreeMap<usize, usize>,
    /// Frames ever added.
    total: usize,
    /// Frames in allocated blocks.
    allocated: usize,
}

impl Default for FrameAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameAllocator {
    /// An allocator that manages no memory yet.
    pub const fn new() -> Self {
        Self {
            buddy: Buddy::new(),
            managed: BTreeMap::new(),
            total: 0,
            allocated: 0,
        }
    }

    /// Adds the whole frames inside `r` (start rounded up, end rounded down). Frames that are
    /// already managed are skipped, so overlapping calls never hand out a frame twice.
    pub fn add_range(&mut self, r: PhysRange) {
        let inner = r.page_inner();
        let (Ok(start), Ok(end)) = (
            usize::try_from(inner.start / PAGE_SIZE),
            usize::try_from(inner.end / PAGE_SIZE),
        ) else {
            return;
        };
        if start >= end {
            return;
        }
        for (s, e) in self.unmanaged_gaps(start, end) {
            self.buddy.add_frame(s, e);
            self.total += e - s;
            self.manage(s, e);
        }
    }

    /// The physical address of `count` contiguous free frames, aligned to `count` rounded up to
    /// a power of two, or `None` if no such block is free or `count` is 0 or above
    /// [`MAX_BLOCK_FRAMES`].
    pub fn alloc(&mut self, count: usize) -> Option<u64> {
        if count == 0 || count > MAX_BLOCK_FRAMES {
            return None;
        }
        let frame = self.buddy.alloc(count)?;
        let size = count.next_power_of_two();
        self.allocated += size;
        // Frame numbers come from 64-bit addresses divided by the page size, so this cannot
        // fail; if it did, give the block back rather than hand out a wrong address.
        match u64::try_from(frame)
            .ok()
            .and_then(|f| f.checked_mul(PAGE_SIZE))
        {
            Some(addr) => Some(addr),
            None => {
                self.buddy.dealloc(frame, count);
                self.allocated -= size;
                None
            }
        }
    }

    /// Returns `count` frames at `addr`, as allocated by [`FrameAllocator::alloc`]. A free that
    /// [`FrameAllocator::try_free`] would refuse is ignored.
    pub fn free(&mut self, addr: u64, count: usize) {
        // Ignoring a bad free leaks nothing that was not already lost and keeps the free lists
        // sound; callers that want to know use `try_free`.
        let _ = self.try_free(addr, count);
    }

    /// Like [`FrameAllocator::free`], but says why a free was refused.
    pub fn try_free(&mut self, addr: u64, count: usize) -> Result<(), FrameError> {
        if count == 0 || count > MAX_BLOCK_FRAMES {
            return Err(FrameError::BadCount);
        }
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(FrameError::Misaligned);
        }
        let frame = usize::try_from(addr / PAGE_SIZE).map_err(|_| FrameError::NotManaged)?;
        let size = count.next_power_of_two();
        if !frame.is_multiple_of(size) {
            return Err(FrameError::Misaligned);
        }
        let end = frame.checked_add(size).ok_or(FrameError::NotManaged)?;
        let inside = self
            .managed
            .range(..=frame)
            .next_back()
            .is_some_and(|(_, &e)| end <= e);
        if !inside {
            return Err(FrameError::NotManaged);
        }
        if size > self.allocated {
            return Err(FrameError::NotAllocated);
        }
        self.buddy.dealloc(frame, count);
        self.allocated -= size;
        Ok(())
    }

    /// Frames added so far.
    pub fn total_frames(&self) -> usize {
        self.total
    }

    /// Frames not in an allocated block.
    pub fn free_frames(&self) -> usize {
        self.total - self.allocated
    }

    /// The parts of frame range `[start, end)` that are not managed yet.
    fn unmanaged_gaps(&self, start: usize, end: usize) -> Vec<(usize, usize)> {
        let before = self.managed.range(..start).next_back();
        let within = self.managed.range(start..end);
        let mut gaps = Vec::new();
        let mut cursor = start;
        for (&s, &e) in before.into_iter().chain(within) {
            if s > cursor {
                gaps.push((cursor, s.min(end)));
            }
            cursor = cursor.max(e);
        }
        if cursor < end {
            gaps.push((cursor, end));
        }
        gaps
    }

    /// Records `[start, end)`, which must not overlap managed memory, as managed.
    fn manage(&mut self, mut start: usize, mut end: usize) {
        if let Some((&s, &e)) = self.managed.range(..start).next_back() {
            if e == start {
                self.managed.remove(&s);
                start = s;
            }
        }
        if let Some(e) = self.managed.remove(&end) {
            end = e;
        }
        self.managed.insert(start, end);
    }
}

#[cfg(test)]
mod tests;
