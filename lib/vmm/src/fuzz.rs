//! The reply fuzzer (issue #11): a VMM that answers its guest's exits with hostile replies, so
//! that the kernel's reply checks (`virt::reply`, the backends' guest-state checks,
//! `Shadow::preview`) and its last-moment confinement check (`virt::confine`, before every VM
//! entry; an unconfined vCPU gets `Exit::EntryFailure` with qualification 0 =
//! `abi::vm::entry_error::UNCONFINED`) are hammered on both backends while innocent guests run
//! beside it. A guest gets it with `fuzz_replies = <seed>` in its manifest entry (and must then
//! expect `"any"`: how it ends is random).
//!
//! Decisions:
//!
//! - **Deterministic for a seed.** [`ReplyFuzzer`] draws from an xorshift64 generator whose
//!   state is the seed scrambled by splitmix64 (so 0 is a seed like any other); the number of
//!   draws never depends on the exit's words, only on earlier draws and on the correct reply's
//!   mask. The same seed and the same exits give the same replies. (The exits themselves depend
//!   on timing: the TSC, when profile messages come; a run is reproducible only as far as they
//!   are.)
//! - **About one reply in three is mutated** ([`MUTATE_ONE_IN`]); the rest go out correct, so
//!   the guest makes progress between hostile replies. Profile messages (whose reply the kernel
//!   does not read) and STOP replies are never touched, and the fuzzer never sets `STOP`.
//! - **What a mutation does** ([`Kind`]): mostly ([`Kind::Words`]) random extra groups (any
//!   subset of `mtd::ALL`, filled from the last values the exits showed, [`ReplyFuzzer`]'s
//!   `known`) and, in one to three of the named groups, one to three words replaced by a draw
//!   from a mix: a fully random word, the correct value with 1-3 bits flipped, 0, `u64::MAX`,
//!   the non-canonical addresses `0x0000_8000_0000_0000` and `0xffff_7fff_ffff_ffff`, and per
//!   word: CR0 with PG/PE/CD/NW/WP/… combinations, EFER with LME/LMA/SVME/NXE/…, CR4 with
//!   PAE/LA57/PCIDE/VMXE/…, CR3 with bits above the physical-address width, RFLAGS with
//!   reserved, VM or TF bits, segments with odd attributes (L and D/B both set, CS unusable, a
//!   random type or DPL), table limits above 0xffff, PAT with undefined types, DR7 with upper
//!   bits, and events in INJECT (any vector 0-255, all 8 types, with or without an error code,
//!   with or without VALID, the WINDOW bit, now and then undefined bits). Rarer: a reply that
//!   **drops** groups the correct reply names ([`Kind::Drop`]: a Startup reply without CONTROL
//!   leaves a shadow-mode vCPU without a shadow root, which only the confinement check stops),
//!   a mask with an **undefined group bit** ([`Kind::UnknownBits`]), and a **short** reply
//!   ([`Kind::Short`]: fewer words than `abi::vm::reply_len` of its mask, even none; the caller
//!   sends [`Mutation::short_len`] words).
//! - **A [`Policy`] can spare an emulator** what it cannot take: on QEMU's SVM model (found by
//!   this fuzzer, see `docs/ARCHITECTURE.md`) a guest at CPL > 0 with an unusable TR aborts QEMU
//!   at the first exception ("invalid tss"), and a nested-mode guest that leaves long mode and
//!   falls into an exception loop never takes the host's timer interrupt again, so the whole
//!   machine hangs. [`Policy::keep_cpl_and_tr`] keeps SS's DPL (the CPL) and TR as the correct
//!   reply has them; [`Policy::keep_paging_mode`] keeps CR0.PG/PE, CR4.PAE/LA57 and
//!   EFER.LME/LMA. Everything else about those words is still fuzzed, and the draws are the
//!   same. On Bochs's VMX model a guest entered with RFLAGS.IF clear that loops without exits
//!   is never interrupted by the host's timer: [`Policy::interrupts_on`] sets IF in every reply
//!   that writes RFLAGS. The default policy keeps nothing.
//! - **Refused replies are not resent** ([`FuzzDriver`]): a reply the kernel refuses is
//!   counted and the correct (unfuzzed) reply goes out instead; after
//!   [`MAX_CONSECUTIVE_REFUSALS`] refusals in a row the vCPU is stopped. A vmm-server never
//!   retries a refused reply in a loop (a security invariant of `docs/ARCHITECTURE.md`).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;

