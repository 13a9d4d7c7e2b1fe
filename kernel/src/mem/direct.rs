//! Physical memory through a window: the loader's mapping during boot (identity for Multiboot2,
//! Limine's higher-half direct map), then the kernel's own direct map at [`DIRECT_MAP_BASE`].
//! Every access to memory by physical address goes through this module.

use core::sync::atomic::{AtomicU64, Ordering};

/// Where the kernel's own page tables map physical address 0.
pub const DIRECT_MAP_BASE: u64 = 0xffff_8000_0000_0000;

/// Virtual address of physical 0 in the current window.
static OFFSET: AtomicU64 = AtomicU64::new(0);
/// First physical address the current window does not map. The Multiboot2 entry stub maps
/// 0..4 GiB at offset 0, which is this module's starting state.
static LIMIT: AtomicU64 = AtomicU64::new(4 << 30);

/// Declares how physical memory is mapped from now on: physical `p < limit` is at `offset + p`.
pub fn set_window(offset: u64, limit: u64) {
    OFFSET.store(offset, Ordering::Release);
    LIMIT.store(limit, Ordering::Release);
}

/// The first physical address outside the window.
pub fn limit() -> u64 {
    LIMIT.load(Ordering::Acquire)
}

/// Virtual address of `[phys, phys + len)`, or `None` if the window does not cover it.
pub fn virt(phys: u64, len: u64) -> Option<u64> {
    let end = phys.checked_add(len)?;
    if end > limit() {
        return None;
    }
    OFFSET.load(Ordering::Acquire).checked_add(phys)
}

/// `len` bytes of physical memory as a shared slice, or `None` outside the window.
///
/// Used for loader-provided structures (boot information, modules) that nothing writes while
/// the kernel reads them.
pub fn bytes(phys: u64, len: usize) -> Option<&'static [u8]> {
    let start = virt(phys, len as u64)?;
    // SAFETY: the window maps `[phys, phys + len)` readable at `start` for the kernel's lifetime
    // (loader mappings until the switch, then the direct map); callers read only memory that no
    // one writes concurrently.
    Some(unsafe { core::slice::from_raw_parts(start as *const u8, len) })
}

/// The 512 words of one 4 KiB frame through the window, located (and checked) once, for code
/// that touches a frame many times (IPC copies UTCB to UTCB).
#[derive(Clone, Copy)]
pub struct FrameWords(u64);

impl FrameWords {
    /// The frame at physical `frame`, if it is page-aligned and inside the window.
    pub fn new(frame: u64) -> Option<FrameWords> {
        if !frame.is_multiple_of(4096) {
            return None;
        }
        virt(frame, 4096).map(FrameWords)
    }

    /// Word `index` (< 512; larger indexes read 0).
    pub fn read(self, index: usize) -> u64 {
        if index >= 512 {
            return 0;
        }
        // SAFETY: `new` checked that the frame lies in the window, which maps it for the
        // kernel's lifetime; `index` is inside the frame and the address is 8-byte aligned.
        unsafe { core::ptr::read_volatile((self.0 as *const u64).add(index)) }
    }

    /// Sets word `index` (< 512; larger indexes are ignored). The frame belongs to the caller (a
    /// page table or a UTCB the kernel writes on a thread's behalf).
    pub fn write(self, index: usize, value: u64) {
        if index >= 512 {
            return;
        }
        // SAFETY: as in `read`.
        unsafe { core::ptr::write_volatile((self.0 as *mut u64).add(index), value) }
    }
}

fn frame_words(frame: u64) -> FrameWords {
    match FrameWords::new(frame) {
        Some(words) => words,
        None => {
            panic!("physical frame {frame:#x} not page-aligned or outside the direct-map window")
        }
    }
}

/// Reads the `index`th 64-bit word of the 4 KiB frame at `frame`.
pub fn read_word(frame: u64, index: usize) -> u64 {
    assert!(index < 512, "page-table frame access out of bounds");
    frame_words(frame).read(index)
}

/// Writes the `index`th 64-bit word of the 4 KiB frame at `frame`.
pub fn write_word(frame: u64, index: usize, value: u64) {
    assert!(index < 512, "page-table frame access out of bounds");
    frame_words(frame).write(index, value)
}

/// Fills the 4 KiB frame at `frame` with zeros.
pub fn zero_frame(frame: u64) {
    for index in 0..512 {
        write_word(frame, index, 0);
    }
}

/// Copies `data` into physical memory at `phys`, which the caller owns (frames it allocated).
/// Returns `None` (copying nothing) if the window does not cover the range.
pub fn copy_to(phys: u64, data: &[u8]) -> Option<()> {
    let start = virt(phys, data.len() as u64)?;
    // SAFETY: the window maps the range writable; the caller owns the frames, so no one else
    // reads or writes them concurrently.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), start as *mut u8, data.len()) };
    Some(())
}

/// Fills `len` bytes of caller-owned physical memory at `phys` with zeros.
pub fn zero(phys: u64, len: u64) -> Option<()> {
    let start = virt(phys, len)?;
    // SAFETY: as in `copy_to`.
    unsafe { core::ptr::write_bytes(start as *mut u8, 0, len as usize) };
    Some(())
}

/// Atomically replaces the 8-byte-aligned word at physical `phys` by `new` if it holds
/// `current`; `Err(found)` otherwise, `None` outside the window or unaligned. For memory shared
/// with a guest (its page tables), which the guest may change at any time.
pub fn compare_exchange(phys: u64, current: u64, new: u64) -> Option<Result<u64, u64>> {
    if !phys.is_multiple_of(8) {
        return None;
    }
    let at = virt(phys, 8)?;
    // SAFETY: the window maps the aligned word for the kernel's lifetime; an atomic access is
    // sound even while a guest writes the same word.
    let word = unsafe { &*(at as *const AtomicU64) };
    Some(word.compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst))
}

/// Reads the 8-byte-aligned word at physical `phys` atomically (guest memory that may change
/// under the read); `None` outside the window or unaligned.
pub fn read_shared(phys: u64) -> Option<u64> {
    if !phys.is_multiple_of(8) {
        return None;
    }
    let at = virt(phys, 8)?;
    // SAFETY: as in `compare_exchange`.
    let word = unsafe { &*(at as *const AtomicU64) };
    Some(word.load(Ordering::SeqCst))
}
