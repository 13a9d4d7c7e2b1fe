//! Emulator scenarios: `tests/scenarios/<name>.toml`, one boot each, judged by its outcome and
//! by substrings of the serial transcript.
//!
//! ```toml
//! description = "Boots via GRUB on QEMU (SVM) to the banner"
//! system = "demo"            # manifests/<system>.toml (default "demo")
//! emulator = "qemu"          # or "bochs"
//! bootloader = "grub"        # or "limine"
//! cmdline = ""               # appended to the system's command line
//! cpu = "qemu64,+svm,+npt"   # optional; default per emulator
//! expect = "success"         # or "failure"
//! must_contain = ["SVM", "NPT"]
//! must_not_contain = []
//! in_order = ["first", "then"]  # each after the line of the one before (the order is the claim)
//! counts = [{ text = "shadow fills=", count = 6 }]  # exactly 6 lines contain it (or `at_least`)
//! timeout_secs = 60          # optional; default per emulator
//! icount = true              # optional, QEMU: `-icount shift=0,sleep=off` (timers follow the
//!                            # instructions executed, immune to a busy host)
//! requires = ["init"]        # optional: workspace packages the system needs; a missing one
//!                            # fails the scenario (a renamed or deleted crate is not a pass)
//! generate = "own-kernel"    # optional, instead of `system`: the tool writes a system under
//!                            # target/ and boots its manifest as `run --manifest` does
//!                            # (`own-kernel`: crate::own_kernel)
//! ```

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::emulator::Emulator;
use crate::image::Bootloader;
use crate::outcome::Outcome;
use crate::toml_file::Source;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    #[default]
    Success,
    Failure,
}

impl Expect {
    pub fn word(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    description: String,
    #[serde(default = "default_system")]
    system: String,
    emulator: Emulator,
    bootloader: Bootloader,
    #[serde(default)]
    cmdline: String,
    cpu: Option<String>,
    #[serde(default)]
    expect: Expect,
    #[serde(default)]
    must_contain: Vec<String>,
    #[serde(default)]
    must_not_contain: Vec<String>,
    #[serde(default)]
    in_order: Vec<String>,
    #[serde(default)]
    counts: Vec<Count>,
    timeout_secs: Option<u64>,
    #[serde(default)]
    requires: Vec<String>,
    generate: Option<Generate>,
    #[serde(default)]
    icount: bool,
}

/// Systems the tool writes itself (`generate = "…"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Generate {
    /// [`crate::own_kernel`]: a Multiboot v1 ELF32 kernel, its initrd and its manifest.
    #[serde(rename = "own-kernel")]
    OwnKernel,
}

impl Generate {
    /// Writes the system's files; returns its manifest's path.
    pub fn write(self) -> Result<std::path::PathBuf> {
        match self {
            Generate::OwnKernel => crate::own_kernel::generate(),
        }
    }
}

/// A line count a transcript must have: exactly `count`, or at least `at_least`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Count {
    pub text: String,
    pub count: Option<usize>,
    pub at_least: Option<usize>,
}

fn default_system() -> String {
    "demo".into()
}

/// A parsed scenario.
#[derive(Debug)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub system: String,
    pub emulator: Emulator,
    pub bootloader: Bootloader,
    pub cmdline: String,
    pub cpu: String,
    pub expect: Expect,
    pub must_contain: Vec<String>,
    pub must_not_contain: Vec<String>,
    /// Lines that must appear in this order.
    pub in_order: Vec<String>,
    /// Exact numbers of lines containing a text.
    pub counts: Vec<Count>,
    pub timeout: Duration,
    /// Workspace packages without which the scenario is skipped.
    pub requires: Vec<String>,
    /// A system the tool writes and boots instead of `manifests/<system>.toml`.
    pub generate: Option<Generate>,
    /// QEMU only: deterministic instruction counting (`-icount shift=0,sleep=off`): the TSC and
    /// every timer follow the instructions executed, not the host's clock.
    pub icount: bool,
}

impl Scenario {
    /// The scenario's system: `manifests/<system>.toml`, or the generated one.
    pub fn load_system(
        &self,
        root: &Path,
        workspace: Option<&crate::workspace::Workspace>,
    ) -> Result<crate::manifest::System> {
        match self.generate {
            Some(generate) => crate::manifest::load_file_with(root, &generate.write()?, workspace),
            None => crate::manifest::load_with(root, &self.system, workspace),
        }
    }
}

/// Parses one scenario file named `name`.
pub fn parse(source: &Source, name: &str) -> Result<Scenario> {
    let file: File = source.parse()?;
    if file.timeout_secs == Some(0) {
        return Err(source.error(None, "`timeout_secs` must be positive"));
    }
    if file
        .counts
        .iter()
        .any(|c| c.count.is_some() == c.at_least.is_some())
    {
        return Err(source.error(None, "each of `counts` needs `count` or `at_least`"));
    }
    Ok(Scenario {
        name: name.to_string(),
        description: file.description,
        system: file.system,
        emulator: file.emulator,
        bootloader: file.bootloader,
        cmdline: file.cmdline,
        cpu: file
            .cpu
            .unwrap_or_else(|| file.emulator.default_cpu().to_string()),
        expect: file.expect,
        must_contain: file.must_contain,
        must_not_contain: file.must_not_contain,
        in_order: file.in_order,
        counts: file.counts,
        timeout: Duration::from_secs(
            file.timeout_secs
                .unwrap_or_else(|| file.emulator.default_timeout()),
        ),
        requires: file.requires,
        generate: file.generate,
        icount: file.icount,
    })
}

