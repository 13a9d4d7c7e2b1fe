//! A set of the 256 interrupt vectors, laid out as the APIC's ISR, TMR and IRR registers are:
//! eight 32-bit words, vector `v` at bit `v % 32` of word `v / 32`.

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct VectorSet([u32; 8]);

impl VectorSet {
    pub(super) const EMPTY: VectorSet = VectorSet([0; 8]);

    pub(super) fn insert(&mut self, vector: u8) {
        self.0[usize::from(vector / 32)] |= 1 << (vector % 32);
    }

    pub(super) fn remove(&mut self, vector: u8) {
        self.0[usize::from(vector / 32)] &= !(1 << (vector % 32));
    }

    pub(super) fn set(&mut self, vector: u8, present: bool) {
        if present {
            self.insert(vector);
        } else {
            self.remove(vector);
        }
    }

    pub(super) fn contains(&self, vector: u8) -> bool {
        self.0[usize::from(vector / 32)] & 1 << (vector % 32) != 0
    }

    /// The highest vector in the set.
    pub(super) fn highest(&self) -> Option<u8> {
        let (index, word) = self.0.iter().enumerate().rev().find(|(_, w)| **w != 0)?;
        // index < 8 and the bit < 32: the vector fits in a u8.
        Some((index * 32 + 31 - word.leading_zeros() as usize) as u8)
    }

    /// Register word `index` (0..8) as the guest reads it.
    pub(super) fn word(&self, index: usize) -> u32 {
        self.0.get(index).copied().unwrap_or(0)
    }
}
