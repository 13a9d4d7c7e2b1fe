//! A fixed set of shadow table frames, each tagged with the shadow root (cache slot) whose tree
//! it belongs to.
//!
//! Tagging by owner instead of linking tables makes taking back a whole tree one scan, with no
//! recursion and no walk of tables the guest's accesses may have left half-built. The frames
//! are the caller's (charged to the Vm's quota); the pool never allocates.

/// The tag of a free frame.
const FREE: u8 = u8::MAX;

/// Up to `N` table frames.
#[derive(Clone, Debug)]
pub struct TablePool<const N: usize> {
    frames: [u64; N],
    owner: [u8; N],
    len: usize,
    free: usize,
    /// Where the next search for a free frame starts.
    cursor: usize,
}

impl<const N: usize> TablePool<N> {
    /// A pool of the 4 KiB-aligned frames among `frames` (at most `N`; the others are ignored).
    pub fn new(frames: &[u64]) -> Self {
        let mut pool = Self {
            frames: [0; N],
            owner: [FREE; N],
            len: 0,
            free: 0,
            cursor: 0,
        };
        for &f in frames.iter().filter(|&&f| f & 0xfff == 0).take(N) {
            pool.frames[pool.len] = f;
            pool.len += 1;
        }
        pool.free = pool.len;
        pool
    }

    /// Frames in the pool.
    pub const fn capacity(&self) -> usize {
        self.len
    }

    /// Frames not in any tree.
    pub const fn free(&self) -> usize {
        self.free
    }

    /// A free frame for the tree of `owner` (< 255), or None when every frame is in use. The
    /// caller zeroes it.
    pub fn alloc(&mut self, owner: u8) -> Option<u64> {
        if owner == FREE || self.free == 0 {
            return None;
        }
        for k in 0..self.len {
            let i = (self.cursor + k) % self.len;
            if self.owner[i] == FREE {
                self.owner[i] = owner;
                self.free -= 1;
                self.cursor = (i + 1) % self.len;
                return Some(self.frames[i]);
            }
        }
        None
    }

    /// Frees every frame of `owner`'s tree except `keep`; returns how many were freed.
    pub fn release(&mut self, owner: u8, keep: Option<u64>) -> usize {
        let mut n = 0;
        for i in 0..self.len {
            if self.owner[i] == owner && owner != FREE && Some(self.frames[i]) != keep {
                self.owner[i] = FREE;
                n += 1;
            }
        }
        self.free += n;
        n
    }

    /// Frees one frame of `owner`; false when `frame` is not one of its frames.
    pub fn release_frame(&mut self, owner: u8, frame: u64) -> bool {
        let Some(i) = (0..self.len).find(|&i| self.frames[i] == frame && self.owner[i] == owner)
        else {
            return false;
        };
        if owner == FREE {
            return false;
        }
        self.owner[i] = FREE;
        self.free += 1;
        true
    }

    /// Frames in `owner`'s tree.
    pub fn owned(&self, owner: u8) -> usize {
        self.owner[..self.len]
            .iter()
            .filter(|&&o| o == owner)
            .count()
    }

    /// The tree `frame` belongs to, if it is a pool frame in use.
    pub fn owner_of(&self, frame: u64) -> Option<u8> {
        (0..self.len)
            .find(|&i| self.frames[i] == frame)
            .map(|i| self.owner[i])
            .filter(|&o| o != FREE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(n: u64) -> Vec<u64> {
        (0..n).map(|i| 0x10_0000 + i * 0x1000).collect()
    }

    #[test]
    fn allocates_until_exhausted_then_refuses() {
        let mut p = TablePool::<8>::new(&frames(5));
        assert_eq!((p.capacity(), p.free()), (5, 5));
        let got: Vec<_> = (0..5).map(|_| p.alloc(1).unwrap()).collect();
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, frames(5), "each frame once");
        assert_eq!(p.alloc(1), None);
        assert_eq!(p.free(), 0);
    }

    #[test]
    fn takes_only_aligned_frames_up_to_n() {
        let p = TablePool::<3>::new(&[0x1000, 0x2001, 0x3000, 0x4000, 0x5000]);
        assert_eq!(p.capacity(), 3);
        assert_eq!(p.owner_of(0x2001), None);
        let p = TablePool::<0>::new(&[0x1000]);
        assert_eq!(p.capacity(), 0);
    }

    #[test]
    fn release_frees_a_whole_tree_except_what_is_kept() {
        let mut p = TablePool::<8>::new(&frames(8));
        let a_root = p.alloc(0).unwrap();
        for _ in 0..3 {
            p.alloc(0).unwrap();
        }
        let b = p.alloc(1).unwrap();
        assert_eq!((p.owned(0), p.owned(1), p.free()), (4, 1, 3));
        assert_eq!(p.release(0, Some(a_root)), 3);
        assert_eq!((p.owned(0), p.free()), (1, 6));
        assert_eq!(p.owner_of(a_root), Some(0));
        assert_eq!(p.owner_of(b), Some(1));
        assert_eq!(p.release(1, None), 1);
        assert_eq!(p.owner_of(b), None);
        assert_eq!(p.free(), 7);
        // The free tag is not an owner.
        assert_eq!(p.alloc(FREE), None);
        assert_eq!(p.release(FREE, None), 0);
    }

    #[test]
    fn one_frame_is_released_only_by_its_owner() {
        let mut p = TablePool::<4>::new(&frames(4));
        let a = p.alloc(2).unwrap();
        assert!(!p.release_frame(3, a));
        assert!(!p.release_frame(FREE, 0x10_3000));
        assert!(p.release_frame(2, a));
        assert!(!p.release_frame(2, a), "already free");
        assert_eq!(p.free(), 4);
    }

    #[test]
    fn freed_frames_are_reused() {
        let mut p = TablePool::<2>::new(&frames(2));
        let x = p.alloc(3).unwrap();
        let y = p.alloc(4).unwrap();
        assert_eq!(p.alloc(5), None);
        p.release(3, None);
        assert_eq!(p.alloc(5), Some(x));
        p.release(4, None);
        assert_eq!(p.alloc(5), Some(y));
        assert_eq!(p.owned(5), 2);
    }
}
