//! Kernel-memory quotas.
//!
//! Kernel memory used on behalf of a protection domain (its objects, capability nodes, page
//! tables) is charged to that domain's [`Quota`], so no domain can exhaust the kernel heap for
//! the others. A domain that creates a child domain moves part of its own room to the child
//! ([`Quota::split`]); when the child is gone the parent takes it back ([`Quota::join`]). The
//! sum of all limits therefore never exceeds what the first domain was given.
//!
//! Invariant: `used <= limit`, kept by every method, so no arithmetic here can overflow.

use core::fmt;

/// A charge or split did not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaExceeded {
    /// Bytes asked for.
    pub wanted: u64,
    /// Bytes that were left.
    pub available: u64,
}

impl fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "quota exceeded: {} bytes wanted, {} available",
            self.wanted, self.available
        )
    }
}

impl From<QuotaExceeded> for abi::Status {
    fn from(_: QuotaExceeded) -> Self {
        Self::QuotaExceeded
    }
}

/// A domain's kernel-memory account: a limit and the bytes charged against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Quota {
    limit: u64,
    used: u64,
}

impl Quota {
    /// A quota of `limit` bytes, none used.
    pub const fn new(limit: u64) -> Self {
        Self { limit, used: 0 }
    }

    /// Charges `bytes`, or refuses without change if fewer are available.
    pub fn charge(&mut self, bytes: u64) -> Result<(), QuotaExceeded> {
        let available = self.available();
        if bytes > available {
            return Err(QuotaExceeded {
                wanted: bytes,
                available,
            });
        }
        // bytes <= limit - used, so this cannot exceed the limit.
        self.used += bytes;
        Ok(())
    }

    /// Gives back `bytes` charged earlier. Releasing more than is used leaves nothing used.
    pub fn release(&mut self, bytes: u64) {
        self.used = self.used.saturating_sub(bytes);
    }

    /// Bytes that can still be charged.
    pub fn available(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }

    /// Bytes charged.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Bytes this quota may charge in all.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Takes `bytes` of the remaining room as a new quota of that limit. The bytes count as
    /// used here until [`Quota::join`] returns them.
    pub fn split(&mut self, bytes: u64) -> Result<Quota, QuotaExceeded> {
        self.charge(bytes)?;
        Ok(Quota::new(bytes))
    }

    /// Takes back a quota made by [`Quota::split`]: its whole limit becomes available here
    /// again. What the child still had charged is forgotten with it, so the caller frees the
    /// child's objects first.
    pub fn join(&mut self, child: Quota) {
        self.release(child.limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charge_and_release() {
        let mut q = Quota::new(100);
        assert_eq!(q.charge(30), Ok(()));
        assert_eq!(q.charge(70), Ok(()));
        assert_eq!((q.used(), q.available(), q.limit()), (100, 0, 100));
        assert_eq!(
            q.charge(1),
            Err(QuotaExceeded {
                wanted: 1,
                available: 0
            })
        );
        q.release(40);
        assert_eq!((q.used(), q.available()), (60, 40));
        assert_eq!(q.charge(0), Ok(()));
        assert_eq!(q.used(), 60);
    }

    #[test]
    fn refused_charge_changes_nothing() {
        let mut q = Quota::new(10);
        q.charge(4).unwrap();
        let before = q;
        assert_eq!(
            q.charge(7),
            Err(QuotaExceeded {
                wanted: 7,
                available: 6
            })
        );
        assert_eq!(q, before);
    }

    #[test]
    fn release_saturates() {
        let mut q = Quota::new(10);
        q.charge(3).unwrap();
        q.release(5);
        assert_eq!((q.used(), q.available()), (0, 10));
        q.release(u64::MAX);
        assert_eq!(q.used(), 0);
    }

    #[test]
    fn default_is_empty() {
        let mut q = Quota::default();
        assert_eq!((q.limit(), q.used(), q.available()), (0, 0, 0));
        assert!(q.charge(1).is_err());
        assert_eq!(q.charge(0), Ok(()));
    }

    #[test]
    fn split_and_join() {
        let mut parent = Quota::new(1000);
        parent.charge(100).unwrap();
        let mut child = parent.split(600).unwrap();
        assert_eq!((parent.used(), parent.available()), (700, 300));
        assert_eq!(
            (child.limit(), child.used(), child.available()),
            (600, 0, 600)
        );
        child.charge(250).unwrap();
        let mut grandchild = child.split(350).unwrap();
        assert_eq!(child.available(), 0);
        assert!(grandchild.charge(351).is_err());
        grandchild.charge(350).unwrap();
        grandchild.release(350);
        child.join(grandchild);
        assert_eq!((child.used(), child.available()), (250, 350));
        child.release(250);
        parent.join(child);
        assert_eq!((parent.used(), parent.available()), (100, 900));
    }

    #[test]
    fn split_too_large_is_refused_without_change() {
        let mut q = Quota::new(50);
        q.charge(20).unwrap();
        assert_eq!(
            q.split(31),
            Err(QuotaExceeded {
                wanted: 31,
                available: 30
            })
        );
        assert_eq!((q.used(), q.available()), (20, 30));
        let all = q.split(30).unwrap();
        assert_eq!(q.available(), 0);
        assert_eq!(all.limit(), 30);
    }

    #[test]
    fn join_of_a_child_with_charges_forgets_them() {
        let mut parent = Quota::new(100);
        let mut child = parent.split(60).unwrap();
        child.charge(60).unwrap();
        parent.join(child);
        assert_eq!((parent.used(), parent.available()), (0, 100));
    }

    #[test]
    fn join_of_a_foreign_quota_cannot_underflow() {
        let mut q = Quota::new(10);
        q.charge(5).unwrap();
        q.join(Quota::new(u64::MAX));
        assert_eq!((q.used(), q.available()), (0, 10));
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut q = Quota::new(u64::MAX);
        assert_eq!(q.available(), u64::MAX);
        q.charge(u64::MAX - 1).unwrap();
        assert_eq!(
            q.charge(2),
            Err(QuotaExceeded {
                wanted: 2,
                available: 1
            })
        );
        q.charge(1).unwrap();
        assert_eq!((q.used(), q.available()), (u64::MAX, 0));
        assert!(q.charge(u64::MAX).is_err());
        assert!(q.split(1).is_err());
        q.release(u64::MAX);
        let child = q.split(u64::MAX).unwrap();
        assert_eq!(child.limit(), u64::MAX);
        q.join(child);
        assert_eq!(q.available(), u64::MAX);
    }

    #[test]
    fn status_code() {
        let e = QuotaExceeded {
            wanted: 1,
            available: 0,
        };
        assert_eq!(abi::Status::from(e), abi::Status::QuotaExceeded);
    }
}
