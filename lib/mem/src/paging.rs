//! x86-64 4-level page tables, built and walked through an abstract table memory.
//!
//! The code never dereferences a pointer: it reads and writes table entries through
//! [`TableMemory`], which the kernel implements over its direct map and tests implement over a
//! map of arrays. It does not flush TLBs either; after [`AddressSpace::unmap`] or a permission
//! change the kernel must invalidate the address itself.
//!
//! Policy:
//! - W^X: a mapping is never both writable and executable.
//! - Intermediate entries are present, writable and executable, and user when the leaf below
//!   is user (an existing intermediate gains the user bit when a user leaf is mapped under it);
//!   the leaf decides the access rights. [`Translation::flags`] reports what the CPU enforces,
//!   combining every level.
//! - A map either happens completely or not at all: tables are allocated before anything is
//!   written, and the leaf is written before the new tables are linked in, so a concurrent
//!   walker sees no half-built path. [`AddressSpace::map_range`] undoes the pages it mapped if
//!   a later one fails (tables it created stay, empty).
//! - Unmapping leaves empty tables in place.

use core::fmt;

mod access;
pub use access::{check_access, Access, AccessFault, AccessKind, Controls};

/// Entries per table.
const ENTRIES: usize = 512;
/// Page-table levels: PML4 = 4, PDPT = 3, PD = 2, PT = 1.
const LEVELS: usize = 4;
/// Physical addresses are below this (52-bit physical address space).
pub const MAX_PHYS: u64 = 1 << 52;
/// The address bits of an entry.
const ADDR_MASK: u64 = (MAX_PHYS - 1) & !0xfff;

bitfield::bitfield! {
    /// A page-table entry at any level.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub struct Pte(pub u64);
    impl Debug;
    /// P: the entry is valid.
    pub present, set_present: 0;
    /// R/W: writes allowed (supervisor writes also need CR0.WP clear otherwise).
    pub writable, set_writable: 1;
    /// U/S: user-mode accesses allowed.
    pub user, set_user: 2;
    /// PWT.
    pub write_through, set_write_through: 3;
    /// PCD.
    pub cache_disable, set_cache_disable: 4;
    /// A: set by the CPU on access.
    pub accessed, set_accessed: 5;
    /// D: set by the CPU on write (leaves only).
    pub dirty, set_dirty: 6;
    /// PS: in a PDPT or PD entry, the entry maps a 1 GiB or 2 MiB page.
    pub huge, set_huge: 7;
    /// G: the translation survives CR3 reloads (leaves only).
    pub global, set_global: 8;
    /// Physical frame number, address bits 12..=51 (bit 12 is PAT in huge entries).
    pub frame, set_frame: 51, 12;
    /// XD: instruction fetches fault (needs EFER.NXE).
    pub no_execute, set_no_execute: 63;
}

impl Pte {
    /// The physical address bits 12..=51.
    pub const fn addr(&self) -> u64 {
        self.0 & ADDR_MASK
    }

    /// Sets address bits 12..=51 from `phys`; other bits of `phys` are ignored.
    pub fn set_addr(&mut self, phys: u64) {
        self.0 = (self.0 & !ADDR_MASK) | (phys & ADDR_MASK);
    }
}

/// Access rights and caching of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flags {
    pub writable: bool,
    pub executable: bool,
    pub user: bool,
    pub global: bool,
    /// Strong uncacheable (PCD and PWT set), for MMIO.
    pub uncached: bool,
}

/// The three page sizes of 4-level paging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    Size4K,
    Size2M,
    Size1G,
}

impl PageSize {
    /// Size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Size4K => 1 << 12,
            Self::Size2M => 1 << 21,
            Self::Size1G => 1 << 30,
        }
    }

    /// The level whose entries map pages of this size.
    const fn level(self) -> usize {
        match self {
            Self::Size4K => 1,
            Self::Size2M => 2,
            Self::Size1G => 3,
        }
    }

    const fn mask(self) -> u64 {
        self.bytes() - 1
    }
}

/// Why a map or unmap was refused. Nothing was changed when one is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The flags ask for a writable and executable mapping (W^X).
    WritableAndExecutable,
    /// An address or length is not a multiple of the page size.
    Misaligned,
    /// The virtual address (or range) is not canonical.
    NonCanonical,
    /// The physical address (or range) is beyond [`MAX_PHYS`].
    PhysTooLarge,
    /// Something is already mapped at `virt`.
    AlreadyMapped { virt: u64 },
    /// [`TableMemory::alloc_table`] ran out (or returned an unusable address).
    OutOfTableMemory,
    /// A larger page covers `virt`; split it or unmap it first.
    HugePageInTheWay { virt: u64 },
    /// No page of the requested size is mapped at `virt`.
    NotMapped { virt: u64 },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::WritableAndExecutable => f.write_str("mapping would be writable and executable"),
            Self::Misaligned => f.write_str("address or length is not page-aligned"),
            Self::NonCanonical => f.write_str("virtual address is not canonical"),
            Self::PhysTooLarge => f.write_str("physical address is beyond 52 bits"),
            Self::AlreadyMapped { virt } => write!(f, "{virt:#x} is already mapped"),
            Self::OutOfTableMemory => f.write_str("out of memory for page tables"),
            Self::HugePageInTheWay { virt } => write!(f, "a huge page covers {virt:#x}"),
            Self::NotMapped { virt } => write!(f, "{virt:#x} is not mapped"),
        }
    }
}

