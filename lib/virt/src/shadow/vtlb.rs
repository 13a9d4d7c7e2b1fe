//! The vTLB state of one vCPU: shadow roots in a [`RootCache`], their tables from a
//! [`TablePool`], and the operations the kernel's intercepts need (CR3 switch, leaf install,
//! INVLPG, flush).
//!
//! Nothing here fails the guest: when the pool runs dry, the least recently used other tree is
//! taken back, and if there is none the current tree is emptied and filled again from the
//! faults that follow. Every operation that takes frames back reports it, because the hardware
//! TLB may still hold translations through them: the kernel then flushes the guest's TLB tags
//! (ASID/VPID) before the guest runs again.
//!
//! Shadow tables map 4 KiB leaves only; their upper entries are present, writable and user, so
//! the leaf alone decides the rights.

use super::bits::*;
use super::cache::{Key, RootCache};
use super::pool::TablePool;

/// The shadow table frames, as the kernel reaches them (its direct map).
pub trait ShadowMemory {
    /// Entry `index` (< 512) of the table at host-physical `table`.
    fn read(&self, table: u64, index: usize) -> u64;
    /// Sets entry `index` (< 512) of the table at host-physical `table`.
    fn write(&mut self, table: u64, index: usize, value: u64);
    /// Clears a table (override with something faster than 512 writes).
    fn zero(&mut self, table: u64) {
        for i in 0..512 {
            self.write(table, i, 0);
        }
    }
}

/// Upper entries of shadow tables: present, writable, user, accessed.
const TABLE: u64 = PRESENT | WRITABLE | USER | ACCESSED;

/// The fewest frames a vTLB works with: a root and the three tables below it for one leaf.
pub const MIN_FRAMES: usize = 4;

/// The result of [`Vtlb::switch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switch {
    /// Host-physical address of the shadow PML4 to load as the hardware CR3.
    pub root: u64,
    /// The cache slot (a kernel may give each slot its own hardware TLB tag).
    pub slot: usize,
    /// The tree was found in the cache with its entries intact.
    pub reused: bool,
    /// Frames were taken back from some tree: flush the guest's hardware TLB.
    pub recycled: bool,
}

/// The result of [`Vtlb::install`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    Installed,
    /// Installed after taking frames back from some tree: flush the guest's hardware TLB.
    InstalledAfterRecycle,
    /// No shadow root is current ([`Vtlb::switch`] first); nothing was written.
    NoRoot,
}

/// Why [`Vtlb::new`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VtlbError {
    /// Fewer than [`MIN_FRAMES`] usable frames.
    TooFewFrames,
    /// `R` is 0 or above 254.
    BadSlotCount,
}

/// A vTLB with up to `N` table frames and `R` cached roots.
#[derive(Clone, Debug)]
pub struct Vtlb<const N: usize, const R: usize> {
    pool: TablePool<N>,
    cache: RootCache<R>,
    current: Option<usize>,
}

