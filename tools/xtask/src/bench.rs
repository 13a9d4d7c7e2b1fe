//! `cargo xtask bench`: the boot benchmark.
//!
//! Boots the demo system on QEMU with and without `-icount shift=0,sleep=off` and reports the
//! wall-clock time from QEMU's start to the banner (the serial line containing `virtualization:`),
//! the instruction count at the banner (the kernel's `boot: … tsc=<n>` line: under icount the guest
//! TSC counts executed instructions since reset), and the kernel's ELF sizes. Writes
//! `target/bench/boot.json`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cli::{BenchArgs, BenchKind};
use crate::emulator::{self, Emulator, Line, Spec};
use crate::outcome::Outcome;
use crate::setup::{self, Need};
use crate::{build, elf, image, layout, manifest, pack, run};

/// The substring that marks the banner line.
pub const BANNER: &str = "virtualization:";

/// When the banner arrived.
pub fn banner_time(lines: &[Line]) -> Option<Duration> {
    lines.iter().find(|l| l.text.contains(BANNER)).map(|l| l.at)
}

/// The `tsc=<decimal>` value of the first line starting with `boot:` (the last such word, so a
/// command line quoted earlier in the line cannot fool it): the TSC at the banner.
pub fn boot_tsc(lines: &[Line]) -> Option<u64> {
    boot_word(lines, "tsc=")
}

/// The `entry_tsc=<decimal>` value of the `boot:` line: the TSC when the kernel's boot path
/// started, so that `boot_tsc - boot_entry_tsc` counts the kernel's own work.
pub fn boot_entry_tsc(lines: &[Line]) -> Option<u64> {
    boot_word(lines, "entry_tsc=")
}

fn boot_word(lines: &[Line], key: &str) -> Option<u64> {
    let line = lines
        .iter()
        .find(|l| l.text.trim_start().starts_with("boot:"))?;
    line.text
        .split(|c: char| c.is_whitespace() || c == ',')
        .rev()
        .find_map(|word| word.strip_prefix(key)?.parse().ok())
}

/// Builds system `name` from `manifests/`, boots it once on QEMU with `-icount` (the TSC counts
/// instructions) and returns the boot; a run that does not end in success is an error naming the
/// saved transcript. The IPC and exit benchmarks share it.
pub fn boot_icount(
    name: &str,
    kernel: &std::path::Path,
    release: bool,
    timeout: Duration,
) -> Result<emulator::Run> {
    boot_counted(name, kernel, release, timeout, Emulator::Qemu)
}

/// As [`boot_icount`] on `emulator`: QEMU with `-icount`, or Bochs, whose TSC advances one tick
/// per emulated instruction.
pub fn boot_counted(
    name: &str,
    kernel: &std::path::Path,
    release: bool,
    timeout: Duration,
    emulator: Emulator,
) -> Result<emulator::Run> {
    let root = layout::root();
    let system = manifest::load(&root, name)?;
    let work = layout::work_dir(&["bench", name])?;
    let iso = work.join(format!("{name}.iso"));
    let counting = emulator == Emulator::Qemu;
    let modules = pack::modules(&root, &system, release, true)?;
    image::for_system(
        &system,
        &modules,
        run::default_bootloader(),
        kernel,
        "",
        &iso,
    )?;
    let spec = Spec {
        iso,
        cpu: emulator.default_cpu().into(),
        timeout,
        ram_mib: system.ram_mib,
        icount: counting,
        echo: false,
        work: work.join(if counting { "icount" } else { "bochs" }),
        extra: Vec::new(),
    };
    let boot = emulator::boot(emulator, &spec)?;
    if boot.outcome() != Outcome::Success {
        let log = spec.work.join("failed.log");
        std::fs::write(&log, boot.log_text())?;
        bail!(
            "the {name} system did not succeed: {} (see {})",
            boot.outcome(),
            layout::show(&log)
        );
    }
    Ok(boot)
}

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

