//! A Vm's guest-physical address space as nested page tables, in either hardware format: NPT
//! (AMD: ordinary x86-64 page-table entries, every guest access counting as a user access) or
//! EPT (Intel: read/write/execute bits and a memory type).
//!
//! The tables map 4 KiB pages only: a VMM maps what its memory capabilities allow, page by page,
//! and the kernel replaces or removes single pages when capabilities are revoked. Tables come
//! from a [`TableMemory`] (the kernel charges them to a quota), and nothing here trusts the
//! addresses it is given.

use mem::paging::TableMemory;

use crate::ept::{self, Access, MemoryType};

/// Entry format of the tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Npt,
    Ept,
}

/// Why a nested mapping was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NestedError {
    /// Not 4 KiB-aligned, or at or beyond the limit the tables were made for.
    BadAddress,
    /// Neither read, write nor execute; or write or execute without read.
    BadAccess,
    /// The table memory refused another table.
    OutOfTableMemory,
}

const LEVELS: usize = 4;
use abi::PAGE_SIZE as PAGE;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

// NPT entry bits (x86-64 page-table format).
const NPT_PRESENT: u64 = 1 << 0;
const NPT_WRITABLE: u64 = 1 << 1;
const NPT_USER: u64 = 1 << 2;
const NPT_NO_EXECUTE: u64 = 1 << 63;

/// A 4-level nested address space, known by the physical address of its top table.
#[derive(Debug, PartialEq, Eq)]
pub struct NestedTables {
    root: u64,
    format: Format,
    /// Guest-physical addresses must be below this.
    limit: u64,
}