/// Every `*.toml` in `dir`, sorted by name.
pub fn load_all(dir: &Path) -> Result<Vec<Scenario>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", crate::layout::show(dir)))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .context("scenario file name is not UTF-8")?;
            parse(&Source::read(path)?, name)
        })
        .collect()
}

/// Why a run does not satisfy `scenario` (empty when it passes).
pub fn problems(scenario: &Scenario, outcome: &Outcome, transcript: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if outcome.word() != scenario.expect.word() {
        problems.push(format!(
            "expected {}, got: {outcome}",
            scenario.expect.word()
        ));
    }
    for needle in &scenario.must_contain {
        if !transcript.contains(needle.as_str()) {
            problems.push(format!("missing `{needle}`"));
        }
    }
    for needle in &scenario.must_not_contain {
        if transcript.contains(needle.as_str()) {
            problems.push(format!("unwanted `{needle}`"));
        }
    }
    problems.extend(order_problem(&scenario.in_order, transcript));
    for c in &scenario.counts {
        let n = transcript
            .lines()
            .filter(|l| l.contains(c.text.as_str()))
            .count();
        if c.count.is_some_and(|want| n != want) || c.at_least.is_some_and(|least| n < least) {
            let want = match (c.count, c.at_least) {
                (Some(want), _) => format!("{want}"),
                (None, Some(least)) => format!("at least {least}"),
                (None, None) => String::new(),
            };
            problems.push(format!("{n} lines contain `{}`, expected {want}", c.text));
        }
    }
    problems
}

/// The first text of `order` not found on a line after the line of the one before it.
fn order_problem(order: &[String], transcript: &str) -> Option<String> {
    let mut lines = transcript.lines();
    let mut previous: Option<&str> = None;
    for needle in order {
        if !lines.any(|l| l.contains(needle.as_str())) {
            return Some(match previous {
                Some(p) => format!("`{needle}` not found after `{p}`"),
                None => format!("missing `{needle}`"),
            });
        }
        previous = Some(needle);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Scenario> {
        let source = Source {
            name: "tests/scenarios/x.toml".into(),
            text: text.into(),
        };
        parse(&source, "x")
    }

    #[test]
    fn order_and_counts_are_claims() {
        let s = parse_text(
            "description = \"d\"\nemulator = \"qemu\"\nbootloader = \"grub\"\nexpect = \"failure\"\nin_order = [\"a\", \"b\"]\ncounts = [{ text = \"x\", count = 2 }, { text = \"b\", at_least = 1 }]\n",
        )
        .unwrap();
        let failure = Outcome::Failure("f".into());
        assert!(problems(&s, &failure, "a\nx\nb\nx\n").is_empty());
        let p = problems(&s, &failure, "b\na\nx\nx\n");
        assert_eq!(p, ["`b` not found after `a`"]);
        // Both on one line is not an order.
        let p = problems(&s, &failure, "a b\nx\nx\n");
        assert_eq!(p, ["`b` not found after `a`"]);
        let p = problems(&s, &failure, "a\nb\nx x\n");
        assert_eq!(p, ["1 lines contain `x`, expected 2"]);
    }

    #[test]
    fn defaults() {
        let s = parse_text("description = \"d\"\nemulator = \"bochs\"\nbootloader = \"grub\"\n")
            .unwrap();
        assert_eq!(s.system, "demo");
        assert_eq!(s.cpu, "corei7_haswell_4770");
        assert_eq!(s.expect, Expect::Success);
        assert_eq!(s.timeout, Duration::from_secs(120));
    }

    #[test]
    fn bad_fields_are_located() {
        let err = parse_text("description = \"d\"\nemulator = \"vbox\"\nbootloader = \"grub\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("tests/scenarios/x.toml:2:12: unknown variant `vbox`"),
            "{err}"
        );
        let err = parse_text(
            "description = \"d\"\nemulator = \"qemu\"\nbootloader = \"grub\"\nmust_contians = []\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("tests/scenarios/x.toml:4:1: unknown field `must_contians`"),
            "{err}"
        );
    }

    #[test]
    fn judging() {
        let s = parse_text(
            "description = \"d\"\nemulator = \"qemu\"\nbootloader = \"grub\"\nexpect = \"failure\"\nmust_contain = [\"vector 14\"]\nmust_not_contain = [\"panicked\"]\n",
        )
        .unwrap();
        let failure = Outcome::Failure("exception".into());
        assert!(problems(&s, &failure, "EXCEPTION vector 14").is_empty());
        assert_eq!(problems(&s, &failure, "vector 13"), ["missing `vector 14`"]);
        assert_eq!(
            problems(&s, &failure, "vector 14 panicked"),
            ["unwanted `panicked`"]
        );
        let wrong = problems(&s, &Outcome::Success, "vector 14");
        assert_eq!(
            wrong,
            ["expected failure, got: the system reported success"]
        );
    }

    #[test]
    fn the_repository_scenarios_parse() {
        let dir = crate::layout::root().join("tests/scenarios");
        let all = load_all(&dir).unwrap();
        assert!(all.len() >= 7);
        let root = crate::layout::root();
        for s in &all {
            crate::manifest::load_with(&root, &s.system, None).unwrap();
        }
    }
}
