//! The global allocator: a buddy allocator (`buddy_system_allocator::LockedHeap<32>`) over a
//! static arena in the program's `.bss`, so init maps (and zeroes) it with the program image.
//! [`crate::entry!`] defines the arena (size [`DEFAULT_SIZE`] unless given) and hands it over
//! before `main` runs.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use buddy_system_allocator::LockedHeap;

/// Heap bytes a server gets unless its `entry!` says otherwise.
pub const DEFAULT_SIZE: usize = 512 * 1024;

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

/// Static storage for the heap. Define one with [`crate::entry!`].
#[repr(C, align(4096))]
pub struct Arena<const N: usize> {
    bytes: UnsafeCell<[u8; N]>,
    taken: AtomicBool,
}

// SAFETY: the bytes are handed to the allocator once (guarded by `taken`) and never touched
// through the arena again; the allocator synchronises its own use with a lock.
unsafe impl<const N: usize> Sync for Arena<N> {}

impl<const N: usize> Arena<N> {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Arena {
            bytes: UnsafeCell::new([0; N]),
            taken: AtomicBool::new(false),
        }
    }
}

/// Gives `arena` to the global allocator. Only the first call has an effect.
pub fn init<const N: usize>(arena: &'static Arena<N>) {
    if N == 0 || arena.taken.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the arena is static, so its bytes live forever; `taken` guarantees they are given
    // to the allocator exactly once and used by nothing else.
    unsafe { HEAP.lock().init(arena.bytes.get() as usize, N) };
}
