//! Property tests of [`super::check`] over seeded random guest states.
//!
//! The rules are stated here a second time, one by one, as AMD APM vol. 2 §15.5.1 lists them
//! (plus the kernel's CR4 policy), with architectural bit names instead of the checker's
//! constants, and the checker is compared against that statement: a rule dropped, weakened or
//! tightened in the checker makes a property fail.

use super::{check, GuestState, StateError};

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

    /// A random subset of `bits`.
    fn subset(&mut self, bits: u64) -> u64 {
        self.next() & bits
    }
}

const CASES: usize = 100_000;

// EFER (APM vol. 2, "Extended Feature Enable Register").
const SCE: u64 = 1 << 0;
const LME: u64 = 1 << 8;
const LMA: u64 = 1 << 10;
const NXE: u64 = 1 << 11;
const SVME: u64 = 1 << 12;
const LMSLE: u64 = 1 << 13;
const FFXSR: u64 = 1 << 14;
const TCE: u64 = 1 << 15;
/// Every EFER bit the APM defines; the rest are reserved, must be zero.
const EFER_DEFINED: u64 = SCE | LME | LMA | NXE | SVME | LMSLE | FFXSR | TCE;

// CR0.
const PE: u64 = 1 << 0;
const NW: u64 = 1 << 29;
const CD: u64 = 1 << 30;
const PG: u64 = 1 << 31;

// CR4: the bits the kernel lets a guest have, by name.
const VME: u64 = 1 << 0;
const PVI: u64 = 1 << 1;
const TSD: u64 = 1 << 2;
const DE: u64 = 1 << 3;
const PSE: u64 = 1 << 4;
const PAE: u64 = 1 << 5;
const MCE: u64 = 1 << 6;
const PGE: u64 = 1 << 7;
const PCE: u64 = 1 << 8;
const OSFXSR: u64 = 1 << 9;
const OSXMMEXCPT: u64 = 1 << 10;
const FSGSBASE: u64 = 1 << 16;
const PCIDE: u64 = 1 << 17;
const OSXSAVE: u64 = 1 << 18;
const SMEP: u64 = 1 << 20;
const SMAP: u64 = 1 << 21;
const CR4_GUEST: u64 = VME
    | PVI
    | TSD
    | DE
    | PSE
    | PAE
    | MCE
    | PGE
    | PCE
    | OSFXSR
    | OSXMMEXCPT
    | FSGSBASE
    | PCIDE
    | OSXSAVE
    | SMEP
    | SMAP;

/// CR3 in long mode: bits 52-63 lie above the largest physical address and must be zero.
const CR3_LONG_LIMIT: u64 = 1 << 52;

const RULES: [StateError; 12] = [
    StateError::SvmeClear,
    StateError::CacheDisableWithoutNotWriteThrough,
    StateError::Cr0UpperBits,
    StateError::Cr3ReservedBits,
    StateError::Cr4ReservedBits,
    StateError::DebugUpperBits,
    StateError::EferReservedBits,
    StateError::LongModeWithoutPae,
    StateError::LongModeWithoutProtectedMode,
    StateError::LongModeCodeWithDefault32,
    StateError::AsidZero,
    StateError::VmrunNotIntercepted,
];

/// "EFER.LME and CR0.PG are both set": the condition the APM's long-mode checks hang on.
fn long_mode(s: &GuestState) -> bool {
    s.efer & LME != 0 && s.cr0 & PG != 0
}

/// Whether `s` breaks the rule `rule` names, stated on its own.
fn breaks(s: &GuestState, rule: StateError) -> bool {
    let long = long_mode(s);
    match rule {
        StateError::SvmeClear => s.efer & SVME == 0,
        StateError::CacheDisableWithoutNotWriteThrough => s.cr0 & CD == 0 && s.cr0 & NW != 0,
        StateError::Cr0UpperBits => s.cr0 > u64::from(u32::MAX),
        StateError::Cr3ReservedBits => long && s.cr3 >= CR3_LONG_LIMIT,
        StateError::Cr4ReservedBits => s.cr4 & !CR4_GUEST != 0,
        StateError::DebugUpperBits => s.dr6 > u64::from(u32::MAX) || s.dr7 > u64::from(u32::MAX),
        StateError::EferReservedBits => s.efer & !EFER_DEFINED != 0,
        StateError::LongModeWithoutPae => long && s.cr4 & PAE == 0,
        StateError::LongModeWithoutProtectedMode => long && s.cr0 & PE == 0,
        // "EFER.LME, CR0.PG, CR4.PAE, CS.L and CS.D are all non-zero."
        StateError::LongModeCodeWithDefault32 => {
            long && s.cr4 & PAE != 0 && s.cs_long && s.cs_default32
        }
        StateError::AsidZero => s.asid == 0,
        StateError::VmrunNotIntercepted => !s.intercepts_vmrun,
    }
}

