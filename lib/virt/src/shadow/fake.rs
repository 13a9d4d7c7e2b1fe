//! Test doubles: guest memory with page tables built in it, host backing, shadow table frames.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use super::bits::*;
use super::leaf::{Backing, HostMemory};
use super::vtlb::ShadowMemory;
use super::walk::{CasError, Features, GuestPhys, Paging};
use super::PageSize;

/// Guest RAM is [0, RAM); tables are allocated from TABLES upwards.
pub const RAM: u64 = 0x4000_0000;
const TABLES: u64 = 0x10_0000;
/// Host frame of guest page `g` is `g + HOST_OFFSET`.
pub const HOST_OFFSET: u64 = 0x10_0000_0000;

/// Table entry flags that allow everything.
pub const OPEN: u64 = PRESENT | WRITABLE | USER;

pub struct Guest {
    words: RefCell<HashMap<u64, u64>>,
    next: Cell<u64>,
    pub cr3: u64,
    /// On a compare-and-swap at this address, the "other vCPU" first flips bit 9 (ignored by
    /// the CPU) of the word, `races_left` times.
    pub race: Cell<Option<u64>>,
    /// Races to inject in a row (each CAS at the address re-arms it while > 0).
    pub races_left: Cell<usize>,
    pub cas_calls: Cell<usize>,
}

impl Guest {
    pub fn new() -> Self {
        let g = Self {
            words: RefCell::default(),
            next: Cell::new(TABLES),
            cr3: TABLES,
            race: Cell::new(None),
            races_left: Cell::new(0),
            cas_calls: Cell::new(0),
        };
        g.next.set(TABLES + 0x1000);
        g
    }

    pub fn get(&self, gpa: u64) -> u64 {
        *self.words.borrow().get(&gpa).unwrap_or(&0)
    }

    pub fn set(&self, gpa: u64, value: u64) {
        self.words.borrow_mut().insert(gpa, value);
    }

    fn new_table(&self) -> u64 {
        let t = self.next.get();
        self.next.set(t + 0x1000);
        t
    }

    /// Maps `la` to the page at `gpa` of `size`. `tables[i]` are the flags of the table entry at
    /// level 4 - i (used only when the entry is created); `leaf` the leaf's flags (PRESENT and PS
    /// are added). Returns the gpa of the leaf entry.
    pub fn map(&self, la: u64, gpa: u64, size: PageSize, tables: [u64; 3], leaf: u64) -> u64 {
        let leaf_level = match size {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        };
        let mut table = self.cr3;
        for level in ((leaf_level + 1)..=4).rev() {
            let at = table + ((la >> (12 + 9 * (level - 1))) & 0x1ff) * 8;
            let e = self.get(at);
            table = if e & PRESENT != 0 {
                e & ADDR
            } else {
                let t = self.new_table();
                self.set(at, t | tables[4 - level]);
                t
            };
        }
        let at = table + ((la >> (12 + 9 * (leaf_level - 1))) & 0x1ff) * 8;
        let ps = if leaf_level > 1 { PAGE_SIZE } else { 0 };
        self.set(at, gpa | leaf | PRESENT | ps);
        at
    }

    /// The gpa of the entry at `level` for `la` (the path must exist down to it).
    pub fn entry(&self, la: u64, level: u64) -> u64 {
        let mut table = self.cr3;
        for l in ((level + 1)..=4).rev() {
            table = self.get(table + ((la >> (12 + 9 * (l - 1))) & 0x1ff) * 8) & ADDR;
        }
        table + ((la >> (12 + 9 * (level - 1))) & 0x1ff) * 8
    }

    pub fn paging(&self) -> Paging {
        Paging {
            cr3: self.cr3,
            wp: true,
            smep: false,
            smap: false,
            ac: false,
            nxe: true,
            features: Features {
                maxphyaddr: 46,
                gb_pages: true,
                cr4: u64::MAX,
            },
            format: super::walk::Format::Long,
        }
    }

    /// Every word, to check that nothing changed.
    pub fn snapshot(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<_> = self.words.borrow().iter().map(|(&a, &b)| (a, b)).collect();
        v.sort();
        v
    }
}

impl GuestPhys for Guest {
    fn read(&self, gpa: u64) -> Option<u64> {
        (gpa < RAM).then(|| self.get(gpa))
    }

    fn compare_exchange(&self, gpa: u64, current: u64, new: u64) -> Result<(), CasError> {
        self.cas_calls.set(self.cas_calls.get() + 1);
        if gpa >= RAM {
            return Err(CasError::NotRam);
        }
        if let Some(at) = self.race.get() {
            if at == gpa {
                self.set(gpa, self.get(gpa) ^ (1 << 9));
                let left = self.races_left.get().saturating_sub(1);
                self.races_left.set(left);
                if left == 0 {
                    self.race.set(None);
                }
            }
        }
        if self.get(gpa) != current {
            return Err(CasError::Changed);
        }
        self.set(gpa, new);
        Ok(())
    }
}

