//! The kernel heap: a buddy allocator that starts on a small static arena (the frame allocator's
//! own bookkeeping needs a heap before there are frames) and then grows by a contiguous run of
//! frames reached through the direct map.

use core::sync::atomic::{AtomicBool, Ordering};

use buddy_system_allocator::LockedHeap;

use super::{direct, frames, MemError};

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

const BOOTSTRAP_BYTES: usize = 256 * 1024;

#[repr(C, align(4096))]
struct Arena([u8; BOOTSTRAP_BYTES]);

/// Memory for the heap until the frame allocator can supply more; handed to the heap once.
static mut BOOTSTRAP_ARENA: Arena = Arena([0; BOOTSTRAP_BYTES]);
static BOOTSTRAPPED: AtomicBool = AtomicBool::new(false);

/// Starts the heap on the static arena. Idempotent.
pub fn bootstrap() {
    if BOOTSTRAPPED.swap(true, Ordering::AcqRel) {
        return;
    }
    let start = core::ptr::addr_of_mut!(BOOTSTRAP_ARENA) as usize;
    // SAFETY: the flag above makes this run once, so the arena is handed to the heap exactly
    // once and nothing else ever names it; it is a static, so it lives forever.
    unsafe { HEAP.lock().init(start, BOOTSTRAP_BYTES) };
}

/// Grows the heap by `bytes` (rounded up to whole frames) of contiguous physical memory.
pub fn grow(bytes: u64) -> Result<(), MemError> {
    let count = bytes.div_ceil(4096) as usize;
    let phys = frames::alloc(count).ok_or(MemError::OutOfMemory("kernel heap"))?;
    let len = count as u64 * 4096;
    let start = direct::virt(phys, len)
        .ok_or(MemError::OutOfMemory("kernel heap outside the direct map"))?;
    // SAFETY: the frames were just taken from the allocator and are never freed, so nothing
    // else uses them; the direct map keeps them mapped writable for the kernel's lifetime.
    unsafe {
        HEAP.lock()
            .add_to_heap(start as usize, (start + len) as usize)
    };
    Ok(())
}

/// (bytes in use, bytes managed).
pub fn stats() -> (usize, usize) {
    let heap = HEAP.lock();
    (heap.stats_alloc_actual(), heap.stats_total_bytes())
}

/// Heap bytes kept free for the kernel's own work: no domain's request may eat into them.
const RESERVE: usize = 2 << 20;

/// Whether `bytes` more can be allocated for a domain and leave the reserve free. Every quota
/// charge asks, so a kernel allocation failure is never reachable from user space, even when
/// the quotas handed out add up to more than the heap.
pub fn has_room(bytes: u64) -> bool {
    let (used, total) = stats();
    let wanted = usize::try_from(bytes).unwrap_or(usize::MAX);
    total.saturating_sub(used) >= wanted.saturating_add(RESERVE)
}
