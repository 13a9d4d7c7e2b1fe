//! Reading a `bench workloads` run's serial transcript: the pagingos guest's checksum and page
//! faults, the VMM's exit counts and guest/hypervisor split, the kernel's `profile:` lines
//! (`abi::profile`), and why a run failed. Every function takes the transcript's lines.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::outcome::Outcome;

/// `(rounds, checksum)` from `pagingos: <workload> rounds=<N> checksum=0x<16 hex digits>`.
pub fn parse_checksum(lines: &[&str], workload: &str) -> Option<(u64, String)> {
    let key = format!("pagingos: {workload} rounds=");
    lines.iter().find_map(|line| {
        let rest = &line[line.find(&key)? + key.len() - "rounds=".len()..];
        let mut rounds = None;
        let mut checksum = None;
        for word in rest.split_whitespace() {
            if let Some(n) = word.strip_prefix("rounds=") {
                rounds = n.parse().ok();
            } else if let Some(hex) = word.strip_prefix("checksum=0x") {
                let ok = hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit());
                checksum = ok.then(|| format!("0x{}", hex.to_ascii_lowercase()));
            }
        }
        Some((rounds?, checksum?))
    })
}

/// The guest's page faults from `pagingos: page faults <n> (…)`.
pub fn parse_page_faults(lines: &[&str]) -> Option<u64> {
    const KEY: &str = "pagingos: page faults ";
    lines.iter().find_map(|line| {
        let rest = &line[line.find(KEY)? + KEY.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

/// Exits by reason from `vmm.<guest>: exits: startup 1, cpuid 2, io 367; ignored port accesses
/// 0` (`exits: none; …` gives an empty map).
pub fn parse_exits(lines: &[&str], guest: &str) -> Option<BTreeMap<String, u64>> {
    let key = format!("vmm.{guest}: exits:");
    let line = lines.iter().find(|l| l.contains(&key))?;
    let list = line[line.find(&key)? + key.len()..].split(';').next()?;
    let mut exits = BTreeMap::new();
    for item in list.split(',').map(str::trim) {
        if item == "none" {
            continue;
        }
        let (name, count) = item.rsplit_once(' ')?;
        *exits.entry(name.trim().to_string()).or_insert(0) += count.parse::<u64>().ok()?;
    }
    Some(exits)
}

/// The bytes the guest wrote to its UART, from the `; uart output <N> bytes` part of the VMM's
/// `exits:` line (output through the DMP ring included).
pub fn parse_uart_bytes(lines: &[&str], guest: &str) -> Option<u64> {
    const KEY: &str = "; uart output ";
    let key = format!("vmm.{guest}: exits:");
    let line = lines.iter().find(|l| l.contains(&key))?;
    let rest = &line[line.find(KEY)? + KEY.len()..];
    rest.split_whitespace()
        .next()?
        .trim_end_matches(',')
        .parse()
        .ok()
}

/// `(guest, hypervisor)` ticks from the `; run: guest <G>, hypervisor <H>` end of the VMM's
/// `exit timing` line.
pub fn parse_split(lines: &[&str], guest: &str) -> Option<(u64, u64)> {
    let key = format!("vmm.{guest}: exit timing");
    let line = lines.iter().find(|l| l.contains(&key))?;
    let run = line.rsplit_once("run: guest ")?.1;
    let (g, h) = run.split_once(", hypervisor ")?;
    Some((g.trim().parse().ok()?, h.trim().parse().ok()?))
}

/// Exits by reason from the kernel's `profile: vm=<tag> seq=<n> exits=<total> <reason>=<n> …`
/// summary lines, summed over the batches (reasons with a count only); `None` without such lines.
pub fn parse_profile_exits(lines: &[&str]) -> Option<BTreeMap<String, u64>> {
    let mut exits: Option<BTreeMap<String, u64>> = None;
    for line in lines {
        let Some(at) = line.find("profile: vm=") else {
            continue;
        };
        let words: Vec<(&str, u64)> = line[at + "profile: ".len()..]
            .split_whitespace()
            .filter_map(|w| {
                let (key, value) = w.split_once('=')?;
                Some((key, value.parse().ok()?))
            })
            .collect();
        if !["vm", "seq", "exits"]
            .iter()
            .all(|k| words.iter().any(|(w, _)| w == k))
        {
            continue;
        }
        let sums = exits.get_or_insert_with(BTreeMap::new);
        for (reason, count) in words {
            if !["vm", "seq", "exits"].contains(&reason) && count > 0 {
                *sums.entry(reason.to_string()).or_insert(0) += count;
            }
        }
    }
    exits
}

/// One hot site: exits of one reason at one guest RIP (`abi::profile`), summed over batches.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct HotSite {
    pub reason: String,
    /// `0x…`, lower case.
    pub rip: String,
    pub count: u64,
    /// The summed error bounds: the true count lies in `count - error ..= count`.
    pub error: u64,
}

/// The `profile:   #<rank> reason=<name> rip=0x<hex> count=<n> error=<n>` lines, summed per
/// (reason, rip) over all batches, hottest first (ties by reason and RIP), at most `top`.
pub fn parse_hot_sites(lines: &[&str], top: usize) -> Vec<HotSite> {
    let mut sites: BTreeMap<(String, u64), (u64, u64)> = BTreeMap::new();
    for line in lines {
        let Some(at) = line.find("profile:") else {
            continue;
        };
        let rest = line[at + "profile:".len()..].trim_start();
        if !rest.starts_with('#') {
            continue;
        }
        let (mut reason, mut rip, mut count, mut error) = (None, None, None, None);
        for word in rest.split_whitespace() {
            match word.split_once('=') {
                Some(("reason", v)) => reason = Some(v.to_string()),
                Some(("rip", v)) => {
                    rip = u64::from_str_radix(v.trim_start_matches("0x"), 16).ok();
                }
                Some(("count", v)) => count = v.parse::<u64>().ok(),
                Some(("error", v)) => error = v.parse::<u64>().ok(),
                _ => {}
            }
        }
        if let (Some(reason), Some(rip), Some(count), Some(error)) = (reason, rip, count, error) {
            let entry = sites.entry((reason, rip)).or_insert((0, 0));
            entry.0 += count;
            entry.1 += error;
        }
    }
    let mut list: Vec<HotSite> = sites
        .into_iter()
        .map(|((reason, rip), (count, error))| HotSite {
            reason,
            rip: format!("{rip:#x}"),
            count,
            error,
        })
        .collect();
    list.sort_by_key(|site| std::cmp::Reverse(site.count));
    list.truncate(top);
    list
}

/// Why a run failed, from the transcript: the VMM's own complaint (its last line that is not
/// one of its reports), the guest's failure lines, init's verdict on the guest; else `outcome`.
pub fn failure_reason(lines: &[&str], guest: &str, outcome: &Outcome) -> String {
    let vmm = format!("vmm.{guest}: ");
    let reports = [
        "exits:",
        "exit timing",
        "elf64 image",
        "elf32 image",
        "flat image",
    ];
    let mut parts: Vec<String> = Vec::new();
    let complaint = lines.iter().rev().find_map(|line| {
        let rest = &line[line.find(&vmm)? + vmm.len()..];
        (!reports.iter().any(|r| rest.starts_with(r))).then(|| rest.trim().to_string())
    });
    parts.extend(complaint);
    let prefix = format!("[{guest}] ");
    for line in lines {
        let Some(rest) = line.find(&prefix).map(|at| &line[at + prefix.len()..]) else {
            continue;
        };
        if rest.starts_with("grt:")
            || rest.contains("check failed")
            || rest.contains("unexpected")
            || (rest.starts_with("pagingos:") && rest.contains(" differ"))
        {
            parts.push(rest.trim().to_string());
        }
    }
    let verdict = format!("guests: {guest} ");
    if let Some(line) = lines
        .iter()
        .find(|l| l.contains(&verdict) && l.contains("FAILED"))
    {
        let rest = &line[line.find(&verdict).unwrap_or(0) + verdict.len()..];
        parts.push(format!(
            "guest {}",
            rest.trim_end().trim_end_matches(": FAILED")
        ));
    }
    if parts.is_empty() {
        match outcome {
            Outcome::Success => "no checksum line in the transcript".into(),
            other => other.to_string(),
        }
    } else {
        parts.join("; ")
    }
}
