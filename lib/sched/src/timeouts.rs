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
