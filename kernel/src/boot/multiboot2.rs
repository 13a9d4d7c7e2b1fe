//! Multiboot2 boot path (GRUB): a 32-bit entry stub reaches long mode, then this module copies
//! the boot information into a [`bootinfo::BootInfo`] and hands over.

use core::arch::global_asm;

use bootinfo::multiboot2;

use super::{Handover, KernelImage};
use crate::arch::{power, KERNEL_OFFSET};
use crate::mem::direct;

global_asm!(include_str!("multiboot2_entry.s"));

/// Called by the entry stub in long mode, on the boot stack, with physical memory 0..4 GiB
/// identity-mapped.
#[no_mangle]
extern "C" fn multiboot2_main(magic: u32, info_phys: u32) -> ! {
    let tsc_at_entry = crate::arch::cpu::rdtsc();
    crate::klog::init_early();
    if let Err(e) = multiboot2::check_magic(magic) {
        power::fail(format_args!("multiboot2: {e}"));
    }
    let info = read_info(u64::from(info_phys))
        .unwrap_or_else(|e| power::fail(format_args!("multiboot2 boot information: {e}")));
    let image_virt = crate::arch::kernel_virt_start();
    super::start(Handover {
        info,
        image: KernelImage {
            phys_base: image_virt - KERNEL_OFFSET,
            virt_base: image_virt,
        },
        tsc_at_entry,
    })
}

/// Reads the information structure through the identity map of the boot page tables, validating
/// its size before taking a slice of it.
fn read_info(phys: u64) -> Result<bootinfo::BootInfo, multiboot2::Mb2Error> {
    if phys == 0 || !phys.is_multiple_of(8) {
        return Err(multiboot2::Mb2Error::Misaligned);
    }
    // The boot tables map 0..4 GiB at offset 0 (see `direct::set_window` defaults).
    let header = direct::bytes(phys, 8).ok_or(multiboot2::Mb2Error::TooShort)?;
    let size = multiboot2::total_size(header)?;
    let whole = direct::bytes(phys, size).ok_or(multiboot2::Mb2Error::TooShort)?;
    multiboot2::parse_at(whole, phys)
}
