//! ASIDs (SVM) and VPIDs (VMX) as a cache, not a resource.
//!
//! The hardware tags TLB entries with a small number per guest. Handing each Vm its own tag
//! for life would make Vm creation fail once the numbers run out (QEMU offers 16 ASIDs), so any
//! server could lock every other out. Instead, as KVM and Linux do, tags are handed out in
//! generations: a vCPU about to enter holds a tag of the current generation, or takes the next
//! free one; when none is left, a new generation starts and every holder takes a fresh tag at its
//! next entry. A tag taken fresh may still have another guest's entries in the TLB, so the
//! caller flushes that tag's entries (all of them, global ones included) before entering.

/// A tag as a vCPU holds it: the number and the generation it was taken in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub tag: u16,
    pub generation: u64,
}

/// The tags of one CPU: numbers `1..limit` (0 is the host's).
#[derive(Clone, Copy, Debug)]
pub struct TagSpace {
    limit: u16,
    next: u16,
    generation: u64,
}

impl TagSpace {
    /// Tags `1..limit`; a `limit` below 2 leaves one tag, 1, shared by every guest (then every
    /// switch flushes).
    pub const fn new(limit: u16) -> TagSpace {
        TagSpace {
            limit: if limit < 2 { 2 } else { limit },
            next: 1,
            generation: 1,
        }
    }

    /// The tag to enter with for a vCPU that holds `held` (None: never had one), and whether it
    /// is fresh (its TLB entries must be flushed first).
    pub fn refresh(&mut self, held: Option<Held>) -> (Held, bool) {
        if let Some(h) = held {
            if h.generation == self.generation {
                return (h, false);
            }
        }
        if self.next >= self.limit {
            self.generation += 1;
            self.next = 1;
        }
        let h = Held {
            tag: self.next,
            generation: self.generation,
        };
        self.next += 1;
        (h, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_tag_stays_until_the_generation_turns() {
        let mut s = TagSpace::new(4);
        let (a, fresh) = s.refresh(None);
        assert!(fresh);
        assert_eq!(s.refresh(Some(a)), (a, false));
        let (b, _) = s.refresh(None);
        let (c, _) = s.refresh(None);
        assert_eq!((a.tag, b.tag, c.tag), (1, 2, 3));
        // Out of numbers: a new generation; the old holders take fresh tags.
        let (d, fresh) = s.refresh(None);
        assert!(fresh);
        assert_eq!(d.tag, 1);
        assert_ne!(d.generation, a.generation);
        let (a2, fresh) = s.refresh(Some(a));
        assert!(fresh);
        assert_eq!(a2.tag, 2);
    }

    /// Property: however many vCPUs ask, no two holders of the current generation share a tag,
    /// tags stay in range, and creation never fails.
    #[test]
    fn current_holders_never_share_a_tag() {
        for limit in [0u16, 1, 2, 3, 16, 4096] {
            let mut s = TagSpace::new(limit);
            let mut held: [Option<Held>; 40] = [None; 40];
            let mut x = 0x2545_f491_4f6c_dd1du64;
            for _ in 0..20_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x % held.len() as u64) as usize;
                let (h, fresh) = s.refresh(held[i]);
                assert!(h.tag >= 1 && h.tag < limit.max(2));
                assert_eq!(fresh, held[i] != Some(h));
                held[i] = Some(h);
                for (j, other) in held.iter().enumerate() {
                    if j != i {
                        assert!(*other != Some(h), "tag {h:?} shared");
                    }
                }
            }
        }
    }
}