#[derive(Serialize)]
struct Config {
    icount: bool,
    /// Wall-clock milliseconds from QEMU's start to the banner, one per boot.
    wall_ms_to_banner: Vec<f64>,
    median_wall_ms_to_banner: Option<f64>,
    /// The guest TSC at the `boot:` line of each boot (instructions under icount).
    tsc_at_banner: Vec<Option<u64>>,
    /// Banner TSC minus the TSC at the kernel's entry: the kernel's own work up to the banner.
    kernel_tsc_to_banner: Vec<Option<u64>>,
}

#[derive(Serialize)]
struct KernelSize {
    path: String,
    file_bytes: u64,
    load_memory_bytes: u64,
    load_file_bytes: u64,
    load_segments: u32,
}

#[derive(Serialize)]
struct Report {
    system: String,
    emulator: &'static str,
    bootloader: &'static str,
    profile: &'static str,
    cpu: &'static str,
    kernel: KernelSize,
    configs: Vec<Config>,
}

pub fn command(args: &BenchArgs) -> Result<bool> {
    setup::ensure(&[Need::KernelToolchain, Need::Iso, Need::Qemu])?;
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let root = layout::root();
    let release = !args.debug;
    let kernel = match &args.kernel {
        Some(kernel) => kernel.clone(),
        None => build::kernel(&root, release)?,
    };
    let wanted = |kind: BenchKind| args.which.is_none() || args.which == Some(kind);
    if wanted(BenchKind::Boot) {
        boot_bench(args, &kernel, release)?;
    }
    if wanted(BenchKind::Ipc) {
        crate::bench_ipc::run(&kernel, release)?;
    }
    if wanted(BenchKind::Exits) {
        crate::bench_exits::run(&kernel, release)?;
    }
    let mut ok = true;
    if wanted(BenchKind::Workloads) {
        ok &= crate::bench_workloads::run(&kernel, release, args.backend)?;
    }
    Ok(ok)
}

