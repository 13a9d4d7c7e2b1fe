//! The user thread control block: one page per thread, mapped in its domain, through which
//! messages travel. The kernel copies between the sender's and the receiver's UTCB; it validates
//! the tag before it trusts any count in it.

/// Untyped words a message carries at most.
pub const MSG_WORDS: usize = 64;

/// A message's descriptor: how many words, whether a capability travels, and a label that the
/// kernel passes on untouched (the protocol's operation code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MsgTag(pub u64);

impl MsgTag {
    const WORDS_MASK: u64 = 0x7f;
    const CAP_BIT: u64 = 1 << 8;
    const LABEL_SHIFT: u32 = 16;

    /// A tag for `words` words (at most [`MSG_WORDS`]), with or without a capability.
    pub const fn new(label: u64, words: usize, cap: bool) -> MsgTag {
        let words = if words > MSG_WORDS { MSG_WORDS } else { words } as u64;
        MsgTag((label << Self::LABEL_SHIFT) | words | if cap { Self::CAP_BIT } else { 0 })
    }

    /// Word count, or `None` if the tag claims more than [`MSG_WORDS`].
    pub const fn words(self) -> Option<usize> {
        let words = (self.0 & Self::WORDS_MASK) as usize;
        if words > MSG_WORDS {
            None
        } else {
            Some(words)
        }
    }

    pub const fn has_cap(self) -> bool {
        self.0 & Self::CAP_BIT != 0
    }

    pub const fn label(self) -> u64 {
        self.0 >> Self::LABEL_SHIFT
    }
}

/// Layout of the UTCB page.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Utcb {
    /// Descriptor of the message in `words`.
    pub tag: MsgTag,
    /// Sending: selector of the capability to transfer (when the tag says so).
    pub cap_send: u64,
    /// Sending: rights the transferred copy keeps (a subset of the sender's).
    pub cap_send_rights: u64,
    /// Receiving: the selector where a transferred capability lands in the receiver's space.
    pub cap_recv: u64,
    /// Receiving: set by the kernel: 1 if a capability was received at `cap_recv`.
    pub cap_received: u64,
    /// Receiving: set by the kernel to the badge of the portal called.
    pub badge: u64,
    pub reserved: [u64; 2],
    /// Message payload.
    pub words: [u64; MSG_WORDS],
}

impl Utcb {
    pub const fn new() -> Utcb {
        Utcb {
            tag: MsgTag(0),
            cap_send: 0,
            cap_send_rights: 0,
            cap_recv: 0,
            cap_received: 0,
            badge: 0,
            reserved: [0; 2],
            words: [0; MSG_WORDS],
        }
    }
}

impl Default for Utcb {
    fn default() -> Self {
        Self::new()
    }
}

const _: () = assert!(core::mem::size_of::<Utcb>() <= 4096);

/// Fault messages: what the kernel sends to a domain's fault portal when one of its threads
/// faults. The label is [`FAULT_LABEL`]; words are `[vector, error_code, rip, fault_address,
/// thread_badge]`. The faulting thread is stopped; a reply with label [`RESUME_LABEL`] and word 0
/// = new RIP resumes it, any other reply ends it.
pub const FAULT_LABEL: u64 = 0xfa17;
pub const RESUME_LABEL: u64 = 0x7e5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_pack_and_validate() {
        let tag = MsgTag::new(0x1234, 5, true);
        assert_eq!(tag.words(), Some(5));
        assert!(tag.has_cap());
        assert_eq!(tag.label(), 0x1234);
        assert_eq!(MsgTag::new(1, 1000, false).words(), Some(MSG_WORDS));
        assert_eq!(MsgTag(0x7f).words(), None);
    }
}
