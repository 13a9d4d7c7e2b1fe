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
//! the leaf alone decides the rights. A 2 MiB or 1 GiB guest page is shadowed in 4 KiB pieces,
//! one at a time ([`Vtlb::install_piece`]) or a whole 2 MiB region at once
//! ([`Vtlb::install_region`]). Either way the upper entries above the pieces carry
//! [`LARGE_ORIGIN`] (the PDE, and for a 1 GiB page the PDPTE too), because the guest's INVLPG of
//! any address of a large page invalidates the whole page: [`Vtlb::invalidate`] then empties
//! every leaf table under the mark, not just one leaf.
//!
//! **Global regions.** A region of a global guest page (G with CR4.PGE; the kernel also uses it
//! for the DMP view, which is the same in every address space) gets a leaf table of its own,
//! owned by no tree: [`Vtlb::switch`] links it into every tree it switches to, as a TLB keeps
//! global translations across CR3 loads. INVLPG in the region or [`Vtlb::flush_all`] unlinks and
//! frees it; a dry pool takes global regions back only after emptying the current tree was not
//! enough.

use super::bits::*;
use super::cache::{Key, RootCache};
use super::pool::TablePool;
use super::PageSize;

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

/// Software bit (9, ignored by the hardware) of a shadow PDE or PDPTE: the tables below hold
/// pieces of a large guest page (a PDE: of a 2 MiB or 1 GiB page; a PDPTE: of a 1 GiB page), so
/// INVLPG of one address empties all of them. It stays until that INVLPG, even if 4 KiB pieces
/// of 4 KiB guest pages are installed below meanwhile (dropping more than needed is harmless).
pub const LARGE_ORIGIN: u64 = 1 << 9;

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

/// What [`Vtlb::invalidate`] dropped, so the kernel knows what to invalidate in the hardware
/// TLB (which holds the shadow's 4 KiB leaves, not the guest's large pages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidated {
    /// At most the leaf for the address: invalidating that page is enough.
    Page,
    /// Every leaf of the `size`-aligned linear region at `base` (`size` 2 MiB or 1 GiB) that any
    /// cached tree held: flush the guest's hardware TLB tag (or invalidate each 4 KiB page).
    Large { base: u64, size: PageSize },
}

/// Why [`Vtlb::new`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VtlbError {
    /// Fewer than [`MIN_FRAMES`] usable frames.
    TooFewFrames,
    /// `R` is 0 or above 254.
    BadSlotCount,
}

/// Most global regions kept across address-space switches ([`Vtlb::install_global_region`]).
pub const GLOBAL_REGIONS: usize = 32;
/// The pool owner of global regions' leaf tables (cache slots are 0..=253).
const GLOBAL_OWNER: u8 = 254;

/// A vTLB with up to `N` table frames and `R` cached roots.
#[derive(Clone, Debug)]
pub struct Vtlb<const N: usize, const R: usize> {
    pool: TablePool<N>,
    cache: RootCache<R>,
    current: Option<usize>,
    /// Leaf tables of global 2 MiB regions, (linear base, table), the first `globals_len` of
    /// them: linked into every tree the vTLB switches to.
    globals: [(u64, u64); GLOBAL_REGIONS],
    globals_len: usize,
    /// PAE format ([`Vtlb::set_legacy`]): PDPTEs are written present-only.
    legacy: bool,
}

