//! The scratch memory (the manifest's `scratch`), mapped read/write at [`SCRATCH_VA`]: pages the
//! experiments carve sub-capabilities from, map into Vms and into this server again, and read
//! back. Every access goes through volatile byte copies, because the kernel (`VmPatch`, IPC into
//! a UTCB) may write these pages behind the compiler's back (the accesses themselves are in
//! [`crate::raw`]).

use abi::{well_known, Rights};
use alloc::format;
use alloc::string::String;
use rt::syscall;

use crate::SCRATCH;

pub use abi::PAGE_SIZE as PAGE;
/// Pages of scratch memory the experiments use (the manifest gives at least this many).
pub const SCRATCH_PAGES: u64 = 16;
/// Where the scratch memory is mapped (far above the program, heap, stack and UTCB).
pub const SCRATCH_VA: u64 = 0x10_0000_0000;
/// A free region for second mappings of scratch pages.
pub const ALIAS_VA: u64 = 0x20_0000_0000;

/// Scratch pages by use.
pub mod page {
    /// The guest code of the unconfined experiments (shadow Vms).
    pub const CODE: u64 = 0;
    /// The data page nested vCPUs fetch from (mapped without EXEC, at 0x7000).
    pub const NESTED: u64 = 1;
    /// patch-readonly: the read-only page and the control page.
    pub const READONLY: u64 = 2;
    pub const WRITABLE: u64 = 3;
    /// utcb-after-revoke.
    pub const UTCB: u64 = 4;
    /// syscall-garbage-vm: the only page the garbage may map.
    pub const GARBAGE: u64 = 5;
    /// vmmap-remap-quota.
    pub const REMAP: u64 = 6;
    /// map-reduced-rights.
    pub const REDUCED: u64 = 7;
}

/// Maps all scratch pages read/write at [`SCRATCH_VA`].
pub fn map_scratch() -> Result<(), String> {
    syscall::map(
        SCRATCH,
        well_known::SELF_PD,
        SCRATCH_VA,
        0,
        SCRATCH_PAGES,
        Rights::READ | Rights::WRITE,
    )
    .map_err(|e| format!("map {SCRATCH_PAGES} scratch pages: {e}"))
}

fn addr(page: u64, offset: usize) -> usize {
    assert!(page < SCRATCH_PAGES && offset < PAGE as usize);
    (SCRATCH_VA + page * PAGE) as usize + offset
}

/// Writes `bytes` at `offset` of scratch page `page` (within the page).
pub fn write(page: u64, offset: usize, bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        crate::raw::write_scratch(addr(page, offset + i), *b);
    }
}

/// Reads byte `offset` of scratch page `page`.
pub fn read(page: u64, offset: usize) -> u8 {
    crate::raw::read_scratch(addr(page, offset))
}

/// Fills scratch page `page` with `byte`.
pub fn fill(page: u64, byte: u8) {
    for offset in 0..PAGE as usize {
        write(page, offset, &[byte]);
    }
}

/// How many bytes of scratch page `page` differ from `byte`, and the first such offset.
pub fn differ(page: u64, byte: u8) -> (usize, Option<usize>) {
    let mut count = 0;
    let mut first = None;
    for offset in 0..PAGE as usize {
        if read(page, offset) != byte {
            count += 1;
            first.get_or_insert(offset);
        }
    }
    (count, first)
}

/// Reads byte `offset` of a page mapped at user address `va` by an experiment.
pub fn read_at(va: u64) -> u8 {
    crate::raw::read_at(va)
}
