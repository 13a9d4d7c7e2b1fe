//! `cargo xtask bench exits`: the VM-exit round-trip benchmark.
//!
//! Boots the `exitbench` system (one guest, `cpuidloop`, executing CPUID in a loop under its
//! vmm-server) on QEMU (SVM with NPT) with `-icount shift=0,sleep=off`, where the TSC counts
//! executed instructions. Three readings split one round trip:
//!
//! - the guest's `cpuidloop: N iterations, T tsc, P tsc per iteration`: the whole round trip
//!   (hardware exit, kernel, VMM, reply, kernel, entry) plus the loop's own few instructions;
//! - the VMM's `exit timing` line, CPUID part: from the hardware exit (the kernel's `EXIT_TSC`
//!   word) to the VMM receiving the message (the kernel's exit path), and the VMM's handler up to
//!   its reply;
//! - the rest is the kernel's reply path back into the guest (and the loop).
//!
//! It prints these beside published per-exit costs and writes `target/bench/exits.json`.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::emulator::{Emulator, Line};
use crate::layout;
use crate::setup::{self, Need};

/// Published costs of one exit: (hypervisor, machine, figure, unit, what it covers, source).
pub const PUBLISHED: [(&str, &str, u64, &str, &str, &str); 1] = [(
    "KVM (Linux 2.6.34)",
    "Xeon X5570 (Nehalem), EPT+VPID",
    2_000,
    "cycles",
    "direct cost: the hardware world switch out and back in, no handling",
    "Landau, Ben-Yehuda, Gordon, SplitX, WIOV 2011, Table 1",
)];

/// `(iterations, tsc per iteration)` from the guest's line.
pub fn parse_guest(lines: &[Line]) -> Option<(u64, u64)> {
    let line = lines
        .iter()
        .find(|l| l.text.contains("cpuidloop:") && l.text.contains("per iteration"))?;
    let numbers = numbers(line.text.split_once("cpuidloop:")?.1);
    match numbers[..] {
        [iterations, _total, per, ..] => Some((iterations, per)),
        _ => None,
    }
}

/// `(exits, kernel-to-VMM tsc, VMM tsc)` per CPUID exit from the VMM's `exit timing` line.
pub fn parse_vmm(lines: &[Line]) -> Option<(u64, u64, u64)> {
    let line = lines.iter().find(|l| l.text.contains("exit timing"))?;
    let part = line
        .text
        .split(['(', ':', ';'])
        .find(|p| p.trim_start().starts_with("cpuid "))?;
    match numbers(part)[..] {
        [exits, delivery, handler] => Some((exits, delivery, handler)),
        _ => None,
    }
}

