//! Deadlines of timed waits.

use alloc::vec::Vec;

use crate::SchedError;

/// Items waiting with a deadline, in timer ticks (absolute: the tick count at which the wait
/// ends).
///
/// Entries are kept sorted, latest deadline first, so the next one to expire is at the end:
/// [`Timeouts::next_deadline`] is O(1), [`Timeouts::expire`] O(1) per expired item, and
/// [`Timeouts::add`] and [`Timeouts::cancel`] O(entries). Items with equal deadlines expire in
/// the order they were added.
pub struct Timeouts<T: Copy + Eq> {
    /// (deadline, item), sorted by deadline descending; among equal deadlines the earliest
    /// added is last.
    entries: Vec<(u64, T)>,
}

impl<T: Copy + Eq> Default for Timeouts<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Eq> Timeouts<T> {
    /// No deadlines. Allocates nothing until the first add.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// Makes room for `additional` more entries, so that as many [`Timeouts::add`]s after it
    /// do not allocate. The kernel can call this when it creates a thread, where running out
    /// of memory can still be reported.
    pub fn reserve(&mut self, additional: usize) -> Result<(), SchedError> {
        self.entries
            .try_reserve(additional)
            .map_err(|_| SchedError::NoMemory)
    }

    /// Sets `item`'s deadline, replacing any it had.
    ///
    /// Grows the storage if no room was [reserved](Timeouts::reserve); a failed allocation there
    /// is the global allocator's error.
    pub fn add(&mut self, item: T, deadline: u64) {
        self.cancel(item);
        let at = self.entries.partition_point(|&(d, _)| d > deadline);
        self.entries.insert(at, (deadline, item));
    }

    /// Drops `item`'s deadline; false if it had none.
    pub fn cancel(&mut self, item: T) -> bool {
        match self.entries.iter().position(|&(_, x)| x == item) {
            Some(index) => {
                self.entries.remove(index);
                true
            }
            None => false,
        }
    }

    /// Removes every item whose deadline is at or before `now` and hands each to `out`,
    /// earliest deadline first.
    pub fn expire(&mut self, now: u64, out: &mut dyn FnMut(T)) {
        while let Some(&(deadline, item)) = self.entries.last() {
            if deadline > now {
                break;
            }
            self.entries.pop();
            out(item);
        }
    }

    /// The earliest deadline, to program the timer.
    pub fn next_deadline(&self) -> Option<u64> {
        self.entries.last().map(|&(d, _)| d)
    }

    /// `item`'s deadline, if it has one.
    pub fn deadline_of(&self, item: T) -> Option<u64> {
        self.entries
            .iter()
            .find(|&&(_, x)| x == item)
            .map(|&(d, _)| d)
    }

    /// Number of pending deadlines.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no deadline is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::*;

    fn expire(t: &mut Timeouts<u32>, now: u64) -> Vec<u32> {
        let mut out = Vec::new();
        t.expire(now, &mut |x| out.push(x));
        out
    }

    #[test]
    fn earliest_first() {
        let mut t = Timeouts::new();
        t.add(1, 30);
        t.add(2, 10);
        t.add(3, 20);
        assert_eq!((t.len(), t.next_deadline()), (3, Some(10)));
        assert_eq!(expire(&mut t, 100), [2, 3, 1]);
        assert!(t.is_empty());
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn equal_deadlines_expire_in_order_added() {
        let mut t = Timeouts::new();
        for item in [5, 3, 9, 1] {
            t.add(item, 7);
        }
        t.add(0, 6);
        assert_eq!(expire(&mut t, 7), [0, 5, 3, 9, 1]);
    }

    #[test]
    fn exact_boundaries() {
        let mut t = Timeouts::new();
        t.add(1, 10);
        t.add(2, 11);
        assert_eq!(expire(&mut t, 9), [] as [u32; 0]);
        assert_eq!(expire(&mut t, 10), [1]);
        assert_eq!(expire(&mut t, 10), [] as [u32; 0]);
        assert_eq!(t.next_deadline(), Some(11));
        assert_eq!(expire(&mut t, 11), [2]);
        // The extremes of the tick range.
        t.add(3, 0);
        t.add(4, u64::MAX);
        assert_eq!(expire(&mut t, 0), [3]);
        assert_eq!(expire(&mut t, u64::MAX - 1), [] as [u32; 0]);
        assert_eq!(expire(&mut t, u64::MAX), [4]);
    }

    #[test]
    fn add_replaces() {
        let mut t = Timeouts::new();
        t.add(1, 10);
        t.add(2, 20);
        t.add(1, 30);
        assert_eq!(t.len(), 2);
        assert_eq!(t.deadline_of(1), Some(30));
        assert_eq!(t.next_deadline(), Some(20));
        t.add(1, 5);
        assert_eq!((t.len(), t.next_deadline()), (2, Some(5)));
        assert_eq!(expire(&mut t, 25), [1, 2]);
        assert_eq!(t.deadline_of(1), None);
    }

    #[test]
    fn cancel() {
        let mut t = Timeouts::new();
        t.add(1, 10);
        t.add(2, 20);
        t.add(3, 30);
        assert!(t.cancel(2));
        assert!(!t.cancel(2));
        assert!(!t.cancel(99));
        assert!(t.cancel(1));
        assert_eq!(t.next_deadline(), Some(30));
        assert_eq!(expire(&mut t, 100), [3]);
        assert!(!t.cancel(3));
    }

    #[test]
    fn reserve_then_add() {
        let mut t = Timeouts::new();
        t.reserve(100).unwrap();
        for item in 0..100u32 {
            t.add(item, u64::from(item));
        }
        assert_eq!(t.reserve(usize::MAX), Err(SchedError::NoMemory));
        assert_eq!(t.len(), 100);
    }

    #[test]
    fn many_items() {
        let mut t = Timeouts::new();
        // Deadlines in a scrambled order, with repeats.
        for item in 0..5_000u32 {
            t.add(item, u64::from(item.wrapping_mul(7919) % 1000));
        }
        let mut out = Vec::new();
        let mut now = 0;
        while !t.is_empty() {
            let next = t.next_deadline().unwrap();
            assert!(next >= now);
            now = next;
            t.expire(now, &mut |x| {
                out.push((u64::from(x.wrapping_mul(7919) % 1000), x))
            });
        }
        assert_eq!(out.len(), 5_000);
        let mut sorted = out.clone();
        sorted.sort();
        assert_eq!(out, sorted);
    }
}
