//! `cargo xtask mutate`: does the suite fail when the thing it claims breaks?
//!
//! `tests/mutants.toml` lists small deliberate breakages (a rights check dropped, a TLB flush
//! left out, an I/O bitmap off by one, a judge that believes any power-off line, …), each with
//! the test items that must catch it:
//!
//! ```toml
//! [[mutant]]
//! name = "map-ignores-write-right"      # named after the weakness its tests close
//! file = "kernel/src/kern/memory.rs"
//! find = "exact text, found exactly once"
//! replace = "the broken text"
//! tests = ["scenario:isolation-qemu"]   # `cargo xtask test --filter` values; any failing = caught
//! ```
//!
//! The tool copies the working tree (tracked and untracked files, not `target/`) to
//! `target/mutate/tree`, checks there once that every named test item passes unmutated (a
//! filter that selects nothing fails, so it cannot pass for a caught mutant), then applies
//! one mutant at a time, runs its tests, and restores the file. It prints one line per mutant and
//! `mutants: N caught, M survived`; the status is non-zero when one survived or the baseline
//! failed. It is not part of `cargo xtask test`: every mutant rebuilds what it touches.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::cli::MutateArgs;
use crate::layout;
use crate::toml_file::Source;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    mutant: Vec<Mutant>,
}

/// One deliberate breakage.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Mutant {
    pub name: String,
    pub file: String,
    pub find: String,
    pub replace: String,
    pub tests: Vec<String>,
}

/// Parses `tests/mutants.toml`: names unique, every mutant with tests and a real change.
pub fn parse(source: &Source) -> Result<Vec<Mutant>> {
    let file: File = source.parse()?;
    let mut names = BTreeSet::new();
    for m in &file.mutant {
        if !names.insert(m.name.as_str()) {
            return Err(source.error(None, format!("mutant `{}` listed twice", m.name)));
        }
        if m.tests.is_empty() || m.find == m.replace || m.find.is_empty() {
            return Err(source.error(
                None,
                format!("mutant `{}` needs tests and a find text it changes", m.name),
            ));
        }
    }
    Ok(file.mutant)
}

/// `text` with `m` applied, or why it does not apply (its text must be there exactly once).
pub fn apply(m: &Mutant, text: &str) -> Result<String> {
    match text.matches(m.find.as_str()).count() {
        1 => Ok(text.replacen(m.find.as_str(), &m.replace, 1)),
        0 => bail!("mutant `{}`: its text is not in {}", m.name, m.file),
        n => bail!("mutant `{}`: its text is in {} {n} times", m.name, m.file),
    }
}

