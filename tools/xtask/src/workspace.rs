//! The workspace's packages as `cargo metadata` reports them: which are host crates (the default
//! members), which are guest crates (under [`GUEST_DIR`]: code that runs inside a virtual
//! machine, built with its own flags), which are user-space crates built for the target (the
//! other members, except the kernel), and each package's binaries.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

use crate::toolchain;

/// The package that is the kernel (built by its own rules, not as a user crate).
const KERNEL: &str = "kernel";
/// Where guest crates live, relative to the workspace root.
pub const GUEST_DIR: &str = "tests/guests";
/// A guest crate whose binary is packed as a flat file, not an ELF, without the
/// `[package.metadata.guest] format = "flat"` that says so.
const FLAT_BY_NAME: &str = "realmode";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    /// Names of its `bin` targets.
    pub bins: Vec<String>,
    /// Whether it is a default member (a host crate).
    pub host: bool,
    /// Whether its manifest lies under [`GUEST_DIR`] (a guest crate).
    pub guest: bool,
    /// A guest crate whose binary is packed flat ([`crate::elf::flatten`]): named
    /// `realmode`, or with `[package.metadata.guest] format = "flat"`.
    pub flat: bool,
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
        let root = Path::new(meta["workspace_root"].as_str().unwrap_or_default());
        let mut packages = Vec::new();
        for package in meta["packages"].as_array().into_iter().flatten() {
            let Some(name) = package["name"].as_str() else {
                continue;
            };
            let guest = package["manifest_path"]
                .as_str()
                .and_then(|path| Path::new(path).strip_prefix(root).ok())
                .is_some_and(|path| path.starts_with(GUEST_DIR));
            let flat = guest
                && (name == FLAT_BY_NAME
                    || package["metadata"]["guest"]["format"].as_str() == Some("flat"));
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
                guest,
                flat,
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

    /// The user-space crates: members that are neither host crates, guest crates nor the
    /// kernel, sorted.
    pub fn user_crates(&self) -> Vec<String> {
        self.names(|p| !p.host && !p.guest && p.name != KERNEL)
    }

    /// The guest crates (libraries included), sorted.
    pub fn guest_crates(&self) -> Vec<String> {
        self.names(|p| p.guest && !p.host)
    }

    /// The guest crate that builds the binary `image`.
    pub fn guest_package(&self, image: &str) -> Option<&Package> {
        self.packages
            .iter()
            .find(|p| p.guest && p.bins.iter().any(|b| b == image))
    }

    /// Every guest image (binary of a guest crate), sorted.
    pub fn guest_images(&self) -> Vec<String> {
        let mut images: Vec<String> = self
            .packages
            .iter()
            .filter(|p| p.guest)
            .flat_map(|p| p.bins.iter().cloned())
            .collect();
        images.sort();
        images
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
        assert!(ws.guest_crates().is_empty() && ws.guest_images().is_empty());
        assert_eq!(ws.binary("serial").unwrap(), "serial");
        assert!(ws.binary("rt").is_err());
        assert!(ws.binary("nope").is_err());
    }

    #[test]
    fn guest_crates_by_path_and_flat_ones_by_metadata_or_name() {
        let json = br#"{
          "workspace_root": "/r",
          "packages": [
            {"name": "serial", "id": "s", "manifest_path": "/r/drivers/serial/Cargo.toml",
             "targets": [{"name": "serial", "kind": ["bin"]}]},
            {"name": "grt", "id": "g", "manifest_path": "/r/tests/guests/grt/Cargo.toml",
             "targets": [{"name": "grt", "kind": ["lib"]}]},
            {"name": "hello", "id": "h", "manifest_path": "/r/tests/guests/hello/Cargo.toml",
             "targets": [{"name": "hello", "kind": ["bin"]}]},
            {"name": "boot16", "id": "b", "manifest_path": "/r/tests/guests/boot16/Cargo.toml",
             "metadata": {"guest": {"format": "flat"}},
             "targets": [{"name": "boot16", "kind": ["bin"]}]},
            {"name": "realmode", "id": "m", "manifest_path": "/r/tests/guests/realmode/Cargo.toml",
             "targets": [{"name": "realmode", "kind": ["bin"]}]},
            {"name": "fake", "id": "f", "manifest_path": "/r/tests/guestsx/Cargo.toml",
             "targets": [{"name": "fake", "kind": ["bin"]}]}
          ],
          "workspace_default_members": []
        }"#;
        let ws = Workspace::parse(json).unwrap();
        assert_eq!(ws.user_crates(), ["fake", "serial"]);
        assert_eq!(ws.guest_crates(), ["boot16", "grt", "hello", "realmode"]);
        assert_eq!(ws.guest_images(), ["boot16", "hello", "realmode"]);
        assert_eq!(ws.guest_package("hello").unwrap().name, "hello");
        assert!(ws.guest_package("grt").is_none() && ws.guest_package("serial").is_none());
        let flat: Vec<&str> = ws
            .packages
            .iter()
            .filter(|p| p.flat)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(flat, ["boot16", "realmode"]);
    }

    #[test]
    fn this_workspace() {
        let ws = Workspace::load(&crate::layout::root()).unwrap();
        assert!(ws.host_crates().contains(&"xtask".to_string()));
        assert!(ws.host_crates().contains(&"manifest".to_string()));
        assert!(!ws.user_crates().contains(&"kernel".to_string()));
    }
}