/// Where page tables live: the kernel implements this over its direct map; tests over a Vec.
pub trait TableMemory {
    /// A zeroed 4 KiB-aligned page for a new table, as a physical address.
    fn alloc_table(&mut self) -> Option<u64>;
    /// Entry `index` (< 512) of the table at physical address `table`.
    fn read(&self, table: u64, index: usize) -> u64;
    /// Sets entry `index` (< 512) of the table at physical address `table`.
    fn write(&mut self, table: u64, index: usize, value: u64);
    /// Takes back a table from [`TableMemory::alloc_table`] that was never linked in, when a map
    /// fails part-way. The default leaks it.
    fn free_table(&mut self, _table: u64) {}
}

/// What a virtual address maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The physical address of the translated byte (page base plus offset).
    pub phys: u64,
    /// Size of the page that maps it.
    pub size: PageSize,
    /// Effective rights: writable only if every level is writable, user only if every level is
    /// user, executable only if no level has NX. `global` and `uncached` come from the leaf.
    pub flags: Flags,
}

/// One 4-level address space, known by the physical address of its PML4.
#[derive(Debug, PartialEq, Eq)]
pub struct AddressSpace {
    root: u64,
}

impl AddressSpace {
    /// A new, empty address space.
    pub fn new(mem: &mut impl TableMemory) -> Result<Self, MapError> {
        let root = alloc_table(mem)?;
        Ok(Self { root })
    }

    /// The address space whose PML4 is at `root` (e.g. the one CR3 points to).
    pub const fn from_root(root: u64) -> Self {
        Self { root }
    }

    /// Physical address of the PML4, for CR3.
    pub const fn root(&self) -> u64 {
        self.root
    }

    /// Maps one page of `size` at `virt` to `phys`.
    pub fn map(
        &mut self,
        mem: &mut impl TableMemory,
        virt: u64,
        phys: u64,
        size: PageSize,
        flags: Flags,
    ) -> Result<(), MapError> {
        check_page(virt, phys, size, flags)?;
        let leaf_level = size.level();

        // Walk as far as tables exist, changing nothing. `path` keeps the entries passed.
        let mut path = [(0u64, 0usize); LEVELS];
        let mut passed = 0;
        let mut table = self.root;
        let mut level = LEVELS;
        while level > leaf_level {
            let idx = index(virt, level);
            let e = Pte(mem.read(table, idx));
            if !e.present() {
                break;
            }
            if e.huge() {
                return Err(MapError::HugePageInTheWay { virt });
            }
            path[passed] = (table, idx);
            passed += 1;
            table = e.addr();
            level -= 1;
        }
        if level == leaf_level && Pte(mem.read(table, index(virt, level))).present() {
            return Err(MapError::AlreadyMapped { virt });
        }

        // Allocate every missing table before writing anything.
        let missing = level - leaf_level;
        let mut new = [0u64; LEVELS - 1];
        for i in 0..missing {
            match alloc_table(mem) {
                Ok(t) => new[i] = t,
                Err(e) => {
                    for &t in &new[..i] {
                        mem.free_table(t);
                    }
                    return Err(e);
                }
            }
        }

        // Leaf first, then link the new tables bottom-up, so the path appears in one write.
        // `new[j]` is the table at level `level - 1 - j`.
        let leaf_table = if missing == 0 {
            table
        } else {
            new[missing - 1]
        };
        mem.write(
            leaf_table,
            index(virt, leaf_level),
            leaf_entry(phys, size, flags).0,
        );
        for j in (1..missing).rev() {
            mem.write(
                new[j - 1],
                index(virt, level - j),
                table_entry(new[j], flags.user).0,
            );
        }
        if missing > 0 {
            mem.write(table, index(virt, level), table_entry(new[0], flags.user).0);
        }
        if flags.user {
            for &(t, idx) in &path[..passed] {
                let mut e = Pte(mem.read(t, idx));
                if !e.user() {
                    e.set_user(true);
                    mem.write(t, idx, e.0);
                }
            }
        }
        Ok(())
    }

