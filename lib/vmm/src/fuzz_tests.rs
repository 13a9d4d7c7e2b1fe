use super::*;

use abi::vm::entry_error;

/// A plausible exit message of `reason` carrying `mask`, its words from `rng`.
fn exit_words(reason: Exit, mask: u64, values: &mut ReplyFuzzer) -> [u64; word::COUNT] {
    let mut w = [0u64; word::COUNT];
    for x in w.iter_mut() {
        *x = values.next_u64();
    }
    w[word::MASK] = mask;
    w[word::REASON] = reason as u64;
    w
}

/// The correct reply to `exit`: its words with `mask`.
fn correct(exit: &[u64; word::COUNT], mask: u64) -> [u64; word::COUNT] {
    let mut r = *exit;
    r[word::MASK] = mask;
    r
}

/// A Startup exit and the full reply to it.
fn startup() -> ([u64; word::COUNT], [u64; word::COUNT]) {
    let mut values = ReplyFuzzer::new(12345);
    let exit = exit_words(Exit::Startup, mtd::ALL, &mut values);
    (exit, correct(&exit, mtd::ALL))
}

/// A mixed stream of exits: (exit words, correct reply).
fn stream(n: usize, seed: u64) -> Vec<([u64; word::COUNT], [u64; word::COUNT])> {
    let mut values = ReplyFuzzer::new(seed);
    let kinds = [
        (Exit::Startup, mtd::ALL, mtd::ALL),
        (Exit::Cpuid, mtd::GPRS | mtd::RIP, mtd::GPRS | mtd::RIP),
        (Exit::Io, mtd::GPRS | mtd::RIP, mtd::RIP),
        (
            Exit::Rdmsr,
            mtd::GPRS | mtd::RIP | mtd::CONTROL | mtd::MSRS,
            mtd::GPRS | mtd::RIP,
        ),
        (
            Exit::Exception,
            mtd::RIP | mtd::CONTROL | mtd::INJECT,
            mtd::INJECT,
        ),
        (Exit::Recall, mtd::INJECT, 0),
        (Exit::Hlt, mtd::RIP, mtd::STOP),
        (Exit::Profile, 0, 0),
    ];
    (0..n)
        .map(|i| {
            let (reason, exit_mask, reply_mask) = kinds[i % kinds.len()];
            let exit = exit_words(reason, exit_mask, &mut values);
            (exit, correct(&exit, reply_mask))
        })
        .collect()
}

