//! Time-slice accounting.

/// Ticks a thread runs before it yields to the next thread of its priority, unless told
/// otherwise.
pub const DEFAULT_SLICE_TICKS: u32 = 2;

/// How many timer ticks a thread has left of its slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    length: u32,
    remaining: u32,
}

impl Default for Slice {
    fn default() -> Self {
        Self::new(DEFAULT_SLICE_TICKS)
    }
}

impl Slice {
    /// A full slice of `ticks` ticks. A slice of 0 ticks is used up by the first tick, like
    /// one of 1.
    pub const fn new(ticks: u32) -> Self {
        Self {
            length: ticks,
            remaining: ticks,
        }
    }

    /// Counts one timer tick; true when the slice is used up (and on every tick after that
    /// until [`Slice::refill`]).
    pub fn tick(&mut self) -> bool {
        self.remaining = self.remaining.saturating_sub(1);
        self.remaining == 0
    }

    /// Starts a full slice again.
    pub fn refill(&mut self) {
        self.remaining = self.length;
    }

    /// Ticks left.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// Ticks in a full slice.
    pub fn length(&self) -> u32 {
        self.length
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_slice_lasts_two_ticks() {
        let mut s = Slice::default();
        assert_eq!(s.remaining(), DEFAULT_SLICE_TICKS);
        assert!(!s.tick());
        assert!(s.tick());
        assert_eq!(s.remaining(), 0);
    }

    #[test]
    fn stays_used_up_until_refilled() {
        let mut s = Slice::new(3);
        assert!(!s.tick());
        assert!(!s.tick());
        assert!(s.tick());
        assert!(s.tick());
        assert_eq!(s.remaining(), 0);
        s.refill();
        assert_eq!((s.remaining(), s.length()), (3, 3));
        assert!(!s.tick());
    }

    #[test]
    fn refill_mid_slice_restores_full_length() {
        let mut s = Slice::new(5);
        s.tick();
        s.tick();
        s.refill();
        assert_eq!(s.remaining(), 5);
    }

    #[test]
    fn zero_and_one_tick_slices() {
        let mut zero = Slice::new(0);
        assert_eq!(zero.remaining(), 0);
        assert!(zero.tick());
        let mut one = Slice::new(1);
        assert!(one.tick());
    }

    #[test]
    fn huge_slice() {
        let mut s = Slice::new(u32::MAX);
        assert!(!s.tick());
        assert_eq!(s.remaining(), u32::MAX - 1);
    }
}
