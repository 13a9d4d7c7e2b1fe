//! Property tests of [`super::check`] and [`super::check_event`] over seeded random replies.
//!
//! The rules are stated here a second time (the `abi::vm` contract for which words a mask
//! names, the SDM/APM rules for RFLAGS, RIP, bases, PAT, DR7 and event injection), written
//! with architectural values rather than the checker's constants, and the checker is compared
//! against that statement: a rule dropped, weakened or tightened makes a property fail.

use super::{check, check_event, ReplyError};
use abi::vm::{mtd, word};
use core::ops::Range;

/// xorshift64: reproducible inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 != 0
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }

    /// 0, all ones, one bit, all but one bit, a random word, or a random word shifted down.
    fn extreme(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => u64::MAX,
            2 => 1 << self.below(64),
            3 => !(1 << self.below(64)),
            4 => self.next(),
            _ => self.next() >> self.below(64),
        }
    }

    /// A random canonical (48-bit) address.
    fn canonical(&mut self) -> u64 {
        sign_extend_47(self.next())
    }
}

const CASES: usize = 100_000;
type Words = [u64; word::COUNT];

/// The reply words each group of a mask names (`abi::vm::mtd`); the interruptibility word and
/// the exit-only words belong to no group of a reply.
fn groups() -> [(u64, Range<usize>); 8] {
    [
        (1 << 0, word::GPRS..word::GPRS + 16),
        (1 << 1, word::RIP..word::RFLAGS + 1),
        (1 << 2, word::CR0..word::EFER + 1),
        (1 << 3, word::SEGMENTS..word::SEGMENTS + 16),
        (1 << 4, word::GDTR_BASE..word::IDTR_LIMIT + 1),
        (1 << 5, word::INJECT..word::INJECT_ERROR + 1),
        (1 << 6, word::SYSENTER_CS..word::DR7 + 1),
        (1 << 7, word::XCR0..word::XCR0 + 1),
    ]
}

/// Mask bits that name groups, and the stop bit; any other bit is unknown.
const KNOWN_MASK: u64 = 0xff | 1 << 63;

/// Whether a reply with `mask` writes word `i`.
fn names(mask: u64, i: usize) -> bool {
    groups()
        .iter()
        .any(|(bit, words)| mask & bit != 0 && words.contains(&i))
}

/// The state the vCPU would have after the reply: its words where it names them, the current
/// ones elsewhere.
fn after(reply: &Words, current: &Words) -> Words {
    core::array::from_fn(|i| {
        if names(reply[word::MASK], i) {
            reply[i]
        } else {
            current[i]
        }
    })
}

fn sign_extend_47(a: u64) -> u64 {
    ((a << 16) as i64 >> 16) as u64
}

/// Canonical: bits 63:47 all equal.
fn canonical(a: u64) -> bool {
    sign_extend_47(a) == a
}

fn below_4g(a: u64) -> bool {
    a <= u64::from(u32::MAX)
}

/// RFLAGS bits a guest may have: CF, (1), PF, AF, ZF, SF, TF, IF, DF, OF, IOPL, NT, RF, AC,
/// VIF, VIP, ID. Not VM (virtual-8086 mode is not supported), not the reserved 3, 5, 15, 22+.
const RFLAGS_ALLOWED: u64 = 1 << 0
    | 1 << 1
    | 1 << 2
    | 1 << 4
    | 1 << 6
    | 1 << 7
    | 1 << 8
    | 1 << 9
    | 1 << 10
    | 1 << 11
    | 3 << 12
    | 1 << 14
    | 1 << 16
    | 1 << 18
    | 1 << 19
    | 1 << 20
    | 1 << 21;
const IF: u64 = 1 << 9;
const EFER_LMA: u64 = 1 << 10;
/// CS.L in a packed segment word: attribute bit 9, word bit 16 + 9.
const PACKED_L: u64 = 1 << 25;
/// PAT memory types: UC, WC, WT, WP, WB, UC-. Types 2, 3 and 8+ are reserved.
const PAT_TYPES: [u8; 6] = [0, 1, 4, 5, 6, 7];

