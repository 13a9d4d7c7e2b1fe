//! The kernel's address space: the image mapped by section (text RX, rodata R, data RW, W^X and
//! NX throughout), stack guard pages left unmapped, all RAM in a direct map at
//! [`direct::DIRECT_MAP_BASE`], and device pages in an uncached MMIO area.

use core::sync::atomic::{AtomicU64, Ordering};

use bootinfo::{BootInfo, RegionKind};
use mem::paging::{AddressSpace, Flags, PageSize, TableMemory, Translation};
use mem::PAGE_SIZE;
use spin::Mutex;

use super::KernelImage;
use super::{direct, frames, MemError};
use crate::arch;

/// Device mappings are placed here, one after another.
const MMIO_BASE: u64 = 0xffff_ff00_0000_0000;
const MMIO_SIZE: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;

/// Page tables in frames from the frame allocator, reached through the direct-map window.
struct KernelTables {
    allocated: usize,
}

impl TableMemory for KernelTables {
    fn alloc_table(&mut self) -> Option<u64> {
        let frame = frames::alloc(1)?;
        direct::zero_frame(frame);
        self.allocated += 1;
        Some(frame)
    }

    fn read(&self, table: u64, index: usize) -> u64 {
        direct::read_word(table, index)
    }

    fn write(&mut self, table: u64, index: usize, value: u64) {
        direct::write_word(table, index, value)
    }
}

static KERNEL_SPACE: Mutex<Option<AddressSpace>> = Mutex::new(None);
static NEXT_MMIO: AtomicU64 = AtomicU64::new(MMIO_BASE);

const EFER: u32 = 0xc000_0080;
const EFER_NXE: u64 = 1 << 11;

/// Builds the kernel's page tables, switches to them and moves the direct-map window to
/// [`direct::DIRECT_MAP_BASE`]. Returns the number of table frames used.
pub fn build_and_switch(info: &BootInfo, image: KernelImage) -> Result<usize, MemError> {
    let mut tables = KernelTables { allocated: 0 };
    let mut space = AddressSpace::new(&mut tables)?;
    let to_phys = |virt: u64| virt - image.virt_base + image.phys_base;
    let sections = arch::image_sections();
    let code = Flags {
        executable: true,
        global: true,
        ..Flags::default()
    };
    let read_only = Flags {
        global: true,
        ..Flags::default()
    };
    let read_write = Flags {
        writable: true,
        global: true,
        ..Flags::default()
    };

    let (start, end) = sections.text;
    space.map_range(&mut tables, start, to_phys(start), end - start, code)?;
    let (start, end) = sections.rodata;
    space.map_range(&mut tables, start, to_phys(start), end - start, read_only)?;
    // Data and bss, page by page around the stack guard pages.
    let (start, end) = sections.data;
    let mut page = start;
    while page < end {
        if !arch::stacks::is_guard_page(page) {
            space.map_range(&mut tables, page, to_phys(page), PAGE_SIZE, read_write)?;
        }
        page += PAGE_SIZE;
    }

    let ram_end = ram_end(info).div_ceil(MIB2) * MIB2;
    let largest = if arch::cpu::has_1gib_pages() {
        PageSize::Size1G
    } else {
        PageSize::Size2M
    };
    space.map_range_up_to(
        &mut tables,
        direct::DIRECT_MAP_BASE,
        0,
        ram_end,
        read_write,
        largest,
    )?;

    // SAFETY: the new tables map the running code, its stack (boot stack in .bss), the
    // descriptor tables and every static exactly where the loader's tables did, so execution
    // continues unchanged; NX is enabled before any NX mapping becomes live; WP makes read-only
    // mappings hold for the kernel too; PGE lets the global kernel mappings survive CR3 loads.
    unsafe {
        let efer = x86::msr::rdmsr(EFER);
        x86::msr::wrmsr(EFER, efer | EFER_NXE);
        use x86::controlregs::{cr0, cr0_write, cr3_write, cr4, cr4_write, Cr0, Cr4};
        cr0_write(cr0() | Cr0::CR0_WRITE_PROTECT);
        cr4_write(cr4() | Cr4::CR4_ENABLE_GLOBAL_PAGES);
        cr3_write(space.root());
    }
    direct::set_window(direct::DIRECT_MAP_BASE, ram_end);
    let allocated = tables.allocated;
    *KERNEL_SPACE.lock() = Some(space);
    Ok(allocated)
}

