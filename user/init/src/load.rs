//! Loading a server's ELF into its protection domain.
//!
//! Every server gets the same layout as init: its segments where the ELF says (`user/link.ld`:
//! from 0x400000), a stack of the manifest's `memory_pages` pages below [`STACK_TOP`], an
//! unmapped guard page above it, and its UTCB page at [`UTCB_ADDR`]. The pages come from one
//! memory capability carved from the free pool; init fills them through a scratch window (file
//! bytes copied, the rest zero), then maps each segment with the rights its flags ask for (READ,
//! plus WRITE or EXEC, never both: `uelf` refuses W+X segments).

use abi::{Rights, Sel};
use rt::{syscall, Error};

use crate::memory::{Memory, MemoryError};
use crate::PAGE;

/// Top of every server's stack (as for init, `abi::boot::INIT_STACK_TOP`).
pub const STACK_TOP: u64 = abi::boot::INIT_STACK_TOP;
/// Every server's UTCB page (as for init, `abi::boot::INIT_UTCB_ADDR`).
pub const UTCB_ADDR: u64 = abi::boot::INIT_UTCB_ADDR;

/// Why a server could not be loaded.
#[derive(Clone, Copy, Debug)]
pub enum LoadError {
    Elf(uelf::Error),
    /// The segments reach into the stack, its guard page or the UTCB.
    Layout,
    /// The stack does not fit below [`STACK_TOP`].
    StackTooLarge,
    Memory(MemoryError),
    Map(Error),
}

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LoadError::Elf(e) => write!(f, "bad ELF: {e}"),
            LoadError::Layout => f.write_str("segments overlap the stack or UTCB"),
            LoadError::StackTooLarge => f.write_str("stack does not fit below its top"),
            LoadError::Memory(e) => write!(f, "{e}"),
            LoadError::Map(e) => write!(f, "map: {e}"),
        }
    }
}

impl From<MemoryError> for LoadError {
    fn from(e: MemoryError) -> Self {
        LoadError::Memory(e)
    }
}

/// A loaded server.
pub struct Loaded {
    pub entry: u64,
    /// Pages taken from the pool.
    pub pages: u64,
}

/// Loads the ELF `bytes` into domain `pd` with `stack_pages` of stack; the pages are carved
/// into a memory capability at `mem_sel`.
pub fn load(
    memory: &mut Memory,
    bytes: &[u8],
    pd: Sel,
    mem_sel: Sel,
    stack_pages: u64,
) -> Result<Loaded, LoadError> {
    let image = uelf::parse(bytes).map_err(LoadError::Elf)?;
    let stack_base = stack_pages
        .checked_mul(PAGE)
        .and_then(|len| STACK_TOP.checked_sub(len))
        .filter(|&base| base >= PAGE)
        .ok_or(LoadError::StackTooLarge)?;
    if image.overlaps(stack_base - PAGE, UTCB_ADDR + PAGE) {
        return Err(LoadError::Layout);
    }
    let total = image.pages() + stack_pages + 1;
    memory.take(mem_sel, total)?;
    let window = memory.scratch(mem_sel, total)?;

    let mut cursor = 0;
    for segment in image.segments() {
        let file = image.file_bytes(segment);
        let at = cursor * PAGE + segment.offset_in_page();
        let dest = usize::try_from(at)
            .ok()
            .and_then(|at| window.get_mut(at..at.checked_add(file.len())?))
            .ok_or(LoadError::Layout)?;
        dest.copy_from_slice(file);
        let mut rights = Rights::READ;
        if segment.perms.write {
            rights = rights | Rights::WRITE;
        }
        if segment.perms.exec {
            rights = rights | Rights::EXEC;
        }
        syscall::map(
            mem_sel,
            pd,
            segment.page_start(),
            cursor,
            segment.pages(),
            rights,
        )
        .map_err(LoadError::Map)?;
        cursor += segment.pages();
    }
    let rw = Rights::READ | Rights::WRITE;
    syscall::map(mem_sel, pd, stack_base, cursor, stack_pages, rw).map_err(LoadError::Map)?;
    cursor += stack_pages;
    syscall::map(mem_sel, pd, UTCB_ADDR, cursor, 1, rw).map_err(LoadError::Map)?;
    Ok(Loaded {
        entry: image.entry(),
        pages: total,
    })
}
