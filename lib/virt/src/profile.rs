//! Exit profiling: per-Vm counts of VM exits by reason and a bounded table of the hottest exit
//! sites (exit reason, guest RIP), from which the kernel cuts [`abi::profile::ProfileBatch`]es.
//!
//! [`ExitProfile::record`] runs in the kernel on every exit, so it allocates nothing, hashes
//! nothing and costs O(K) comparisons at worst (K table entries, 32 by default); a hit on the
//! site recorded last is checked first, which makes the common tight loop O(1).
//!
//! **Hot sites: Space-Saving.** The table holds at most K sites, each with a `count` and an
//! `error`. A recorded site that is in the table gets `count + 1`. A new site takes a free entry
//! with `count = 1, error = 0`; when the table is full it replaces the entry with the smallest
//! count `m` and starts from `count = m + 1, error = m` (it inherits the evicted count as its
//! possible overestimate). Every record adds exactly 1 to the sum of the counts, so with `N`
//! exits recorded in the window the counts sum to `N` and, once the table is full, `m ≤ N / K`.
//! From that follow the guarantees, for the window since the last batch:
//!
//! - for every entry, `count - error ≤ true exits at the site ≤ count`, and `error ≤ N / K`;
//! - every site with more than `N / K` exits (more precisely: more than the table's smallest
//!   count) is in the table, however late in the window its exits came: a real hot site is never
//!   lost, only cold sites are evicted;
//! - a site's rank in [`ExitProfile::top`] is by `count`; `count - error` (guaranteed exits) is
//!   the conservative figure for deciding to patch.
//!
//! **Windows.** Reason counts are kept twice: cumulative ([`ExitProfile::total`],
//! [`ExitProfile::by_reason`]) and for the current window ([`ExitProfile::window_total`],
//! [`ExitProfile::window_by_reason`]). [`ExitProfile::take_batch`] reports the window (its counts
//! and its hottest sites) and starts a new one: window counts and the site table are cleared, the
//! cumulative counts stay.

use abi::profile::{HotSite, ProfileBatch, MAX_SITES, REASONS};
use abi::vm::Exit;
use heapless::Vec;

/// Exit counts and hot sites of one Vm, with a table of `K` sites (default [`MAX_SITES`], what a
/// batch carries; a larger `K` is more precise, and a batch carries its top [`MAX_SITES`]).
#[derive(Clone, Debug)]
pub struct ExitProfile<const K: usize = MAX_SITES> {
    vm_tag: u64,
    sequence: u64,
    total: u64,
    by_reason: [u64; REASONS],
    window_total: u64,
    window_by_reason: [u64; REASONS],
    sites: Vec<HotSite, K>,
    /// Index of the entry recorded last (checked first); may be stale, never trusted blindly.
    last: usize,
}

impl<const K: usize> ExitProfile<K> {
    /// An empty profile for the Vm named `vm_tag` (copied into every batch).
    pub const fn new(vm_tag: u64) -> Self {
        Self {
            vm_tag,
            sequence: 0,
            total: 0,
            by_reason: [0; REASONS],
            window_total: 0,
            window_by_reason: [0; REASONS],
            sites: Vec::new(),
            last: 0,
        }
    }

    /// The Vm's tag.
    pub const fn vm_tag(&self) -> u64 {
        self.vm_tag
    }