// Injection (`abi::vm::inject`, the VMX interruption-information layout).
const VALID: u64 = 1 << 31;
const ERROR: u64 = 1 << 11;
const WINDOW: u64 = 1 << 32;
const EXTERNAL: u64 = 0;
const NMI: u64 = 2;
const EXCEPTION: u64 = 3;
/// Exception vectors that exist (not 2: NMI, 9: coprocessor overrun, 15 and 22-31: reserved).
const EXCEPTIONS: [u64; 19] = [
    0, 1, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 21,
];
/// #DF #TS #NP #SS #GP #PF #AC #CP push an error code in protected mode.
const WITH_ERROR: [u64; 8] = [8, 10, 11, 12, 13, 14, 17, 21];

/// Whether `event` may be injected: only defined bits (vector, type, error flag, valid,
/// window); when valid, an external interrupt (vector 32+, no error code, the guest can take
/// it), NMI (vector 2, no error code) or an existing exception with an error code exactly when
/// it pushes one in protected mode.
fn injectable(event: u64, protected: bool, interruptible: bool) -> bool {
    if event & !(0xfff | VALID | WINDOW) != 0 {
        return false;
    }
    if event & VALID == 0 {
        return true;
    }
    let vector = event & 0xff;
    let error = event & ERROR != 0;
    match event >> 8 & 7 {
        EXTERNAL => vector >= 32 && !error && interruptible,
        NMI => vector == 2 && !error,
        EXCEPTION => {
            EXCEPTIONS.contains(&vector) && error == (protected && WITH_ERROR.contains(&vector))
        }
        _ => false,
    }
}

const RULES: [ReplyError; 6] = [
    ReplyError::UnknownGroups,
    ReplyError::Rflags,
    ReplyError::Rip,
    ReplyError::Base,
    ReplyError::Msr,
    ReplyError::Event,
];

/// Whether `reply` (against `current`) breaks the rule `rule` names, stated on its own.
fn breaks(reply: &Words, current: &Words, rule: ReplyError) -> bool {
    let mask = reply[word::MASK];
    let named = |group: u64| mask & group != 0;
    let s = after(reply, current);
    let rflags = s[word::RFLAGS];
    match rule {
        ReplyError::UnknownGroups => mask & !KNOWN_MASK != 0,
        ReplyError::Rflags => rflags & !RFLAGS_ALLOWED != 0 || rflags & 2 == 0,
        ReplyError::Rip => {
            let code64 = s[word::EFER] & EFER_LMA != 0 && s[word::SEGMENTS] & PACKED_L != 0;
            let rip = s[word::RIP];
            if code64 {
                !canonical(rip)
            } else {
                !below_4g(rip)
            }
        }
        ReplyError::Base => {
            let mut segment_bases = (0..8).map(|i| reply[word::SEGMENTS + 2 * i + 1]);
            (named(mtd::SEGMENTS) && segment_bases.any(|b| !canonical(b)))
                || (named(mtd::TABLES)
                    && (!canonical(reply[word::GDTR_BASE])
                        || !canonical(reply[word::IDTR_BASE])
                        || reply[word::GDTR_LIMIT] >= 1 << 16
                        || reply[word::IDTR_LIMIT] >= 1 << 16))
                || (named(mtd::MSRS)
                    && (!canonical(reply[word::SYSENTER_ESP])
                        || !canonical(reply[word::SYSENTER_EIP])))
        }
        ReplyError::Msr => {
            named(mtd::MSRS)
                && (reply[word::PAT]
                    .to_le_bytes()
                    .iter()
                    .any(|t| !PAT_TYPES.contains(t))
                    || !below_4g(reply[word::DR7]))
        }
        ReplyError::Event => {
            let protected = s[word::CR0] & 1 != 0;
            // Moving RIP (an emulated instruction) ends an STI/MOV SS shadow.
            let moved = named(mtd::RIP) && reply[word::RIP] != current[word::RIP];
            let shadow = current[word::INTERRUPTIBILITY] & 1 != 0 && !moved;
            let interruptible = rflags & IF != 0 && !shadow;
            named(mtd::INJECT) && !injectable(reply[word::INJECT], protected, interruptible)
        }
    }
}

/// Every rule the reply breaks. A mask naming unknown groups is refused for that alone: the
/// rest of such a reply means nothing.
fn broken(reply: &Words, current: &Words) -> Vec<ReplyError> {
    if breaks(reply, current, ReplyError::UnknownGroups) {
        return vec![ReplyError::UnknownGroups];
    }
    RULES
        .into_iter()
        .filter(|&r| breaks(reply, current, r))
        .collect()
}