use abi::vm::{inject, mtd, reply_len, segment, word, Exit, EXIT_COUNT};

/// One reply in this many is mutated (on average).
pub const MUTATE_ONE_IN: u64 = 3;
/// Refusals in a row after which the fuzzing VMM stops the vCPU.
pub const MAX_CONSECUTIVE_REFUSALS: u32 = 100;
/// Exits between two progress lines ([`FuzzStats::progress_line`]).
pub const PROGRESS_EVERY: u64 = 1_000;
/// Word changes a mutation records for [`ReplyFuzzer::describe_last`].
const MAX_CHANGES: usize = 12;

/// The non-canonical addresses the fuzzer offers: just above the lower half and just below the
/// upper half of the 48-bit address space.
pub const NON_CANONICAL: [u64; 2] = [0x0000_8000_0000_0000, 0xffff_7fff_ffff_ffff];

/// The groups of the transfer mask, lowest bit first.
pub const GROUPS: [u64; 7] = [
    mtd::GPRS,
    mtd::RIP,
    mtd::CONTROL,
    mtd::SEGMENTS,
    mtd::TABLES,
    mtd::INJECT,
    mtd::MSRS,
];

/// The message words of group `group` (one bit of `mtd::ALL`); empty for anything else.
pub fn group_words(group: u64) -> Range<usize> {
    match group {
        mtd::GPRS => word::GPRS..word::GPRS + 16,
        mtd::RIP => word::RIP..word::RFLAGS + 1,
        mtd::CONTROL => word::CR0..word::EFER + 1,
        mtd::SEGMENTS => word::SEGMENTS..word::SEGMENTS + 16,
        mtd::TABLES => word::GDTR_BASE..word::IDTR_LIMIT + 1,
        mtd::INJECT => word::INJECT..word::INTERRUPTIBILITY + 1,
        mtd::MSRS => word::SYSENTER_CS..word::DR7 + 1,
        mtd::XCR0 => word::XCR0..word::XCR0 + 1,
        _ => 0..0,
    }
}

/// What [`ReplyFuzzer::mutate`] did to one reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mutation {
    /// The reply differs from the correct one (its mask or words, or its length).
    pub mutated: bool,
    /// Send only this many words (fewer than `abi::vm::reply_len` of the reply's mask: a reply
    /// too short for its groups); `None`: send `reply_len(mask)` words.
    pub short_len: Option<usize>,
}

/// The kinds of mutation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Extra groups and hostile words in some of the named groups.
    Words,
    /// Some of the groups the correct reply names are left out.
    Drop,
    /// A mask bit that names no group.
    UnknownBits,
    /// Fewer words than the mask's groups need.
    Short,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Words => "words",
            Kind::Drop => "dropped groups",
            Kind::UnknownBits => "undefined mask bits",
            Kind::Short => "short",
        }
    }
}

/// What the fuzzer leaves as the correct reply has it (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// CR0.PG and PE, CR4.PAE and LA57, EFER.LME and LMA.
    pub keep_paging_mode: bool,
    /// SS's DPL (the CPL the kernel derives from it) and both words of TR.
    pub keep_cpl_and_tr: bool,
    /// RFLAGS.IF set in every reply that writes RFLAGS, fuzzed or not ([`FuzzDriver`] applies
    /// it): a guest entered with IF clear on Bochs's VMX model is not interrupted by the host's
    /// timer (external-interrupt exiting notwithstanding), so a looping guest would starve the
    /// system (see `docs/ARCHITECTURE.md`); with IF set the timer gets through. The guest gets no
    /// interrupts either way.
    pub interrupts_on: bool,
}