/// End of the highest RAM-like region (everything but reserved and bad memory).
fn ram_end(info: &BootInfo) -> u64 {
    info.memory_map
        .iter()
        .filter(|r| !matches!(r.kind, RegionKind::Reserved | RegionKind::BadMemory))
        .map(|r| r.start.saturating_add(r.len))
        .max()
        .unwrap_or(0)
}

/// Maps device memory uncached in the MMIO area.
pub fn map_mmio(phys: u64, len: u64) -> Result<u64, MemError> {
    let offset = phys % PAGE_SIZE;
    let first = phys - offset;
    let size = (offset + len).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let virt = NEXT_MMIO.fetch_add(size, Ordering::AcqRel);
    if virt + size > MMIO_BASE + MMIO_SIZE {
        return Err(MemError::OutOfMemory("MMIO address space"));
    }
    let flags = Flags {
        writable: true,
        global: true,
        uncached: true,
        ..Flags::default()
    };
    let mut guard = KERNEL_SPACE.lock();
    let space = guard
        .as_mut()
        .ok_or(MemError::OutOfMemory("kernel page tables not built"))?;
    let mut tables = KernelTables { allocated: 0 };
    space.map_range_up_to(&mut tables, virt, first, size, flags, PageSize::Size4K)?;
    Ok(virt + offset)
}

/// How the kernel's page tables translate `virt`, if at all.
pub fn translate(virt: u64) -> Option<Translation> {
    let guard = KERNEL_SPACE.lock();
    guard
        .as_ref()?
        .translate(&KernelTables { allocated: 0 }, virt)
}

/// Calls `visit(virt, translation)` for every leaf mapping of the kernel's address space.
pub fn for_each_mapping(mut visit: impl FnMut(u64, &Translation)) {
    let guard = KERNEL_SPACE.lock();
    if let Some(space) = guard.as_ref() {
        space.for_each_leaf(&KernelTables { allocated: 0 }, &mut visit);
    }
}

/// Copies the kernel's upper-half top-level entries into a new address space's top-level
/// table, so that the kernel stays mapped while that space is active. All kernel mappings exist
/// before the first user space is made (boot maps everything, including MMIO), so the copy never
/// goes stale.
pub fn share_kernel_half(root: u64) {
    let guard = KERNEL_SPACE.lock();
    let Some(kernel) = guard.as_ref() else { return };
    for index in 256..512 {
        direct::write_word(root, index, direct::read_word(kernel.root(), index));
    }
}

/// Loads the kernel's own page tables (no user half).
pub fn load_kernel_space() {
    let guard = KERNEL_SPACE.lock();
    if let Some(kernel) = guard.as_ref() {
        // SAFETY: the kernel's page tables map all kernel code and data.
        unsafe { x86::controlregs::cr3_write(kernel.root()) };
    }
}

/// Switches to the address space whose top-level table is `root`.
///
/// # Safety
///
/// `root` is the top-level table of a live address space whose upper half is the kernel's own
/// (`share_kernel_half`), so the kernel keeps running after the switch.
pub unsafe fn load_space(root: u64) {
    // SAFETY: as the caller guarantees.
    unsafe { x86::controlregs::cr3_write(root) };
}

/// How the address space `space` translates `virt`.
pub fn translate_in(space: &AddressSpace, virt: u64) -> Option<Translation> {
    space.translate(&KernelTables { allocated: 0 }, virt)
}
