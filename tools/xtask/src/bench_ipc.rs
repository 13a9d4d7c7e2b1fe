//! `cargo xtask bench ipc`: the IPC round-trip benchmark.
//!
//! Boots the `ipcbench` system (a client calling a server's `ping` portal in another domain) on
//! QEMU with `-icount shift=0,sleep=off`, where the guest TSC counts executed instructions, and
//! reads the client's `ipcbench: N round trips, T tsc per round trip` line. The figure is the
//! instructions of one call/reply round trip between two domains: both sides' user code plus the
//! kernel's entry, IPC path and exit, twice. It prints the figure beside published one-way IPC
//! costs of other kernels and writes `target/bench/ipc.json`.
//!
//! TSC cycles under TCG are not meaningful (the emulator's time, not a CPU's), so the table does
//! not report them.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::emulator::{Emulator, Line};
use crate::layout;

/// Published one-way IPC costs between address spaces, hot cache: (kernel, machine, figure,
/// unit, source).
pub const PUBLISHED: [(&str, &str, u64, &str, &str); 4] = [
    (
        "seL4",
        "Core i7-4770 (Haswell), x86-32",
        301,
        "cycles",
        "Trustworthy Systems, microkernel performance table (SOSP'13 figure)",
    ),
    (
        "NOVA",
        "Core i7-920 (Bloomfield), x86-32",
        288,
        "cycles",
        "Steinberg & Kauer, EuroSys'10, via the same table",
    ),
    (
        "L4Re/Fiasco",
        "Intel N100, amd64",
        613,
        "instructions",
        "l4re.org/performance.html (inter-address-space, instructions retired)",
    ),
    (
        "L4Re/Fiasco",
        "Intel N100, amd64",
        1388,
        "cycles",
        "l4re.org/performance.html (inter-address-space, unhalted clocks)",
    ),
];

/// `(round trips, tsc per round trip, tsc per null syscall)` from the client's line.
pub fn parse(lines: &[Line]) -> Option<(u64, u64, u64)> {
    let line = lines
        .iter()
        .find(|l| l.text.contains("ipcbench:") && l.text.contains("per round trip"))?;
    let numbers: Vec<u64> = line
        .text
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    match numbers[..] {
        [round_trips, per_round_trip, null, ..] => Some((round_trips, per_round_trip, null)),
        _ => None,
    }
}

#[derive(Serialize)]
pub struct Report {
    pub system: &'static str,
    pub emulator: &'static str,
    pub cpu: &'static str,
    pub profile: &'static str,
    pub round_trips: u64,
    pub instructions_per_round_trip: u64,
    pub instructions_per_one_way: u64,
    /// A syscall the kernel refuses at once (lookup of an empty selector): entry and exit.
    pub instructions_per_null_syscall: u64,
}

/// Runs the benchmark with the kernel ELF `kernel`: prints the table, writes the JSON.
pub fn run(kernel: &std::path::Path, release: bool) -> Result<()> {
    let report = measure(kernel, release)?;
    print!("{}", table(&report));
    let out = layout::work_dir(&["bench"])?.join("ipc.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("wrote {}", layout::show(&out));
    Ok(())
}

/// Boots `ipcbench` under `-icount` with the kernel ELF `kernel` and reads its figures.
pub fn measure(kernel: &std::path::Path, release: bool) -> Result<Report> {
    eprintln!("bench: ipc: booting `ipcbench` with -icount (100,000 round trips)");
    let boot = crate::bench::boot_icount("ipcbench", kernel, release, Duration::from_secs(180))?;
    let (round_trips, per_round_trip, null) =
        parse(&boot.lines).context("no `ipcbench: … per round trip` line in the transcript")?;
    let report = Report {
        system: "ipcbench",
        emulator: "qemu",
        cpu: Emulator::Qemu.default_cpu(),
        profile: if release { "release" } else { "debug" },
        round_trips,
        instructions_per_round_trip: per_round_trip,
        instructions_per_one_way: per_round_trip / 2,
        instructions_per_null_syscall: null,
    };
    Ok(report)
}

fn table(report: &Report) -> String {
    let mut text = format!(
        "IPC benchmark: call/reply between two domains, {} round trips, {} kernel, QEMU -icount\n",
        report.round_trips, report.profile
    );
    text.push_str(&format!(
        "{:<12} {:<34} {:>10} {:<13} {}\n",
        "kernel", "machine", "one way", "unit", "source"
    ));
    let this_run = format!(
        "this run ({} per round trip, user code included)",
        report.instructions_per_round_trip
    );
    text.push_str(&format!(
        "{:<12} {:<34} {:>10} {:<13} {this_run}\n",
        "dmphv", "QEMU TCG (qemu64), x86-64", report.instructions_per_one_way, "instructions"
    ));
    text.push_str(&format!(
        "{:<12} {:<34} {:>10} {:<13} this run (null syscall: entry, refusal, exit)\n",
        "", "", report.instructions_per_null_syscall, "instructions"
    ));
    for (kernel, machine, figure, unit, source) in PUBLISHED {
        text.push_str(&format!(
            "{kernel:<12} {machine:<34} {figure:>10} {unit:<13} {source}\n"
        ));
    }
    text.push_str(
        "Instructions and cycles are different units: instructions are what an emulator can count \
         deterministically; a cycle figure needs real hardware.\n",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Line {
        Line {
            at: Duration::ZERO,
            text: text.into(),
        }
    }

    #[test]
    fn parses_the_client_line_only() {
        let lines = [
            line("init: system ipcbench: 3 servers, 8192 free pages"),
            line("ipcbench: 100000 round trips, 1755 tsc per round trip, 400 tsc per null syscall"),
        ];
        assert_eq!(parse(&lines), Some((100000, 1755, 400)));
        assert_eq!(parse(&[line("ipcbench: a round trip failed")]), None);
    }
}