/// Asserts the checker agrees with the rules: `Ok` exactly when none is broken, an error only
/// for a broken rule, and that rule when it is the only one. Returns the broken rules.
fn assert_agrees(reply: &Words, current: &Words) -> Vec<ReplyError> {
    let broken = broken(reply, current);
    match check(reply, current) {
        Ok(()) => assert!(
            broken.is_empty(),
            "accepted, but breaks {broken:?}\nreply {reply:x?}\ncurrent {current:x?}"
        ),
        Err(e) => {
            assert!(
                broken.contains(&e),
                "refused for {e:?}, breaks {broken:?}\nreply {reply:x?}\ncurrent {current:x?}"
            );
            if let [only] = broken[..] {
                assert_eq!(e, only, "reply {reply:x?}\ncurrent {current:x?}");
            }
        }
    }
    broken
}

/// An event, valid or not, of any kind, half the time with an interesting vector.
fn event(rng: &mut Rng) -> u64 {
    let vector = if rng.coin() {
        rng.pick(&[0, 2, 8, 9, 13, 14, 15, 21, 22, 31, 32, 0x80, 0xff])
    } else {
        rng.below(256)
    };
    let any = rng.below(8);
    let kind = rng.pick(&[EXTERNAL, NMI, EXCEPTION, EXCEPTION, EXTERNAL, any]);
    let mut e = vector | kind << 8;
    if rng.coin() {
        e |= ERROR;
    }
    if rng.below(8) != 0 {
        e |= VALID;
    }
    if rng.below(4) == 0 {
        e |= WINDOW;
    }
    if rng.below(16) == 0 {
        e |= 1 << rng.below(64);
    }
    e
}

/// A vCPU state that is a good reply in itself (every group right): real mode, 32-bit
/// protected mode, compatibility mode or 64-bit mode, random wherever the rules leave room.
fn valid_current(rng: &mut Rng) -> Words {
    let mut w: Words = core::array::from_fn(|_| rng.next());
    let (cr0, efer, long_code) = match rng.below(4) {
        0 => (0x10, 0, false),
        1 => (0x11 | rng.pick(&[0, 1 << 31]), rng.pick(&[0, 1]), false),
        2 => (0x8000_0011, 0x500, false),
        _ => (0x8000_0011, 0xd01, true),
    };
    w[word::CR0] = cr0 | (rng.next() & 0x6005_0020);
    w[word::EFER] = efer;
    w[word::RFLAGS] = 2 | (rng.next() & RFLAGS_ALLOWED & !(1 << 17));
    w[word::RIP] = if long_code {
        rng.canonical()
    } else {
        rng.next() & 0xffff_ffff
    };
    for i in 0..8 {
        w[word::SEGMENTS + 2 * i + 1] = if rng.coin() {
            rng.canonical()
        } else {
            rng.next() & 0xffff_ffff
        };
    }
    let cs = w[word::SEGMENTS] & !PACKED_L;
    w[word::SEGMENTS] = if long_code { cs | PACKED_L } else { cs };
    for base in [word::GDTR_BASE, word::IDTR_BASE] {
        w[base] = rng.canonical();
    }
    for limit in [word::GDTR_LIMIT, word::IDTR_LIMIT] {
        w[limit] = rng.below(1 << 16);
    }
    w[word::INTERRUPTIBILITY] = rng.below(4);
    w[word::SYSENTER_CS] &= 0xffff;
    w[word::SYSENTER_ESP] = rng.canonical();
    w[word::SYSENTER_EIP] = rng.canonical();
    w[word::PAT] = u64::from_le_bytes(core::array::from_fn(|_| rng.pick(&PAT_TYPES)));
    w[word::DR7] = rng.next() & 0xffff_ffff;
    let interruptible = w[word::RFLAGS] & IF != 0 && w[word::INTERRUPTIBILITY] & 1 == 0;
    let e = event(rng);
    w[word::INJECT] = if injectable(e, cr0 & 1 != 0, interruptible) {
        e
    } else {
        0
    };
    w[word::MASK] = mtd::ALL;
    w
}