fn numbers(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[derive(Serialize)]
pub struct Report {
    pub system: &'static str,
    pub emulator: &'static str,
    pub backend: &'static str,
    pub cpu: &'static str,
    pub profile: &'static str,
    pub iterations: u64,
    pub instructions_per_round_trip: u64,
    pub instructions_kernel_exit_to_vmm: u64,
    pub instructions_vmm_handler: u64,
    pub instructions_kernel_reply_to_guest: u64,
}

/// Every run of one `bench exits`: SVM on QEMU, and VMX on Bochs where Bochs is installed.
#[derive(Serialize)]
struct Runs {
    runs: Vec<Report>,
}

/// Runs the benchmark with the kernel ELF `kernel` on both backends (VMX only where Bochs is
/// installed: its row says so otherwise).
pub fn run(kernel: &std::path::Path, release: bool) -> Result<()> {
    let mut runs = vec![measure(kernel, release)?];
    if setup::ensure(&[Need::Bochs]).is_ok() {
        runs.push(measure_on(kernel, release, Emulator::Bochs)?);
    } else {
        println!("bench: exits: Bochs is not installed: no VMX row (`cargo xtask setup`)");
    }
    for report in &runs {
        print!("{}", table(report));
    }
    let out = layout::work_dir(&["bench"])?.join("exits.json");
    std::fs::write(&out, serde_json::to_string_pretty(&Runs { runs })? + "\n")?;
    println!("wrote {}", layout::show(&out));
    Ok(())
}

/// Boots `exitbench` under QEMU `-icount` (SVM) with the kernel ELF `kernel` and reads its
/// figures.
pub fn measure(kernel: &std::path::Path, release: bool) -> Result<Report> {
    measure_on(kernel, release, Emulator::Qemu)
}

/// As [`measure`] on `emulator`: QEMU (SVM, instructions) or Bochs (VMX, Bochs TSC ticks, one
/// per emulated instruction).
fn measure_on(kernel: &std::path::Path, release: bool, emulator: Emulator) -> Result<Report> {
    let svm = emulator == Emulator::Qemu;
    eprintln!(
        "bench: exits: booting `exitbench` on {} (a guest executing CPUID in a loop)",
        if svm { "QEMU -icount" } else { "Bochs" }
    );
    let timeout = Duration::from_secs(if svm { 300 } else { 900 });
    let boot = crate::bench::boot_counted("exitbench", kernel, release, timeout, emulator)?;
    let (iterations, per) = parse_guest(&boot.lines)
        .context("no `cpuidloop: … per iteration` line in the transcript")?;
    let (_, delivery, handler) =
        parse_vmm(&boot.lines).context("no `exit timing … cpuid …` line in the transcript")?;
    let report = Report {
        system: "exitbench",
        emulator: if svm { "qemu" } else { "bochs" },
        backend: if svm { "svm" } else { "vmx" },
        cpu: emulator.default_cpu(),
        profile: if release { "release" } else { "debug" },
        iterations,
        instructions_per_round_trip: per,
        instructions_kernel_exit_to_vmm: delivery,
        instructions_vmm_handler: handler,
        instructions_kernel_reply_to_guest: per.saturating_sub(delivery + handler),
    };
    Ok(report)
}

fn table(r: &Report) -> String {
    let svm = r.backend == "svm";
    let (setting, machine, unit) = if svm {
        (
            "QEMU -icount (SVM with NPT)",
            "QEMU TCG (qemu64), x86-64",
            "instructions",
        )
    } else {
        (
            "Bochs (VMX with EPT)",
            "Bochs (corei7_haswell_4770)",
            "Bochs ticks",
        )
    };
    let mut text = format!(
        "Exit benchmark: CPUID round trips guest -> kernel -> vmm-server -> kernel -> guest, {} \
         iterations, {} kernel, {setting}\n",
        r.iterations, r.profile
    );
    text.push_str(&format!(
        "{:<22} {:<32} {:>8} {:<13} {}\n",
        "hypervisor", "machine", "per exit", "unit", "what / source"
    ));
    let rows = [
        (
            "dmphv",
            r.instructions_per_round_trip,
            "this run: the whole round trip (guest loop included)",
        ),
        (
            "  kernel, exit path",
            r.instructions_kernel_exit_to_vmm,
            "this run: hardware exit to the VMM receiving the message",
        ),
        (
            "  vmm-server",
            r.instructions_vmm_handler,
            "this run: message received to reply sent (user code)",
        ),
        (
            "  kernel, reply path",
            r.instructions_kernel_reply_to_guest,
            "this run: reply checked and written, guest entered",
        ),
    ];
    for (who, figure, what) in rows {
        text.push_str(&format!(
            "{who:<22} {:<32} {figure:>8} {:<13} {what}\n",
            if who == "dmphv" { machine } else { "" },
            unit
        ));
    }
    for (who, machine, figure, unit, what, source) in PUBLISHED {
        text.push_str(&format!(
            "{who:<22} {machine:<32} {figure:>8} {unit:<13} {what} ({source})\n"
        ));
    }
    text.push_str(
        "NOVA (Steinberg & Kauer, EuroSys 2010) publishes no per-exit figure we could source; none \
         is shown. Instructions and cycles are different units: the emulator counts instructions \
         deterministically; cycles need real hardware.\n",
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
    fn parses_guest_and_vmm_lines() {
        let lines = [
            line("[cpuidloop] cpuidloop: 20000 iterations, 192271185 tsc, 9613 tsc per iteration"),
            line(
                "vmm.cpuidloop: exit timing (tsc per exit): startup 1 exits, kernel to vmm 4207, \
                 vmm 1033; cpuid 21000 exits, kernel to vmm 3790, vmm 1264; io 134 exits, \
                 kernel to vmm 3825, vmm 1266",
            ),
        ];
        assert_eq!(parse_guest(&lines), Some((20000, 9613)));
        assert_eq!(parse_vmm(&lines), Some((21000, 3790, 1264)));
        assert_eq!(parse_vmm(&lines[..1]), None);
        assert_eq!(
            parse_vmm(&[line("vmm.x: exit timing (tsc per exit): none")]),
            None
        );
    }
}
