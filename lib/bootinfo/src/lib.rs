//! The one description of the machine that the kernel gets at boot, whichever way it was booted.
//!
//! The kernel can be started by Limine (native protocol) or by GRUB (Multiboot2). Both boot paths
//! turn what their loader handed over into a [`BootInfo`], so everything after the entry stub
//! reads one type and never knows which loader ran. The type is fixed-size (`heapless`): it is
//! built before the kernel has a heap. Whatever does not fit is dropped and recorded in
//! [`BootInfo::truncated`] instead of failing the boot.
//!
//! [`multiboot2`] parses a Multiboot2 boot information structure from bytes. The bytes are
//! untrusted: every size and offset is checked, and bad input gives an [`multiboot2::Mb2Error`],
//! never a panic. The Limine path fills a `BootInfo` directly from the `limine` crate's responses.
//!
//! The crate has no `unsafe` code and is tested on the host (`cargo test -p bootinfo`).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

#[cfg(any(test, feature = "builder"))]
extern crate alloc;

pub mod multiboot2;
#[cfg(any(test, feature = "builder"))]
pub mod testing;

/// Most memory-map entries a [`BootInfo`] keeps.
pub const MAX_REGIONS: usize = 128;
/// Most boot modules a [`BootInfo`] keeps.
pub const MAX_MODULES: usize = 16;
/// Longest kernel command line kept, in bytes.
pub const MAX_CMDLINE: usize = 256;
/// Longest module name kept, in bytes.
pub const MAX_NAME: usize = 128;
/// Longest boot loader name kept, in bytes.
pub const MAX_BOOTLOADER: usize = 64;

/// What a region of the physical memory map holds, as far as the boot loader knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// Free RAM.
    Usable,
    /// Not RAM, or RAM that must not be touched.
    Reserved,
    /// ACPI tables; RAM again once they have been read.
    AcpiReclaimable,
    /// ACPI non-volatile storage; never to be used.
    AcpiNvs,
    /// RAM reported as defective.
    BadMemory,
    /// RAM holding loader data (page tables, responses); free once boot information is copied.
    BootloaderReclaimable,
    /// The kernel image and the boot modules.
    KernelAndModules,
    /// The boot framebuffer.
    Framebuffer,
}

/// One entry of the physical memory map, as the loader reported it (not normalised: entries may
/// overlap, be unaligned or be empty; `mem::map` sorts that out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Physical start address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// What the region holds.
    pub kind: RegionKind,
}

/// A file the loader placed in physical memory next to the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Physical start address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// The module's command line or path, truncated at a char boundary if too long.
    pub name: heapless::String<MAX_NAME>,
}

/// Which boot path produced a [`BootInfo`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// Limine native protocol.
    Limine,
    /// Multiboot2 (GRUB, or Limine's Multiboot2 support).
    Multiboot2,
}

/// Everything the kernel needs from its boot loader.
#[derive(Clone, Debug)]
pub struct BootInfo {
    /// How we were booted.
    pub protocol: BootProtocol,
    /// The boot loader's name, if it gave one.
    pub bootloader: heapless::String<MAX_BOOTLOADER>,
    /// The kernel command line (empty if none).
    pub cmdline: heapless::String<MAX_CMDLINE>,
    /// The physical memory map, in the loader's order.
    pub memory_map: heapless::Vec<MemoryRegion, MAX_REGIONS>,
    /// Boot modules, in the loader's order.
    pub modules: heapless::Vec<Module, MAX_MODULES>,
    /// Physical address of the ACPI RSDP, if known.
    pub rsdp: Option<u64>,
    /// Set when something did not fit: memory regions, modules or strings were dropped or cut.
    pub truncated: bool,
}

impl BootInfo {
    /// An empty description for the given boot path.
    pub const fn new(protocol: BootProtocol) -> Self {
        Self {
            protocol,
            bootloader: heapless::String::new(),
            cmdline: heapless::String::new(),
            memory_map: heapless::Vec::new(),
            modules: heapless::Vec::new(),
            rsdp: None,
            truncated: false,
        }
    }

    /// Appends a memory region; if the map is full, drops it and sets `truncated`.
    pub fn push_region(&mut self, r: MemoryRegion) {
        if self.memory_map.push(r).is_err() {
            self.truncated = true;
        }
    }