/// Every rule `s` breaks.
fn broken(s: &GuestState) -> Vec<StateError> {
    RULES.into_iter().filter(|&r| breaks(s, r)).collect()
}

/// Asserts the checker's verdict on `s` agrees with the rules: `Ok` exactly when no rule is
/// broken, an error only for a rule that is broken, and that rule when it is the only one.
/// Returns the broken rules.
fn assert_agrees(s: &GuestState) -> Vec<StateError> {
    let verdict = check(s);
    let broken = broken(s);
    match verdict {
        Ok(()) => assert!(broken.is_empty(), "accepted, but breaks {broken:?}: {s:x?}"),
        Err(e) => {
            assert!(
                broken.contains(&e),
                "refused for {e:?}, breaks {broken:?}: {s:x?}"
            );
            if let [only] = broken[..] {
                assert_eq!(e, only, "{s:x?}");
            }
        }
    }
    broken
}

/// A state that keeps every rule, built from the rules: real mode, protected mode with or
/// without (PAE) paging, or long mode, with random values wherever the rules leave room.
fn valid_state(rng: &mut Rng) -> GuestState {
    let mut efer = SVME | rng.subset(SCE | NXE | LMSLE | FFXSR | TCE);
    let mut cr0 = rng.next() & 0xffff_ffff & !(PE | NW | CD | PG);
    cr0 |= [0, CD, CD | NW][rng.below(3) as usize];
    let mut cr4 = rng.subset(CR4_GUEST);
    let mut cr3 = rng.next();
    let (mut cs_long, mut cs_default32) = (rng.coin(), rng.coin());
    match rng.below(4) {
        // Real mode; paging without protection is only refused in long mode.
        0 => {
            efer |= rng.subset(LMA);
            cr0 |= rng.subset(PG);
        }
        // Protected mode, no paging (LME may already be set, as before the switch).
        1 => {
            cr0 |= PE;
            efer |= rng.subset(LME | LMA);
        }
        // Legacy paging, 32-bit or PAE.
        2 => cr0 |= PE | PG,
        // Long mode: PAE, CR3 below 2^52, no 64-bit code with D set.
        _ => {
            cr0 |= PE | PG;
            efer |= LME | rng.subset(LMA);
            cr4 |= PAE;
            cr3 &= CR3_LONG_LIMIT - 1;
            if cs_long && cs_default32 {
                if rng.coin() {
                    cs_long = false;
                } else {
                    cs_default32 = false;
                }
            }
        }
    }
    GuestState {
        efer,
        cr0,
        cr3,
        cr4,
        dr6: rng.next() & 0xffff_ffff,
        dr7: rng.next() & 0xffff_ffff,
        cs_long,
        cs_default32,
        asid: (rng.next() as u32).max(1),
        intercepts_vmrun: true,
    }
}

/// A bit of a control register, half the time one the rules look at.
fn bit(rng: &mut Rng, interesting: &[u64]) -> u64 {
    if rng.coin() {
        interesting[rng.below(interesting.len() as u64) as usize]
    } else {
        1 << rng.below(64)
    }
}