fn boot_bench(args: &BenchArgs, kernel: &std::path::Path, release: bool) -> Result<()> {
    let root = layout::root();
    let system = manifest::load(&root, "demo")?;
    let kernel = kernel.to_path_buf();
    let bootloader = run::default_bootloader();
    let work = layout::work_dir(&["bench"])?;
    let iso = work.join("boot.iso");
    let modules = pack::modules(&root, &system, release, true)?;
    image::for_system(&system, &modules, bootloader, &kernel, "", &iso)?;

    let mut configs = Vec::new();
    for icount in [false, true] {
        let mut config = Config {
            icount,
            wall_ms_to_banner: Vec::new(),
            median_wall_ms_to_banner: None,
            tsc_at_banner: Vec::new(),
            kernel_tsc_to_banner: Vec::new(),
        };
        for i in 1..=args.runs {
            let spec = Spec {
                iso: iso.clone(),
                cpu: Emulator::Qemu.default_cpu().into(),
                timeout: Duration::from_secs(Emulator::Qemu.default_timeout()),
                ram_mib: crate::manifest::DEFAULT_RAM,
                icount,
                echo: false,
                work: work.join(if icount { "icount" } else { "realtime" }),
                extra: Vec::new(),
            };
            let boot = emulator::boot(Emulator::Qemu, &spec)?;
            let outcome = boot.outcome();
            if outcome != Outcome::Success {
                let log = spec.work.join("failed.log");
                std::fs::write(&log, boot.log_text())?;
                bail!(
                    "boot {i} (icount {icount}) did not succeed: {outcome} (see {})",
                    layout::show(&log)
                );
            }
            let at = banner_time(&boot.lines)
                .with_context(|| format!("no line containing `{BANNER}` in the transcript"))?;
            let tsc = boot_tsc(&boot.lines);
            eprintln!(
                "bench: icount={icount} boot {i}/{}: banner after {:.1} ms, tsc={}",
                args.runs,
                at.as_secs_f64() * 1e3,
                tsc.map_or("?".into(), |t| t.to_string())
            );
            config
                .wall_ms_to_banner
                .push((at.as_secs_f64() * 1e4).round() / 10.0);
            config.tsc_at_banner.push(tsc);
            let entry = boot_entry_tsc(&boot.lines);
            config.kernel_tsc_to_banner.push(
                tsc.zip(entry)
                    .map(|(banner, entry)| banner.saturating_sub(entry)),
            );
        }
        config.median_wall_ms_to_banner = median(&mut config.wall_ms_to_banner.clone());
        configs.push(config);
    }

    let bytes = std::fs::read(&kernel)?;
    let load = elf::load_sizes(&bytes)?;
    let report = Report {
        system: system.name.clone(),
        emulator: "qemu",
        bootloader: bootloader.name(),
        profile: if release { "release" } else { "debug" },
        cpu: Emulator::Qemu.default_cpu(),
        kernel: KernelSize {
            path: layout::show(&kernel),
            file_bytes: bytes.len() as u64,
            load_memory_bytes: load.memory,
            load_file_bytes: load.file,
            load_segments: load.segments,
        },
        configs,
    };
    print!("{}", table(&report));
    let out = work.join("boot.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("wrote {}", layout::show(&out));
    Ok(())
}

fn table(report: &Report) -> String {
    let mut text = format!(
        "boot benchmark: system {} via {} on QEMU ({}), {} kernel\n",
        report.system, report.bootloader, report.cpu, report.profile
    );
    text.push_str(
        "mode        median ms to banner   instructions at banner   kernel entry to banner\n",
    );
    for config in &report.configs {
        let tsc: Vec<String> = config
            .tsc_at_banner
            .iter()
            .map(|t| t.map_or("?".into(), |t| t.to_string()))
            .collect();
        let mut unique = tsc.clone();
        unique.dedup();
        let mut kernel: Vec<String> = config
            .kernel_tsc_to_banner
            .iter()
            .map(|t| t.map_or("?".into(), |t| t.to_string()))
            .collect();
        kernel.dedup();
        text.push_str(&format!(
            "{:<10}  {:>19}   {:<22}   {}\n",
            if config.icount { "icount" } else { "realtime" },
            config
                .median_wall_ms_to_banner
                .map_or("?".into(), |m| format!("{m:.1}")),
            if config.icount {
                unique.join(", ")
            } else {
                "(TSC counts time)".into()
            },
            if config.icount {
                kernel.join(", ")
            } else {
                "(TSC counts time)".into()
            }
        ));
    }
    text.push_str(&format!(
        "kernel ELF: {} bytes in the file, {} bytes in {} loadable segments ({} from the file)\n",
        report.kernel.file_bytes,
        report.kernel.load_memory_bytes,
        report.kernel.load_segments,
        report.kernel.load_file_bytes
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ms: u64, text: &str) -> Line {
        Line {
            at: Duration::from_millis(ms),
            text: text.into(),
        }
    }

    #[test]
    fn finds_banner_and_tsc() {
        let lines = [
            line(5, "hello"),
            line(9, "boot: cpu AuthenticAMD tsc=123456 ms=3"),
            line(10, "dmphv 0.1 virtualization: SVM+NPT"),
        ];
        assert_eq!(banner_time(&lines), Some(Duration::from_millis(10)));
        assert_eq!(boot_tsc(&lines), Some(123456));
        assert_eq!(boot_tsc(&[line(1, "boot: no number")]), None);
        let quoted = line(1, "boot: multiboot2, cmdline \"tsc=1\", tsc=99");
        assert_eq!(boot_tsc(&[quoted]), Some(99));
        let both = line(1, "boot: limine, cmdline \"\", entry_tsc=40, tsc=99");
        assert_eq!(boot_tsc(std::slice::from_ref(&both)), Some(99));
        assert_eq!(boot_entry_tsc(&[both]), Some(40));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}
