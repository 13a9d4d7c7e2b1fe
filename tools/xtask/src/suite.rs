//! `cargo xtask test`: host unit tests, lints, the kernel build and every emulator scenario, then
//! the summary table whose last line is `N passed, M failed, K skipped`.
//!
//! Item names (what `--filter` matches): `unit:<crate>`, `fmt`, `clippy:host`, `build:kernel`,
//! `clippy:kernel`, `build:user`, `clippy:user`, `build:guests`, `clippy:guests`,
//! `scenario:<name>`, `budget:fast-paths` (the release kernel's instruction budgets). The kernel is built whenever a scenario runs, the user-space crates whenever
//! a scenario boots a system with servers, the guest crates whenever one boots a system with
//! guests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::cargo_test;
use crate::cli::TestArgs;
use crate::emulator::{self, Spec};
use crate::image::{self, limine::Limine, Bootloader};
use crate::scenario::{self, Scenario};
use crate::setup;
use crate::summary::{self, Counts, Row, Status};
use crate::workspace::Workspace;
use crate::{layout, pack, toolchain};

const NO_USER_CRATES: &str = "no user-space crates in the workspace yet";
const NO_GUEST_CRATES: &str = "no guest crates under tests/guests/ yet";

/// Lines of a failed scenario's transcript shown in the output.
const TAIL_LINES: usize = 40;

pub fn command(args: &TestArgs) -> Result<bool> {
    let started = Instant::now();
    setup::ensure(&setup::ALL)?;
    let root = layout::root();
    let selected = |name: &str| args.filter.as_deref().is_none_or(|f| name.contains(f));
    let mut rows: Vec<Row> = Vec::new();

    let workspace = Workspace::load(&root)?;
    let crates: Vec<String> = workspace
        .host_crates()
        .into_iter()
        .filter(|c| selected(&format!("unit:{c}")))
        .collect();
    if !crates.is_empty() {
        rows.extend(unit_tests(&root, &crates));
    }
    let host_cargo = toolchain::host_cargo();
    if selected("fmt") {
        let mut cmd = Command::new(&host_cargo);
        cmd.current_dir(&root)
            .args(["fmt", "--all", "--", "--check"]);
        rows.push(check("fmt", cmd));
    }
    if selected("clippy:host") {
        let mut cmd = Command::new(&host_cargo);
        cmd.current_dir(&root)
            .args(["clippy", "--all-targets", "--", "-D", "warnings"]);
        rows.push(check("clippy:host", cmd));
    }

    let (scenarios, scenario_error) = match scenario::load_all(&root.join("tests/scenarios")) {
        Ok(all) => (all, None),
        Err(err) => (Vec::new(), Some(format!("{err:#}"))),
    };
    if let Some(err) = scenario_error {
        rows.push(Row::single(
            "scenarios",
            Status::Failed,
            Duration::ZERO,
            err,
        ));
    }
    let scenarios: Vec<&Scenario> = scenarios
        .iter()
        .filter(|s| selected(&format!("scenario:{}", s.name)))
        .collect();

    let tc = toolchain::detect();
    let mut kernel_ok = false;
    if selected("build:kernel") || !scenarios.is_empty() {
        let row = check("build:kernel", tc.build(&root, args.release));
        kernel_ok = row.status == Status::Passed;
        rows.push(row);
    }
    if selected("clippy:kernel") {
        rows.push(match tc.clippy(&root) {
            Ok(cmd) => check("clippy:kernel", cmd),
            Err(reason) => announce(Row::single(
                "clippy:kernel",
                Status::Skipped,
                Duration::ZERO,
                reason,
            )),
        });
    }

    // Scenarios whose packages are missing fail; the others decide whether the
    // user-space crates must be built.
    let skips: Vec<Option<String>> = scenarios
        .iter()
        .map(|s| missing_packages(s, workspace))
        .collect();
    let needs_servers = |s: &Scenario| s.load_system(&root, None).is_ok_and(|m| m.has_servers());
    let needs_guests = |s: &Scenario| s.load_system(&root, None).is_ok_and(|m| m.has_guests());
    let needs_user = scenarios
        .iter()
        .zip(&skips)
        .any(|(s, skip)| skip.is_none() && needs_servers(s));
    let needs_guest_build = scenarios
        .iter()
        .zip(&skips)
        .any(|(s, skip)| skip.is_none() && needs_guests(s));
    let user_crates = workspace.user_crates();
    let mut user_ok = true;
    if selected("build:user") || needs_user {
        let row = if user_crates.is_empty() {
            announce(Row::single(
                "build:user",
                Status::Skipped,
                Duration::ZERO,
                NO_USER_CRATES,
            ))
        } else {
            check(
                "build:user",
                tc.build_user(&root, &user_crates, args.release),
            )
        };
        user_ok = row.status != Status::Failed;
        rows.push(row);
    }
    if selected("clippy:user") {
        let clippy = if user_crates.is_empty() {
            Err(NO_USER_CRATES.to_string())
        } else {
            tc.clippy_user(&root, &user_crates)
        };
        rows.push(match clippy {
            Ok(cmd) => check("clippy:user", cmd),
            Err(reason) => announce(Row::single(
                "clippy:user",
                Status::Skipped,
                Duration::ZERO,
                reason,
            )),
        });
    }

    let guest_crates = workspace.guest_crates();
    let mut guests_ok = true;
    if selected("build:guests") || needs_guest_build {
        let row = if guest_crates.is_empty() {
            announce(Row::single(
                "build:guests",
                Status::Skipped,
                Duration::ZERO,
                NO_GUEST_CRATES,
            ))
        } else {
            check(
                "build:guests",
                tc.build_guest(&root, &guest_crates, args.release),
            )
        };
        guests_ok = row.status != Status::Failed;
        rows.push(row);
    }
    if selected("clippy:guests") {
        let clippy = if guest_crates.is_empty() {
            Err(NO_GUEST_CRATES.to_string())
        } else {
            tc.clippy_guest(&root, &guest_crates)
        };
        rows.push(match clippy {
            Ok(cmd) => check("clippy:guests", cmd),
            Err(reason) => announce(Row::single(
                "clippy:guests",
                Status::Skipped,
                Duration::ZERO,
                reason,
            )),
        });
    }

    let kernel = toolchain::kernel_elf(&root, args.release);
    for (s, skip) in scenarios.into_iter().zip(skips) {
        let failed =
            |reason: &str| Row::single(&scenario_row(s), Status::Failed, Duration::ZERO, reason);
        let row = if let Some(reason) = skip {
            // A scenario whose crates are gone claims something nothing checks: a failure.
            failed(&reason)
        } else if !kernel_ok {
            failed("the kernel did not build")
        } else if !user_ok && needs_servers(s) {
            failed("the user-space crates did not build")
        } else if !guests_ok && needs_guests(s) {
            failed("the guest crates did not build")
        } else {
            run_scenario(&root, s, &kernel, args)
        };
        rows.push(announce(row));
    }

    if selected("budget:fast-paths") {
        starting("budget:fast-paths");
        rows.push(announce(crate::budget::row(&root)));
    }

    if rows.is_empty() {
        // A filter that selects nothing tests nothing: say so and fail, never pass quietly.
        rows.push(announce(Row::single(
            "filter",
            Status::Failed,
            Duration::ZERO,
            format!(
                "`--filter {}` selects no test item",
                args.filter.as_deref().unwrap_or("")
            ),
        )));
    }
    println!();
    print!("{}", summary::render(&rows, started.elapsed()));
    Ok(summary::totals(&rows).failed == 0)
}