/// A PDPTE of PAE paging: present, nothing else (R/W, U/S, A and the rest are reserved there;
/// bits 11:9 are ignored, so [`LARGE_ORIGIN`] may stay).
const PAE_PDPTE: u64 = PRESENT;

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
            globals: [(0, 0); GLOBAL_REGIONS],
            globals_len: 0,
            legacy: false,
        })
    }

    /// Whether the trees are for a guest in 32-bit or PAE paging: the hardware then runs PAE
    /// paging (without long mode) on the PDPT under entry 0 of the current root
    /// ([`Vtlb::legacy_root`]), so PDPTEs are written in PAE's format. The caller flushes
    /// everything when this changes (a paging-mode change does).
    pub fn set_legacy(&mut self, legacy: bool) {
        self.legacy = legacy;
    }

    /// The PAE-format root of the current tree, if complete: the PDPT under entry 0 of the
    /// current root, whose four PDPTEs all hold page directories in PAE's format.
    pub fn legacy_pdpt(&self, mem: &impl ShadowMemory) -> Option<u64> {
        let root = self.root()?;
        let e = mem.read(root, 0);
        if e & PRESENT == 0 {
            return None;
        }
        let pdpt = e & ADDR;
        (0..4)
            .all(|i| {
                let p = mem.read(pdpt, i);
                p & PRESENT != 0 && p & !(ADDR | LARGE_ORIGIN) == PAE_PDPTE
            })
            .then_some(pdpt)
    }

    /// Completes the current tree for PAE-format hardware paging (the vTLB is
    /// [`Vtlb::set_legacy`]): a PDPT under entry 0 of the root and a page directory under each
    /// of its four entries (the CPU loads all four PDPTEs at entry and keeps them, so none may
    /// appear later), each PDPTE present-only. Returns the PDPT (the hardware CR3; it must
    /// lie below 4 GiB) and whether frames were recycled on the way; None without a current
    /// root.
    pub fn legacy_root(&mut self, mem: &mut impl ShadowMemory) -> Option<(u64, bool)> {
        let mut recycled = false;
        // Building a directory may recycle (empty this tree): start again, a few times at most;
        // a pool holds many more frames than the six a complete top needs.
        for _ in 0..4 {
            if let Some(pdpt) = self.legacy_pdpt(mem) {
                return Some((pdpt, recycled));
            }
            for i in 0..4u64 {
                let (_, r) = self.leaf_table(mem, i << 30, PageSize::Size4K, None)?;
                recycled |= r;
            }
            let root = self.root()?;
            let pdpt = mem.read(root, 0) & ADDR;
            for i in 0..4 {
                let e = mem.read(pdpt, i);
                if e & PRESENT != 0 {
                    mem.write(pdpt, i, (e & (ADDR | LARGE_ORIGIN)) | PAE_PDPTE);
                }
            }
        }
        self.legacy_pdpt(mem).map(|p| (p, recycled))
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
        let mut s = self.switch_tree(mem, key, flush);
        s.recycled |= self.link_globals(mem);
        s
    }

    /// [`Vtlb::switch`] but for the global regions.
    fn switch_tree(&mut self, mem: &mut impl ShadowMemory, key: Key, flush: bool) -> Switch {
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
    /// the tables on the way and recycling frames if the pool is empty. For a 4 KiB guest page;
    /// a piece of a large one goes through [`Vtlb::install_piece`].
    pub fn install(&mut self, mem: &mut impl ShadowMemory, la: u64, pte: u64) -> Install {
        self.install_piece(mem, la, pte, PageSize::Size4K)
    }

    /// [`Vtlb::install`] of one 4 KiB piece of a guest page of size `origin`: for a 2 MiB or
    /// 1 GiB page the tables above get [`LARGE_ORIGIN`], so that INVLPG drops the whole page.
    pub fn install_piece(
        &mut self,
        mem: &mut impl ShadowMemory,
        la: u64,
        pte: u64,
        origin: PageSize,
    ) -> Install {
        let Some((table, recycled)) = self.leaf_table(mem, la, origin, None) else {
            return Install::NoRoot;
        };
        mem.write(table, index(la, 1), pte);
        installed(recycled)
    }

    /// Writes all 512 leaves of the 2 MiB-aligned linear region holding `la` (entry `i` maps
    /// `(la & !0x1f_ffff) + i * 4096`; 0 leaves it unmapped), so one fault maps a whole large
    /// guest page (or its 2 MiB part) of size `origin`; tables are built, recycled and marked as
    /// for [`Vtlb::install_piece`]. The hardware TLB may still hold older leaves of the region;
    /// they allow only what the guest's tables allowed (the guest invalidates what it changes),
    /// so as after [`Vtlb::install`] only the faulting page needs invalidating, if its old leaf
    /// was present.
    pub fn install_region(
        &mut self,
        mem: &mut impl ShadowMemory,
        la: u64,
        ptes: &[u64; 512],
        origin: PageSize,
    ) -> Install {
        let Some((table, recycled)) = self.leaf_table(mem, la, origin, None) else {
            return Install::NoRoot;
        };
        for (i, &pte) in ptes.iter().enumerate() {
            mem.write(table, i, pte);
        }
        installed(recycled)
    }

    /// [`Vtlb::install_region`] for a region of a *global* guest page (G set, CR4.PGE on): its
    /// leaf table stays when the address space changes and is linked into every tree switched
    /// to, as the hardware TLB keeps global translations across CR3 loads. It goes with an
    /// INVLPG in the region or a [`Vtlb::flush_all`]. Falls back to an ordinary region when
    /// [`GLOBAL_REGIONS`] are kept already or no frame is free.
    pub fn install_global_region(
        &mut self,
        mem: &mut impl ShadowMemory,
        la: u64,
        ptes: &[u64; 512],
    ) -> Install {
        let base = la & !0x1f_ffff;
        let n = self.globals_len;
        let table = match self.globals[..n].iter().find(|g| g.0 == base) {
            Some(&(_, table)) => table,
            None => {
                let fresh = (n < GLOBAL_REGIONS)
                    .then(|| self.pool.alloc(GLOBAL_OWNER))
                    .flatten();
                let Some(table) = fresh else {
                    return self.install_region(mem, la, ptes, PageSize::Size2M);
                };
                self.globals[n] = (base, table);
                self.globals_len += 1;
                table
            }
        };
        for (i, &pte) in ptes.iter().enumerate() {
            mem.write(table, i, pte);
        }
        match self.leaf_table(mem, la, PageSize::Size2M, Some(table)) {
            Some((_, recycled)) => installed(recycled),
            None => Install::NoRoot,
        }
    }

    /// Links every global region into the current tree; true if frames were taken back.
    fn link_globals(&mut self, mem: &mut impl ShadowMemory) -> bool {
        let mut recycled = false;
        for k in 0..GLOBAL_REGIONS {
            // Recycling on the way may drop the globals: re-read the count each time.
            if k >= self.globals_len {
                break;
            }
            let (base, table) = self.globals[k];
            if let Some((_, r)) = self.leaf_table(mem, base, PageSize::Size2M, Some(table)) {
                recycled |= r;
            }
        }
        recycled
    }

    /// Forgets every global region and frees its table (unlinked from every cached tree first).
    fn drop_globals(&mut self, mem: &mut impl ShadowMemory) -> bool {
        let any = self.globals_len > 0;
        while self.globals_len > 0 {
            self.drop_global(mem, self.globals_len - 1);
        }
        any
    }

    /// Forgets global region `k`: unlinks its table from every cached tree and frees it.
    fn drop_global(&mut self, mem: &mut impl ShadowMemory, k: usize) {
        let (base, table) = self.globals[k];
        for slot in 0..R {
            if let Some(root) = self.cache.root(slot) {
                if let Some((pd, i)) = directory_of(mem, root, base) {
                    if mem.read(pd, i) & ADDR == table {
                        mem.write(pd, i, 0);
                    }
                }
            }
        }
        self.pool.release_frame(GLOBAL_OWNER, table);
        self.globals_len -= 1;
        self.globals[k] = self.globals[self.globals_len];
    }

    /// The leaf table for `la` in the current tree and whether frames were taken back to build
    /// it, with the [`LARGE_ORIGIN`] marks `origin` asks for set on the way; None without a
    /// current root. With `link`, that table (a global region's) becomes the leaf table,
    /// replacing whatever the directory entry held. The one path building shadow tables, so
    /// recycling is the same everywhere.
    fn leaf_table(
        &mut self,
        mem: &mut impl ShadowMemory,
        la: u64,
        origin: PageSize,
        link: Option<u64>,
    ) -> Option<(u64, bool)> {
        let slot = self.current?;
        let root = self.cache.root(slot)?;
        let mut recycled = false;
        let mut emptied = false;
        'again: loop {
            let mut table = root;
            for level in (2..=4).rev() {
                let i = index(la, level);
                let mark = match (origin, level) {
                    (PageSize::Size2M | PageSize::Size1G, 2) | (PageSize::Size1G, 3) => {
                        LARGE_ORIGIN
                    }
                    _ => 0,
                };
                if let (2, Some(global)) = (level, link) {
                    mem.write(table, i, global | TABLE | LARGE_ORIGIN);
                    return Some((global, recycled));
                }
                let e = mem.read(table, i);
                if e & PRESENT != 0 {
                    if e & mark != mark {
                        mem.write(table, i, e | mark);
                    }
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
                            // Only this tree is left: empty it; if that was not enough, the
                            // global regions hold the rest, and they go too.
                            if emptied {
                                self.drop_globals(mem);
                            }
                            self.empty(mem, slot);
                            emptied = true;
                        }
                    }
                    continue 'again;
                };
                mem.zero(new);
                let upper = if self.legacy && level == 3 {
                    PAE_PDPTE
                } else {
                    TABLE
                };
                mem.write(table, i, new | upper | mark);
                table = new;
            }
            return Some((table, recycled));
        }
    }

    /// The shadow leaf for `la` in the current tree (0 when there is none).
    pub fn lookup(&self, mem: &impl ShadowMemory, la: u64) -> u64 {
        self.root().map_or(0, |root| {
            leaf_of(mem, root, la).map_or(0, |(t, i)| mem.read(t, i))
        })
    }

    /// INVLPG: drops the translation of `la` from every cached tree (global translations are
    /// shared by all address spaces, so all of them). Under a [`LARGE_ORIGIN`] mark that is the
    /// whole large page: every leaf table under the marked entry is emptied (the tables stay)
    /// and the marks cleared; otherwise the one leaf. The result says what the kernel must also
    /// invalidate in the hardware TLB.
    pub fn invalidate(&mut self, mem: &mut impl ShadowMemory, la: u64) -> Invalidated {
        let mut done = Invalidated::Page;
        let base = la & !0x1f_ffff;
        if let Some(k) = self.globals[..self.globals_len]
            .iter()
            .position(|g| g.0 == base)
        {
            self.drop_global(mem, k);
            done = Invalidated::Large {
                base,
                size: PageSize::Size2M,
            };
        }
        for slot in 0..R {
            if let Some(root) = self.cache.root(slot) {
                let size = drop_translation(mem, root, la);
                if size.bytes() > span(done) {
                    done = Invalidated::Large {
                        base: la & !(size.bytes() - 1),
                        size,
                    };
                }
            }
        }
        done
    }

    /// [`Vtlb::invalidate`] without the result, for callers that flush the guest's whole
    /// hardware TLB tag anyway.
    pub fn invlpg(&mut self, mem: &mut impl ShadowMemory, la: u64) {
        self.invalidate(mem, la);
    }

    /// Drops every shadow translation (e.g. the guest changed CR4.PGE, CR4.PCIDE, CR0.WP or
    /// EFER.NXE, or memory was revoked): other trees are taken back, the current one emptied.
    /// The kernel flushes the guest's hardware TLB.
    pub fn flush_all(&mut self, mem: &mut impl ShadowMemory) {
        self.drop_globals(mem);
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

/// The page directory and index of the entry for `la` under `root`, if the tables down to it
/// exist.
fn directory_of(mem: &impl ShadowMemory, root: u64, la: u64) -> Option<(u64, usize)> {
    let pml4e = mem.read(root, index(la, 4));
    if pml4e & PRESENT == 0 {
        return None;
    }
    let pdpte = mem.read(pml4e & ADDR, index(la, 3));
    if pdpte & PRESENT == 0 {
        return None;
    }
    Some((pdpte & ADDR, index(la, 2)))
}

/// The [`Install`] for a write that did or did not take frames back.
fn installed(recycled: bool) -> Install {
    if recycled {
        Install::InstalledAfterRecycle
    } else {
        Install::Installed
    }
}

/// The bytes an [`Invalidated`] covers, to keep the widest over all trees.
fn span(i: Invalidated) -> u64 {
    match i {
        Invalidated::Page => PageSize::Size4K.bytes(),
        Invalidated::Large { size, .. } => size.bytes(),
    }
}

/// Drops the translation of `la` from the tree at `root` as INVLPG must (see
/// [`Vtlb::invalidate`]); returns the size of what was dropped: 4 KiB (at most one leaf), or
/// the 2 MiB or 1 GiB whose leaf tables were emptied.
fn drop_translation(mem: &mut impl ShadowMemory, root: u64, la: u64) -> PageSize {
    let pml4e = mem.read(root, index(la, 4));
    if pml4e & PRESENT == 0 {
        return PageSize::Size4K;
    }
    let pdpt = pml4e & ADDR;
    let pdpte = mem.read(pdpt, index(la, 3));
    if pdpte & PRESENT == 0 {
        return PageSize::Size4K;
    }
    let pd = pdpte & ADDR;
    if pdpte & LARGE_ORIGIN != 0 {
        // Pieces of a 1 GiB page may sit in any leaf table of this directory.
        for i in 0..512 {
            let pde = mem.read(pd, i);
            if pde & PRESENT != 0 {
                mem.zero(pde & ADDR);
                if pde & LARGE_ORIGIN != 0 {
                    mem.write(pd, i, pde & !LARGE_ORIGIN);
                }
            }
        }
        mem.write(pdpt, index(la, 3), pdpte & !LARGE_ORIGIN);
        return PageSize::Size1G;
    }
    let pde = mem.read(pd, index(la, 2));
    if pde & PRESENT == 0 {
        return PageSize::Size4K;
    }
    if pde & LARGE_ORIGIN != 0 {
        mem.zero(pde & ADDR);
        mem.write(pd, index(la, 2), pde & !LARGE_ORIGIN);
        return PageSize::Size2M;
    }
    mem.write(pde & ADDR, index(la, 1), 0);
    PageSize::Size4K
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
