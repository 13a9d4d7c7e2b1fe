//! The Multiboot 1 information structure (Multiboot specification 0.6.96, section 3.3): flags,
//! command line, boot-loader name, memory map. Only fields whose flag bit is set are read.

use crate::boot::{c_str, read_u32, read_u64, Region};

const FLAG_MEMORY: u32 = 1 << 0;
const FLAG_CMDLINE: u32 = 1 << 2;
const FLAG_MMAP: u32 = 1 << 6;
const FLAG_LOADER_NAME: u32 = 1 << 9;
/// Longest string read from the structure.
const MAX_STRING: usize = 4096;
/// Longest memory map walked.
const MAX_MMAP: u32 = 64 * 1024;

/// The information structure at a physical address (identity-mapped).
#[derive(Clone, Copy, Debug)]
pub struct Info {
    addr: u64,
}

impl Info {
    /// The structure at `addr`, as the loader passed it in EBX. Reads trust the loader to have
    /// placed a well-formed structure in RAM; lengths are capped.
    pub fn new(addr: u64) -> Self {
        Self { addr }
    }

    /// The physical address of the structure.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    fn field(&self, offset: u64) -> u32 {
        // SAFETY: the loader's structure is at least 88 bytes long and lies in RAM.
        unsafe { read_u32(self.addr + offset) }
    }

    /// The `flags` word.
    pub fn flags(&self) -> u32 {
        self.field(0)
    }

    /// `mem_lower` and `mem_upper` in KiB, when flag 0 is set.
    pub fn basic_memory(&self) -> Option<(u32, u32)> {
        (self.flags() & FLAG_MEMORY != 0).then(|| (self.field(4), self.field(8)))
    }

    /// The command line, when flag 2 is set.
    pub fn cmdline(&self) -> Option<&'static str> {
        if self.flags() & FLAG_CMDLINE == 0 {
            return None;
        }
        // SAFETY: with flag 2 the loader placed a NUL-terminated string at this address.
        unsafe { c_str(u64::from(self.field(16)), MAX_STRING) }
    }

    /// The boot loader's name, when flag 9 is set.
    pub fn loader_name(&self) -> Option<&'static str> {
        if self.flags() & FLAG_LOADER_NAME == 0 {
            return None;
        }
        // SAFETY: as for `cmdline`.
        unsafe { c_str(u64::from(self.field(64)), MAX_STRING) }
    }

    /// Calls `f` for each memory-map entry; `false` when flag 6 is clear.
    pub fn for_each_region(&self, mut f: impl FnMut(Region)) -> bool {
        if self.flags() & FLAG_MMAP == 0 {
            return false;
        }
        let length = self.field(44).min(MAX_MMAP);
        let base = u64::from(self.field(48));
        let mut offset: u32 = 0;
        // Each entry: size (of the rest), base_addr u64, length u64, type u32.
        while offset.saturating_add(24) <= length {
            let entry = base + u64::from(offset);
            // SAFETY: the entry lies within the map the loader described (checked above).
            let (size, region) = unsafe {
                (
                    read_u32(entry),
                    Region {
                        base: read_u64(entry + 4),
                        len: read_u64(entry + 12),
                        kind: read_u32(entry + 20),
                    },
                )
            };
            f(region);
            if size < 20 {
                break;
            }
            offset = offset.saturating_add(size + 4);
        }
        true
    }
}
