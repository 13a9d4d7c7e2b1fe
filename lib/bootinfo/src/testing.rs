//! Builds Multiboot2 boot information images for tests (feature `builder`).
//!
//! The builder writes well-formed images; tests corrupt them afterwards to check the parser:
//! `Mb2Builder::new().add_cmdline("console=com1").add_mmap(&[MmapEntry::usable(0, 0xa0000)]).end()`
//! gives the bytes of a structure that `multiboot2::parse` accepts.

use alloc::vec::Vec;

/// Multiboot2 memory map type for available RAM.
pub const MMAP_AVAILABLE: u32 = 1;
/// Multiboot2 memory map type for reserved memory.
pub const MMAP_RESERVED: u32 = 2;
/// Multiboot2 memory map type for ACPI reclaimable memory.
pub const MMAP_ACPI_RECLAIMABLE: u32 = 3;
/// Multiboot2 memory map type for ACPI NVS memory.
pub const MMAP_NVS: u32 = 4;
/// Multiboot2 memory map type for defective RAM.
pub const MMAP_BAD: u32 = 5;

/// One Multiboot2 memory map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmapEntry {
    pub base: u64,
    pub len: u64,
    pub ty: u32,
}

impl MmapEntry {
    /// Available RAM.
    pub const fn usable(base: u64, len: u64) -> Self {
        Self {
            base,
            len,
            ty: MMAP_AVAILABLE,
        }
    }

    /// Reserved memory.
    pub const fn reserved(base: u64, len: u64) -> Self {
        Self {
            base,
            len,
            ty: MMAP_RESERVED,
        }
    }
}

/// Accumulates tags into a boot information image.
#[derive(Clone, Debug)]
pub struct Mb2Builder {
    buf: Vec<u8>,
}

impl Default for Mb2Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Mb2Builder {
    /// An image with only the 8-byte header (total size filled in by [`Mb2Builder::end`]).
    pub fn new() -> Self {
        Self {
            buf: alloc::vec![0; 8],
        }
    }

    /// Appends a tag with the given type and payload; `size` is set to 8 + payload length and
    /// the image is padded to the next 8-byte boundary.
    pub fn add_tag(self, ty: u32, payload: &[u8]) -> Self {
        let size = u32::try_from(payload.len() + 8).expect("test tag too large");
        self.add_raw_tag(ty, size, payload)
    }

    /// Appends a tag whose `size` field says `size`, whatever the payload's real length.
    pub fn add_raw_tag(mut self, ty: u32, size: u32, payload: &[u8]) -> Self {
        self.buf.extend_from_slice(&ty.to_le_bytes());
        self.buf.extend_from_slice(&size.to_le_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    /// Appends a command line tag (type 1).
    pub fn add_cmdline(self, s: &str) -> Self {
        self.add_tag(1, &c_string(s.as_bytes()))
    }

    /// Appends a boot loader name tag (type 2).
    pub fn add_bootloader_name(self, s: &str) -> Self {
        self.add_tag(2, &c_string(s.as_bytes()))
    }

    /// Appends a module tag (type 3) for `[start, end)` with the given command line.
    pub fn add_module(self, start: u32, end: u32, name: &str) -> Self {
        let mut payload = Vec::new();
        payload.extend_from_slice(&start.to_le_bytes());
        payload.extend_from_slice(&end.to_le_bytes());
        payload.extend_from_slice(&c_string(name.as_bytes()));
        self.add_tag(3, &payload)
    }

    /// Appends a memory map tag (type 6) with 24-byte entries.
    pub fn add_mmap(self, entries: &[MmapEntry]) -> Self {
        self.add_mmap_with_entry_size(24, entries)
    }

    /// Appends a memory map tag whose entries are `entry_size` bytes (zero-padded past 24; cut
    /// short if `entry_size` is below 24, to build bad images).
    pub fn add_mmap_with_entry_size(self, entry_size: u32, entries: &[MmapEntry]) -> Self {
        let mut payload = Vec::new();
        payload.extend_from_slice(&entry_size.to_le_bytes());
        payload.extend_from_slice(&0u32.to_le_bytes());
        for e in entries {
            let mut raw = Vec::new();
            raw.extend_from_slice(&e.base.to_le_bytes());
            raw.extend_from_slice(&e.len.to_le_bytes());
            raw.extend_from_slice(&e.ty.to_le_bytes());
            raw.resize(entry_size as usize, 0);
            payload.extend_from_slice(&raw);
        }
        self.add_tag(6, &payload)
    }

    /// Appends an ACPI RSDP tag: type 15 if `new`, else type 14, carrying `rsdp` verbatim.
    pub fn add_rsdp(self, new: bool, rsdp: &[u8]) -> Self {
        self.add_tag(if new { 15 } else { 14 }, rsdp)
    }

    /// Appends the end tag and fills in the total size.
    pub fn end(self) -> Vec<u8> {
        self.add_tag(0, &[]).finish_without_end()
    }

    /// Fills in the total size without appending an end tag.
    pub fn finish_without_end(mut self) -> Vec<u8> {
        let total = u32::try_from(self.buf.len()).expect("test image too large");
        self.buf[..4].copy_from_slice(&total.to_le_bytes());
        self.buf
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(8) {
            self.buf.push(0);
        }
    }
}

fn c_string(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.push(0);
    v
}