pub fn command(args: &MutateArgs) -> Result<bool> {
    let root = layout::root();
    let mutants: Vec<Mutant> = parse(&Source::read(&root.join("tests/mutants.toml"))?)?
        .into_iter()
        .filter(|m| args.only.as_deref().is_none_or(|o| m.name.contains(o)))
        .collect();
    if mutants.is_empty() {
        bail!("no mutant selected");
    }
    for m in &mutants {
        let text = std::fs::read_to_string(root.join(&m.file))
            .with_context(|| format!("mutant `{}`: cannot read {}", m.name, m.file))?;
        apply(m, &text)?;
    }
    if args.list {
        for m in &mutants {
            println!("mutant {}: {} ({})", m.name, m.file, m.tests.join(", "));
        }
        println!("mutants: {} listed, each applies", mutants.len());
        return Ok(true);
    }
    let tree = copy_tree(&root)?;
    let started = Instant::now();
    let filters: BTreeSet<&str> = mutants
        .iter()
        .flat_map(|m| m.tests.iter().map(String::as_str))
        .collect();
    for filter in &filters {
        println!("mutate: baseline {filter} ...");
        if !passes(&tree, filter)? {
            println!("mutate: the baseline of `{filter}` fails unmutated: fix that first");
            return Ok(false);
        }
    }
    let (mut caught, mut survived) = (0, Vec::new());
    for m in &mutants {
        let path = tree.join(&m.file);
        let original = std::fs::read_to_string(&path)?;
        std::fs::write(&path, apply(m, &original)?)?;
        let mut failing = None;
        for filter in &m.tests {
            if !passes(&tree, filter)? {
                failing = Some(filter.clone());
                break;
            }
        }
        std::fs::write(&path, original)?;
        match failing {
            Some(filter) => {
                caught += 1;
                println!("mutant {}: caught by {filter}", m.name);
            }
            None => {
                println!("mutant {}: SURVIVED {}", m.name, m.tests.join(", "));
                survived.push(m.name.clone());
            }
        }
    }
    println!(
        "mutants: {caught} caught, {} survived ({:.0} s)",
        survived.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(survived.is_empty())
}

/// Whether `cargo xtask test --filter FILTER` passes in `tree` (its output goes to a log).
fn passes(tree: &Path, filter: &str) -> Result<bool> {
    let log_name = filter.replace([':', '/'], "_");
    let log = std::fs::File::create(tree.join("target").join(format!("mutate-{log_name}.log")))?;
    let status = Command::new(env!("CARGO"))
        .current_dir(tree)
        .args(["xtask", "test", "--filter", filter])
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .context("cannot run cargo xtask test in the scratch tree")?;
    Ok(status.success())
}

/// Copies the working tree's files (tracked, and untracked ones git does not ignore) to
/// `target/mutate/tree`, leaving its `target/` for incremental builds.
fn copy_tree(root: &Path) -> Result<PathBuf> {
    let tree = layout::work_dir(&["mutate", "tree"])?;
    let out = Command::new("git")
        .current_dir(root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .context("git ls-files")?;
    if !out.status.success() {
        bail!("git ls-files failed: the mutation check needs a git checkout");
    }
    for name in out.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).context("a file name is not UTF-8")?;
        let from = root.join(name);
        if !from.is_file() {
            continue; // deleted in the working tree
        }
        let to = tree.join(name);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let same = std::fs::read(&to).ok() == Some(std::fs::read(&from)?);
        if !same {
            std::fs::copy(&from, &to)?;
        }
    }
    std::fs::create_dir_all(tree.join("target"))?;
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source {
        Source {
            name: "tests/mutants.toml".into(),
            text: text.into(),
        }
    }

    #[test]
    fn parses_and_applies_exactly_once() {
        let ms = parse(&source(
            "[[mutant]]\nname = \"a\"\nfile = \"f.rs\"\nfind = \"x < y\"\nreplace = \"x <= y\"\ntests = [\"unit:f\"]\n",
        ))
        .unwrap();
        assert_eq!(apply(&ms[0], "if x < y {}").unwrap(), "if x <= y {}");
        assert!(apply(&ms[0], "nothing").is_err());
        assert!(apply(&ms[0], "x < y; x < y").is_err());
    }

    #[test]
    fn refuses_empty_and_duplicate_mutants() {
        let twice = "[[mutant]]\nname = \"a\"\nfile = \"f\"\nfind = \"1\"\nreplace = \"2\"\ntests = [\"t\"]\n";
        assert!(parse(&source(&format!("{twice}{twice}"))).is_err());
        let no_tests =
            "[[mutant]]\nname = \"a\"\nfile = \"f\"\nfind = \"1\"\nreplace = \"2\"\ntests = []\n";
        assert!(parse(&source(no_tests)).is_err());
        let same = "[[mutant]]\nname = \"a\"\nfile = \"f\"\nfind = \"1\"\nreplace = \"1\"\ntests = [\"t\"]\n";
        assert!(parse(&source(same)).is_err());
    }

    /// Every mutant in the repository applies to today's code (the list stays true to it).
    #[test]
    fn the_repository_mutants_apply() {
        let root = layout::root();
        let ms = parse(&Source::read(&root.join("tests/mutants.toml")).unwrap()).unwrap();
        assert!(ms.len() >= 12, "{} mutants", ms.len());
        for m in &ms {
            let text = std::fs::read_to_string(root.join(&m.file)).unwrap();
            apply(m, &text).unwrap();
        }
    }
}
