//! The Multiboot 2 information structure (Multiboot2 specification 2.0, section 3.6): a
//! `total_size`, then 8-byte-aligned tags `type, size, payload` up to an end tag (type 0).
//! grt reads the command line (1), boot-loader name (2), basic memory information (4) and memory
//! map (6); a tag that would cross `total_size` ends the walk.

use crate::boot::{c_str, read_u32, read_u64, Region};

const TAG_END: u32 = 0;
const TAG_CMDLINE: u32 = 1;
const TAG_LOADER_NAME: u32 = 2;
const TAG_BASIC_MEMINFO: u32 = 4;
const TAG_MMAP: u32 = 6;
/// Largest structure walked.
const MAX_TOTAL: u32 = 1 << 20;

/// The information structure at a physical address (identity-mapped).
#[derive(Clone, Copy, Debug)]
pub struct Info {
    addr: u64,
}

/// One tag: its type, the address of its payload (after `type` and `size`) and the payload's
/// length.
#[derive(Clone, Copy, Debug)]
pub struct Tag {
    pub kind: u32,
    pub payload: u64,
    pub len: u32,
}

impl Info {
    /// The structure at `addr`, as the loader passed it in EBX. Reads trust the loader to have
    /// placed it in RAM; tag sizes are checked against `total_size`.
    pub fn new(addr: u64) -> Self {
        Self { addr }
    }

    /// The physical address of the structure.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// `total_size`, capped.
    pub fn total_size(&self) -> u32 {
        // SAFETY: the structure starts with its 8-byte header.
        unsafe { read_u32(self.addr) }.min(MAX_TOTAL)
    }

    /// The first tag of type `kind`.
    pub fn find(&self, kind: u32) -> Option<Tag> {
        let mut found = None;
        self.for_each_tag(|tag| {
            if found.is_none() && tag.kind == kind {
                found = Some(tag);
            }
        });
        found
    }

    /// Calls `f` for every tag before the end tag.
    pub fn for_each_tag(&self, mut f: impl FnMut(Tag)) {
        let total = self.total_size();
        let mut offset: u32 = 8;
        while offset.saturating_add(8) <= total {
            // SAFETY: the tag header lies within `total_size`.
            let (kind, size) = unsafe {
                (
                    read_u32(self.addr + u64::from(offset)),
                    read_u32(self.addr + u64::from(offset) + 4),
                )
            };
            if kind == TAG_END || size < 8 || offset.saturating_add(size) > total {
                break;
            }
            f(Tag {
                kind,
                payload: self.addr + u64::from(offset) + 8,
                len: size - 8,
            });
            offset = offset.saturating_add(size.saturating_add(7) & !7);
        }
    }

    fn string_tag(&self, kind: u32) -> Option<&'static str> {
        let tag = self.find(kind)?;
        // SAFETY: the payload lies within the structure; the string ends within it.
        unsafe { c_str(tag.payload, tag.len as usize) }
    }

    /// The command line (tag 1).
    pub fn cmdline(&self) -> Option<&'static str> {
        self.string_tag(TAG_CMDLINE)
    }

    /// The boot loader's name (tag 2).
    pub fn loader_name(&self) -> Option<&'static str> {
        self.string_tag(TAG_LOADER_NAME)
    }

    /// `mem_lower` and `mem_upper` in KiB (tag 4).
    pub fn basic_memory(&self) -> Option<(u32, u32)> {
        let tag = self.find(TAG_BASIC_MEMINFO)?;
        if tag.len < 8 {
            return None;
        }
        // SAFETY: the 8-byte payload lies within the structure.
        Some(unsafe { (read_u32(tag.payload), read_u32(tag.payload + 4)) })
    }

    /// Calls `f` for each memory-map entry (tag 6); `false` without a memory map.
    pub fn for_each_region(&self, mut f: impl FnMut(Region)) -> bool {
        let Some(tag) = self.find(TAG_MMAP) else {
            return false;
        };
        if tag.len < 8 {
            return false;
        }
        // SAFETY: the 8-byte payload header lies within the structure.
        let entry_size = unsafe { read_u32(tag.payload) };
        if entry_size < 24 {
            return false;
        }
        let mut offset = 8;
        while offset + entry_size <= tag.len {
            let entry = tag.payload + u64::from(offset);
            // SAFETY: the entry lies within the tag.
            let region = unsafe {
                Region {
                    base: read_u64(entry),
                    len: read_u64(entry + 8),
                    kind: read_u32(entry + 16),
                }
            };
            f(region);
            offset += entry_size;
        }
        true
    }
}