/// The paging-mode bits [`Policy::keep_paging_mode`] keeps.
const CR0_MODE: u64 = (1 << 31) | 1;
const CR4_MODE: u64 = (1 << 5) | (1 << 12);
const EFER_MODE: u64 = (1 << 8) | (1 << 10);
/// DPL bits of a segment's attributes, in its packed word.
const DPL_BITS: u64 = 0x60 << 16;
/// SS's and TR's packed words (TR's base follows).
const SS_WORD: usize = word::SEGMENTS + 2;
const TR_WORD: usize = word::SEGMENTS + 12;

/// The seeded fuzzer (see the module documentation).
#[derive(Clone, Debug)]
pub struct ReplyFuzzer {
    policy: Policy,
    /// xorshift64 state, never 0.
    rng: u64,
    /// The last value the exits showed, or an accepted reply set, for every word (groups
    /// neither named keep older values): what extra groups start from, so that many hostile
    /// replies are near-valid.
    known: [u64; word::COUNT],
    /// The last mutation: its kind, the correct and the sent mask, the length sent if short,
    /// and the words it changed (index, correct value, new value).
    last_kind: Option<Kind>,
    last_masks: (u64, u64),
    last_short: Option<usize>,
    changes: [(usize, u64, u64); MAX_CHANGES],
    changed: usize,
}

