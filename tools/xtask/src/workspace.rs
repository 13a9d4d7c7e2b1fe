//! The workspace's packages as `cargo metadata` reports them: which are host crates (the default
//! members), which are user-space crates built for the target (the other members, except the
//! kernel), and each package's binaries.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

use crate::toolchain;

/// The package that is the kernel (built by its own rules, not as a user crate).
const KERNEL: &str = "kernel";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    /// Names of its `bin` targets.
    pub bins: Vec<String>,
    /// Whether it is a default member (a host crate).
    pub host: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Workspace {
    pub packages: Vec<Package>,
}

impl Workspace {
    /// Runs `cargo metadata` in `root` once per process.
    pub fn load(root: &Path) -> Result<&'static Workspace> {
        static CACHE: OnceLock<Workspace> = OnceLock::new();
        if let Some(ws) = CACHE.get() {
            return Ok(ws);
        }
        let out = Command::new(toolchain::host_cargo())
            .current_dir(root)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .output()
            .context("cannot run cargo metadata")?;
        if !out.status.success() {
            bail!(
                "cargo metadata failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let ws = Self::parse(&out.stdout)?;
        Ok(CACHE.get_or_init(|| ws))
    }

    /// Reads `cargo metadata --format-version 1 --no-deps` output.
    pub fn parse(json: &[u8]) -> Result<Workspace> {
        let meta: serde_json::Value = serde_json::from_slice(json)?;
        let defaults = meta["workspace_default_members"]
            .as_array()
            .context("cargo metadata lacks workspace_default_members")?;
        let mut packages = Vec::new();
        for package in meta["packages"].as_array().into_iter().flatten() {
            let Some(name) = package["name"].as_str() else {
                continue;
            };
            let bins = package["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| {
                    t["kind"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k == "bin"))
                })
                .filter_map(|t| t["name"].as_str().map(String::from))
                .collect();
            packages.push(Package {
                name: name.to_string(),
                bins,
                host: defaults.contains(&package["id"]),
            });
        }
        packages.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Workspace { packages })
    }

    pub fn package(&self, name: &str) -> Option<&Package> {
        self.packages.iter().find(|p| p.name == name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.package(name).is_some()
    }

    /// The host crates (default members), sorted.
    pub fn host_crates(&self) -> Vec<String> {
        self.names(|p| p.host)
    }

    /// The user-space crates: members that are neither host crates nor the kernel, sorted.
    pub fn user_crates(&self) -> Vec<String> {
        self.names(|p| !p.host && p.name != KERNEL)
    }

    fn names(&self, keep: impl Fn(&Package) -> bool) -> Vec<String> {
        self.packages
            .iter()
            .filter(|p| keep(p))
            .map(|p| p.name.clone())
            .collect()
    }

    /// The binary that package `name` builds: its only `bin` target, or the one named like the
    /// package.
    pub fn binary(&self, name: &str) -> Result<String> {
        let package = self
            .package(name)
            .with_context(|| format!("no workspace package `{name}`"))?;
        match package.bins.as_slice() {
            [one] => Ok(one.clone()),
            bins if bins.iter().any(|b| b == name) => Ok(name.to_string()),
            [] => bail!("package `{name}` has no binary"),
            _ => bail!(
                "package `{name}` has several binaries ({}) and none is named `{name}`",
                package.bins.join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cargo_metadata() {
        let json = br#"{
          "packages": [
            {"name": "kernel", "id": "k", "targets": [{"name": "kernel", "kind": ["bin"]}]},
            {"name": "serial", "id": "s", "targets": [{"name": "serial", "kind": ["bin"]}]},
            {"name": "rt", "id": "r", "targets": [{"name": "rt", "kind": ["lib"]}]},
            {"name": "abi", "id": "a", "targets": [{"name": "abi", "kind": ["lib"]}]}
          ],
          "workspace_default_members": ["a"]
        }"#;
        let ws = Workspace::parse(json).unwrap();
        assert_eq!(ws.host_crates(), ["abi"]);
        assert_eq!(ws.user_crates(), ["rt", "serial"]);
        assert_eq!(ws.binary("serial").unwrap(), "serial");
        assert!(ws.binary("rt").is_err());
        assert!(ws.binary("nope").is_err());
    }

    #[test]
    fn this_workspace() {
        let ws = Workspace::load(&crate::layout::root()).unwrap();
        assert!(ws.host_crates().contains(&"xtask".to_string()));
        assert!(ws.host_crates().contains(&"manifest".to_string()));
        assert!(!ws.user_crates().contains(&"kernel".to_string()));
    }
}