fn index(la: u64, level: u32) -> usize {
    ((la >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

impl<const N: usize, const R: usize> Vtlb<N, R> {
    /// A vTLB over `frames` (4 KiB-aligned host frames; unaligned ones and those beyond `N`
    /// are ignored). No root is current until [`Vtlb::switch`].
    pub fn new(frames: &[u64]) -> Result<Self, VtlbError> {
        if R == 0 || R > 254 {
            return Err(VtlbError::BadSlotCount);
        }
        let pool = TablePool::new(frames);
        if pool.capacity() < MIN_FRAMES {
            return Err(VtlbError::TooFewFrames);
        }
        Ok(Self {
            pool,
            cache: RootCache::new(),
            current: None,
        })
    }

    /// The current shadow root.
    pub fn root(&self) -> Option<u64> {
        self.cache.root(self.current?)
    }

    /// Free table frames.
    pub fn free_frames(&self) -> usize {
        self.pool.free()
    }

    /// Makes the address space `key` current. With `flush` (see
    /// [`super::cache::cr3_write_flushes`]) its cached tree, if any, is emptied first.
    pub fn switch(&mut self, mem: &mut impl ShadowMemory, key: Key, flush: bool) -> Switch {
        let mut recycled = false;
        if let Some((slot, root)) = self.cache.lookup(key) {
            if flush {
                recycled = self.empty(mem, slot);
            }
            self.current = Some(slot);
            return Switch {
                root,
                slot,
                reused: !flush,
                recycled,
            };
        }
        let slot = match self.cache.vacant() {
            Some(s) => s,
            None => {
                // R >= 1 and every slot is occupied: there is a least recently used one.
                let s = self.cache.lru(None).unwrap_or(0);
                recycled |= self.evict(s);
                s
            }
        };
        let root = loop {
            if let Some(f) = self.pool.alloc(slot as u8) {
                break f;
            }
            // The new slot owns nothing yet, so some other slot holds frames.
            match self.cache.lru(Some(slot)) {
                Some(victim) => recycled |= self.evict(victim),
                None => {
                    // Unreachable with consistent bookkeeping; recover by freeing everything.
                    for owner in 0..R {
                        self.pool.release(owner as u8, None);
                    }
                    recycled = true;
                }
            }
        };
        mem.zero(root);
        self.cache.insert(slot, key, root);
        self.current = Some(slot);
        Switch {
            root,
            slot,
            reused: false,
            recycled,
        }
    }

    /// Writes the shadow leaf `pte` for the 4 KiB page at `la` into the current tree, building
    /// the tables on the way and recycling frames if the pool is empty.
    pub fn install(&mut self, mem: &mut impl ShadowMemory, la: u64, pte: u64) -> Install {
        let Some(slot) = self.current else {
            return Install::NoRoot;
        };
        let Some(root) = self.cache.root(slot) else {
            return Install::NoRoot;
        };
        let mut recycled = false;
        'again: loop {
            let mut table = root;
            for level in (2..=4).rev() {
                let i = index(la, level);
                let e = mem.read(table, i);
                if e & PRESENT != 0 {
                    table = e & ADDR;
                    continue;
                }
                let Some(new) = self.pool.alloc(slot as u8) else {
                    recycled = true;
                    match self.cache.lru(Some(slot)) {
                        Some(victim) => {
                            self.evict(victim);
                        }
                        None => {
                            self.empty(mem, slot);
                        }
                    }
                    continue 'again;
                };
                mem.zero(new);
                mem.write(table, i, new | TABLE);
                table = new;
            }
            mem.write(table, index(la, 1), pte);
            return if recycled {
                Install::InstalledAfterRecycle
            } else {
                Install::Installed
            };
        }
    }

    /// The shadow leaf for `la` in the current tree (0 when there is none).
    pub fn lookup(&self, mem: &impl ShadowMemory, la: u64) -> u64 {
        self.root().map_or(0, |root| {
            leaf_of(mem, root, la).map_or(0, |(t, i)| mem.read(t, i))
        })
    }

    /// INVLPG: drops the leaf for `la` from every cached tree (global translations are shared
    /// by all address spaces, so all of them). The kernel also invalidates `la` in the hardware
    /// TLB.
    pub fn invlpg(&mut self, mem: &mut impl ShadowMemory, la: u64) {
        for slot in 0..R {
            if let Some(root) = self.cache.root(slot) {
                if let Some((t, i)) = leaf_of(mem, root, la) {
                    mem.write(t, i, 0);
                }
            }
        }
    }

    /// Drops every shadow translation (e.g. the guest changed CR4.PGE, CR4.PCIDE, CR0.WP or
    /// EFER.NXE, or memory was revoked): other trees are taken back, the current one emptied.
    /// The kernel flushes the guest's hardware TLB.
    pub fn flush_all(&mut self, mem: &mut impl ShadowMemory) {
        for slot in 0..R {
            if Some(slot) == self.current {
                self.empty(mem, slot);
            } else {
                self.evict(slot);
            }
        }
    }

    /// Takes back slot `slot` and its whole tree; true if it held any frame.
    fn evict(&mut self, slot: usize) -> bool {
        if self.cache.remove(slot).is_none() {
            return false;
        }
        if self.current == Some(slot) {
            self.current = None;
        }
        self.pool.release(slot as u8, None) > 0
    }

    /// Empties slot `slot`'s tree, keeping its (zeroed) root; true if anything was freed.
    fn empty(&mut self, mem: &mut impl ShadowMemory, slot: usize) -> bool {
        let Some(root) = self.cache.root(slot) else {
            return false;
        };
        let freed = self.pool.release(slot as u8, Some(root));
        mem.zero(root);
        freed > 0
    }
}

/// The table and index of the leaf for `la` under `root`, if the tables down to it exist.
fn leaf_of(mem: &impl ShadowMemory, root: u64, la: u64) -> Option<(u64, usize)> {
    let mut table = root;
    for level in (2..=4).rev() {
        let e = mem.read(table, index(la, level));
        if e & PRESENT == 0 {
            return None;
        }
        table = e & ADDR;
    }
    Some((table, index(la, 1)))
}

#[cfg(test)]
mod tests;