    /// Counts one exit of `reason` at guest `rip`.
    pub fn record(&mut self, reason: Exit, rip: u64) {
        let r = reason as usize;
        self.total = self.total.saturating_add(1);
        self.by_reason[r] = self.by_reason[r].saturating_add(1);
        self.window_total = self.window_total.saturating_add(1);
        self.window_by_reason[r] = self.window_by_reason[r].saturating_add(1);

        let reason = reason as u8;
        let same = |s: &HotSite| s.reason == reason && s.rip == rip;
        if let Some(site) = self.sites.get_mut(self.last).filter(|s| same(s)) {
            site.count = site.count.saturating_add(1);
            return;
        }
        if let Some(i) = self.sites.iter().position(same) {
            self.sites[i].count = self.sites[i].count.saturating_add(1);
            self.last = i;
            return;
        }
        let fresh = HotSite {
            reason,
            rip,
            count: 1,
            error: 0,
        };
        match self.sites.push(fresh) {
            Ok(()) => self.last = self.sites.len() - 1,
            Err(_) => {
                // Full (or K = 0): replace the first entry with the smallest count.
                let Some((i, min)) = self
                    .sites
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.count)
                    .map(|(i, s)| (i, s.count))
                else {
                    return;
                };
                self.sites[i] = HotSite {
                    reason,
                    rip,
                    count: min.saturating_add(1),
                    error: min,
                };
                self.last = i;
            }
        }
    }

    /// Exits recorded since the profile was created.
    pub const fn total(&self) -> u64 {
        self.total
    }

    /// Exits of `reason` since the profile was created.
    pub const fn by_reason(&self, reason: Exit) -> u64 {
        self.by_reason[reason as usize]
    }

    /// Exits since the profile was created, indexed by [`Exit`] value.
    pub const fn by_reason_all(&self) -> &[u64; REASONS] {
        &self.by_reason
    }

    /// Exits recorded in the current window (since the last batch).
    pub const fn window_total(&self) -> u64 {
        self.window_total
    }

    /// Exits of `reason` in the current window.
    pub const fn window_by_reason(&self, reason: Exit) -> u64 {
        self.window_by_reason[reason as usize]
    }

    /// Batches taken so far (the `sequence` of the next one).
    pub const fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The table's entries, in no particular order.
    pub fn sites(&self) -> &[HotSite] {
        &self.sites
    }

    /// The `n` hottest sites of the current window (fewer if the table holds fewer), by count
    /// descending; ties by reason, then RIP, ascending, so the order is deterministic.
    pub fn top(&self, n: usize) -> Vec<HotSite, K> {
        let mut out = self.sites.clone();
        sort_sites(&mut out);
        out.truncate(n);
        out
    }

    /// Reports the current window as a batch and starts a new window (see the module
    /// documentation).
    pub fn take_batch(&mut self) -> ProfileBatch {
        let mut batch = ProfileBatch::new(self.vm_tag, 0);
        self.take_batch_into(&mut batch);
        batch
    }

    /// [`Self::take_batch`] into a caller's batch (no batch-sized value on the stack).
    pub fn take_batch_into(&mut self, batch: &mut ProfileBatch) {
        batch.vm_tag = self.vm_tag;
        batch.sequence = self.sequence;
        batch.exits_total = self.window_total;
        batch.by_reason = self.window_by_reason;
        sort_sites(&mut self.sites);
        batch.sites.clear();
        for site in self.sites.iter().take(MAX_SITES) {
            // Cannot fail: at most MAX_SITES are pushed.
            let _ = batch.sites.push(*site);
        }
        self.sequence = self.sequence.wrapping_add(1);
        self.window_total = 0;
        self.window_by_reason = [0; REASONS];
        self.sites.clear();
        self.last = 0;
    }
}

impl<const K: usize> Default for ExitProfile<K> {
    fn default() -> Self {
        Self::new(0)
    }
}