/// splitmix64's finalizer: spreads a seed (0 included) over all 64 bits.
fn scramble(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl ReplyFuzzer {
    pub fn new(seed: u64) -> ReplyFuzzer {
        let state = scramble(seed);
        ReplyFuzzer {
            policy: Policy::default(),
            rng: if state == 0 {
                0x2545_f491_4f6c_dd1d
            } else {
                state
            },
            known: [0; word::COUNT],
            last_kind: None,
            last_masks: (0, 0),
            last_short: None,
            changes: [(0, 0, 0); MAX_CHANGES],
            changed: 0,
        }
    }

    /// The same fuzzer under `policy` (which changes values, never the draws).
    pub fn with_policy(mut self, policy: Policy) -> ReplyFuzzer {
        self.policy = policy;
        self
    }

    /// `value` for word `at` whose correct value is `correct`, with the bits the policy keeps
    /// taken from `correct`.
    fn police(&self, at: usize, correct: u64, value: u64) -> u64 {
        let keep = |bits: u64| (value & !bits) | (correct & bits);
        let (mode, cpl) = (self.policy.keep_paging_mode, self.policy.keep_cpl_and_tr);
        match at {
            word::CR0 if mode => keep(CR0_MODE),
            word::CR4 if mode => keep(CR4_MODE),
            word::EFER if mode => keep(EFER_MODE),
            SS_WORD if cpl => keep(DPL_BITS),
            i if cpl && (i == TR_WORD || i == TR_WORD + 1) => correct,
            _ => value,
        }
    }

    /// The next 64 random bits (xorshift64).
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// A number in `0..n` (`n` > 0; the slight bias of the modulo does not matter here).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability 1/`n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    /// Each bit of `bits` with probability 1/2.
    fn subset(&mut self, bits: u64) -> u64 {
        self.next_u64() & bits
    }

    /// Turns `reply`, the correct answer to the exit `exit_words`, into a hostile one about once
    /// in [`MUTATE_ONE_IN`] calls; returns what it did. Never panics, whatever the words.
    pub fn mutate(&mut self, exit_words: &[u64], reply: &mut [u64; word::COUNT]) -> Mutation {
        self.learn(exit_words);
        let reason = exit_words.get(word::REASON).copied().unwrap_or(u64::MAX);
        let correct = reply[word::MASK];
        if reason == Exit::Profile as u64 || correct & mtd::STOP != 0 {
            return Mutation::default();
        }
        if !self.one_in(MUTATE_ONE_IN) {
            return Mutation::default();
        }
        let before = *reply;
        self.changed = 0;
        self.last_short = None;
        let kind = match self.below(16) {
            0 => Kind::Short,
            1 | 2 if correct & mtd::ALL != 0 => Kind::Drop,
            3 => Kind::UnknownBits,
            _ => Kind::Words,
        };
        let mut short_len = None;
        match kind {
            Kind::Drop => {
                // A strict subset of the correct groups: one of them surely goes, each other
                // one with probability 1/2 (other mask bits kept).
                let named: Vec<u64> = GROUPS
                    .iter()
                    .copied()
                    .filter(|g| correct & g != 0)
                    .collect();
                let gone = named[self.below(named.len() as u64) as usize];
                let keep = self.subset(correct & mtd::ALL) & !gone;
                reply[word::MASK] = (correct & !mtd::ALL) | keep;
            }
            Kind::UnknownBits => {
                // Bits 7..=62: no group, not STOP.
                let bit = 1u64 << (7 + self.below(56));
                let mask = correct | bit | self.subset(mtd::ALL);
                self.fill(reply, mask & !correct);
                reply[word::MASK] = mask;
            }
            Kind::Short => {
                let extra = self.subset(mtd::ALL) | GROUPS[self.below(7) as usize];
                let mask = correct | extra;
                self.fill(reply, mask & !correct);
                reply[word::MASK] = mask;
                let need = reply_len(mask);
                short_len = Some(self.below(need as u64) as usize);
            }
            Kind::Words => {
                let mut extra = 0;
                for g in GROUPS {
                    if self.one_in(4) {
                        extra |= g;
                    }
                }
                let mut mask = correct | extra;
                if mask & mtd::ALL == 0 {
                    mask |= GROUPS[self.below(7) as usize];
                }
                self.fill(reply, mask & !correct);
                reply[word::MASK] = mask;
                let named: Vec<u64> = GROUPS.iter().copied().filter(|g| mask & g != 0).collect();
                let groups = 1 + self.below(3);
                for _ in 0..groups {
                    let g = named[self.below(named.len() as u64) as usize];
                    if g == mtd::INJECT && self.one_in(2) {
                        // A whole random event.
                        let event = self.event();
                        self.set(reply, word::INJECT, event);
                        let error = if self.one_in(2) { 0 } else { self.next_u64() };
                        self.set(reply, word::INJECT_ERROR, error);
                        continue;
                    }
                    let range = group_words(g);
                    for _ in 0..1 + self.below(3) {
                        let at = range.start + self.below(range.len() as u64) as usize;
                        let value = self.value(at, reply[at]);
                        let value = self.police(at, reply[at], value);
                        self.set(reply, at, value);
                    }
                }
            }
        }
        let mask = reply[word::MASK];
        self.last_kind = Some(kind);
        self.last_masks = (correct, mask);
        self.last_short = short_len;
        let mutated = short_len.is_some() || *reply != before;
        Mutation { mutated, short_len }
    }

    /// The kernel accepted `reply` (its words, as many as were sent): the groups it named and
    /// sent whole are the vCPU's state now, and what extra groups start from.
    pub fn accepted(&mut self, reply: &[u64]) {
        let mask = reply.get(word::MASK).copied().unwrap_or(0);
        if mask & mtd::STOP != 0 {
            return;
        }
        for g in GROUPS {
            let r = group_words(g);
            if mask & g != 0 && r.end <= reply.len() {
                self.known[r.clone()].copy_from_slice(&reply[r]);
            }
        }
    }

    /// Notes the groups `exit_words` carries (its mask) as the latest known values.
    fn learn(&mut self, exit_words: &[u64]) {
        let reason = exit_words.get(word::REASON).copied().unwrap_or(u64::MAX);
        if reason == Exit::Profile as u64 {
            return;
        }
        let mask = exit_words.get(word::MASK).copied().unwrap_or(0);
        for g in GROUPS {
            if mask & g == 0 {
                continue;
            }
            for i in group_words(g) {
                if let Some(&v) = exit_words.get(i) {
                    self.known[i] = v;
                }
            }
        }
    }

    /// Fills the words of `groups` in `reply` from the known values (for groups of this exit
    /// the exit's own: [`Self::learn`] has seen it).
    fn fill(&self, reply: &mut [u64; word::COUNT], groups: u64) {
        for g in GROUPS {
            if groups & g != 0 {
                let r = group_words(g);
                reply[r.clone()].copy_from_slice(&self.known[r]);
            }
        }
    }

    /// Sets `reply[at]` and records the change.
    fn set(&mut self, reply: &mut [u64; word::COUNT], at: usize, value: u64) {
        if self.changed < MAX_CHANGES {
            self.changes[self.changed] = (at, reply[at], value);
            self.changed += 1;
        }
        reply[at] = value;
    }

    /// A random event for word `INJECT`: any vector, any of the 8 types, error code or not,
    /// VALID mostly, the WINDOW bit sometimes, undefined bits now and then.
    pub fn event(&mut self) -> u64 {
        let vector = self.below(256);
        let kind = self.below(8) << 8;
        let error = if self.one_in(2) { inject::HAS_ERROR } else { 0 };
        let valid = if self.one_in(8) { 0 } else { inject::VALID };
        let window = if self.one_in(4) { inject::WINDOW } else { 0 };
        let undefined = if self.one_in(8) {
            // Bits 12..=30 and 33..=63.
            self.next_u64() & !(0xfff | inject::VALID | inject::WINDOW)
        } else {
            0
        };
        vector | kind | error | valid | window | undefined
    }

    /// A hostile value for word `at` whose correct value is `correct`.
    fn value(&mut self, at: usize, correct: u64) -> u64 {
        if self.one_in(3) {
            self.generic(correct)
        } else {
            self.specific(at, correct)
        }
    }

    /// A value for any word: random, 1-3 bits flipped, 0, all ones, non-canonical.
    fn generic(&mut self, correct: u64) -> u64 {
        match self.below(6) {
            0 => self.next_u64(),
            1 => {
                let mut v = correct;
                for _ in 0..1 + self.below(3) {
                    v ^= 1 << self.below(64);
                }
                v
            }
            2 => 0,
            3 => u64::MAX,
            4 => NON_CANONICAL[0],
            _ => NON_CANONICAL[1],
        }
    }

    /// A value aimed at what word `at` means.
    fn specific(&mut self, at: usize, correct: u64) -> u64 {
        const PE: u64 = 1;
        const MP: u64 = 1 << 1;
        const EM: u64 = 1 << 2;
        const TS: u64 = 1 << 3;
        const ET: u64 = 1 << 4;
        const NE: u64 = 1 << 5;
        const WP: u64 = 1 << 16;
        const AM: u64 = 1 << 18;
        const NW: u64 = 1 << 29;
        const CD: u64 = 1 << 30;
        const PG: u64 = 1 << 31;
        const CR0_BITS: u64 = PE | MP | EM | TS | ET | NE | WP | AM | NW | CD | PG;
        // VME PVI TSD DE PSE PAE MCE PGE PCE OSFXSR OSXMMEXCPT UMIP LA57 VMXE SMXE FSGSBASE
        // PCIDE OSXSAVE SMEP SMAP PKE.
        const CR4_BITS: u64 = 0x7f_ffff | (1 << 22) | (1 << 24);
        // SCE LME LMA NXE SVME LMSLE FFXSR TCE.
        const EFER_BITS: u64 = 1 | (1 << 8) | (1 << 10) | (1 << 11) | (0xf << 12);
        let reserved_high = |f: &mut Self| 1u64 << (32 + f.below(32));
        match at {
            word::CR0 => {
                let mut v = (correct & !CR0_BITS) | self.subset(CR0_BITS);
                if self.one_in(8) {
                    v |= reserved_high(self);
                }
                v
            }
            word::CR4 => {
                let mut v = correct ^ self.subset(CR4_BITS) & self.subset(CR4_BITS);
                if self.one_in(2) {
                    // PAE, LA57, PCIDE, VMXE: the ones paging and confinement care about.
                    let key = [1 << 5, 1 << 12, 1 << 17, 1 << 13];
                    v ^= key[self.below(4) as usize];
                }
                if self.one_in(8) {
                    v |= 1 << (25 + self.below(7)) | reserved_high(self);
                }
                v
            }
            word::EFER => {
                let mut v = (correct & !EFER_BITS) | self.subset(EFER_BITS);
                if self.one_in(8) {
                    v |= 1 << (1 + self.below(7)) | reserved_high(self);
                }
                v
            }
            word::CR3 => match self.below(4) {
                0 => correct | (self.next_u64() & 0xfff0_0000_0000_0000),
                1 => correct ^ (self.next_u64() & 0xfff),
                2 => self.below(1 << 32) & !0xfff,
                _ => self.generic(correct),
            },
            word::RIP => match self.below(4) {
                0 => correct.wrapping_add(self.below(33)).wrapping_sub(16),
                1 => 1 << (32 + self.below(31)),
                _ => self.generic(correct),
            },
            word::RFLAGS => match self.below(3) {
                // Reserved bits 1, 3, 5, 15, 22+; TF 8, IF 9, IOPL 12-13, NT 14, RF 16, VM 17,
                // AC 18, VIF 19, VIP 20, ID 21.
                0 => correct ^ 1 << self.below(24),
                1 => correct | 1 << self.below(64),
                _ => 2 | self.subset(0x3f_7fd5),
            },
            i if (word::SEGMENTS..word::SEGMENTS + 16).contains(&i)
                && (i - word::SEGMENTS).is_multiple_of(2) =>
            {
                self.segment(correct)
            }
            word::GDTR_LIMIT | word::IDTR_LIMIT => match self.below(3) {
                0 => 0x1_0000 + self.below(1 << 20),
                1 => self.below(0x1_0000),
                _ => self.generic(correct),
            },
            word::INJECT => self.event(),
            word::INTERRUPTIBILITY => match self.one_in(2) {
                true => self.below(4),
                false => self.next_u64(),
            },
            word::SYSENTER_CS => self.below(0x1_0000),
            word::PAT => {
                // Eight entries of types 0..=7 (2, 3 and 7 are not memory types).
                let mut v = 0;
                for i in 0..8 {
                    v |= self.below(8) << (8 * i);
                }
                v
            }
            word::DR7 => match self.below(3) {
                0 => self.next_u64() & 0xffff_ffff,
                1 => correct | 1 << (32 + self.below(32)),
                _ => correct | 1 << 13,
            },
            _ => self.generic(correct),
        }
    }

    /// A segment word (`abi::vm::segment::pack`) with odd attributes.
    fn segment(&mut self, correct: u64) -> u64 {
        let selector = segment::selector(correct);
        let attributes = segment::attributes(correct);
        let limit = segment::limit(correct);
        let (selector, attributes, limit) = match self.below(6) {
            // Long and default-size both set: reserved for code segments.
            0 => (selector, attributes | segment::LONG | segment::DB, limit),
            // Not present: an unusable segment (CS or SS unusable is not a runnable state).
            1 => (selector, attributes & !segment::PRESENT, limit),
            // Any type, S, DPL.
            2 => (
                selector,
                (attributes & !0x7f) | self.below(0x80) as u16,
                limit,
            ),
            3 => (self.next_u64() as u16, attributes, limit),
            4 => (
                selector,
                attributes ^ segment::GRANULARITY,
                self.next_u64() as u32,
            ),
            _ => (selector, self.below(0x1000) as u16, limit),
        };
        segment::pack(selector, attributes, limit)
    }

    /// The kind of the last mutation, if there was one.
    pub fn last_kind(&self) -> Option<Kind> {
        self.last_kind
    }

    /// The last mutation in one line: kind, masks, words changed (`word: correct -> new`).
    pub fn describe_last(&self) -> String {
        let Some(kind) = self.last_kind else {
            return String::from("no mutation yet");
        };
        let (correct, sent) = self.last_masks;
        let mut out = format!("{} (mask {correct:#x} -> {sent:#x}", kind.name());
        if let Some(n) = self.last_short {
            out.push_str(&format!(", {n} words of {}", reply_len(sent)));
        }
        for &(at, old, new) in &self.changes[..self.changed] {
            out.push_str(&format!(", w{at} {old:#x} -> {new:#x}"));
        }
        out.push(')');
        out
    }
}

/// The fuzzing VMM's counts and lines (without the server's `vmm.<guest>: ` prefix).
#[derive(Clone, Debug, Default)]
pub struct FuzzStats {
    pub seed: u64,
    /// Exits received (profile messages are not exits and not counted).
    pub exits: u64,
    /// Exit reasons seen (bit = reason).
    pub kinds: u64,
    /// Replies sent mutated.
    pub mutated: u64,
    /// Replies the kernel refused (`BadArgument`).
    pub refused: u64,
    /// `EntryFailure` exits with `entry_error::UNCONFINED`.
    pub unconfined: u64,
    /// Other `EntryFailure` exits (the hardware, or the kernel's state check, refused).
    pub entry_failures: u64,
    /// Times the guest ended and was started again.
    pub reboots: u64,
    /// Of these, times it had made no exit for the watchdog's recall periods.
    pub stuck: u64,
}

impl FuzzStats {
    /// `fuzz: <exits> exits, <mutated> mutated replies, <refused> refused by the kernel,
    /// <unconfined> unconfined entries refused`.
    pub fn progress_line(&self) -> String {
        format!(
            "fuzz: {} exits, {} mutated replies, {} refused by the kernel, {} unconfined entries refused",
            self.exits, self.mutated, self.refused, self.unconfined
        )
    }

    /// The names of the exit kinds seen, in reason order, comma-separated.
    pub fn kind_names(&self) -> String {
        let names: Vec<&str> = (0..EXIT_COUNT)
            .filter(|r| self.kinds & (1 << r) != 0)
            .filter_map(Exit::from_u64)
            .map(Exit::name)
            .collect();
        names.join(", ")
    }

    /// `fuzz: seed <seed>: <exits> exits over <kinds> exit kinds (<names>), <mutated> mutated,
    /// <refused> refused, <unconfined> unconfined entries refused, kernel alive`.
    pub fn final_line(&self) -> String {
        format!(
            "fuzz: seed {}: {} exits over {} exit kinds ({}), {} mutated, {} refused, {} unconfined entries refused, kernel alive",
            self.seed,
            self.exits,
            self.kinds.count_ones(),
            self.kind_names(),
            self.mutated,
            self.refused,
            self.unconfined
        )
    }

    /// `fuzz: seed <seed>: <reboots> reboots (<stuck> after no exit), <n> entry failures
    /// besides unconfined ones`.
    pub fn extra_line(&self) -> String {
        format!(
            "fuzz: seed {}: {} reboots ({} after no exit), {} entry failures besides unconfined ones",
            self.seed, self.reboots, self.stuck, self.entry_failures
        )
    }
}

/// What the fuzzing VMM does next after the kernel refused a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterRefusal {
    /// Send the correct reply (this many words of [`FuzzDriver::correct`]).
    Correct(usize),
    /// [`MAX_CONSECUTIVE_REFUSALS`] in a row: stop the vCPU.
    Stop,
}