/// Words that decide a verdict, and how to disturb them.
const TOUCHY: [usize; 18] = [
    word::RIP,
    word::RFLAGS,
    word::CR0,
    word::EFER,
    word::SEGMENTS,
    word::SEGMENTS + 1,
    word::SEGMENTS + 7,
    word::SEGMENTS + 15,
    word::GDTR_BASE,
    word::GDTR_LIMIT,
    word::IDTR_BASE,
    word::IDTR_LIMIT,
    word::INJECT,
    word::INTERRUPTIBILITY,
    word::SYSENTER_ESP,
    word::SYSENTER_EIP,
    word::PAT,
    word::DR7,
];

fn disturb(rng: &mut Rng, w: &mut Words) {
    let i = if rng.below(4) == 0 {
        rng.below(word::COUNT as u64) as usize
    } else {
        rng.pick(&TOUCHY)
    };
    match rng.below(8) {
        0 => w[i] = rng.extreme(),
        1 if i == word::INJECT => w[i] = event(rng),
        1 if i == word::PAT => w[i] ^= rng.below(8) << (8 * rng.below(8)),
        // Around the canonical boundary and 4 GiB.
        1 | 2 => w[i] ^= 1 << rng.pick(&[31, 32, 46, 47, 48, 62, 63, 16]),
        3 if i == word::EFER => w[i] ^= EFER_LMA,
        3 if i == word::SEGMENTS => w[i] ^= PACKED_L,
        3 if i == word::RFLAGS => w[i] ^= rng.pick(&[2, 1 << 3, 1 << 17, 1 << 22, IF]),
        3 if i == word::CR0 => w[i] ^= 1,
        _ => w[i] ^= 1 << rng.below(64),
    }
}

/// A reply to `current`: its words with a random mask (now and then with the stop bit or an
/// unknown group) and one to three disturbed words; now and then the current state disturbed too.
fn disturbed_reply(rng: &mut Rng, current: &mut Words) -> Words {
    let mut reply = *current;
    reply[word::MASK] = if rng.coin() {
        mtd::ALL
    } else {
        rng.next() & mtd::ALL
    };
    if rng.below(16) == 0 {
        reply[word::MASK] |= mtd::STOP;
    }
    if rng.below(32) == 0 {
        reply[word::MASK] |= 1 << rng.below(64);
    }
    for _ in 0..=rng.below(3) {
        disturb(rng, &mut reply);
    }
    if rng.below(4) == 0 {
        disturb(rng, current);
    }
    reply
}

/// Property 1: no words make the checker panic, and its verdict follows the rules even on
/// extreme values (0, all ones, single bits, all but one bit) in every word.
#[test]
fn reply_any_words_get_the_verdict_of_the_rules() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut accepted = 0;
    for _ in 0..CASES {
        let current: Words = core::array::from_fn(|_| rng.extreme());
        let mut reply: Words = core::array::from_fn(|_| rng.extreme());
        if rng.coin() {
            reply[word::MASK] &= KNOWN_MASK;
        }
        if assert_agrees(&reply, &current).is_empty() {
            accepted += 1;
        }
    }
    assert!(accepted > 0, "nothing accepted");
}

