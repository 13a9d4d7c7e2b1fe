//! The boot modules of a system: for a system with servers, init, the compiled manifest and one
//! ELF per server, gathered in `target/systems/<system>/`; then the manifest's extra `modules`.
//!
//! | module name (command line) | file in the image   | content                              |
//! |----------------------------|---------------------|--------------------------------------|
//! | `init`                     | `/boot/init.elf`    | the root server (package `init`)     |
//! | `manifest`                 | `/boot/manifest.bin`| `SystemImage::encode`                |
//! | `<server name>`            | `/boot/<name>.elf`  | the ELF of the server's `binary`     |
//!
//! The kernel finds init and the manifest by these names (`abi::boot`); init finds each server's
//! ELF by the server's name. A system without servers packs only its extra modules. Packed ELFs
//! are stripped of debug information (with `objcopy --strip-debug`, when it is installed); the
//! ELFs under `target/user/` keep it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::image::BootModule;
use crate::manifest::System;
use crate::workspace::Workspace;
use crate::{build, layout, setup, toolchain};

/// The package of the root server.
pub const INIT_PACKAGE: &str = "init";

/// The packages to build for `system`: init, then each server's binary once.
pub fn packages(system: &System) -> Vec<String> {
    let mut packages = vec![INIT_PACKAGE.to_string()];
    for binary in &system.binaries {
        if !packages.contains(binary) {
            packages.push(binary.clone());
        }
    }
    packages
}

/// Where the files of `system`'s modules are gathered.
pub fn dir(root: &Path, system: &str) -> PathBuf {
    root.join("target/systems").join(system)
}

/// The boot modules of `system`, in boot order. With servers, the user crates are built first
/// when `build` is set (else their ELFs must exist already) and the manifest is compiled to
/// `target/systems/<system>/manifest.bin`.
pub fn modules(
    root: &Path,
    system: &System,
    release: bool,
    build: bool,
) -> Result<Vec<BootModule>> {
    if !system.has_servers() {
        return Ok(system.modules.clone());
    }
    let ws = Workspace::load(root)?;
    if !ws.has(INIT_PACKAGE) {
        bail!(
            "system `{}` has servers but the workspace has no package `{INIT_PACKAGE}` (the root server)",
            system.name
        );
    }
    let packages = packages(system);
    if build {
        build::user(root, &packages, release)?;
    }
    let elf = |package: &str| -> Result<PathBuf> {
        let path = toolchain::user_elf(root, &ws.binary(package)?, release);
        if !path.is_file() {
            bail!(
                "{} (package `{package}`) has not been built",
                layout::show(&path)
            );
        }
        Ok(path)
    };
    gather_all(&dir(root, &system.name), system, elf)
}

/// Fills a fresh `dir` with init's ELF (from `elf("init")`), the compiled manifest and each
/// server's ELF (from `elf(binary)`), and returns all of the system's modules in boot order.
fn gather_all(
    dir: &Path,
    system: &System,
    elf: impl Fn(&str) -> Result<PathBuf>,
) -> Result<Vec<BootModule>> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot clear {}", layout::show(dir)))?;
    }
    std::fs::create_dir_all(dir)?;
    let mut modules = vec![gather(
        dir,
        &elf(INIT_PACKAGE)?,
        abi::boot::INIT_MODULE,
        "elf",
    )?];
    let blob = dir.join("manifest.bin");
    std::fs::write(&blob, system.image.encode())
        .with_context(|| format!("cannot write {}", layout::show(&blob)))?;
    modules.push(BootModule {
        source: blob,
        name: abi::boot::MANIFEST_MODULE.to_string(),
    });
    for (server, binary) in system.image.servers.iter().zip(&system.binaries) {
        modules.push(gather(dir, &elf(binary)?, &server.name, "elf")?);
    }
    modules.extend(system.modules.iter().cloned());
    Ok(modules)
}

/// Copies `from` to `dir/<name>.<extension>` as the module `name`; ELFs lose their debug
/// information on the way when `objcopy` is there (the built ELF keeps it, for symbolizing).
fn gather(dir: &Path, from: &Path, name: &str, extension: &str) -> Result<BootModule> {
    let to = dir.join(format!("{name}.{extension}"));
    let stripped = extension == "elf"
        && setup::on_path("objcopy")
        && Command::new("objcopy")
            .arg("--strip-debug")
            .arg(from)
            .arg(&to)
            .output()
            .is_ok_and(|out| out.status.success());
    if !stripped {
        std::fs::copy(from, &to).with_context(|| {
            format!(
                "cannot copy {} to {}",
                layout::show(from),
                layout::show(&to)
            )
        })?;
    }
    Ok(BootModule {
        source: to,
        name: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_first_and_each_binary_once() {
        let root = layout::root();
        let mut system = crate::manifest::load_with(&root, "demo", None).unwrap();
        assert_eq!(packages(&system), ["init"]);
        system.binaries = vec!["serial".into(), "t".into(), "serial".into()];
        assert_eq!(packages(&system), ["init", "serial", "t"]);
    }

    #[test]
    fn modules_are_init_manifest_servers_then_extras() {
        let root = layout::root();
        let mut system = crate::manifest::load_with(&root, "isolation", None).unwrap();
        system.modules = vec![BootModule {
            source: "/x/guest.bin".into(),
            name: "guest".into(),
        }];
        let dir = layout::work_dir(&["unit", "pack"]).unwrap();
        let fake = dir.join("fake.elf");
        std::fs::write(&fake, b"\x7fELF").unwrap();
        let out = dir.join("isolation");
        let modules = gather_all(&out, &system, |_| Ok(fake.clone())).unwrap();
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "init",
                "manifest",
                "serial",
                "isolation-target",
                "isolation-attacker",
                "guest"
            ]
        );
        assert_eq!(modules[0].source, out.join("init.elf"));
        assert_eq!(modules[2].source, out.join("serial.elf"));
        let blob = std::fs::read(out.join("manifest.bin")).unwrap();
        assert_eq!(manifest::SystemImage::decode(&blob).unwrap(), system.image);
        // In the image: /boot/<file>, the module's name as its command line.
        let planned = crate::image::plan_modules(&modules).unwrap();
        let grub = crate::image::grub::config("", &planned);
        let expected = "    module2 /boot/init.elf init\n    \
                        module2 /boot/manifest.bin manifest\n    \
                        module2 /boot/serial.elf serial\n";
        assert!(grub.contains(expected), "{grub}");
        let limine = crate::image::limine::config("isolation", "", &planned);
        assert!(
            limine.contains(
                "    module_path: boot():/boot/manifest.bin\n    module_cmdline: manifest\n"
            ),
            "{limine}"
        );
        assert!(gather_all(&out, &system, |p| anyhow::bail!("no {p}")).is_err());
    }

    #[test]
    fn a_system_without_servers_packs_only_its_modules() {
        let root = layout::root();
        let system = crate::manifest::load_with(&root, "demo", None).unwrap();
        assert_eq!(
            modules(&root, &system, false, false).unwrap(),
            system.modules
        );
    }
}