/// The fuzzing VMM's bookkeeping between the exit loop and the fuzzer: counts, the correct
/// reply of the exit being answered, consecutive refusals, the exit cap.
#[derive(Clone, Debug)]
pub struct FuzzDriver {
    pub fuzzer: ReplyFuzzer,
    pub stats: FuzzStats,
    /// Exits after which the guest is stopped.
    pub cap: u64,
    /// The unfuzzed reply to the exit being answered, and its length.
    correct: [u64; word::COUNT],
    correct_len: usize,
    /// The reply last sent, and its length: accepted once the next exit comes.
    sent: [u64; word::COUNT],
    sent_len: usize,
    /// Refusals since the last exit arrived.
    consecutive: u32,
    /// Whether the last reply sent was mutated (for what an exit after it says).
    last_mutated: bool,
    /// [`Policy::interrupts_on`].
    interrupts_on: bool,
}

/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

/// What an exit told the driver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExitNotes {
    /// Lines to log.
    pub lines: Vec<String>,
    /// The exit reached the cap: stop the guest.
    pub capped: bool,
}

impl FuzzDriver {
    pub fn new(seed: u64, cap: u64) -> FuzzDriver {
        FuzzDriver {
            fuzzer: ReplyFuzzer::new(seed),
            stats: FuzzStats {
                seed,
                ..FuzzStats::default()
            },
            cap,
            correct: [0; word::COUNT],
            correct_len: 0,
            sent: [0; word::COUNT],
            sent_len: 0,
            consecutive: 0,
            last_mutated: false,
            interrupts_on: false,
        }
    }

