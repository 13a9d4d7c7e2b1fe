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

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::*;

    fn drain(q: &mut RunQueue<u32>) -> Vec<(u32, u8)> {
        core::iter::from_fn(|| q.pop_highest()).collect()
    }

    #[test]
    fn empty() {
        let mut q = RunQueue::<u32>::new();
        assert!(q.is_empty());
        assert_eq!(q.len(), 0);
        assert_eq!(q.highest_priority(), None);
        assert_eq!(q.pop_highest(), None);
        assert!(!q.remove(1));
        assert!(!q.contains(1));
    }

    #[test]
    fn strict_priority_order() {
        let mut q = RunQueue::new();
        for (item, prio) in [(1, 3), (2, 31), (3, 0), (4, 17), (5, 3), (6, 31)] {
            q.push_back(item, prio).unwrap();
        }
        assert_eq!(q.len(), 6);
        assert_eq!(q.highest_priority(), Some(31));
        assert_eq!(
            drain(&mut q),
            [(2, 31), (6, 31), (4, 17), (1, 3), (5, 3), (3, 0)]
        );
        assert!(q.is_empty());
        assert_eq!(q.highest_priority(), None);
    }

    #[test]
    fn round_robin_within_a_level() {
        let mut q = RunQueue::new();
        for item in 1..=3 {
            q.push_back(item, 10).unwrap();
        }
        let mut order = Vec::new();
        for _ in 0..9 {
            let (item, prio) = q.pop_highest().unwrap();
            order.push(item);
            q.push_back(item, prio).unwrap();
        }
        assert_eq!(order, [1, 2, 3, 1, 2, 3, 1, 2, 3]);
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn push_front_keeps_the_turn() {
        let mut q = RunQueue::new();
        for item in 1..=3 {
            q.push_back(item, 5).unwrap();
        }
        let (preempted, prio) = q.pop_highest().unwrap();
        q.push_front(preempted, prio).unwrap();
        assert_eq!(q.pop_highest(), Some((1, 5)));
        q.push_front(9, 5).unwrap();
        q.push_front(8, 6).unwrap();
        assert_eq!(drain(&mut q), [(8, 6), (9, 5), (2, 5), (3, 5)]);
    }

    #[test]
    fn remove_from_anywhere() {
        let mut q = RunQueue::new();
        for item in 1..=5 {
            q.push_back(item, 7).unwrap();
        }
        q.push_back(6, 2).unwrap();
        assert!(q.remove(3));
        assert!(!q.remove(3));
        assert!(q.remove(1));
        assert!(q.remove(5));
        assert_eq!(q.len(), 3);
        assert!(q.remove(6));
        assert_eq!(q.highest_priority(), Some(7));
        assert!(q.remove(2));
        assert!(q.remove(4));
        assert_eq!(q.highest_priority(), None);
        assert!(q.is_empty());
        // Removing the only item of the top level exposes the next level.
        q.push_back(1, 9).unwrap();
        q.push_back(2, 4).unwrap();
        assert!(q.remove(1));
        assert_eq!(q.highest_priority(), Some(4));
    }

    #[test]
    fn bad_priority_is_refused() {
        let mut q = RunQueue::new();
        for prio in [32, 33, 200, u8::MAX] {
            assert_eq!(q.push_back(1, prio), Err(SchedError::BadPriority));
            assert_eq!(q.push_front(1, prio), Err(SchedError::BadPriority));
        }
        assert!(q.is_empty());
        q.push_back(1, 31).unwrap();
        q.push_back(2, 0).unwrap();
        assert_eq!(drain(&mut q), [(1, 31), (2, 0)]);
    }

    #[test]
    fn duplicates_are_refused_at_any_priority() {
        let mut q = RunQueue::new();
        q.push_back(1, 4).unwrap();
        assert_eq!(q.push_back(1, 4), Err(SchedError::AlreadyQueued));
        assert_eq!(q.push_front(1, 4), Err(SchedError::AlreadyQueued));
        assert_eq!(q.push_back(1, 20), Err(SchedError::AlreadyQueued));
        assert_eq!(q.push_front(1, 0), Err(SchedError::AlreadyQueued));
        assert_eq!(q.len(), 1);
        assert_eq!(q.priority_of(1), Some(4));
        // Once popped it may be queued again.
        assert_eq!(q.pop_highest(), Some((1, 4)));
        q.push_back(1, 20).unwrap();
        assert_eq!(q.priority_of(1), Some(20));
    }

    #[test]
    fn many_items() {
        let mut q = RunQueue::new();
        for item in 0..10_000u32 {
            q.push_back(item, (item % 32) as u8).unwrap();
        }
        assert_eq!(q.len(), 10_000);
        let out = drain(&mut q);
        assert_eq!(out.len(), 10_000);
        // Priorities never rise, and within a level items come out in push order.
        for pair in out.windows(2) {
            let ((a, pa), (b, pb)) = (pair[0], pair[1]);
            assert!(pa > pb || (pa == pb && a < b));
        }
    }
}
