//! Rights of a capability. One bit set for every object kind; what each bit permits is listed
//! per kind. Delegation may only keep or drop bits, never add them.

/// A set of rights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rights(pub u8);

impl Rights {
    pub const NONE: Rights = Rights(0);
    /// Memory: map readable. Semaphore: down (wait). Portal: none. Pd/Thread: inspect.
    pub const READ: Rights = Rights(1 << 0);
    /// Memory: map writable. Semaphore: up (signal).
    pub const WRITE: Rights = Rights(1 << 1);
    /// Memory: map executable.
    pub const EXEC: Rights = Rights(1 << 2);
    /// Portal: call it. IoPorts: use the ports. Irq: bind it to a semaphore.
    pub const CALL: Rights = Rights(1 << 3);
    /// Pd: create objects in it, map into it, delegate into it. Thread: start, recall.
    pub const CONTROL: Rights = Rights(1 << 4);
    /// Any kind: delegate this capability further (a copy with this bit or fewer).
    pub const GRANT: Rights = Rights(1 << 5);
    /// Vm: change guest memory with `VmPatch` (what the DMP service holds; a VMM may keep it).
    pub const PATCH: Rights = Rights(1 << 6);
    /// Everything.
    pub const ALL: Rights = Rights(0b111_1111);

    pub const fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }

    pub const fn intersection(self, other: Rights) -> Rights {
        Rights(self.0 & other.0)
    }

    /// Rights from a syscall argument; `None` if undefined bits are set.
    pub const fn from_bits(bits: u64) -> Option<Rights> {
        if bits & !(Self::ALL.0 as u64) != 0 {
            None
        } else {
            Some(Rights(bits as u8))
        }
    }
}

impl core::ops::BitOr for Rights {
    type Output = Rights;
    fn bitor(self, rhs: Rights) -> Rights {
        self.union(rhs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_and_undefined_bits() {
        let rw = Rights::READ | Rights::WRITE;
        assert!(rw.contains(Rights::READ));
        assert!(!Rights::READ.contains(rw));
        assert!(Rights::ALL.contains(rw));
        assert_eq!(Rights::from_bits(0b1000_0000), None);
        assert_eq!(Rights::from_bits(0b100_0000), Some(Rights::PATCH));
        assert_eq!(Rights::from_bits(3), Some(rw));
    }
}