    /// Maps `len` bytes at `virt` to `phys`, using 1 GiB and 2 MiB pages where both addresses
    /// and the remaining length allow, else 4 KiB pages. All or nothing: if a page cannot be
    /// mapped, the pages already mapped by this call are unmapped again.
    pub fn map_range(
        &mut self,
        mem: &mut impl TableMemory,
        virt: u64,
        phys: u64,
        len: u64,
        flags: Flags,
    ) -> Result<(), MapError> {
        self.map_range_up_to(mem, virt, phys, len, flags, PageSize::Size1G)
    }

    /// [`AddressSpace::map_range`] with pages no larger than `largest` (1 GiB pages exist only on
    /// CPUs that report them).
    pub fn map_range_up_to(
        &mut self,
        mem: &mut impl TableMemory,
        virt: u64,
        phys: u64,
        len: u64,
        flags: Flags,
        largest: PageSize,
    ) -> Result<(), MapError> {
        if flags.writable && flags.executable {
            return Err(MapError::WritableAndExecutable);
        }
        let small = PageSize::Size4K.mask();
        if virt & small != 0 || phys & small != 0 || len & small != 0 {
            return Err(MapError::Misaligned);
        }
        if len == 0 {
            return Ok(());
        }
        let last = virt.checked_add(len - 1).ok_or(MapError::NonCanonical)?;
        // Both ends canonical and in the same half: the range does not cross the hole.
        if !is_canonical(virt) || !is_canonical(last) || (virt >> 47) != (last >> 47) {
            return Err(MapError::NonCanonical);
        }
        match phys.checked_add(len - 1) {
            Some(p) if p < MAX_PHYS => {}
            _ => return Err(MapError::PhysTooLarge),
        }

        for (mapped, (v, p, size)) in chunks(virt, phys, len, largest).enumerate() {
            if let Err(e) = self.map(mem, v, p, size, flags) {
                for (v, _, size) in chunks(virt, phys, len, largest).take(mapped) {
                    // Cannot fail: these pages were just mapped.
                    let _ = self.unmap(mem, v, size);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Unmaps the page of `size` at `virt` and returns the physical address it mapped. The
    /// caller flushes the TLB.
    pub fn unmap(
        &mut self,
        mem: &mut impl TableMemory,
        virt: u64,
        size: PageSize,
    ) -> Result<u64, MapError> {
        if !is_canonical(virt) {
            return Err(MapError::NonCanonical);
        }
        if virt & size.mask() != 0 {
            return Err(MapError::Misaligned);
        }
        let leaf_level = size.level();
        let mut table = self.root;
        for level in (leaf_level + 1..=LEVELS).rev() {
            let e = Pte(mem.read(table, index(virt, level)));
            if !e.present() {
                return Err(MapError::NotMapped { virt });
            }
            if e.huge() {
                return Err(MapError::HugePageInTheWay { virt });
            }
            table = e.addr();
        }
        let idx = index(virt, leaf_level);
        let e = Pte(mem.read(table, idx));
        // Above level 1, a present entry without PS points to a table, not a page.
        if !e.present() || (leaf_level > 1 && !e.huge()) {
            return Err(MapError::NotMapped { virt });
        }
        mem.write(table, idx, 0);
        Ok(e.addr() & !size.mask())
    }

    /// Calls `visit(virt, translation)` for every leaf mapping, in address order, with the
    /// effective rights as [`AddressSpace::translate`] reports them (`phys` is the page base).
    pub fn for_each_leaf(&self, mem: &impl TableMemory, visit: &mut dyn FnMut(u64, &Translation)) {
        let all = Flags {
            writable: true,
            executable: true,
            user: true,
            ..Flags::default()
        };
        walk(mem, self.root, LEVELS, 0, all, visit);
    }

    /// Walks the tables for `virt` as the CPU would, honouring huge pages.
    pub fn translate(&self, mem: &impl TableMemory, virt: u64) -> Option<Translation> {
        if !is_canonical(virt) {
            return None;
        }
        let mut table = self.root;
        let (mut writable, mut user, mut executable) = (true, true, true);
        for level in (1..=LEVELS).rev() {
            let e = Pte(mem.read(table, index(virt, level)));
            if !e.present() {
                return None;
            }
            writable &= e.writable();
            user &= e.user();
            executable &= !e.no_execute();
            let size = match (level, e.huge()) {
                (1, _) => Some(PageSize::Size4K),
                (2, true) => Some(PageSize::Size2M),
                (3, true) => Some(PageSize::Size1G),
                // PS is reserved in a PML4 entry: the CPU faults.
                (4, true) => return None,
                _ => None,
            };
            if let Some(size) = size {
                return Some(Translation {
                    phys: (e.addr() & !size.mask()) | (virt & size.mask()),
                    size,
                    flags: Flags {
                        writable,
                        executable,
                        user,
                        global: e.global(),
                        uncached: e.cache_disable(),
                    },
                });
            }
            table = e.addr();
        }
        None
    }
}

/// Whether `addr` is canonical for 48-bit virtual addresses (bits 63..=47 all equal).
pub const fn is_canonical(addr: u64) -> bool {
    let top = addr >> 47;
    top == 0 || top == 0x1_ffff
}

/// Checks one page mapping's arguments.
fn check_page(virt: u64, phys: u64, size: PageSize, flags: Flags) -> Result<(), MapError> {
    if flags.writable && flags.executable {
        return Err(MapError::WritableAndExecutable);
    }
    if !is_canonical(virt) {
        return Err(MapError::NonCanonical);
    }
    if virt & size.mask() != 0 || phys & size.mask() != 0 {
        return Err(MapError::Misaligned);
    }
    match phys.checked_add(size.mask()) {
        Some(last) if last < MAX_PHYS => Ok(()),
        _ => Err(MapError::PhysTooLarge),
    }
}

/// A new table from `mem`, checked to be usable as one.
fn alloc_table(mem: &mut impl TableMemory) -> Result<u64, MapError> {
    let t = mem.alloc_table().ok_or(MapError::OutOfTableMemory)?;
    if t & !ADDR_MASK != 0 {
        mem.free_table(t);
        return Err(MapError::OutOfTableMemory);
    }
    Ok(t)
}

/// The index into the level-`level` table for `virt`.
const fn index(virt: u64, level: usize) -> usize {
    ((virt >> (12 + 9 * (level - 1))) as usize) & (ENTRIES - 1)
}

/// An entry pointing to a lower-level table.
fn table_entry(table: u64, user: bool) -> Pte {
    let mut e = Pte(0);
    e.set_present(true);
    e.set_writable(true);
    e.set_user(user);
    e.set_addr(table);
    e
}

/// An entry mapping a page.
fn leaf_entry(phys: u64, size: PageSize, flags: Flags) -> Pte {
    let mut e = Pte(0);
    e.set_present(true);
    e.set_writable(flags.writable);
    e.set_user(flags.user);
    e.set_global(flags.global);
    e.set_cache_disable(flags.uncached);
    e.set_write_through(flags.uncached);
    e.set_huge(size != PageSize::Size4K);
    e.set_no_execute(!flags.executable);
    e.set_addr(phys);
    e
}

/// Visits the leaves under `table` (at `level`), which maps virtual addresses from `base`;
/// `inherited` holds the rights the levels above allow.
fn walk(
    mem: &impl TableMemory,
    table: u64,
    level: usize,
    base: u64,
    inherited: Flags,
    visit: &mut dyn FnMut(u64, &Translation),
) {
    let span = 1u64 << (12 + 9 * (level - 1));
    for idx in 0..512 {
        let e = Pte(mem.read(table, idx));
        if !e.present() {
            continue;
        }
        let mut virt = base + idx as u64 * span;
        if level == LEVELS && virt & (1 << 47) != 0 {
            virt |= 0xffff_0000_0000_0000; // sign-extend into the upper half
        }
        let flags = Flags {
            writable: inherited.writable && e.writable(),
            executable: inherited.executable && !e.no_execute(),
            user: inherited.user && e.user(),
            global: e.global(),
            uncached: e.cache_disable(),
        };
        let size = match (level, e.huge()) {
            (1, _) => Some(PageSize::Size4K),
            (2, true) => Some(PageSize::Size2M),
            (3, true) => Some(PageSize::Size1G),
            (4, true) => continue, // reserved: the CPU faults, nothing is mapped
            _ => None,
        };
        match size {
            Some(size) => visit(
                virt,
                &Translation {
                    phys: e.addr() & !size.mask(),
                    size,
                    flags,
                },
            ),
            None => walk(mem, e.addr(), level - 1, virt, flags, visit),
        }
    }
}

/// Splits `[virt, virt + len)` into the largest pages the alignment of both addresses allows.
/// The caller has checked that both ranges are 4 KiB-aligned and do not overflow.
fn chunks(
    virt: u64,
    phys: u64,
    len: u64,
    largest: PageSize,
) -> impl Iterator<Item = (u64, u64, PageSize)> {
    let mut done = 0u64;
    core::iter::from_fn(move || {
        let rest = len.checked_sub(done).filter(|&r| r > 0)?;
        let (v, p) = (virt.checked_add(done)?, phys.checked_add(done)?);
        let size = [PageSize::Size1G, PageSize::Size2M]
            .into_iter()
            .filter(|s| s.bytes() <= largest.bytes())
            .find(|s| v & s.mask() == 0 && p & s.mask() == 0 && rest >= s.bytes())
            .unwrap_or(PageSize::Size4K);
        done = done.checked_add(size.bytes())?;
        Some((v, p, size))
    })
}

#[cfg(test)]
mod tests;
