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
//! timeout_secs = 60          # optional; default per emulator
//! requires = ["init"]        # optional: workspace packages the system needs; while one is
//!                            # missing the scenario is skipped ("servers not built yet")
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
    timeout_secs: Option<u64>,
    #[serde(default)]
    requires: Vec<String>,
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
    pub timeout: Duration,
    /// Workspace packages without which the scenario is skipped.
    pub requires: Vec<String>,
}

/// Parses one scenario file named `name`.
pub fn parse(source: &Source, name: &str) -> Result<Scenario> {
    let file: File = source.parse()?;
    if file.timeout_secs == Some(0) {
        return Err(source.error(None, "`timeout_secs` must be positive"));
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
        timeout: Duration::from_secs(
            file.timeout_secs
                .unwrap_or_else(|| file.emulator.default_timeout()),
        ),
        requires: file.requires,
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
    problems
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