fn scenario_row(s: &Scenario) -> String {
    format!("scenario:{}", s.name)
}

/// Prints a finished row's result line and returns it.
fn announce(row: Row) -> Row {
    let note = if row.reason.is_empty() {
        String::new()
    } else {
        format!(": {}", row.reason)
    };
    println!(
        "test: {} {} ({:.1}s){note}",
        row.name,
        row.status.word(),
        row.time.as_secs_f64()
    );
    let _ = std::io::stdout().flush();
    row
}

fn starting(name: &str) {
    println!("test: {name} ...");
    let _ = std::io::stdout().flush();
}

/// Why `scenario` cannot run: a package it `requires` is not in the workspace.
fn missing_packages(scenario: &Scenario, workspace: &Workspace) -> Option<String> {
    let missing: Vec<&str> = scenario
        .requires
        .iter()
        .filter(|p| !workspace.has(p))
        .map(String::as_str)
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "required crates missing (no workspace package {})",
            missing
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// `cargo test` per crate (after one build of all), one row per crate with its test counts.
fn unit_tests(root: &Path, crates: &[String]) -> Vec<Row> {
    let packages: Vec<String> = crates
        .iter()
        .flat_map(|c| ["-p".to_string(), c.clone()])
        .collect();
    let mut build = Command::new(toolchain::host_cargo());
    build
        .current_dir(root)
        .args(["test", "--no-run"])
        .args(&packages);
    let built = check("unit:build", build);
    if built.status != Status::Passed {
        return vec![built];
    }
    crates.iter().map(|name| unit_test(root, name)).collect()
}

fn unit_test(root: &Path, name: &str) -> Row {
    let row_name = format!("unit:{name}");
    starting(&row_name);
    let started = Instant::now();
    let out = Command::new(toolchain::host_cargo())
        .current_dir(root)
        .args(["test", "--no-fail-fast", "-p", name])
        .output();
    let time = started.elapsed();
    let out = match out {
        Ok(out) => out,
        Err(err) => {
            return announce(Row::single(
                &row_name,
                Status::Failed,
                time,
                format!("cannot run cargo: {err}"),
            ))
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = cargo_test::parse(&stdout);
    let broken = !out.status.success() && report.failed == 0;
    if !out.status.success() {
        print_tail(
            &format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
            60,
        );
    }
    let mut counts = Counts {
        passed: report.passed,
        failed: report.failed,
        skipped: report.ignored,
    };
    let reason = if broken {
        counts.failed += 1;
        format!("cargo test failed ({}) without a failed test", out.status)
    } else if report.failed > 0 {
        format!("{} failed: {}", report.failed, report.failures.join(", "))
    } else {
        format!(
            "{} tests{}",
            report.passed,
            if report.ignored > 0 {
                format!(", {} ignored", report.ignored)
            } else {
                String::new()
            }
        )
    };
    announce(Row {
        name: row_name,
        status: if counts.failed > 0 {
            Status::Failed
        } else {
            Status::Passed
        },
        time,
        reason,
        counts,
    })
}

/// Runs a command that passes or fails as a whole; its output is shown only on failure.
fn check(name: &str, mut cmd: Command) -> Row {
    starting(name);
    let started = Instant::now();
    let out = cmd.output();
    let time = started.elapsed();
    let row = match out {
        Ok(out) if out.status.success() => Row::single(name, Status::Passed, time, ""),
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            print_tail(&text, 60);
            Row::single(
                name,
                Status::Failed,
                time,
                first_error(&text).unwrap_or_else(|| out.status.to_string()),
            )
        }
        Err(err) => Row::single(
            name,
            Status::Failed,
            time,
            format!("cannot run {}: {err}", cmd.get_program().to_string_lossy()),
        ),
    };
    announce(row)
}

/// The first `error…` line of a tool's output, for the table.
fn first_error(text: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with("error") || l.starts_with("Diff in"))
        .map(|l| l.chars().take(100).collect())
}

fn print_tail(text: &str, n: usize) {
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[lines.len().saturating_sub(n)..] {
        println!("    | {line}");
    }
}

fn run_scenario(root: &Path, s: &Scenario, kernel: &Path, args: &TestArgs) -> Row {
    let name = scenario_row(s);
    if s.bootloader == Bootloader::Limine {
        if let Err(reason) = Limine::find() {
            return Row::single(&name, Status::Skipped, Duration::ZERO, reason);
        }
    }
    starting(&name);
    let started = Instant::now();
    let result = boot_scenario(root, s, kernel, args);
    let time = started.elapsed();
    match result {
        Ok((problems, _)) if problems.is_empty() => Row::single(
            &name,
            Status::Passed,
            time,
            format!("{} as expected", s.expect.word()),
        ),
        Ok((problems, log)) => {
            println!(
                "    {} ({}) problems: {}",
                s.name,
                s.description,
                problems.join("; ")
            );
            println!("    full transcript: {}", layout::show(&log));
            Row::single(&name, Status::Failed, time, problems.join("; "))
        }
        Err(err) => Row::single(&name, Status::Failed, time, format!("{err:#}")),
    }
}

/// Packs and boots one scenario; returns its problems and the transcript's path.
fn boot_scenario(
    root: &Path,
    s: &Scenario,
    kernel: &Path,
    args: &TestArgs,
) -> Result<(Vec<String>, PathBuf)> {
    let verbose = args.verbose;
    let system = s.load_system(root, Some(Workspace::load(root)?))?;
    let modules = pack::modules(root, &system, args.release, false)?;
    let work = layout::work_dir(&["scenarios", &s.name])?;
    let iso = work.join(format!("{}.iso", s.name));
    image::for_system(&system, &modules, s.bootloader, kernel, &s.cmdline, &iso)?;
    let spec = Spec {
        iso,
        cpu: s.cpu.clone(),
        timeout: s.timeout,
        ram_mib: system.ram_mib,
        icount: s.icount,
        echo: verbose,
        work,
        extra: Vec::new(),
    };
    let run = emulator::boot(s.emulator, &spec)?;
    let log = layout::target()
        .join("scenarios")
        .join(format!("{}.log", s.name));
    std::fs::write(&log, run.log_text())?;
    let transcript = run.texts().join("\n");
    let problems = scenario::problems(s, &run.outcome(), &transcript);
    if !problems.is_empty() && !verbose {
        println!("    last lines of {}'s serial console:", s.name);
        print_tail(&transcript, TAIL_LINES);
        if !run.diagnostics.trim().is_empty() {
            println!("    {} said:", s.emulator.name());
            print_tail(&run.diagnostics, 10);
        }
    }
    Ok((problems, log))
}
