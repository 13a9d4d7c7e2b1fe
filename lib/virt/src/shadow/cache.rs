//! The shadow roots of recently used guest address spaces, a few slots with LRU replacement.
//!
//! A slot may be reused only as a TLB may keep entries (SDM §4.10.4.1): a MOV to CR3 flushes
//! the non-global entries of the PCID it loads unless CR4.PCIDE = 1 and bit 63 of the value is
//! set. [`cr3_write_flushes`] says which, and a flushing switch empties the slot's tree before
//! it is used. So without PCIDs every switch starts from an empty tree (only the slot's root
//! frame is reused); with PCIDs a switch back with "no flush" finds its tree intact. Keys are
//! the table address and the PCID together, which is stricter than the architecture (entries
//! are tagged by PCID only) and therefore safe.

/// What identifies a guest address space for the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    /// CR3 bits 51..12.
    pub table: u64,
    /// The PCID (0 when CR4.PCIDE = 0).
    pub pcid: u16,
}

impl Key {
    /// The key of a guest CR3 value.
    pub const fn new(cr3: u64, pcide: bool) -> Self {
        Self {
            table: cr3 & super::bits::ADDR,
            pcid: if pcide { (cr3 & 0xfff) as u16 } else { 0 },
        }
    }
}

/// Whether a guest MOV to CR3 of `value` invalidates the cached translations of its address
/// space.
pub const fn cr3_write_flushes(value: u64, pcide: bool) -> bool {
    !pcide || value & (1 << 63) == 0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    key: Key,
    root: u64,
    used: u64,
}

/// Up to `R` shadow roots by [`Key`].
#[derive(Clone, Debug)]
pub struct RootCache<const R: usize> {
    slots: [Option<Slot>; R],
    clock: u64,
}

impl<const R: usize> Default for RootCache<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const R: usize> RootCache<R> {
    pub const fn new() -> Self {
        Self {
            slots: [None; R],
            clock: 0,
        }
    }

    /// The slot and root of `key`, marked most recently used.
    pub fn lookup(&mut self, key: Key) -> Option<(usize, u64)> {
        let i = self
            .slots
            .iter()
            .position(|s| s.is_some_and(|s| s.key == key))?;
        self.touch(i);
        self.slots[i].map(|s| (i, s.root))
    }

    /// Marks slot `i` most recently used.
    pub fn touch(&mut self, i: usize) {
        self.clock += 1;
        if let Some(Some(s)) = self.slots.get_mut(i) {
            s.used = self.clock;
        }
    }

    /// Puts `key` with its `root` in slot `i` (most recently used), replacing what was there.
    pub fn insert(&mut self, i: usize, key: Key, root: u64) {
        self.clock += 1;
        if let Some(s) = self.slots.get_mut(i) {
            *s = Some(Slot {
                key,
                root,
                used: self.clock,
            });
        }
    }

    /// Empties slot `i`; returns the root it held.
    pub fn remove(&mut self, i: usize) -> Option<u64> {
        self.slots.get_mut(i)?.take().map(|s| s.root)
    }

    /// An empty slot, if any.
    pub fn vacant(&self) -> Option<usize> {
        self.slots.iter().position(Option::is_none)
    }

    /// The least recently used occupied slot other than `except`.
    pub fn lru(&self, except: Option<usize>) -> Option<usize> {
        (0..R)
            .filter(|&i| Some(i) != except)
            .filter_map(|i| self.slots[i].map(|s| (s.used, i)))
            .min()
            .map(|(_, i)| i)
    }

    /// The root in slot `i`.
    pub fn root(&self, i: usize) -> Option<u64> {
        self.slots.get(i).copied().flatten().map(|s| s.root)
    }

    /// The key in slot `i`.
    pub fn key(&self, i: usize) -> Option<Key> {
        self.slots.get(i).copied().flatten().map(|s| s.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> Key {
        Key::new(n << 12, false)
    }

    #[test]
    fn keys_from_cr3() {
        assert_eq!(
            Key::new(0x8000_0000_0012_3abc, true),
            Key {
                table: 0x12_3000,
                pcid: 0xabc
            }
        );
        assert_eq!(
            Key::new(0x12_3018, false),
            Key {
                table: 0x12_3000,
                pcid: 0
            }
        );
        assert!(cr3_write_flushes(1 << 63, false));
        assert!(cr3_write_flushes(0x1000, true));
        assert!(!cr3_write_flushes((1 << 63) | 0x1000, true));
    }

    #[test]
    fn lookup_insert_remove() {
        let mut c = RootCache::<2>::new();
        assert_eq!(c.lookup(key(1)), None);
        assert_eq!(c.vacant(), Some(0));
        c.insert(0, key(1), 0xa000);
        assert_eq!(c.lookup(key(1)), Some((0, 0xa000)));
        assert_eq!(c.vacant(), Some(1));
        c.insert(1, key(2), 0xb000);
        assert_eq!(c.vacant(), None);
        assert_eq!((c.root(1), c.key(1)), (Some(0xb000), Some(key(2))));
        assert_eq!(c.remove(0), Some(0xa000));
        assert_eq!(c.lookup(key(1)), None);
        assert_eq!(c.remove(0), None);
        assert_eq!(c.remove(7), None);
        assert_eq!(c.root(7), None);
    }

    #[test]
    fn lru_follows_use() {
        let mut c = RootCache::<3>::new();
        for i in 0..3 {
            c.insert(i, key(i as u64), 0x1000 * (i as u64 + 1));
        }
        assert_eq!(c.lru(None), Some(0));
        c.lookup(key(0));
        assert_eq!(c.lru(None), Some(1));
        assert_eq!(c.lru(Some(1)), Some(2));
        c.touch(1);
        c.touch(2);
        assert_eq!(c.lru(None), Some(0));
        assert_eq!(RootCache::<1>::new().lru(None), None);
    }
}
