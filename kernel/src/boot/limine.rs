//! Limine boot path (native protocol): requests placed in the image, answered by Limine before it
//! jumps to `limine_entry`. This module checks the base revision and every response it needs,
//! copies them into a [`bootinfo::BootInfo`] and hands over.

use core::arch::global_asm;

use bootinfo::{BootInfo, BootProtocol, MemoryRegion, RegionKind};
use limine::memmap;
use limine::request::{
    BootloaderInfoRequest, ExecutableAddressRequest, ExecutableCmdlineRequest,
    ExecutableFileRequest, HhdmRequest, MemmapRequest, ModulesRequest, RsdpRequest,
};
use limine::{BaseRevision, RequestsEndMarker, RequestsStartMarker};

use super::{Handover, KernelImage};
use crate::arch::power;
use crate::mem::direct;

global_asm!(include_str!("limine_entry.s"));

/// Base revision 2: what Limine 8.x (the newest these machines can build) supports; its HHDM maps
/// all memory-map entries, and the RSDP response is a virtual address.
const BASE_REVISION: u64 = 2;

#[used]
#[link_section = ".requests_start_marker"]
static START_MARKER: RequestsStartMarker = RequestsStartMarker::new();
#[used]
#[link_section = ".requests"]
static BASE: BaseRevision = BaseRevision::with_revision(BASE_REVISION);
#[used]
#[link_section = ".requests"]
static MEMMAP: MemmapRequest = MemmapRequest::new();
#[used]
#[link_section = ".requests"]
static HHDM: HhdmRequest = HhdmRequest::new();
#[used]
#[link_section = ".requests"]
static MODULES: ModulesRequest = ModulesRequest::new();
#[used]
#[link_section = ".requests"]
static CMDLINE: ExecutableCmdlineRequest = ExecutableCmdlineRequest::new();
/// Limine 8.x answers only this one with the command line (the dedicated request is newer).
#[used]
#[link_section = ".requests"]
static EXECUTABLE: ExecutableFileRequest = ExecutableFileRequest::new();
#[used]
#[link_section = ".requests"]
static LOADER: BootloaderInfoRequest = BootloaderInfoRequest::new();
#[used]
#[link_section = ".requests"]
static ADDRESS: ExecutableAddressRequest = ExecutableAddressRequest::new();
#[used]
#[link_section = ".requests"]
static RSDP: RsdpRequest = RsdpRequest::new();
#[used]
#[link_section = ".requests_end_marker"]
static END_MARKER: RequestsEndMarker = RequestsEndMarker::new();

#[no_mangle]
extern "C" fn limine_main() -> ! {
    let tsc_at_entry = crate::arch::cpu::rdtsc();
    crate::klog::init_early();
    if !BASE.is_supported() {
        power::fail(format_args!(
            "limine: base revision {BASE_REVISION} not supported by this bootloader (it offers {:?})",
            BASE.actual_revision()
        ));
    }
    let Some(hhdm) = HHDM.response() else {
        power::fail(format_args!("limine: no higher-half direct map response"));
    };
    let Some(address) = ADDRESS.response() else {
        power::fail(format_args!("limine: no executable address response"));
    };
    let Some(memmap) = MEMMAP.response() else {
        power::fail(format_args!("limine: no memory map response"));
    };
    let phys_offset = hhdm.offset;
    direct::set_window(phys_offset, u64::MAX - phys_offset);

    let mut info = BootInfo::new(BootProtocol::Limine);
    for entry in memmap.entries() {
        info.push_region(MemoryRegion {
            start: entry.base,
            len: entry.length,
            kind: region_kind(entry.type_),
        });
    }
    if let Some(modules) = MODULES.response() {
        for file in modules.modules() {
            let data = file.data();
            let virt = data.as_ptr() as u64;
            let phys = virt.wrapping_sub(phys_offset);
            let name = if file.cmdline().is_empty() {
                file.path()
            } else {
                file.cmdline()
            };
            info.push_module(phys, data.len() as u64, name);
        }
    }
    if let Some(cmdline) = CMDLINE.response() {
        info.set_cmdline(cmdline.cmdline());
    } else if let Some(file) = EXECUTABLE.response() {
        info.set_cmdline(file.executable_file().cmdline());
    }
    if let Some(loader) = LOADER.response() {
        let mut name = heapless::String::<64>::new();
        let _ = core::fmt::write(
            &mut name,
            format_args!("{} {}", loader.name(), loader.version()),
        );
        info.set_bootloader(&name);
    }
    if let Some(rsdp) = RSDP.response() {
        // Base revisions other than 3 report the RSDP through the direct map.
        info.rsdp = Some((rsdp.address as u64).wrapping_sub(phys_offset));
    }
    super::start(Handover {
        info,
        image: KernelImage {
            phys_base: address.physical_base,
            virt_base: address.virtual_base,
        },
        tsc_at_entry,
    })
}

fn region_kind(limine_type: u64) -> RegionKind {
    match limine_type {
        memmap::MEMMAP_USABLE => RegionKind::Usable,
        memmap::MEMMAP_ACPI_RECLAIMABLE => RegionKind::AcpiReclaimable,
        memmap::MEMMAP_ACPI_NVS => RegionKind::AcpiNvs,
        memmap::MEMMAP_BAD_MEMORY => RegionKind::BadMemory,
        memmap::MEMMAP_BOOTLOADER_RECLAIMABLE => RegionKind::BootloaderReclaimable,
        memmap::MEMMAP_EXECUTABLE_AND_MODULES => RegionKind::KernelAndModules,
        memmap::MEMMAP_FRAMEBUFFER => RegionKind::Framebuffer,
        _ => RegionKind::Reserved,
    }
}
