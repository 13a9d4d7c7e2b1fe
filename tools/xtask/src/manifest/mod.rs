//! System manifests: `manifests/<system>.toml` describes one bootable system.
//!
//! For now a system is a kernel command line and a list of boot modules:
//!
//! ```toml
//! [system]
//! name = "demo"
//! description = "…"
//! cmdline = ""
//! modules = [{ file = "target/…/server", name = "server" }]
//! ```
//!
//! Unknown sections and fields are errors (with file, line and column), so a manifest written for
//! a later version of the tool never half-works.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Deserialize;
use toml::Spanned;

use crate::image::BootModule;
use crate::toml_file::Source;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    system: SystemSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SystemSection {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    cmdline: String,
    #[serde(default)]
    modules: Vec<Spanned<ModuleEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleEntry {
    /// Path of the module file, relative to the repository root.
    file: String,
    /// The module's name (its command line); defaults to the file name.
    name: Option<String>,
}

/// A checked system manifest.
#[derive(Debug)]
pub struct System {
    pub name: String,
    pub description: String,
    pub cmdline: String,
    pub modules: Vec<BootModule>,
}

/// Loads `manifests/<name>.toml` below `root`.
pub fn load(root: &Path, name: &str) -> Result<System> {
    let dir = root.join("manifests");
    let path = dir.join(format!("{name}.toml"));
    if !path.is_file() {
        bail!(
            "no system `{name}`: {} does not exist (systems: {})",
            crate::layout::show(&path),
            available(&dir).join(", ")
        );
    }
    let source = Source::read(&path)?;
    parse(&source, name, root)
}

/// The names of the systems in `dir`.
pub fn available(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            (path.extension()? == "toml").then(|| path.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    names
}

/// Parses and checks a manifest whose file is named `<expected_name>.toml`; module paths are
/// resolved against `root`.
pub fn parse(source: &Source, expected_name: &str, root: &Path) -> Result<System> {
    let file: File = source.parse()?;
    let section = file.system;
    if section.name.get_ref() != expected_name {
        return Err(source.error(
            Some(section.name.span()),
            format!(
                "system name `{}` differs from the file name `{expected_name}`",
                section.name.get_ref()
            ),
        ));
    }
    if section.cmdline.contains('\n') {
        return Err(source.error(None, "`cmdline` must be one line"));
    }
    let mut modules = Vec::new();
    for entry in &section.modules {
        let span = Some(entry.span());
        let module = entry.get_ref();
        let file = PathBuf::from(&module.file);
        let default_name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let name = module
            .name
            .clone()
            .unwrap_or_else(|| default_name.to_string());
        if name.is_empty() || name.contains('\n') {
            return Err(source.error(span, "a module needs a one-line, non-empty `name`"));
        }
        if modules.iter().any(|m: &BootModule| m.name == name) {
            return Err(source.error(span, format!("two modules are named `{name}`")));
        }
        modules.push(BootModule {
            source: root.join(file),
            name,
        });
    }
    Ok(System {
        name: section.name.into_inner(),
        description: section.description,
        cmdline: section.cmdline,
        modules,
    })
}

/// Joins command-line fragments with single spaces, skipping empty ones.
pub fn join_cmdline<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    parts
        .into_iter()
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str, name: &str) -> Result<System> {
        let source = Source {
            name: format!("manifests/{name}.toml"),
            text: text.into(),
        };
        parse(&source, name, Path::new("/repo"))
    }

    #[test]
    fn minimal_manifest() {
        let system = parse_text("[system]\nname = \"demo\"\n", "demo").unwrap();
        assert_eq!(system.name, "demo");
        assert_eq!(system.cmdline, "");
        assert!(system.modules.is_empty());
    }

    #[test]
    fn modules_resolve_against_the_root_and_default_their_name() {
        let text = "[system]\nname = \"s\"\ncmdline = \"log=debug\"\nmodules = [\n  { file = \"target/init\" },\n  { file = \"a/b.bin\", name = \"guest\" },\n]\n";
        let system = parse_text(text, "s").unwrap();
        assert_eq!(system.cmdline, "log=debug");
        assert_eq!(system.modules[0].name, "init");
        assert_eq!(system.modules[0].source, Path::new("/repo/target/init"));
        assert_eq!(system.modules[1].name, "guest");
    }

    #[test]
    fn unknown_section_is_an_error_with_position() {
        let err = parse_text("[system]\nname = \"demo\"\n\n[servers]\nx = 1\n", "demo")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("manifests/demo.toml:4:2: unknown field `servers`"),
            "{err}"
        );
    }

    #[test]
    fn field_errors_give_the_line() {
        let err = parse_text("[system]\nname = \"demo\"\ncmdline = 3\n", "demo")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("manifests/demo.toml:3:11: invalid type"),
            "{err}"
        );
        let err = parse_text(
            "[system]\nname = \"demo\"\nmodules = [{ path = \"x\" }]\n",
            "demo",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("manifests/demo.toml:3:14: unknown field `path`"),
            "{err}"
        );
    }

    #[test]
    fn name_must_match_file_and_modules_be_unique() {
        let err = parse_text("[system]\nname = \"other\"\n", "demo")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("manifests/demo.toml:2:8: system name `other`"),
            "{err}"
        );
        let text = "[system]\nname = \"d\"\nmodules = [{ file = \"x/m\" }, { file = \"y/m\" }]\n";
        let err = parse_text(text, "d").unwrap_err().to_string();
        assert!(err.contains("two modules are named `m`"), "{err}");
    }

    #[test]
    fn join_skips_empty_parts() {
        assert_eq!(join_cmdline(["", " a ", "", "b=1"]), "a b=1");
        assert_eq!(join_cmdline([""]), "");
    }

    #[test]
    fn the_repository_manifests_parse() {
        let root = crate::layout::root();
        for name in available(&root.join("manifests")) {
            load(&root, &name).unwrap();
        }
        assert!(load(&root, "demo").is_ok());
    }
}
