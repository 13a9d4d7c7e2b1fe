//! The kernel's physical frame allocator: one [`mem::frames::FrameAllocator`] behind a lock.

use spin::Mutex;

use mem::frames::FrameAllocator;
use mem::map::PhysRange;

static FRAMES: Mutex<FrameAllocator> = Mutex::new(FrameAllocator::new());

/// Hands `range` to the allocator.
pub fn add(range: PhysRange) {
    FRAMES.lock().add_range(range);
}

/// `count` contiguous 4 KiB frames, or `None` when memory is exhausted.
pub fn alloc(count: usize) -> Option<u64> {
    FRAMES.lock().alloc(count)
}

/// Returns frames obtained from [`alloc`].
pub fn free(addr: u64, count: usize) {
    FRAMES.lock().free(addr, count);
}

/// (free, total) frame counts.
pub fn stats() -> (usize, usize) {
    let frames = FRAMES.lock();
    (frames.free_frames(), frames.total_frames())
}