/// Property 1 for events alone: never a panic, and the verdict of the injection rules.
#[test]
fn events_get_the_verdict_of_the_injection_rules() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..CASES {
        let e = if rng.below(8) == 0 {
            rng.extreme()
        } else {
            event(&mut rng)
        };
        let (protected, interruptible) = (rng.coin(), rng.coin());
        let ok = injectable(e, protected, interruptible);
        let verdict = check_event(e, protected, interruptible);
        assert!(
            verdict == Ok(()) && ok || verdict == Err(ReplyError::Event) && !ok,
            "{e:#x} protected {protected} interruptible {interruptible}: {verdict:?}"
        );
        if ok {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    assert!(accepted > CASES / 10 && refused > CASES / 10);
}

/// Property 2: the valid state as a reply with one to three words disturbed. Accepted replies
/// keep every rule; refusals name a rule the reply breaks (the only one, when only one is);
/// both verdicts occur often and every rule is seen broken alone.
#[test]
fn reply_disturbed_replies_are_judged_by_the_rules() {
    let mut rng = Rng(0xd1b5_4a32_d192_ed03);
    let (mut accepted, mut refused) = (0, 0);
    let mut alone = [0usize; RULES.len()];
    for _ in 0..CASES {
        let mut current = valid_current(&mut rng);
        let reply = disturbed_reply(&mut rng, &mut current);
        let broken = assert_agrees(&reply, &current);
        if broken.is_empty() {
            accepted += 1;
        } else {
            refused += 1;
        }
        if let [only] = broken[..] {
            alone[RULES.iter().position(|&r| r == only).unwrap()] += 1;
        }
    }
    assert!(accepted > CASES / 10, "only {accepted} accepted");
    assert!(refused > CASES / 10, "only {refused} refused");
    for (rule, n) in RULES.iter().zip(alone) {
        assert!(n >= 100, "{rule:?} broken alone only {n} times");
    }
}

/// Property 3: words the mask does not name never matter. The valid state sent back under any
/// mask is accepted whatever the unnamed words hold; a disturbed reply gets the same verdict
/// (the same error) whatever its unnamed words hold.
#[test]
fn reply_words_outside_the_mask_never_matter() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for _ in 0..CASES {
        let mut current = valid_current(&mut rng);
        let mut reply = current;
        reply[word::MASK] = rng.next() & (mtd::ALL | mtd::STOP);
        let garble = |rng: &mut Rng, reply: &Words| -> Words {
            core::array::from_fn(|i| {
                if i == word::MASK || names(reply[word::MASK], i) {
                    reply[i]
                } else {
                    rng.extreme()
                }
            })
        };
        let garbled = garble(&mut rng, &reply);
        assert_eq!(check(&reply, &current), Ok(()), "{reply:x?}");
        assert_eq!(check(&garbled, &current), Ok(()), "{garbled:x?}");

        let reply = disturbed_reply(&mut rng, &mut current);
        let garbled = garble(&mut rng, &reply);
        assert_eq!(
            check(&garbled, &current),
            check(&reply, &current),
            "reply {reply:x?}\ngarbled {garbled:x?}\ncurrent {current:x?}"
        );
    }
}

/// Property 4: an accepted reply stays accepted when only what the rules ignore changes: the
/// stop bit; GPRs, CR2-CR4, INJECT_ERROR and SYSENTER_CS on either side; every segment word
/// but CS's L bit and the bases; current words the reply overrides (but the interruptibility
/// word, which always comes from the current state); words in no group.
#[test]
fn reply_accepted_replies_ignore_unchecked_words() {
    let mut rng = Rng(0xa076_1d64_78bd_642f);
    let mut changes = 0;
    let always_ignored: Vec<usize> = (word::GPRS..word::GPRS + 16)
        .chain([word::CR2, word::CR3, word::CR4, word::INJECT_ERROR])
        .chain([word::SYSENTER_CS, word::REASON, word::QUAL0, word::QUAL1])
        .chain([word::INSTRUCTION_LEN, word::EXIT_TSC, word::GUEST_TSC])
        .chain((1..8).map(|i| word::SEGMENTS + 2 * i))
        .collect();
    for _ in 0..CASES {
        let mut current = valid_current(&mut rng);
        let reply = disturbed_reply(&mut rng, &mut current);
        if check(&reply, &current).is_err() {
            continue;
        }
        let (mut r, mut c) = (reply, current);
        for _ in 0..=rng.below(4) {
            let side = if rng.coin() { &mut r } else { &mut c };
            match rng.below(5) {
                0 => r[word::MASK] ^= mtd::STOP,
                1 => side[rng.pick(&always_ignored)] = rng.extreme(),
                2 => side[word::SEGMENTS] ^= rng.next() & !PACKED_L,
                3 => r[word::INTERRUPTIBILITY] = rng.extreme(),
                _ => {
                    let i = rng.below(word::COUNT as u64) as usize;
                    if i != word::MASK && names(r[word::MASK], i) {
                        c[i] = rng.extreme();
                    }
                }
            }
        }
        assert_eq!(
            check(&r, &c),
            Ok(()),
            "reply {reply:x?} accepted, {r:x?} not\ncurrent {current:x?} then {c:x?}"
        );
        changes += 1;
    }
    assert!(
        changes > CASES / 10,
        "only {changes} accepted replies changed"
    );
}