    /// Appends a module; if the list is full, drops it and sets `truncated`. A name longer than
    /// [`MAX_NAME`] is cut at a char boundary and sets `truncated`.
    pub fn push_module(&mut self, start: u64, len: u64, name: &str) {
        let mut module = Module {
            start,
            len,
            name: heapless::String::new(),
        };
        if !push_truncating(&mut module.name, name) {
            self.truncated = true;
        }
        if self.modules.push(module).is_err() {
            self.truncated = true;
        }
    }

    /// Replaces the command line; a line longer than [`MAX_CMDLINE`] is cut at a char boundary
    /// and sets `truncated`.
    pub fn set_cmdline(&mut self, s: &str) {
        self.cmdline.clear();
        if !push_truncating(&mut self.cmdline, s) {
            self.truncated = true;
        }
    }

    /// Replaces the boot loader name; a name longer than [`MAX_BOOTLOADER`] is cut at a char
    /// boundary and sets `truncated`.
    pub fn set_bootloader(&mut self, s: &str) {
        self.bootloader.clear();
        if !push_truncating(&mut self.bootloader, s) {
            self.truncated = true;
        }
    }
}

/// Appends as much of `s` to `dst` as fits, cutting at a char boundary. Returns `false` if
/// anything was cut.
pub fn push_truncating<const N: usize>(dst: &mut heapless::String<N>, s: &str) -> bool {
    let room = N.saturating_sub(dst.len());
    let mut end = room.min(s.len());
    while !s.is_char_boundary(end) {
        // Terminates: index 0 is always a char boundary.
        end -= 1;
    }
    let head = s.get(..end).unwrap_or("");
    // Cannot fail: `head` fits in the remaining room.
    let pushed = dst.push_str(head).is_ok();
    pushed && end == s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_truncating_cuts_at_char_boundary() {
        let mut s: heapless::String<5> = heapless::String::new();
        // "aé" is 3 bytes, "ü" is 2: "aéü" is 5 and fits exactly.
        assert!(push_truncating(&mut s, "aéü"));
        assert_eq!(s, "aéü");
        let mut s: heapless::String<4> = heapless::String::new();
        assert!(!push_truncating(&mut s, "aéü"));
        assert_eq!(s, "aé");
        let mut s: heapless::String<3> = heapless::String::new();
        assert!(!push_truncating(&mut s, "€€"));
        assert_eq!(s, "€");
        let mut s: heapless::String<2> = heapless::String::new();
        assert!(!push_truncating(&mut s, "€"));
        assert_eq!(s, "");
    }

    #[test]
    fn push_truncating_appends_to_existing_content() {
        let mut s: heapless::String<4> = heapless::String::new();
        assert!(push_truncating(&mut s, "ab"));
        assert!(!push_truncating(&mut s, "cde"));
        assert_eq!(s, "abcd");
        assert!(!push_truncating(&mut s, "x"));
        assert!(push_truncating(&mut s, ""));
    }

    #[test]
    fn boot_info_helpers_set_truncated() {
        let mut info = BootInfo::new(BootProtocol::Limine);
        info.set_cmdline("console=com1");
        info.set_bootloader("Limine 9.0");
        assert!(!info.truncated);
        assert_eq!(info.cmdline, "console=com1");
        info.set_cmdline("short");
        assert_eq!(info.cmdline, "short");
        for i in 0..MAX_MODULES {
            info.push_module(i as u64 * 0x1000, 0x1000, "m");
        }
        assert!(!info.truncated);
        info.push_module(0, 1, "one too many");
        assert!(info.truncated);
        assert_eq!(info.modules.len(), MAX_MODULES);

        let mut info = BootInfo::new(BootProtocol::Limine);
        let region = MemoryRegion {
            start: 0,
            len: 4096,
            kind: RegionKind::Usable,
        };
        for _ in 0..MAX_REGIONS {
            info.push_region(region);
        }
        assert!(!info.truncated);
        info.push_region(region);
        assert!(info.truncated);
        assert_eq!(info.memory_map.len(), MAX_REGIONS);

        let mut info = BootInfo::new(BootProtocol::Limine);
        let long = "x".repeat(MAX_CMDLINE + 1);
        info.set_cmdline(&long);
        assert!(info.truncated);
        assert_eq!(info.cmdline.len(), MAX_CMDLINE);

        let mut info = BootInfo::new(BootProtocol::Limine);
        info.push_module(0, 1, &"ä".repeat(MAX_NAME));
        assert!(info.truncated);
        assert_eq!(info.modules[0].name.len(), MAX_NAME);
    }
}