/// Host backing: guest pages below `limit` are backed, at `HOST_OFFSET`; `read_only` pages are
/// backed without write access.
pub struct Host {
    pub limit: u64,
    pub read_only: Vec<u64>,
    /// Pages mapped without the EXEC right.
    pub no_exec: Vec<u64>,
}

impl Host {
    pub fn all() -> Self {
        Self {
            limit: RAM,
            read_only: Vec::new(),
            no_exec: Vec::new(),
        }
    }
}

impl HostMemory for Host {
    fn backing(&self, gpa: u64) -> Option<Backing> {
        (gpa < self.limit).then(|| Backing {
            hpa: gpa + HOST_OFFSET,
            writable: !self.read_only.contains(&gpa),
            executable: !self.no_exec.contains(&gpa),
        })
    }
}

/// Shadow table frames as arrays.
#[derive(Default)]
pub struct Frames {
    pub tables: HashMap<u64, [u64; 512]>,
}

impl ShadowMemory for Frames {
    fn read(&self, table: u64, index: usize) -> u64 {
        self.tables.get(&table).map_or(0, |t| t[index])
    }

    fn write(&mut self, table: u64, index: usize, value: u64) {
        self.tables.entry(table).or_insert([0; 512])[index] = value;
    }
}

/// Where [`Machine`] hands out frames from (above guest RAM's host range).
pub const MACHINE_FRAMES: u64 = 0x20_0000_0000;

/// The kernel side of a vTLB ([`super::machine::Machine`]): host-physical memory as a word map,
/// frames counted out of a budget, and the host's paging features.
pub struct Machine {
    words: RefCell<HashMap<u64, u64>>,
    next: Cell<u64>,
    /// Frames still to hand out.
    pub budget: Cell<usize>,
    /// Frames handed out and not given back.
    pub out: RefCell<Vec<u64>>,
    pub features: Features,
}

impl Machine {
    pub fn new() -> Self {
        Self {
            words: RefCell::default(),
            next: Cell::new(MACHINE_FRAMES),
            budget: Cell::new(usize::MAX),
            out: RefCell::default(),
            features: Features {
                maxphyaddr: 46,
                gb_pages: true,
                cr4: u64::MAX,
            },
        }
    }

    /// The word at host-physical `hpa`.
    pub fn get(&self, hpa: u64) -> u64 {
        *self.words.borrow().get(&hpa).unwrap_or(&0)
    }

    pub fn set(&self, hpa: u64, value: u64) {
        self.words.borrow_mut().insert(hpa, value);
    }

    /// Copies guest `g`'s words into guest RAM (host frame of guest page `p` at
    /// `p + HOST_OFFSET`).
    pub fn load(&self, g: &Guest) {
        for (gpa, value) in g.snapshot() {
            self.set(gpa + HOST_OFFSET, value);
        }
    }
}

impl super::machine::Machine for &Machine {
    fn features(&self) -> Features {
        self.features
    }

    fn alloc_frame(&self) -> Option<u64> {
        let left = self.budget.get().checked_sub(1)?;
        self.budget.set(left);
        let f = self.next.get();
        self.next.set(f + 0x1000);
        self.out.borrow_mut().push(f);
        Some(f)
    }

    fn free_frame(&self, frame: u64) {
        let mut out = self.out.borrow_mut();
        let i = out.iter().position(|&f| f == frame).expect("freed twice");
        out.swap_remove(i);
    }

    fn read_word(&self, frame: u64, index: usize) -> u64 {
        self.get(frame + index as u64 * 8)
    }

    fn write_word(&self, frame: u64, index: usize, value: u64) {
        self.set(frame + index as u64 * 8, value)
    }

    fn read_shared(&self, hpa: u64) -> Option<u64> {
        hpa.is_multiple_of(8).then(|| self.get(hpa))
    }

    fn compare_exchange(&self, hpa: u64, current: u64, new: u64) -> Option<Result<u64, u64>> {
        if !hpa.is_multiple_of(8) {
            return None;
        }
        let old = self.get(hpa);
        if old != current {
            return Some(Err(old));
        }
        self.set(hpa, new);
        Some(Ok(old))
    }
}

/// Builds nested tables in a [`Machine`]'s memory.
pub struct NestedBuild<'a>(pub &'a Machine);

impl mem::paging::TableMemory for NestedBuild<'_> {
    fn alloc_table(&mut self) -> Option<u64> {
        super::machine::Machine::alloc_frame(&self.0)
    }

    fn read(&self, table: u64, index: usize) -> u64 {
        self.0.get(table + index as u64 * 8)
    }

    fn write(&mut self, table: u64, index: usize, value: u64) {
        self.0.set(table + index as u64 * 8, value)
    }
}
