//! Kernel memory: taking over physical memory from the boot information, the kernel's own page
//! tables, the heap, and MMIO mappings. The logic (map normalisation, allocator, page-table
//! construction) is in the host-tested `mem` library; this module is the glue.

pub mod direct;
pub mod frames;
pub mod heap;
pub mod paging;

use core::fmt;

use bootinfo::BootInfo;
use mem::map::{self, PhysRange};

use crate::arch;

/// Memory never handed to the allocator: real-mode structures, BIOS data, the first MiB.
const LOW_MEMORY: PhysRange = PhysRange {
    start: 0,
    end: 1 << 20,
};
/// The heap gets this share of usable memory, within [`HEAP_MIN`, `HEAP_MAX`].
const HEAP_SHARE: u64 = 8;
const HEAP_MIN: u64 = 1 << 20;
const HEAP_MAX: u64 = 64 << 20;

/// Why memory could not be set up.
#[derive(Debug)]
pub enum MemError {
    Map(map::MapError),
    Paging(mem::paging::MapError),
    OutOfMemory(&'static str),
    TooManyModules,
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            MemError::Map(e) => write!(f, "memory map: {e}"),
            MemError::Paging(e) => write!(f, "page tables: {e:?}"),
            MemError::OutOfMemory(what) => write!(f, "out of memory for {what}"),
            MemError::TooManyModules => f.write_str("too many boot modules"),
        }
    }
}

impl From<map::MapError> for MemError {
    fn from(e: map::MapError) -> Self {
        MemError::Map(e)
    }
}

impl From<mem::paging::MapError> for MemError {
    fn from(e: mem::paging::MapError) -> Self {
        MemError::Paging(e)
    }
}

/// Where the kernel image lies, as the loader placed it.
#[derive(Clone, Copy, Debug)]
pub struct KernelImage {
    pub phys_base: u64,
    pub virt_base: u64,
}

/// Takes over physical memory: validates modules against the kernel image, hands usable memory
/// to the frame allocator, switches to the kernel's own page tables and sets up the heap.
pub fn init(info: &BootInfo, image: KernelImage) -> Result<(), MemError> {
    let kernel = PhysRange::new(image.phys_base, arch::kernel_image_len())
        .ok_or(MemError::Map(map::MapError::RangeOverflow))?;
    let mut modules = heapless::Vec::<PhysRange, { bootinfo::MAX_MODULES }>::new();
    for module in &info.modules {
        let range = PhysRange::new(module.start, module.len)
            .ok_or(MemError::Map(map::MapError::RangeOverflow))?;
        modules.push(range).map_err(|_| MemError::TooManyModules)?;
    }
    map::check_modules(kernel, &modules)?;
    heap::bootstrap();

    let mut exclude = heapless::Vec::<PhysRange, { bootinfo::MAX_MODULES + 2 }>::new();
    let _ = exclude.push(LOW_MEMORY);
    let _ = exclude.push(kernel);
    for range in &modules {
        let _ = exclude.push(*range);
    }
    let usable = map::usable_ranges(&info.memory_map, &exclude)?;
    let usable_bytes: u64 = usable.iter().map(|r| r.len()).sum();

    // Until the switch only memory inside the loader's window can hold page tables.
    let window = direct::limit();
    for range in &usable {
        if let Some(inside) = clip(*range, 0, window) {
            frames::add(inside);
        }
    }
    let tables = paging::build_and_switch(info, image)?;
    for range in &usable {
        if let Some(outside) = clip(*range, window, u64::MAX) {
            frames::add(outside);
        }
    }

    heap::grow((usable_bytes / HEAP_SHARE).clamp(HEAP_MIN, HEAP_MAX))?;
    let (free, total) = frames::stats();
    let (_, heap_bytes) = heap::stats();
    log::info!(
        "mem: {} MiB usable in {} ranges, kernel at {:#x} ({} KiB), {} modules",
        usable_bytes >> 20,
        usable.len(),
        image.phys_base,
        arch::kernel_image_len() >> 10,
        modules.len()
    );
    log::info!(
        "mem: page tables live ({tables} table frames), heap {} KiB, {free} of {total} frames free",
        heap_bytes >> 10
    );
    Ok(())
}

/// Bytes the kernel heap has not handed out.
pub fn heap_free_bytes() -> u64 {
    let (used, total) = heap::stats();
    total.saturating_sub(used) as u64
}

/// Maps `len` bytes of device memory at `phys` uncached; returns the virtual address of `phys`.
pub fn map_mmio(phys: u64, len: u64) -> Result<u64, MemError> {
    paging::map_mmio(phys, len)
}

fn clip(range: PhysRange, start: u64, end: u64) -> Option<PhysRange> {
    let clipped = PhysRange {
        start: range.start.max(start),
        end: range.end.min(end),
    };
    (clipped.start < clipped.end).then_some(clipped)
}
