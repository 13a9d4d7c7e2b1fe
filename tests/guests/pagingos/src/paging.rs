//! 4-level page tables: the kernel's identity map (shared by every address space through PML4
//! entry 0) and user address spaces (PML4 entries 1-255) with demand-zero pages, copy-on-write
//! fork and teardown.
//!
//! Page tables are frames reached through the identity map; entries are read and written with
//! volatile accesses (the MMU reads them behind the compiler's back).

use crate::arch;
use crate::frames::{Frames, PAGE};

pub const P: u64 = 1 << 0;
pub const W: u64 = 1 << 1;
pub const U: u64 = 1 << 2;
pub const PS: u64 = 1 << 7;
pub const G: u64 = 1 << 8;
/// Software bit: a read-only user page that is copy-on-write.
pub const COW: u64 = 1 << 9;
pub const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// The first and last-plus-one PML4 slots of user space (PML4 slot 0 is the kernel's).
const USER_PML4_FIRST: usize = 1;
const USER_PML4_END: usize = 256;
/// The lowest and highest-plus-one user virtual addresses.
pub const USER_START: u64 = (USER_PML4_FIRST as u64) << 39;
pub const USER_END: u64 = (USER_PML4_END as u64) << 39;

/// Entry `i` of the table at physical `table`.
pub fn read(table: u64, i: usize) -> u64 {
    debug_assert!(i < 512);
    // SAFETY: page tables are identity-mapped frames owned by the kernel; `i` is in range.
    unsafe { ((table as *const u64).add(i)).read_volatile() }
}

/// Writes entry `i` of the table at physical `table`; the caller flushes the TLB.
pub fn write(table: u64, i: usize, value: u64) {
    debug_assert!(i < 512);
    // SAFETY: as for `read`; the caller keeps the tables consistent and flushes the TLB.
    unsafe { ((table as *mut u64).add(i)).write_volatile(value) }
}

fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) & 511) as usize
}

/// Builds the kernel's address space: PML4 entry 0 → one PDPT → one page directory of global,
/// writable 2 MiB pages identity-mapping `0..ram_top` (at most 1 GiB); nothing else. Returns
/// the PML4.
pub fn kernel_space(frames: &mut Frames, ram_top: u64) -> u64 {
    let pml4 = frames.alloc_zeroed();
    let pdpt = frames.alloc_zeroed();
    let pd = frames.alloc_zeroed();
    let large = 2 << 20;
    let count = ram_top.div_ceil(large).min(512) as usize;
    for i in 0..count {
        write(pd, i, (i as u64 * large) | P | W | PS | G);
    }
    write(pdpt, 0, pd | P | W);
    write(pml4, 0, pdpt | P | W);
    pml4
}

/// A new, empty user address space sharing the kernel's half of `kernel_pml4`.
pub fn new_space(frames: &mut Frames, kernel_pml4: u64) -> u64 {
    let pml4 = frames.alloc_zeroed();
    write(pml4, 0, read(kernel_pml4, 0));
    pml4
}

/// The physical address of the leaf entry for user address `va`, creating the intermediate
/// tables when `create` (else `None` where one is missing).
pub fn walk(frames: &mut Frames, pml4: u64, va: u64, create: bool) -> Option<*mut u64> {
    debug_assert!((USER_START..USER_END).contains(&va));
    let mut table = pml4;
    for level in (2..=4).rev() {
        let i = index(va, level);
        let entry = read(table, i);
        table = if entry & P != 0 {
            entry & ADDR
        } else if create {
            let next = frames.alloc_zeroed();
            write(table, i, next | P | W | U);
            next
        } else {
            return None;
        };
    }
    Some((table as *mut u64).wrapping_add(index(va, 1)))
}

/// Reads a leaf entry found by [`walk`].
pub fn get(pte: *mut u64) -> u64 {
    // SAFETY: `walk` returns a pointer into an identity-mapped page table.
    unsafe { pte.read_volatile() }
}

/// Writes a leaf entry found by [`walk`]; the caller flushes the TLB.
pub fn set(pte: *mut u64, value: u64) {
    // SAFETY: as for `get`.
    unsafe { pte.write_volatile(value) }
}

/// Copies the user half of the address space `parent` into a new one for a child
/// (copy-on-write): tables are copied, leaf frames are shared and gain a reference, and every
/// writable leaf becomes read-only + [`COW`] in both. The caller must flush the parent's TLB
/// (its writable entries changed). Returns the child's PML4.
pub fn fork(frames: &mut Frames, kernel_pml4: u64, parent: u64) -> u64 {
    let child = new_space(frames, kernel_pml4);
    copy_level(frames, 4, parent, child, USER_PML4_FIRST..USER_PML4_END);
    child
}

fn copy_level(frames: &mut Frames, level: u32, src: u64, dst: u64, range: core::ops::Range<usize>) {
    for i in range {
        let mut entry = read(src, i);
        if entry & P == 0 {
            continue;
        }
        if level > 1 {
            let table = frames.alloc_zeroed();
            copy_level(frames, level - 1, entry & ADDR, table, 0..512);
            write(dst, i, table | (entry & !ADDR));
        } else {
            if entry & W != 0 {
                entry = (entry & !W) | COW;
                write(src, i, entry);
            }
            frames.get(entry & ADDR);
            write(dst, i, entry);
        }
    }
}

/// Frees the user half of `pml4` (dropping a reference to every mapped frame, freeing every
/// table) and the PML4 itself. `pml4` must not be loaded in CR3.
pub fn teardown(frames: &mut Frames, pml4: u64) {
    debug_assert_ne!(arch::read_cr3() & ADDR, pml4);
    free_level(frames, 4, pml4, USER_PML4_FIRST..USER_PML4_END);
    frames.release(pml4);
}

fn free_level(frames: &mut Frames, level: u32, table: u64, range: core::ops::Range<usize>) {
    for i in range {
        let entry = read(table, i);
        if entry & P == 0 {
            continue;
        }
        if level > 1 {
            free_level(frames, level - 1, entry & ADDR, 0..512);
            frames.release(entry & ADDR);
        } else {
            frames.put(entry & ADDR);
        }
    }
}

/// Counts the tables (PML4 excluded) of the user half of `pml4`, per level: [PT, PD, PDPT].
pub fn count_tables(pml4: u64) -> [u64; 3] {
    let mut counts = [0; 3];
    count_level(4, pml4, USER_PML4_FIRST..USER_PML4_END, &mut counts);
    counts
}

fn count_level(level: u32, table: u64, range: core::ops::Range<usize>, counts: &mut [u64; 3]) {
    for i in range {
        let entry = read(table, i);
        if entry & P != 0 && level > 1 {
            counts[level as usize - 2] += 1;
            count_level(level - 1, entry & ADDR, 0..512, counts);
        }
    }
}

/// Unmaps `va` in the current address space `pml4`: clears its entry, flushes it with INVLPG
/// and drops the frame's reference. Returns whether a page was mapped there. Page tables stay.
pub fn unmap(frames: &mut Frames, pml4: u64, va: u64) -> bool {
    let Some(pte) = walk(frames, pml4, va, false) else {
        return false;
    };
    let entry = get(pte);
    if entry & P == 0 {
        return false;
    }
    set(pte, 0);
    arch::invlpg(va);
    frames.put(entry & ADDR);
    true
}

/// Copies a page of physical memory.
pub fn copy_frame(from: u64, to: u64) {
    // SAFETY: both are identity-mapped frames; `to` was just allocated, so they do not overlap.
    unsafe { core::ptr::copy_nonoverlapping(from as *const u8, to as *mut u8, PAGE as usize) }
}