fn sort_sites(sites: &mut [HotSite]) {
    sites.sort_unstable_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.reason.cmp(&b.reason))
            .then(a.rip.cmp(&b.rip))
    });
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// xorshift64*: deterministic streams for the tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    fn reason(v: u64) -> Exit {
        Exit::from_u64(v % abi::vm::EXIT_COUNT).unwrap()
    }

    /// Checks the Space-Saving guarantees of `p` against the exact counts of its window.
    fn check_guarantees<const K: usize>(p: &ExitProfile<K>, exact: &HashMap<(u8, u64), u64>) {
        let n = p.window_total();
        let sum: u64 = p.sites().iter().map(|s| s.count).sum();
        assert_eq!(sum, n, "counts sum to the window's exits");
        let min = if p.sites().len() < K {
            0
        } else {
            p.sites().iter().map(|s| s.count).min().unwrap_or(0)
        };
        assert!(min * K as u64 <= n);
        for s in p.sites() {
            let truth = exact.get(&(s.reason, s.rip)).copied().unwrap_or(0);
            assert!(
                s.guaranteed() <= truth && truth <= s.count,
                "{s:?} truth {truth}"
            );
            assert!(s.error <= min, "{s:?} error above the minimum {min}");
        }
        for (&(r, rip), &truth) in exact {
            if truth > min {
                assert!(
                    p.sites().iter().any(|s| s.reason == r && s.rip == rip),
                    "site ({r}, {rip:#x}) with {truth} > {min} exits is missing"
                );
            }
        }
    }

    #[test]
    fn counts_by_reason() {
        let mut p: ExitProfile = ExitProfile::new(5);
        for _ in 0..3 {
            p.record(Exit::Cpuid, 0x1000);
        }
        p.record(Exit::Io, 0x2000);
        p.record(Exit::Io, 0x2002);
        assert_eq!(p.total(), 5);
        assert_eq!(p.by_reason(Exit::Cpuid), 3);
        assert_eq!(p.by_reason(Exit::Io), 2);
        assert_eq!(p.by_reason(Exit::Hlt), 0);
        assert_eq!(p.by_reason_all().iter().sum::<u64>(), 5);
        assert_eq!(p.window_total(), 5);
        assert_eq!(p.sites().len(), 3);
        assert_eq!(p.vm_tag(), 5);
    }

    #[test]
    fn top_is_sorted_and_deterministic() {
        let mut p: ExitProfile = ExitProfile::new(0);
        let plan = [
            (Exit::MemoryFault, 0x30, 7),
            (Exit::Io, 0x10, 3),
            (Exit::Cpuid, 0x20, 7),
            (Exit::Hlt, 0x40, 1),
            (Exit::Cpuid, 0x10, 7),
        ];
        // Interleave so that the insertion order is not the answer.
        for round in 0..7 {
            for &(r, rip, n) in plan.iter().rev() {
                if round < n {
                    p.record(r, rip);
                }
            }
        }
        let top = p.top(10);
        let got: std::vec::Vec<_> = top.iter().map(|s| (s.reason, s.rip, s.count)).collect();
        assert_eq!(
            got,
            [
                (Exit::Cpuid as u8, 0x10, 7),
                (Exit::Cpuid as u8, 0x20, 7),
                (Exit::MemoryFault as u8, 0x30, 7),
                (Exit::Io as u8, 0x10, 3),
                (Exit::Hlt as u8, 0x40, 1),
            ]
        );
        assert_eq!(p.top(2).len(), 2);
        assert_eq!(p.top(2)[..], top[..2]);
        assert!(p.top(0).is_empty());
        assert!(top.iter().all(|s| s.error == 0));
    }

    #[test]
    fn space_saving_replaces_the_minimum() {
        let mut p: ExitProfile<3> = ExitProfile::new(0);
        for _ in 0..5 {
            p.record(Exit::Io, 1);
        }
        for _ in 0..2 {
            p.record(Exit::Io, 2);
        }
        for _ in 0..4 {
            p.record(Exit::Io, 3);
        }
        // Full: a new site takes the place of rip 2 (count 2), inheriting 2 as its error.
        p.record(Exit::Io, 4);
        let top = p.top(3);
        assert_eq!(
            top[..],
            [
                HotSite {
                    reason: Exit::Io as u8,
                    rip: 1,
                    count: 5,
                    error: 0
                },
                HotSite {
                    reason: Exit::Io as u8,
                    rip: 3,
                    count: 4,
                    error: 0
                },
                HotSite {
                    reason: Exit::Io as u8,
                    rip: 4,
                    count: 3,
                    error: 2
                },
            ]
        );
        assert_eq!(top[2].guaranteed(), 1);
        // Same RIP, different reason: a different site; it evicts rip 4 (now the minimum).
        p.record(Exit::Cpuid, 1);
        assert!(p.sites().iter().all(|s| s.rip != 4));
        let s = p
            .sites()
            .iter()
            .find(|s| s.reason == Exit::Cpuid as u8)
            .unwrap();
        assert_eq!((s.count, s.error), (4, 3));
        assert_eq!(
            p.sites().iter().map(|s| s.count).sum::<u64>(),
            p.window_total()
        );
    }

    #[test]
    fn guarantees_hold_on_random_streams() {
        let mut rng = Rng(0xdead_beef_1234);
        for shape in 0..6u64 {
            let mut p: ExitProfile<8> = ExitProfile::new(shape);
            let mut exact = HashMap::new();
            for i in 0..5000u64 {
                // A few hot sites over a long cold tail; the shapes vary the skew.
                let x = rng.next();
                let (r, rip) = if x % 100 < 20 + shape * 10 {
                    (reason(x >> 8), 0x1000 + (x >> 16) % 4)
                } else {
                    (reason(x >> 8), 0x10_0000 + (x >> 16) % (50 + 40 * shape))
                };
                p.record(r, rip);
                *exact.entry((r as u8, rip)).or_insert(0) += 1;
                if i % 97 == 0 {
                    check_guarantees(&p, &exact);
                }
            }
            check_guarantees(&p, &exact);
        }
    }

    #[test]
    fn a_hot_site_inserted_late_surfaces() {
        let mut p: ExitProfile = ExitProfile::new(1);
        let mut exact = HashMap::new();
        // 20 000 exits spread round-robin over 1000 cold sites: the table churns.
        for i in 0..20_000u64 {
            let rip = 0x40_0000 + (i % 1000) * 16;
            p.record(Exit::MemoryFault, rip);
            *exact.entry((Exit::MemoryFault as u8, rip)).or_insert(0) += 1;
        }
        // Then one site gets 2 000 exits: more than N/K, so it must be found and ranked first.
        let hot = 0xffff_ffff_8100_beefu64;
        for _ in 0..2000 {
            p.record(Exit::MemoryFault, hot);
        }
        exact.insert((Exit::MemoryFault as u8, hot), 2000);
        check_guarantees(&p, &exact);
        let top = p.top(1);
        assert_eq!(top[0].rip, hot);
        assert!(top[0].count >= 2000 && top[0].guaranteed() <= 2000);
        assert!(top[0].error <= p.window_total() / MAX_SITES as u64);
        let batch = p.take_batch();
        assert_eq!(batch.sites[0].rip, hot);
    }

    #[test]
    fn take_batch_reports_the_window_and_resets_it() {
        let mut p: ExitProfile = ExitProfile::new(42);
        for _ in 0..10 {
            p.record(Exit::Hlt, 0x500);
        }
        p.record(Exit::Cpuid, 0x600);
        let b0 = p.take_batch();
        assert_eq!((b0.vm_tag, b0.sequence, b0.exits_total), (42, 0, 11));
        assert_eq!(b0.count(Exit::Hlt), 10);
        assert_eq!(b0.count(Exit::Cpuid), 1);
        assert_eq!(b0.sites.len(), 2);
        assert_eq!((b0.sites[0].rip, b0.sites[0].count), (0x500, 10));

        // The window is empty; cumulative counts stay.
        assert_eq!(p.window_total(), 0);
        assert_eq!(p.window_by_reason(Exit::Hlt), 0);
        assert!(p.sites().is_empty());
        assert_eq!(p.total(), 11);
        assert_eq!(p.by_reason(Exit::Hlt), 10);
        assert_eq!(p.sequence(), 1);

        p.record(Exit::Io, 0x700);
        let b1 = p.take_batch();
        assert_eq!((b1.sequence, b1.exits_total), (1, 1));
        assert_eq!(b1.count(Exit::Hlt), 0);
        assert_eq!(b1.sites.len(), 1);
        assert_eq!(p.total(), 12);

        let empty = p.take_batch();
        assert_eq!((empty.sequence, empty.exits_total), (2, 0));
        assert!(empty.sites.is_empty());

        // A batch encodes and decodes.
        let mut buf = [0u8; abi::profile::MAX_ENCODED_LEN];
        let bytes = b0.encode(&mut buf).unwrap();
        assert_eq!(ProfileBatch::decode(bytes), Ok(b0));
    }

    #[test]
    fn a_larger_table_reports_its_top_sites() {
        let mut p: ExitProfile<64> = ExitProfile::new(0);
        for site in 0..64u64 {
            for _ in 0..=site {
                p.record(Exit::Exception, site);
            }
        }
        let mut batch = ProfileBatch::new(0, 0);
        p.take_batch_into(&mut batch);
        assert_eq!(batch.sites.len(), MAX_SITES);
        assert_eq!(batch.sites[0].rip, 63);
        assert_eq!(batch.sites[MAX_SITES - 1].rip, 32);
    }

    #[test]
    fn an_empty_table_only_counts() {
        let mut p: ExitProfile<0> = ExitProfile::new(0);
        p.record(Exit::Io, 1);
        p.record(Exit::Io, 2);
        assert_eq!(p.total(), 2);
        assert!(p.top(5).is_empty());
        assert!(p.take_batch().sites.is_empty());
    }
}
