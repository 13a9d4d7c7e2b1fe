//! Ready threads by priority.

use alloc::collections::VecDeque;

use crate::SchedError;

/// Number of priorities: 0 is the lowest, `PRIORITIES - 1` the highest.
pub const PRIORITIES: usize = 32;

// One bit per priority in a `u32`.
const _: () = assert!(PRIORITIES <= 32);

/// Ready items, one FIFO per priority, plus a bitmap of the non-empty priorities so that finding
/// the highest is one instruction.
///
/// [`RunQueue::pop_highest`] takes the front of the highest non-empty priority. An item that
/// used up its slice goes to the back of its priority ([`RunQueue::push_back`]), so items of
/// equal priority take turns; an item that was preempted before its slice ended goes to the
/// front ([`RunQueue::push_front`]) and keeps its turn.
///
/// Priority is strict: while an item of priority `p` is queued, nothing below `p` is popped.
/// Lower priorities can starve; that is the design.
///
/// Each item is queued at most once. Pushing scans the queued items to refuse duplicates, and
/// [`RunQueue::remove`] scans for its item: O(queued items), fine for the few ready threads a
/// machine has.
pub struct RunQueue<T: Copy + Eq> {
    levels: [VecDeque<T>; PRIORITIES],
    /// Bit `p` set iff `levels[p]` is non-empty.
    bitmap: u32,
    len: usize,
}

impl<T: Copy + Eq> Default for RunQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Eq> RunQueue<T> {
    /// An empty queue. Allocates nothing until the first push.
    pub const fn new() -> Self {
        Self {
            levels: [const { VecDeque::new() }; PRIORITIES],
            bitmap: 0,
            len: 0,
        }
    }

    /// Queues `item` behind the others of its priority.
    pub fn push_back(&mut self, item: T, priority: u8) -> Result<(), SchedError> {
        let level = self.level_for_push(item, priority)?;
        level.push_back(item);
        self.mark_pushed(priority);
        Ok(())
    }

    /// Queues `item` ahead of the others of its priority, e.g. a preempted thread that keeps
    /// its turn.
    pub fn push_front(&mut self, item: T, priority: u8) -> Result<(), SchedError> {
        let level = self.level_for_push(item, priority)?;
        level.push_front(item);
        self.mark_pushed(priority);
        Ok(())
    }

    /// Takes the first item of the highest non-empty priority.
    pub fn pop_highest(&mut self) -> Option<(T, u8)> {
        let priority = self.highest_priority()?;
        let level = self.levels.get_mut(usize::from(priority))?;
        let item = level.pop_front()?;
        if level.is_empty() {
            self.bitmap &= !(1 << priority);
        }
        self.len = self.len.saturating_sub(1);
        Some((item, priority))
    }

    /// The highest priority with a queued item.
    pub fn highest_priority(&self) -> Option<u8> {
        // 31 - leading_zeros is at most 31, so the narrowing cannot fail.
        (self.bitmap != 0)
            .then(|| u8::try_from(31 - self.bitmap.leading_zeros()).ok())
            .flatten()
    }

    /// The priority `item` is queued at.
    pub fn priority_of(&self, item: T) -> Option<u8> {
        self.find(item).map(|(priority, _)| priority)
    }

    /// Whether `item` is queued.
    pub fn contains(&self, item: T) -> bool {
        self.find(item).is_some()
    }

    /// Takes `item` out of the queue, wherever it is; false if it was not queued.
    pub fn remove(&mut self, item: T) -> bool {
        let Some((priority, index)) = self.find(item) else {
            return false;
        };
        let Some(level) = self.levels.get_mut(usize::from(priority)) else {
            return false;
        };
        if level.remove(index).is_none() {
            return false;
        }
        if level.is_empty() {
            self.bitmap &= !(1 << priority);
        }
        self.len = self.len.saturating_sub(1);
        true
    }

    /// Number of queued items.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks the priority and that `item` is not queued, and makes room for one more item.
    fn level_for_push(&mut self, item: T, priority: u8) -> Result<&mut VecDeque<T>, SchedError> {
        if usize::from(priority) >= PRIORITIES {
            return Err(SchedError::BadPriority);
        }
        if self.contains(item) {
            return Err(SchedError::AlreadyQueued);
        }
        let level = self
            .levels
            .get_mut(usize::from(priority))
            .ok_or(SchedError::BadPriority)?;
        level.try_reserve(1).map_err(|_| SchedError::NoMemory)?;
        Ok(level)
    }

    fn mark_pushed(&mut self, priority: u8) {
        self.bitmap |= 1 << priority;
        self.len += 1;
    }

    /// Priority and position of `item`, searching only the non-empty levels.
    fn find(&self, item: T) -> Option<(u8, usize)> {
        let mut bits = self.bitmap;
        while bits != 0 {
            let priority = bits.trailing_zeros();
            bits &= bits - 1;
            let p = u8::try_from(priority).ok()?;
            let level = self.levels.get(usize::from(p))?;
            if let Some(index) = level.iter().position(|&x| x == item) {
                return Some((p, index));
            }
        }
        None
    }
}
