//! Init's memory: the pool of free pages (`abi::boot::sel::FREE_MEMORY`) handed out front to
//! back, and scratch windows in init's own address space through which it fills pages before
//! mapping them into a server.

use abi::boot::sel::FREE_MEMORY;
use abi::{Rights, Sel};
use rt::mem::Mapping;
use rt::{syscall, Error};

use crate::PAGE;

/// Where init's scratch windows start: far above its image, stack, boot page and modules.
const SCRATCH_BASE: u64 = 0x0000_0010_0000_0000;

/// The free-page pool and the scratch address space.
pub struct Memory {
    next_page: u64,
    pages: u64,
    next_scratch: u64,
}

/// Why memory could not be provided.
#[derive(Clone, Copy, Debug)]
pub enum MemoryError {
    /// The pool has fewer pages left than asked for.
    PoolExhausted { wanted: u64, left: u64 },
    /// A syscall was refused.
    Sys(&'static str, Error),
}

impl core::fmt::Display for MemoryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MemoryError::PoolExhausted { wanted, left } => {
                write!(
                    f,
                    "free memory exhausted ({wanted} pages wanted, {left} left)"
                )
            }
            MemoryError::Sys(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl Memory {
    /// The pool of `pages` pages that the boot page announces.
    pub fn new(pages: u64) -> Memory {
        Memory {
            next_page: 0,
            pages,
            next_scratch: SCRATCH_BASE,
        }
    }

    /// Pages of the pool not handed out yet.
    pub fn left(&self) -> u64 {
        self.pages - self.next_page
    }

    /// Carves the next `pages` pages of the pool into a memory capability at `dest`.
    pub fn take(&mut self, dest: Sel, pages: u64) -> Result<(), MemoryError> {
        let left = self.pages - self.next_page;
        if pages > left {
            return Err(MemoryError::PoolExhausted {
                wanted: pages,
                left,
            });
        }
        syscall::carve(FREE_MEMORY, dest, self.next_page, pages)
            .map_err(|e| MemoryError::Sys("carve", e))?;
        self.next_page += pages;
        Ok(())
    }

    /// Maps all `pages` pages of memory capability `mem` into init at a fresh scratch address,
    /// zeroes them and returns them. Scratch addresses are never reused (there is no unmap), and
    /// a guard page separates windows.
    pub fn scratch(&mut self, mem: Sel, pages: u64) -> Result<&'static mut [u8], MemoryError> {
        let len = pages
            .checked_mul(PAGE)
            .filter(|&len| usize::try_from(len).is_ok())
            .ok_or(MemoryError::Sys(
                "scratch",
                Error::Kernel(abi::Status::BadArgument),
            ))?;
        let addr = self.next_scratch;
        let mapping = Mapping::new(mem, addr, 0, pages, Rights::READ | Rights::WRITE)
            .map_err(|e| MemoryError::Sys("map scratch", e))?;
        self.next_scratch = addr + len + PAGE;
        // A writable mapping always leaks as writable.
        let window = mapping
            .leak_mut()
            .map_err(|_| MemoryError::Sys("map scratch", Error::Protocol))?;
        window.fill(0);
        Ok(window)
    }
}