/// Flips one bit of one field (or sets a field to an extreme value).
fn mutate(rng: &mut Rng, s: &mut GuestState) {
    if rng.below(8) == 0 {
        match rng.below(6) {
            0 => s.efer = rng.extreme(),
            1 => s.cr0 = rng.extreme(),
            2 => s.cr3 = rng.extreme(),
            3 => s.cr4 = rng.extreme(),
            4 => s.dr7 = rng.extreme(),
            _ => s.asid = [0, u32::MAX, 1][rng.below(3) as usize],
        }
        return;
    }
    match rng.below(10) {
        0 => s.efer ^= bit(rng, &[SVME, LME, LMA, 1 << 9, 1 << 16]),
        1 => s.cr0 ^= bit(rng, &[PE, PG, CD, NW, 1 << 32]),
        2 => s.cr3 ^= bit(rng, &[1 << 52, 1 << 63, 1 << 51]),
        3 => s.cr4 ^= bit(rng, &[PAE, 1 << 12, 1 << 13, 1 << 22]),
        4 => s.dr6 ^= 1 << rng.below(64),
        5 => s.dr7 ^= 1 << rng.below(64),
        6 => s.cs_long ^= true,
        7 => s.cs_default32 ^= true,
        8 => {
            s.asid = if rng.coin() {
                0
            } else {
                s.asid ^ 1 << rng.below(32)
            }
        }
        _ => s.intercepts_vmrun ^= true,
    }
}

/// Property 1: no state makes the checker panic, and its verdict follows the rules even on
/// extreme values (0, all ones, single bits, all but one bit).
#[test]
fn svm_any_state_gets_the_verdict_of_the_rules() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..CASES {
        let s = GuestState {
            efer: rng.extreme(),
            cr0: rng.extreme(),
            cr3: rng.extreme(),
            cr4: rng.extreme(),
            dr6: rng.extreme(),
            dr7: rng.extreme(),
            cs_long: rng.coin(),
            cs_default32: rng.coin(),
            asid: rng.extreme() as u32,
            intercepts_vmrun: rng.coin(),
        };
        assert_agrees(&s);
    }
}

/// Completeness: every state the rules allow (built from them) passes.
#[test]
fn svm_states_built_from_the_rules_pass() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..CASES {
        let s = valid_state(&mut rng);
        assert!(broken(&s).is_empty(), "generator broke a rule: {s:x?}");
        assert_eq!(check(&s), Ok(()), "{s:x?}");
    }
}

/// Property 2: valid states with one to three fields disturbed. Accepted states keep every
/// rule, refusals name a rule the state breaks (the only one, when only one is broken); both
/// verdicts occur often, and every rule is seen broken alone.
#[test]
fn svm_disturbed_states_are_judged_by_the_rules() {
    let mut rng = Rng(0xd1b5_4a32_d192_ed03);
    let (mut accepted, mut refused) = (0, 0);
    let mut alone = [0usize; RULES.len()];
    for _ in 0..CASES {
        let mut s = valid_state(&mut rng);
        for _ in 0..=rng.below(3) {
            mutate(&mut rng, &mut s);
        }
        let broken = assert_agrees(&s);
        if check(&s).is_ok() {
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

/// Property 4: an accepted state stays accepted when only what the rules ignore changes: the
/// low halves of DR6/DR7, a non-zero ASID, CR0/CR4/EFER bits no rule names, CR3 and CS outside
/// long mode, CR3 below 2^52 and CS without L+D in long mode.
#[test]
fn svm_accepted_states_ignore_unchecked_fields() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut changes = 0;
    for _ in 0..CASES {
        let mut s = valid_state(&mut rng);
        for _ in 0..=rng.below(2) {
            mutate(&mut rng, &mut s);
        }
        if check(&s).is_err() {
            continue;
        }
        let mut t = s;
        for _ in 0..=rng.below(3) {
            match rng.below(7) {
                0 => t.dr6 = rng.next() & 0xffff_ffff,
                1 => t.dr7 = rng.next() & 0xffff_ffff,
                2 => t.asid = (rng.next() as u32).max(1),
                3 => t.cr0 ^= rng.next() & 0xffff_ffff & !(PE | NW | CD | PG),
                4 => t.cr4 ^= rng.subset(CR4_GUEST & !PAE),
                5 => t.efer ^= rng.subset(SCE | LMA | NXE | LMSLE | FFXSR | TCE),
                _ if long_mode(&t) => {
                    t.cr3 = rng.next() & (CR3_LONG_LIMIT - 1);
                    (t.cs_long, t.cs_default32) =
                        [(false, false), (false, true), (true, false)][rng.below(3) as usize];
                }
                _ => {
                    t.cr3 = rng.extreme();
                    (t.cs_long, t.cs_default32) = (rng.coin(), rng.coin());
                }
            }
        }
        assert_eq!(check(&t), Ok(()), "{s:x?} accepted, {t:x?} not");
        changes += 1;
    }
    assert!(
        changes > CASES / 4,
        "only {changes} accepted states changed"
    );
}