    /// The same driver with its fuzzer under `policy` (and [`Policy::interrupts_on`] applied
    /// to every reply it sends).
    pub fn with_policy(mut self, policy: Policy) -> FuzzDriver {
        self.fuzzer = self.fuzzer.with_policy(policy);
        self.interrupts_on = policy.interrupts_on;
        self
    }

    /// RFLAGS.IF set in `reply` (its first `len` words) if it writes RFLAGS and the policy
    /// says so.
    fn interrupts(&self, reply: &mut [u64; word::COUNT], len: usize) {
        if self.interrupts_on && reply[word::MASK] & mtd::RIP != 0 && len > word::RFLAGS {
            reply[word::RFLAGS] |= RFLAGS_IF;
        }
    }

    /// An exit message arrived (the previous reply was accepted): counts it and says what to
    /// log. Profile messages are not exits: no count, no lines.
    pub fn exit(&mut self, words: &[u64]) -> ExitNotes {
        let mut notes = ExitNotes::default();
        let reason = words.get(word::REASON).copied().unwrap_or(u64::MAX);
        if reason == Exit::Profile as u64 {
            return notes;
        }
        self.consecutive = 0;
        self.fuzzer.accepted(&self.sent[..self.sent_len]);
        self.stats.exits += 1;
        if reason < 64 {
            self.stats.kinds |= 1 << reason;
        }
        if reason == Exit::EntryFailure as u64 {
            let q0 = words.get(word::QUAL0).copied().unwrap_or(0);
            let q1 = words.get(word::QUAL1).copied().unwrap_or(0);
            if q0 == abi::vm::entry_error::UNCONFINED {
                self.stats.unconfined += 1;
                notes
                    .lines
                    .push(format!("fuzz: unconfined entry refused (breach {q1})"));
            } else {
                self.stats.entry_failures += 1;
                if self.stats.entry_failures <= 16 {
                    let after = if self.last_mutated {
                        format!("a mutated reply: {}", self.fuzzer.describe_last())
                    } else {
                        String::from("a correct reply")
                    };
                    notes.lines.push(format!(
                        "fuzz: entry failure (code {q0}, detail {q1:#x}) after {after}"
                    ));
                }
            }
        }
        if self.stats.exits.is_multiple_of(PROGRESS_EVERY) {
            notes.lines.push(self.stats.progress_line());
        }
        notes.capped = self.stats.exits >= self.cap;
        notes
    }

