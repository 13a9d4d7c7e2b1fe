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

/// Reads the `index`th 64-bit word of the 4 KiB frame at `frame`.
pub fn read_word(frame: u64, index: usize) -> u64 {
    let addr = word_addr(frame, index);
    // SAFETY: `word_addr` checked that the word lies inside the window and is aligned.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

/// Writes the `index`th 64-bit word of the 4 KiB frame at `frame`.
pub fn write_word(frame: u64, index: usize, value: u64) {
    let addr = word_addr(frame, index);
    // SAFETY: `word_addr` checked that the word lies inside the window and is aligned; the frame
    // belongs to the caller (a page table it owns).
    unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
}

/// Fills the 4 KiB frame at `frame` with zeros.
pub fn zero_frame(frame: u64) {
    for index in 0..512 {
        write_word(frame, index, 0);
    }
}

fn word_addr(frame: u64, index: usize) -> u64 {
    assert!(
        frame.is_multiple_of(4096) && index < 512,
        "page-table frame access out of bounds"
    );
    match virt(frame, 4096) {
        Some(base) => base + index as u64 * 8,
        None => panic!("physical frame {frame:#x} outside the direct-map window"),
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
