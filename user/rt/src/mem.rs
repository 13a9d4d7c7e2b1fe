//! Fresh mappings of memory capabilities into the caller's own address space, as owned
//! [`Mapping`]s that hand out slices safely.
//!
//! Why a slice over a mapping cannot alias anything else in this program:
//! 1. the kernel's `Map` refuses a range in which any page is already mapped, so a successful
//!    map proves that nothing of this program (image, heap, stacks, UTCB, earlier mappings) lives
//!    in the new range;
//! 2. the runtime claims every range it turns into a [`Mapping`] and never lets a claim start
//!    below the end of an earlier one ([`CLAIMED`]), so even a range that was unmapped (its
//!    capability revoked) and mapped again never becomes a second `Mapping`;
//! 3. a `Mapping` is neither `Clone` nor `Copy`: its slices borrow it, or consume it
//!    ([`Mapping::leak`], [`Mapping::leak_mut`]).
//!
//! Other domains (and a guest, for a VMM's guest RAM) may map the same frames; what they write
//! while this program holds a slice is outside what the runtime can check, as for memory a
//! device writes. The system is composed so that nobody else writes memory while its owner
//! holds a slice over it (init fills a server's pages before the server runs; a VMM loads its
//! guest before the guest's vCPU exists); for memory a guest writes while the program runs,
//! use [`Mapping::read_volatile`] and [`Mapping::write_volatile`].

use core::sync::atomic::{AtomicU64, Ordering};

use abi::{well_known, Rights, Sel, Status, PAGE_SIZE};

use crate::{syscall, Error};

/// The end of the highest range claimed so far; new mappings must start at or above it.
static CLAIMED: AtomicU64 = AtomicU64::new(0);

/// A range of this domain's address space that a memory capability was freshly mapped into and
/// that nothing else in the program refers to (see the module text).
pub struct Mapping {
    addr: u64,
    len: usize,
    writable: bool,
}

impl Mapping {
    /// Maps `pages` pages of memory capability `mem`, from its page `first_page` on, into this
    /// domain at `virt` (page-aligned, at or above the end of every earlier `Mapping`) with
    /// `rights` (READ, optionally WRITE).
    pub fn new(
        mem: Sel,
        virt: u64,
        first_page: u64,
        pages: u64,
        rights: Rights,
    ) -> Result<Mapping, Error> {
        let len = range_len(virt, pages)?;
        if virt < CLAIMED.load(Ordering::Acquire) {
            return Err(Error::Kernel(Status::BadAddress));
        }
        syscall::map(mem, well_known::SELF_PD, virt, first_page, pages, rights)?;
        claim(virt, virt + len)?;
        Ok(Mapping {
            addr: virt,
            len: len as usize,
            writable: rights.contains(Rights::WRITE),
        })
    }

    /// Maps `pages` more pages of `mem` (from its page `first_page`) right after this mapping,
    /// with this mapping's rights, and grows it over them. Fails, changing nothing, where the
    /// kernel refuses or another mapping was made after this one.
    pub fn extend(&mut self, mem: Sel, first_page: u64, pages: u64) -> Result<(), Error> {
        let end = self.addr + self.len as u64;
        let more = range_len(end, pages)?;
        if CLAIMED.load(Ordering::Acquire) != end {
            return Err(Error::Kernel(Status::BadAddress));
        }
        let rights = if self.writable {
            Rights::READ | Rights::WRITE
        } else {
            Rights::READ
        };
        syscall::map(mem, well_known::SELF_PD, end, first_page, pages, rights)?;
        claim(end, end + more)?;
        self.len += more as usize;
        Ok(())
    }

    /// The first address.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: a mapping has at least one page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `addr .. addr + len` is mapped readable in this domain and stays so while
        // the program runs (nothing in it unmaps; a revocation by another domain makes accesses
        // fault, never reach other memory). No `&mut` to it exists outside a borrow of `self`,
        // which this `&self` excludes (module text, points 1-3). The length fits `usize`.
        unsafe { core::slice::from_raw_parts(self.addr as *const u8, self.len) }
    }

    /// The bytes, writable; `None` for a read-only mapping.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if !self.writable {
            return None;
        }
        // SAFETY: as for `as_slice`, and the range is mapped writable (checked above); the
        // `&mut self` borrow makes this the only reference to the range while it lives.
        Some(unsafe { core::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) })
    }

    /// Gives up the mapping for its bytes, for the rest of the program.
    pub fn leak(self) -> &'static [u8] {
        // SAFETY: as for `as_slice`; the `Mapping` is consumed, so no other reference to the
        // range can be made from it, and the claim keeps any later `Mapping` out of the range.
        unsafe { core::slice::from_raw_parts(self.addr as *const u8, self.len) }
    }

    /// Gives up a writable mapping for its bytes, for the rest of the program; hands the
    /// mapping back if it is read-only.
    pub fn leak_mut(self) -> Result<&'static mut [u8], Mapping> {
        if !self.writable {
            return Err(self);
        }
        // SAFETY: as for `leak`, and the range is mapped writable (checked above).
        Ok(unsafe { core::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) })
    }

    /// Copies `out.len()` bytes from `offset` with volatile reads (for memory others write);
    /// false, copying nothing, if the range does not lie inside the mapping.
    pub fn read_volatile(&self, offset: usize, out: &mut [u8]) -> bool {
        if !self.inside(offset, out.len()) {
            return false;
        }
        for (i, byte) in out.iter_mut().enumerate() {
            // SAFETY: `offset + i` lies inside the mapping (checked above), which is mapped
            // readable; a volatile byte read creates no reference the compiler could assume
            // unchanged.
            *byte =
                unsafe { core::ptr::read_volatile((self.addr as usize + offset + i) as *const u8) };
        }
        true
    }

    /// Copies `data` to `offset` with volatile writes (for memory others read); false, writing
    /// nothing, if the range does not lie inside the mapping or the mapping is read-only.
    pub fn write_volatile(&mut self, offset: usize, data: &[u8]) -> bool {
        if !self.writable || !self.inside(offset, data.len()) {
            return false;
        }
        for (i, &byte) in data.iter().enumerate() {
            // SAFETY: `offset + i` lies inside the mapping (checked above), which is mapped
            // writable; `&mut self` excludes any slice of it while the bytes are written.
            unsafe {
                core::ptr::write_volatile((self.addr as usize + offset + i) as *mut u8, byte)
            };
        }
        true
    }

    fn inside(&self, offset: usize, len: usize) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.len)
    }
}

/// The byte length of `pages` pages from `virt`, if page-aligned, non-empty, addressable and
/// below the end of the address space.
fn range_len(virt: u64, pages: u64) -> Result<u64, Error> {
    let len = pages
        .checked_mul(PAGE_SIZE)
        .filter(|&len| len > 0 && usize::try_from(len).is_ok())
        .ok_or(Error::Kernel(Status::BadArgument))?;
    if !virt.is_multiple_of(PAGE_SIZE) || virt.checked_add(len).is_none() {
        return Err(Error::Kernel(Status::BadAddress));
    }
    Ok(len)
}

/// Records `start .. end` as claimed; fails if a claim at or above `start` was made meanwhile.
fn claim(start: u64, end: u64) -> Result<(), Error> {
    CLAIMED
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |floor| {
            (floor <= start).then_some(end)
        })
        .map(drop)
        .map_err(|_| Error::Kernel(Status::BadAddress))
}
