//! The vCPU state in the words of an exit message or reply (`abi::vm::word`), with typed
//! accessors. The vmm-server copies these words between the UTCB and a [`VcpuState`]; everything
//! else in this crate reads and writes registers through it.

use abi::vm::{segment, word, Segment};

/// General registers in hardware encoding order (the order of [`word::GPRS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Gpr {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rbx = 3,
    Rsp = 4,
    Rbp = 5,
    Rsi = 6,
    Rdi = 7,
}

/// A segment register in its neutral form: selector, 12-bit SVM-layout attributes, limit, base.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Seg {
    pub selector: u16,
    pub attributes: u16,
    pub limit: u32,
    pub base: u64,
}

impl Seg {
    pub const fn new(selector: u16, attributes: u16, limit: u32, base: u64) -> Seg {
        Seg {
            selector,
            attributes,
            limit,
            base,
        }
    }
}

/// All the words of a full exit message or reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuState {
    pub words: [u64; word::COUNT],
}

impl Default for VcpuState {
    fn default() -> Self {
        VcpuState {
            words: [0; word::COUNT],
        }
    }
}

impl VcpuState {
    /// A state holding `msg` (a received message's words; missing words read as 0, extra words
    /// are ignored).
    pub fn from_words(msg: &[u64]) -> VcpuState {
        let mut state = VcpuState::default();
        let n = msg.len().min(word::COUNT);
        state.words[..n].copy_from_slice(&msg[..n]);
        state
    }

    pub fn get(&self, index: usize) -> u64 {
        self.words.get(index).copied().unwrap_or(0)
    }

    pub fn set(&mut self, index: usize, value: u64) {
        if let Some(w) = self.words.get_mut(index) {
            *w = value;
        }
    }

    pub fn gpr(&self, r: Gpr) -> u64 {
        self.get(word::GPRS + r as usize)
    }

    pub fn set_gpr(&mut self, r: Gpr, value: u64) {
        self.set(word::GPRS + r as usize, value);
    }

    pub fn rip(&self) -> u64 {
        self.get(word::RIP)
    }

    pub fn set_rip(&mut self, value: u64) {
        self.set(word::RIP, value);
    }

    pub fn segment(&self, s: Segment) -> Seg {
        let packed = self.get(word::SEGMENTS + 2 * s as usize);
        Seg {
            selector: segment::selector(packed),
            attributes: segment::attributes(packed),
            limit: segment::limit(packed),
            base: self.get(word::SEGMENTS + 2 * s as usize + 1),
        }
    }

    pub fn set_segment(&mut self, s: Segment, seg: Seg) {
        let at = word::SEGMENTS + 2 * s as usize;
        self.set(at, segment::pack(seg.selector, seg.attributes, seg.limit));
        self.set(at + 1, seg.base);
    }
}

pub use abi::vm::reply_len;

#[cfg(test)]
mod tests {
    use super::*;
    use abi::vm::mtd;

    #[test]
    fn short_and_long_messages_are_tolerated() {
        let s = VcpuState::from_words(&[1, 2, 3]);
        assert_eq!(s.get(2), 3);
        assert_eq!(s.rip(), 0);
        let long = [7u64; 100];
        let s = VcpuState::from_words(&long);
        assert_eq!(s.get(word::COUNT - 1), 7);
        assert_eq!(s.get(word::COUNT), 0);
    }

    #[test]
    fn segments_round_trip() {
        let mut s = VcpuState::default();
        let tr = Seg::new(0x18, 0x8b, 0x67, 0x580);
        s.set_segment(Segment::Tr, tr);
        assert_eq!(s.segment(Segment::Tr), tr);
        assert_eq!(s.segment(Segment::Cs), Seg::default());
    }

    #[test]
    fn reply_lengths_cover_the_groups() {
        assert_eq!(reply_len(0), 1);
        assert_eq!(reply_len(mtd::STOP), 1);
        assert_eq!(reply_len(mtd::GPRS), word::RIP);
        assert_eq!(reply_len(mtd::GPRS | mtd::RIP), word::RFLAGS + 1);
        assert_eq!(reply_len(mtd::INJECT), word::INTERRUPTIBILITY + 1);
        assert_eq!(reply_len(mtd::ALL), word::DR7 + 1);
    }
}