fn index(gpa: u64, level: usize) -> usize {
    ((gpa >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

impl NestedTables {
    /// Empty tables for guest-physical addresses below `limit` (at most 2^48).
    pub fn new(
        mem: &mut impl TableMemory,
        format: Format,
        limit: u64,
    ) -> Result<Self, NestedError> {
        let root = mem.alloc_table().ok_or(NestedError::OutOfTableMemory)?;
        Ok(Self {
            root,
            format,
            limit: limit.min(1 << 48),
        })
    }

    /// Physical address of the top table (NPT: nCR3; EPT: the pointer's table address).
    pub const fn root(&self) -> u64 {
        self.root
    }

    /// Guest-physical addresses are below this.
    pub const fn limit(&self) -> u64 {
        self.limit
    }

    pub const fn format(&self) -> Format {
        self.format
    }

    fn present(&self, entry: u64) -> bool {
        match self.format {
            Format::Npt => entry & NPT_PRESENT != 0,
            Format::Ept => entry & 0b111 != 0,
        }
    }

    fn table_entry(&self, table: u64) -> u64 {
        match self.format {
            Format::Npt => table | NPT_PRESENT | NPT_WRITABLE | NPT_USER,
            // Tables are built by this module from fresh 4 KiB frames: `table` cannot fail.
            Format::Ept => ept::table(table).map_or(0, |e| e.bits()),
        }
    }

    fn leaf_entry(&self, hpa: u64, access: Access) -> Result<u64, NestedError> {
        // Both formats need read permission on every present page (EPT forbids write-only).
        if !access.read {
            return Err(NestedError::BadAccess);
        }
        match self.format {
            Format::Npt => {
                let mut e = (hpa & ADDR_MASK) | NPT_PRESENT | NPT_USER;
                if access.write {
                    e |= NPT_WRITABLE;
                }
                if !access.execute {
                    e |= NPT_NO_EXECUTE;
                }
                Ok(e)
            }
            Format::Ept => {
                // All 4 KiB sizes are supported and read is set: only the address can fail.
                let caps = ept::cap::WALK_LENGTH_4;
                ept::leaf(
                    hpa,
                    ept::PageSize::Size4K,
                    access,
                    MemoryType::WriteBack,
                    caps,
                )
                .map(|e| e.bits())
                .map_err(|_| NestedError::BadAddress)
            }
        }
    }

    fn check_gpa(&self, gpa: u64) -> Result<(), NestedError> {
        if !gpa.is_multiple_of(PAGE) || gpa >= self.limit {
            return Err(NestedError::BadAddress);
        }
        Ok(())
    }

    /// Maps the page at guest-physical `gpa` to host-physical `hpa` with `access` (read is
    /// required), replacing any earlier mapping, whose host address is returned.
    pub fn map(
        &mut self,
        mem: &mut impl TableMemory,
        gpa: u64,
        hpa: u64,
        access: Access,
    ) -> Result<Option<u64>, NestedError> {
        self.check_gpa(gpa)?;
        if !hpa.is_multiple_of(PAGE) || hpa & !ADDR_MASK != 0 {
            return Err(NestedError::BadAddress);
        }
        let leaf = self.leaf_entry(hpa, access)?;
        let mut table = self.root;
        for level in (2..=LEVELS).rev() {
            let i = index(gpa, level);
            let e = mem.read(table, i);
            table = if self.present(e) {
                e & ADDR_MASK
            } else {
                let new = mem.alloc_table().ok_or(NestedError::OutOfTableMemory)?;
                mem.write(table, i, self.table_entry(new));
                new
            };
        }
        let i = index(gpa, 1);
        let old = mem.read(table, i);
        mem.write(table, i, leaf);
        Ok(self.present(old).then_some(old & ADDR_MASK))
    }

    /// Removes the mapping of `gpa`; returns the host address it had.
    pub fn unmap(&mut self, mem: &mut impl TableMemory, gpa: u64) -> Option<u64> {
        self.check_gpa(gpa).ok()?;
        let table = self.leaf_table(mem, gpa)?;
        let i = index(gpa, 1);
        let old = mem.read(table, i);
        mem.write(table, i, 0);
        self.present(old).then_some(old & ADDR_MASK)
    }

    fn leaf_table(&self, mem: &impl TableMemory, gpa: u64) -> Option<u64> {
        let mut table = self.root;
        for level in (2..=LEVELS).rev() {
            let e = mem.read(table, index(gpa, level));
            if !self.present(e) {
                return None;
            }
            table = e & ADDR_MASK;
        }
        Some(table)
    }

    /// The host address and access of the page that maps `gpa` (any byte of it).
    pub fn translate(&self, mem: &impl TableMemory, gpa: u64) -> Option<(u64, Access)> {
        if gpa >= self.limit {
            return None;
        }
        let page = gpa & !(PAGE - 1);
        let e = mem.read(self.leaf_table(mem, page)?, index(page, 1));
        self.decode_leaf(e)
            .map(|(hpa, access)| (hpa | (gpa & (PAGE - 1)), access))
    }

    /// [`NestedTables::translate`] of the 512 pages of the 2 MiB-aligned region holding `gpa`,
    /// from one leaf table: `f(i, hpa, access)` for each mapped page `i`.
    pub fn translate_region(
        &self,
        mem: &impl TableMemory,
        gpa: u64,
        mut f: impl FnMut(usize, u64, Access),
    ) {
        let base = gpa & !0x1f_ffff;
        let Some(table) = (base < self.limit)
            .then(|| self.leaf_table(mem, base))
            .flatten()
        else {
            return;
        };
        for i in 0..512 {
            if base + i as u64 * PAGE >= self.limit {
                break;
            }
            if let Some((hpa, access)) = self.decode_leaf(mem.read(table, i)) {
                f(i, hpa, access);
            }
        }
    }

    /// The host address and access of a leaf entry, None when it is not present.
    fn decode_leaf(&self, e: u64) -> Option<(u64, Access)> {
        if !self.present(e) {
            return None;
        }
        let access = match self.format {
            Format::Npt => Access {
                read: true,
                write: e & NPT_WRITABLE != 0,
                execute: e & NPT_NO_EXECUTE == 0,
            },
            Format::Ept => Access {
                read: e & 1 != 0,
                write: e & 2 != 0,
                execute: e & 4 != 0,
            },
        };
        Some((e & ADDR_MASK, access))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Frames {
        tables: HashMap<u64, [u64; 512]>,
        next: u64,
        budget: Option<usize>,
    }

    impl TableMemory for Frames {
        fn alloc_table(&mut self) -> Option<u64> {
            if let Some(b) = self.budget.as_mut() {
                if *b == 0 {
                    return None;
                }
                *b -= 1;
            }
            self.next += 0x1000;
            self.tables.insert(0x100_0000 + self.next, [0; 512]);
            Some(0x100_0000 + self.next)
        }
        fn read(&self, table: u64, index: usize) -> u64 {
            self.tables[&table][index]
        }
        fn write(&mut self, table: u64, index: usize, value: u64) {
            self.tables.get_mut(&table).unwrap()[index] = value;
        }
    }

    const RW: Access = Access {
        read: true,
        write: true,
        execute: false,
    };
    const RX: Access = Access {
        read: true,
        write: false,
        execute: true,
    };

    #[test]
    fn npt_entries_are_user_pages_with_nx_for_data() {
        let mut mem = Frames::default();
        let mut t = NestedTables::new(&mut mem, Format::Npt, 1 << 39).unwrap();
        assert_eq!(t.map(&mut mem, 0x20_0000, 0x4000_0000, RW), Ok(None));
        assert_eq!(t.translate(&mem, 0x20_0123), Some((0x4000_0123, RW)));
        let table = t.leaf_table(&mem, 0x20_0000).unwrap();
        let leaf = mem.read(table, index(0x20_0000, 1));
        assert_eq!(
            leaf,
            0x4000_0000 | NPT_PRESENT | NPT_WRITABLE | NPT_USER | NPT_NO_EXECUTE
        );
        // Every table entry on the way is present, writable and user (NPT walks are user
        // accesses).
        let top = mem.read(t.root(), 0);
        assert_eq!(top & 0b111, 0b111);
    }

    #[test]
    fn a_region_translates_like_its_pages() {
        for format in [Format::Npt, Format::Ept] {
            let mut mem = Frames::default();
            let mut t = NestedTables::new(&mut mem, format, 1 << 39).unwrap();
            t.map(&mut mem, 0x40_1000, 0x9000, RW).unwrap();
            t.map(&mut mem, 0x40_3000, 0x7000, RX).unwrap();
            t.map(&mut mem, 0x60_0000, 0x5000, RW).unwrap();
            let mut seen = Vec::new();
            t.translate_region(&mem, 0x5f_ffff, |i, hpa, a| seen.push((i, hpa, a)));
            assert_eq!(seen, [(1, 0x9000, RW), (3, 0x7000, RX)]);
            for (i, hpa, a) in seen {
                assert_eq!(
                    t.translate(&mem, 0x40_0000 + i as u64 * PAGE),
                    Some((hpa, a))
                );
            }
            let mut none = 0;
            t.translate_region(&mem, 0x80_0000, |_, _, _| none += 1);
            assert_eq!(none, 0, "no leaf table there");
        }
    }

    #[test]
    fn ept_entries_carry_rights_and_write_back() {
        let mut mem = Frames::default();
        let mut t = NestedTables::new(&mut mem, Format::Ept, 1 << 39).unwrap();
        t.map(&mut mem, 0x1000, 0x9000, RX).unwrap();
        let table = t.leaf_table(&mem, 0x1000).unwrap();
        let leaf = mem.read(table, 1);
        assert_eq!(leaf, 0x9000 | 0b101 | (6 << 3));
        assert_eq!(t.translate(&mem, 0x1fff), Some((0x9fff, RX)));
        assert_eq!(mem.read(t.root(), 0) & 0b111, 0b111);
    }

    #[test]
    fn remapping_replaces_and_unmapping_removes() {
        for format in [Format::Npt, Format::Ept] {
            let mut mem = Frames::default();
            let mut t = NestedTables::new(&mut mem, format, 1 << 39).unwrap();
            t.map(&mut mem, 0x5000, 0xa000, RW).unwrap();
            assert_eq!(t.map(&mut mem, 0x5000, 0xb000, RX), Ok(Some(0xa000)));
            assert_eq!(t.translate(&mem, 0x5000), Some((0xb000, RX)));
            assert_eq!(t.unmap(&mut mem, 0x5000), Some(0xb000));
            assert_eq!(t.translate(&mem, 0x5000), None);
            assert_eq!(t.unmap(&mut mem, 0x5000), None);
            assert_eq!(t.unmap(&mut mem, 0x7fff_0000_0000), None);
        }
    }

    #[test]
    fn refuses_bad_addresses_and_rights() {
        let mut mem = Frames::default();
        let mut t = NestedTables::new(&mut mem, Format::Npt, 1 << 30).unwrap();
        assert_eq!(
            t.map(&mut mem, 0x1001, 0x2000, RW),
            Err(NestedError::BadAddress)
        );
        assert_eq!(
            t.map(&mut mem, 1 << 30, 0x2000, RW),
            Err(NestedError::BadAddress)
        );
        assert_eq!(
            t.map(&mut mem, 0x1000, 0x2001, RW),
            Err(NestedError::BadAddress)
        );
        assert_eq!(
            t.map(&mut mem, 0x1000, 1 << 60, RW),
            Err(NestedError::BadAddress)
        );
        let write_only = Access {
            read: false,
            write: true,
            execute: false,
        };
        assert_eq!(
            t.map(&mut mem, 0x1000, 0x2000, write_only),
            Err(NestedError::BadAccess)
        );
        assert_eq!(t.translate(&mem, u64::MAX), None);
    }

    #[test]
    fn running_out_of_tables_is_an_error() {
        let mut mem = Frames {
            budget: Some(2),
            ..Frames::default()
        };
        let mut t = NestedTables::new(&mut mem, Format::Ept, 1 << 39).unwrap();
        assert_eq!(
            t.map(&mut mem, 0, 0x1000, RW),
            Err(NestedError::OutOfTableMemory)
        );
    }
}