/// Runs `fuzzer` over `exits`: every reply and mutation.
fn run(
    fuzzer: &mut ReplyFuzzer,
    exits: &[([u64; word::COUNT], [u64; word::COUNT])],
) -> Vec<([u64; word::COUNT], Mutation)> {
    exits
        .iter()
        .map(|(exit, reply)| {
            let mut r = *reply;
            let m = fuzzer.mutate(exit, &mut r);
            (r, m)
        })
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_replies_and_other_seeds_differ() {
    let exits = stream(3_000, 7);
    let a = run(&mut ReplyFuzzer::new(42), &exits);
    let b = run(&mut ReplyFuzzer::new(42), &exits);
    assert_eq!(a, b);
    for other in [0, 1, 43, u64::MAX] {
        let c = run(&mut ReplyFuzzer::new(other), &exits);
        assert_ne!(a, c, "seed {other}");
    }
    // Seed 0 is a seed like the others: it mutates, and not always the same way.
    let zero = run(&mut ReplyFuzzer::new(0), &exits);
    let mutated: Vec<_> = zero.iter().filter(|(_, m)| m.mutated).collect();
    assert!(mutated.len() > 500, "{}", mutated.len());
    assert!(mutated.windows(2).any(|w| w[0].0 != w[1].0));
}

#[test]
fn about_one_reply_in_three_is_mutated_and_stop_and_profiles_never() {
    let exits = stream(30_000, 9);
    let out = run(&mut ReplyFuzzer::new(5), &exits);
    let mut eligible = 0;
    let mut mutated = 0;
    for ((exit, reply), (sent, m)) in exits.iter().zip(&out) {
        let untouchable =
            exit[word::REASON] == Exit::Profile as u64 || reply[word::MASK] & mtd::STOP != 0;
        if untouchable {
            assert_eq!((sent, *m), (reply, Mutation::default()));
            continue;
        }
        assert_eq!(sent[word::MASK] & mtd::STOP, 0, "the fuzzer never stops");
        eligible += 1;
        if m.mutated {
            mutated += 1;
            if let Some(n) = m.short_len {
                assert!(n < reply_len(sent[word::MASK]), "{n}");
            }
        } else {
            assert_eq!(sent, reply, "unmutated replies go out as they came");
            assert_eq!(m.short_len, None);
        }
    }
    let rate = f64::from(mutated) / f64::from(eligible);
    assert!((0.29..0.38).contains(&rate), "{rate}");
}

#[test]
fn never_panics_on_random_exits() {
    let mut fuzzer = ReplyFuzzer::new(3);
    let mut values = ReplyFuzzer::new(4);
    let mut words = [0u64; word::COUNT + 8];
    for i in 0..100_000 {
        for w in words.iter_mut() {
            *w = values.next_u64();
        }
        // Now and then a real reason, mask or STOP, so that every path runs.
        if i % 3 == 0 {
            words[word::REASON] %= 20;
        }
        if i % 5 == 0 {
            words[word::MASK] &= mtd::ALL;
        }
        let len = (values.next_u64() % (words.len() as u64 + 1)) as usize;
        let mut reply = [0u64; word::COUNT];
        for w in reply.iter_mut() {
            *w = values.next_u64();
        }
        if i % 2 == 0 {
            reply[word::MASK] &= mtd::ALL;
        }
        let m = fuzzer.mutate(&words[..len], &mut reply);
        if let Some(n) = m.short_len {
            assert!(n < reply_len(reply[word::MASK]));
        }
        let _ = fuzzer.describe_last();
    }
}

#[test]
fn every_group_and_every_event_type_occurs() {
    let exits = stream(10_000, 11);
    let mut fuzzer = ReplyFuzzer::new(17);
    let mut extra_groups = 0u64;
    let mut kinds = [0u32; 8];
    let mut windows = 0;
    let mut with_error = 0;
    let mut mutation_kinds = [0u32; 4];
    let mut dropped = 0;
    for (exit, reply) in &exits {
        let mut sent = *reply;
        let m = fuzzer.mutate(exit, &mut sent);
        if !m.mutated {
            continue;
        }
        let kind = fuzzer.last_kind().unwrap();
        mutation_kinds[kind as usize] += 1;
        let (correct, mask) = (reply[word::MASK], sent[word::MASK]);
        extra_groups |= mask & !correct & mtd::ALL;
        if kind == Kind::Drop {
            assert_eq!(mask & !correct, 0, "dropping adds nothing");
            assert_ne!(mask, correct, "something is dropped");
            dropped += 1;
        }
        if mask & mtd::INJECT != 0 && sent[word::INJECT] != reply[word::INJECT] {
            let event = sent[word::INJECT];
            kinds[(inject::kind(event) >> 8) as usize] += 1;
            windows += u32::from(event & inject::WINDOW != 0);
            with_error += u32::from(event & inject::HAS_ERROR != 0);
        }
    }
    assert_eq!(extra_groups, mtd::ALL, "{extra_groups:#x}");
    assert!(kinds.iter().all(|&n| n > 0), "{kinds:?}");
    assert!(windows > 0 && with_error > 0);
    assert!(mutation_kinds.iter().all(|&n| n > 0), "{mutation_kinds:?}");
    assert!(dropped > 0);
}

#[test]
fn hostile_values_are_offered() {
    // Over many mutations the named special values all appear somewhere.
    let exits = stream(20_000, 13);
    let mut fuzzer = ReplyFuzzer::new(19);
    let mut seen = [false; 6];
    let mut long_and_db = false;
    let mut unusable_cs = false;
    let mut cr0_pg_without_pe = false;
    let mut efer_svme = false;
    let mut cr4_la57 = false;
    for (exit, reply) in &exits {
        let mut sent = *reply;
        if !fuzzer.mutate(exit, &mut sent).mutated {
            continue;
        }
        for (i, (&new, &old)) in sent.iter().zip(reply).enumerate().skip(word::GPRS) {
            if new == old {
                continue;
            }
            let specials = [0, u64::MAX, NON_CANONICAL[0], NON_CANONICAL[1]];
            for (k, v) in specials.iter().enumerate() {
                seen[k] |= new == *v;
            }
            seen[4] |= (new ^ old).count_ones() <= 3 && new != 0;
            seen[5] |= (new ^ old).count_ones() > 20;
            let attributes = segment::attributes(new);
            if i == word::SEGMENTS {
                long_and_db |=
                    attributes & (segment::LONG | segment::DB) == segment::LONG | segment::DB;
                unusable_cs |= attributes & segment::PRESENT == 0;
            }
            cr0_pg_without_pe |= i == word::CR0 && new & (1 << 31) != 0 && new & 1 == 0;
            efer_svme |= i == word::EFER && new & (1 << 12) != 0;
            cr4_la57 |= i == word::CR4 && new & (1 << 12) != 0;
        }
    }
    assert!(seen.iter().all(|&s| s), "{seen:?}");
    assert!(long_and_db && unusable_cs && cr0_pg_without_pe && efer_svme && cr4_la57);
}

/// Seeds whose first mutation, of a Startup reply, keeps only GPRS and RIP (CONTROL, SEGMENTS
/// and TABLES left out, not short): a shadow-mode guest fuzzed with one of them is started
/// without a shadow root, as the `hostile` experiment `unconfined-startup` does, which only the
/// kernel's confinement check can stop (an `EntryFailure` with `UNCONFINED`).
/// `manifests/replyfuzz.toml` gives the first to its shadow-mode fuzzed guest.
pub const UNCONFINED_AT_STARTUP: [u64; 2] = [458, 1884];

#[test]
fn the_manifest_seeds_start_a_shadow_guest_without_control() {
    let (exit, reply) = startup();
    for seed in UNCONFINED_AT_STARTUP {
        let mut sent = reply;
        let mut fuzzer = ReplyFuzzer::new(seed);
        let m = fuzzer.mutate(&exit, &mut sent);
        assert_eq!(
            m,
            Mutation {
                mutated: true,
                short_len: None
            },
            "seed {seed}"
        );
        assert_eq!(fuzzer.last_kind(), Some(Kind::Drop));
        assert_eq!(sent[word::MASK], mtd::GPRS | mtd::RIP, "seed {seed}");
        let mut expected = reply;
        expected[word::MASK] = mtd::GPRS | mtd::RIP;
        assert_eq!(sent, expected, "the words are the correct ones");
    }
}

#[test]
fn the_driver_counts_and_never_resends_a_refused_reply() {
    let mut d = FuzzDriver::new(8, 2_500);
    let mut values = ReplyFuzzer::new(1);
    let mut out = [0u64; word::COUNT];
    let mut lines = Vec::new();
    let mut mutated = 0;
    for i in 0..2_500u64 {
        let exit = exit_words(Exit::Cpuid, mtd::GPRS | mtd::RIP, &mut values);
        let notes = d.exit(&exit);
        lines.extend(notes.lines);
        assert_eq!(notes.capped, i + 1 == 2_500);
        let good = correct(&exit, mtd::GPRS | mtd::RIP);
        let n = d.reply(&exit, &good[..reply_len(mtd::GPRS | mtd::RIP)], &mut out);
        if d.fuzzer.last_kind().is_some() && out[..n] != good[..reply_len(mtd::GPRS | mtd::RIP)] {
            mutated += 1;
            // Refused: the correct reply goes out next, unfuzzed.
            let after = d.refused(&mut out);
            assert_eq!(
                after,
                AfterRefusal::Correct(reply_len(mtd::GPRS | mtd::RIP))
            );
            assert_eq!(
                out[..reply_len(mtd::GPRS | mtd::RIP)],
                good[..reply_len(mtd::GPRS | mtd::RIP)]
            );
        }
    }
    assert_eq!(d.stats.exits, 2_500);
    assert_eq!(d.stats.mutated, mutated);
    assert_eq!(d.stats.refused, mutated);
    assert_eq!(d.stats.kinds, 1 << Exit::Cpuid as u64);
    assert_eq!(
        lines,
        [
            format!("fuzz: 1000 exits, {} mutated replies, {} refused by the kernel, 0 unconfined entries refused", lines_mutated(&lines, 0), lines_mutated(&lines, 0)),
            format!("fuzz: 2000 exits, {} mutated replies, {} refused by the kernel, 0 unconfined entries refused", lines_mutated(&lines, 1), lines_mutated(&lines, 1)),
        ]
    );
    // 100 refusals in a row stop the vCPU; an exit in between starts the count again.
    let exit = exit_words(Exit::Io, mtd::GPRS | mtd::RIP, &mut values);
    d.exit(&exit);
    for _ in 0..MAX_CONSECUTIVE_REFUSALS - 1 {
        assert!(matches!(d.refused(&mut out), AfterRefusal::Correct(_)));
    }
    let exit = exit_words(Exit::Io, mtd::GPRS | mtd::RIP, &mut values);
    d.exit(&exit);
    assert_eq!(d.consecutive_refusals(), 0);
    for _ in 0..MAX_CONSECUTIVE_REFUSALS - 1 {
        assert!(matches!(d.refused(&mut out), AfterRefusal::Correct(_)));
    }
    assert_eq!(d.refused(&mut out), AfterRefusal::Stop);
}

/// The mutated count in progress line `i` of `lines`.
fn lines_mutated(lines: &[String], i: usize) -> u64 {
    lines[i]
        .split(", ")
        .nth(1)
        .and_then(|p| p.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

#[test]
fn the_driver_reports_unconfined_entries_and_the_final_line() {
    let mut d = FuzzDriver::new(0, 10);
    let mut values = ReplyFuzzer::new(2);
    let mut out = [0u64; word::COUNT];
    let (exit, reply) = startup();
    assert!(d.exit(&exit).lines.is_empty());
    d.reply(&exit, &reply, &mut out);
    let mut failure = exit_words(Exit::EntryFailure, mtd::RIP, &mut values);
    failure[word::QUAL0] = entry_error::UNCONFINED;
    failure[word::QUAL1] = 4;
    assert_eq!(
        d.exit(&failure).lines,
        ["fuzz: unconfined entry refused (breach 4)"]
    );
    failure[word::QUAL0] = entry_error::INVALID_GUEST_STATE;
    failure[word::QUAL1] = 0x21;
    let lines = d.exit(&failure).lines;
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("fuzz: entry failure (code 1, detail 0x21) after a correct reply")
            || lines[0]
                .starts_with("fuzz: entry failure (code 1, detail 0x21) after a mutated reply: "),
        "{}",
        lines[0]
    );
    let mut profile = [0u64; word::COUNT];
    profile[word::REASON] = Exit::Profile as u64;
    assert_eq!(d.exit(&profile), ExitNotes::default(), "not an exit");
    d.stats.mutated = 1;
    d.stats.refused = 2;
    assert_eq!(
        d.stats.final_line(),
        "fuzz: seed 0: 3 exits over 2 exit kinds (startup, entry-failure), 1 mutated, 2 refused, 1 unconfined entries refused, kernel alive"
    );
    assert_eq!(
        d.stats.progress_line(),
        "fuzz: 3 exits, 1 mutated replies, 2 refused by the kernel, 1 unconfined entries refused"
    );
    assert_eq!(
        d.stats.extra_line(),
        "fuzz: seed 0: 0 reboots (0 after no exit), 1 entry failures besides unconfined ones"
    );
}

#[test]
fn a_short_reply_is_shorter_than_its_groups_and_described() {
    let exits = stream(20_000, 23);
    let mut fuzzer = ReplyFuzzer::new(29);
    let mut shorts = 0;
    for (exit, reply) in &exits {
        let mut sent = *reply;
        let m = fuzzer.mutate(exit, &mut sent);
        if let Some(n) = m.short_len {
            shorts += 1;
            assert!(n < reply_len(sent[word::MASK]));
            assert!(fuzzer.describe_last().starts_with("short (mask "));
        }
    }
    assert!(shorts > 50, "{shorts}");
}

#[test]
fn a_policy_keeps_the_paging_mode_cpl_and_tr_and_the_draws() {
    let exits = stream(20_000, 31);
    let policy = Policy {
        keep_paging_mode: true,
        keep_cpl_and_tr: true,
        interrupts_on: false,
    };
    let mut free = ReplyFuzzer::new(37);
    let mut kept = ReplyFuzzer::new(37).with_policy(policy);
    let mut differ = 0;
    let mut cr0_changed = 0;
    for (exit, reply) in &exits {
        let (mut a, mut b) = (*reply, *reply);
        let (ma, mb) = (free.mutate(exit, &mut a), kept.mutate(exit, &mut b));
        // The same draws: the same masks and lengths, whatever the policy did to values.
        assert_eq!((a[word::MASK], ma.short_len), (b[word::MASK], mb.short_len));
        if !mb.mutated || mb.short_len.is_some() {
            continue;
        }
        differ += u32::from(a != b);
        let mask = b[word::MASK];
        if mask & mtd::CONTROL != 0 && reply[word::MASK] & mtd::CONTROL != 0 {
            assert_eq!(b[word::CR0] & CR0_MODE, reply[word::CR0] & CR0_MODE);
            assert_eq!(b[word::CR4] & CR4_MODE, reply[word::CR4] & CR4_MODE);
            assert_eq!(b[word::EFER] & EFER_MODE, reply[word::EFER] & EFER_MODE);
            cr0_changed += u32::from(b[word::CR0] != reply[word::CR0]);
        }
        if mask & mtd::SEGMENTS != 0 && reply[word::MASK] & mtd::SEGMENTS != 0 {
            assert_eq!(b[SS_WORD] & DPL_BITS, reply[SS_WORD] & DPL_BITS);
            assert_eq!(b[TR_WORD..TR_WORD + 2], reply[TR_WORD..TR_WORD + 2]);
        }
    }
    assert!(differ > 0 && cr0_changed > 0, "{differ} {cr0_changed}");
}

#[test]
fn extra_groups_start_from_the_last_accepted_state() {
    let mut d = FuzzDriver::new(45, 100_000);
    let mut values = ReplyFuzzer::new(43);
    let mut out = [0u64; word::COUNT];
    // Startup: the exit's words are junk, the reply sets the state.
    let (exit, reply) = startup();
    d.exit(&exit);
    let n = d.reply(&exit, &reply, &mut out);
    let state = out;
    let startup_accepted = n == reply_len(mtd::ALL) && out[word::MASK] == mtd::ALL;
    // CPUID exits (GPRS and RIP only): any CONTROL the fuzzer adds is the accepted state's.
    let mut checked = 0;
    for _ in 0..3_000 {
        let mut cpuid = exit_words(Exit::Cpuid, mtd::GPRS | mtd::RIP, &mut values);
        cpuid[word::CR0..=word::EFER].fill(0xdead);
        d.exit(&cpuid);
        let good = correct(&cpuid, mtd::GPRS | mtd::RIP);
        let n = d.reply(&cpuid, &good[..reply_len(mtd::GPRS | mtd::RIP)], &mut out);
        if d.fuzzer.last_kind() == Some(Kind::Words)
            && out[word::MASK] & mtd::CONTROL != 0
            && n == reply_len(out[word::MASK])
            && startup_accepted
        {
            for i in word::CR0..=word::EFER {
                let changed = out[i] != state[i];
                assert!(out[i] != 0xdead, "w{i} from the exit's stale words");
                checked += u32::from(!changed);
            }
        }
        // Keep the accepted state as it was: refuse whatever the fuzzer changed.
        if out[..n] != good[..n.min(good.len())] {
            d.refused(&mut out);
        }
    }
    assert!(
        startup_accepted && checked > 0,
        "{startup_accepted} {checked}"
    );
}

#[test]
fn interrupts_on_sets_if_in_every_reply_that_writes_rflags() {
    let policy = Policy {
        interrupts_on: true,
        ..Policy::default()
    };
    let mut d = FuzzDriver::new(47, 100_000).with_policy(policy);
    let mut out = [0u64; word::COUNT];
    let mut with_rip = 0;
    for (exit, reply) in stream(5_000, 53) {
        d.exit(&exit);
        let len = reply_len(reply[word::MASK]);
        let n = d.reply(&exit, &reply[..len], &mut out);
        if out[word::MASK] & mtd::RIP != 0 && n > word::RFLAGS {
            assert_ne!(out[word::RFLAGS] & RFLAGS_IF, 0);
            with_rip += 1;
        }
        if let AfterRefusal::Correct(n) = d.refused(&mut out) {
            if out[word::MASK] & mtd::RIP != 0 && n > word::RFLAGS {
                assert_ne!(out[word::RFLAGS] & RFLAGS_IF, 0);
            }
        }
    }
    assert!(with_rip > 1_000, "{with_rip}");
}