    /// The reply to send for the exit `exit_words` whose correct reply is `correct` (its words,
    /// at most `word::COUNT`): kept as the correct reply, fuzzed into `out`; returns how many
    /// words of `out` to send.
    pub fn reply(
        &mut self,
        exit_words: &[u64],
        correct: &[u64],
        out: &mut [u64; word::COUNT],
    ) -> usize {
        let n = correct.len().min(word::COUNT);
        self.correct = [0; word::COUNT];
        self.correct[..n].copy_from_slice(&correct[..n]);
        self.correct_len = n;
        let mut correct_words = self.correct;
        self.interrupts(&mut correct_words, n);
        self.correct = correct_words;
        *out = self.correct;
        let m = self.fuzzer.mutate(exit_words, out);
        self.last_mutated = m.mutated;
        if m.mutated {
            self.stats.mutated += 1;
        }
        let len = match m.short_len {
            Some(len) => len.min(word::COUNT),
            None if m.mutated => reply_len(out[word::MASK]),
            None => n,
        };
        self.interrupts(out, len);
        self.sent = *out;
        self.sent_len = len;
        len
    }

    /// The kernel refused the last reply: the correct reply goes out next (into `out`), or,
    /// after [`MAX_CONSECUTIVE_REFUSALS`] in a row, the vCPU is stopped.
    pub fn refused(&mut self, out: &mut [u64; word::COUNT]) -> AfterRefusal {
        self.stats.refused += 1;
        self.consecutive += 1;
        self.last_mutated = false;
        if self.consecutive >= MAX_CONSECUTIVE_REFUSALS {
            return AfterRefusal::Stop;
        }
        *out = self.correct;
        self.sent = self.correct;
        self.sent_len = self.correct_len;
        AfterRefusal::Correct(self.correct_len)
    }

    /// Refusals since the last exit.
    pub fn consecutive_refusals(&self) -> u32 {
        self.consecutive
    }
}

#[cfg(test)]
#[path = "fuzz_tests.rs"]
mod tests;
