//! The boot modules of a system: for a system with servers, init, the compiled manifest and one
//! ELF per server, gathered in `target/systems/<system>/`; then the manifest's extra `modules`.
//!
//! | module name (command line) | file in the image   | content                              |
//! |----------------------------|---------------------|--------------------------------------|
//! | `init`                     | `/boot/init.elf`    | the root server (package `init`)     |
//! | `manifest`                 | `/boot/manifest.bin`| `SystemImage::encode`                |
//! | `<server name>`            | `/boot/<name>.elf`  | the ELF of the server's `binary`     |
//! | `vmm-server`               | `/boot/vmm-server.elf` | package `vmm-server`, once, with guests |
//! | `guest.<guest name>`       | `/boot/guest.<name>.elf`, `.bin` or `.img` | the guest's `image`: its ELF, flat (below), or the file the manifest names, as it is |
//! | `initrd.<guest name>`      | `/boot/initrd.<name>.img` | the guest's `initrd` file, as it is |
//!
//! The kernel finds init and the manifest by these names (`abi::boot`); init finds each server's
//! ELF by the server's name, the vmm-server by [`manifest::VMM_MODULE`] and each guest's image by
//! `Guest::image`. A system without servers or guests packs only its extra modules. Packed ELFs
//! are stripped of debug information (with `objcopy --strip-debug`, when it is installed); the
//! ELFs under `target/user/` and `target/guest/` keep it. The image of a flat guest crate
//! (`crate::workspace::Package::flat`) is packed as [`crate::elf::flatten`] makes it: its
//! loadable segments from the lowest physical address on.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::image::BootModule;
use crate::manifest::{GuestImage, System};
use crate::workspace::Workspace;
use crate::{build, elf, layout, setup, toolchain};

/// The package of the root server.
pub const INIT_PACKAGE: &str = "init";

/// The package of the per-guest VMM.
pub const VMM_PACKAGE: &str = "vmm-server";

/// The user-space packages to build for `system`: init, then each server's binary once, then
/// the vmm-server when it has guests.
pub fn packages(system: &System) -> Vec<String> {
    let mut packages = vec![INIT_PACKAGE.to_string()];
    let vmm = system.has_guests().then(|| VMM_PACKAGE.to_string());
    for binary in system.binaries.iter().chain(&vmm) {
        if !packages.contains(binary) {
            packages.push(binary.clone());
        }
    }
    packages
}

/// The guest crates to build for `system`: the package of each guest's image, once.
pub fn guest_packages(system: &System, ws: &Workspace) -> Result<Vec<String>> {
    let mut packages: Vec<String> = Vec::new();
    for image in &system.guest_images {
        let GuestImage::Crate(image) = image else {
            continue;
        };
        let package = ws
            .guest_package(image)
            .with_context(|| format!("no guest crate under tests/guests/ builds `{image}`"))?;
        if !packages.contains(&package.name) {
            packages.push(package.name.clone());
        }
    }
    Ok(packages)
}

/// A built guest image: its ELF and whether it is packed flat.
pub struct GuestElf {
    pub elf: PathBuf,
    pub flat: bool,
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
    let guests = guest_packages(system, ws)?;
    if build {
        build::user(root, &packages, release)?;
        build::guests(root, &guests, release)?;
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
    let guest = |image: &str| -> Result<GuestElf> {
        let path = toolchain::guest_elf(root, image, release);
        if !path.is_file() {
            bail!(
                "{} (guest image `{image}`) has not been built",
                layout::show(&path)
            );
        }
        let flat = ws.guest_package(image).is_some_and(|p| p.flat);
        Ok(GuestElf { elf: path, flat })
    };
    gather_all(&dir(root, &system.name), system, elf, guest)
}

/// Fills a fresh `dir` with init's ELF (from `elf("init")`), the compiled manifest, each
/// server's ELF (from `elf(binary)`) and, with guests, the vmm-server's ELF and each guest's
/// image (from `guest(image)`); returns all of the system's modules in boot order.
fn gather_all(
    dir: &Path,
    system: &System,
    elf: impl Fn(&str) -> Result<PathBuf>,
    guest: impl Fn(&str) -> Result<GuestElf>,
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
    if system.has_guests() {
        modules.push(gather(
            dir,
            &elf(VMM_PACKAGE)?,
            manifest::VMM_MODULE,
            "elf",
        )?);
    }
    for (g, image) in system.image.guests.iter().zip(&system.guest_images) {
        let image = match image {
            GuestImage::Crate(image) => image,
            GuestImage::File(path) => {
                modules.push(gather(dir, path, &g.image, "img")?);
                continue;
            }
        };
        let built = guest(image)?;
        modules.push(if built.flat {
            let bytes = std::fs::read(&built.elf)
                .with_context(|| format!("cannot read {}", layout::show(&built.elf)))?;
            let flat = elf::flatten(&bytes)
                .with_context(|| format!("cannot flatten {}", layout::show(&built.elf)))?;
            let to = dir.join(format!("{}.bin", g.image));
            std::fs::write(&to, flat)
                .with_context(|| format!("cannot write {}", layout::show(&to)))?;
            BootModule {
                source: to,
                name: g.image.clone(),
            }
        } else {
            gather(dir, &built.elf, &g.image, "elf")?
        });
    }
    for (g, initrd) in system.image.guests.iter().zip(&system.guest_initrds) {
        if let (Some(name), Some(path)) = (g.initrd_module(), initrd) {
            modules.push(gather(dir, path, &name, "img")?);
        }
    }
    modules.extend(system.modules.iter().cloned());
    if let Some(long) = modules.iter().find(|m| m.name.len() > manifest::NAME_MAX) {
        bail!(
            "module name `{}` is longer than the kernel's {} bytes",
            long.name,
            manifest::NAME_MAX
        );
    }
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
        let no_guest = |_: &str| -> Result<GuestElf> { anyhow::bail!("no guests here") };
        let modules = gather_all(&out, &system, |_| Ok(fake.clone()), no_guest).unwrap();
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
        assert!(gather_all(&out, &system, |p| anyhow::bail!("no {p}"), no_guest).is_err());
    }

    /// A one-segment ELF at physical `paddr` holding `data`.
    fn tiny_elf(paddr: u64, data: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; 64 + 56];
        bytes[..6].copy_from_slice(b"\x7fELF\x02\x01");
        bytes[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let h = 64;
        bytes[h..h + 4].copy_from_slice(&1u32.to_le_bytes());
        bytes[h + 0x08..h + 0x10].copy_from_slice(&120u64.to_le_bytes());
        bytes[h + 0x18..h + 0x20].copy_from_slice(&paddr.to_le_bytes());
        bytes[h + 0x20..h + 0x28].copy_from_slice(&(data.len() as u64).to_le_bytes());
        bytes[h + 0x28..h + 0x30].copy_from_slice(&(data.len() as u64).to_le_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn guests_add_the_vmm_once_and_one_image_each() {
        let root = layout::root();
        let mut system = crate::manifest::load_with(&root, "guests", None).unwrap();
        assert_eq!(packages(&system), ["init", "serial", "vmm-server"]);
        // Make one of them a flat guest for the test.
        system.image.guests[1].image = "guest.probe".into();
        let dir = layout::work_dir(&["unit", "pack-guests"]).unwrap();
        let fake = dir.join("fake.elf");
        std::fs::write(&fake, b"\x7fELF").unwrap();
        let real = dir.join("real.elf");
        std::fs::write(&real, tiny_elf(0x7c00, b"\xeb\xfe")).unwrap();
        let out = dir.join("guests");
        let guest = |image: &str| {
            Ok(GuestElf {
                elf: real.clone(),
                flat: image == "probe",
            })
        };
        let modules = gather_all(&out, &system, |_| Ok(fake.clone()), guest).unwrap();
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "init",
                "manifest",
                "serial",
                "vmm-server",
                "guest.hello",
                "guest.probe",
                "guest.attacker",
                "guest.hcprobe",
                "guest.survivor",
            ]
        );
        assert_eq!(modules[3].source, out.join("vmm-server.elf"));
        assert_eq!(modules[5].source, out.join("guest.probe.bin"));
        assert_eq!(std::fs::read(&modules[5].source).unwrap(), b"\xeb\xfe");
        assert_eq!(modules[4].source, out.join("guest.hello.elf"));
        let planned = crate::image::plan_modules(&modules).unwrap();
        let grub = crate::image::grub::config("", &planned);
        assert!(
            grub.contains("module2 /boot/vmm-server.elf vmm-server\n"),
            "{grub}"
        );
        assert!(grub.contains("module2 /boot/guest.probe.bin guest.probe\n"));
    }

    #[test]
    fn guest_files_and_initrds_are_packed_as_they_are() {
        let root = layout::root();
        let dir = layout::work_dir(&["unit", "pack-files"]).unwrap();
        let kernel = dir.join("k.elf");
        std::fs::write(&kernel, b"\x7fELF anything").unwrap();
        let initrd = dir.join("rd.img");
        std::fs::write(&initrd, b"initrd bytes").unwrap();
        let manifest = dir.join("files.toml");
        std::fs::write(
            &manifest,
            "[system]\nname = \"files\"\n[[guest]]\nname = \"mine\"\nimage = \"k.elf\"\ninitrd = \"rd.img\"\nmemory = \"4M\"\n",
        )
        .unwrap();
        let system = crate::manifest::load_file_with(&root, &manifest, None).unwrap();
        assert_eq!(system.guest_images, [GuestImage::File(kernel.clone())]);
        let ws = Workspace { packages: vec![] };
        assert!(guest_packages(&system, &ws).unwrap().is_empty());
        let fake = dir.join("fake.elf");
        std::fs::write(&fake, b"\x7fELF").unwrap();
        let out = dir.join("out");
        let modules = gather_all(&out, &system, |_| Ok(fake.clone()), |_| unreachable!()).unwrap();
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "init",
                "manifest",
                "vmm-server",
                "guest.mine",
                "initrd.mine"
            ]
        );
        assert_eq!(
            std::fs::read(&modules[3].source).unwrap(),
            b"\x7fELF anything"
        );
        assert_eq!(std::fs::read(&modules[4].source).unwrap(), b"initrd bytes");
        assert!(system.image.guests[0].initrd);
    }

    #[test]
    fn guest_packages_come_from_the_workspace() {
        let root = layout::root();
        let system = crate::manifest::load_with(&root, "guests", None).unwrap();
        let package = |name: &str, bins: &[&str], guest: bool| crate::workspace::Package {
            name: name.into(),
            bins: bins.iter().map(|b| b.to_string()).collect(),
            host: false,
            guest,
            flat: false,
        };
        let ws = Workspace {
            packages: vec![
                package("grt", &[], true),
                package("hello", &["hello"], true),
                package("probe", &["probe"], true),
                package("attacker", &["attacker"], true),
                package("hcprobe", &["hcprobe"], true),
            ],
        };
        assert_eq!(
            guest_packages(&system, &ws).unwrap(),
            ["hello", "probe", "attacker", "hcprobe"]
        );
        let ws = Workspace {
            packages: vec![package("hello", &["hello"], false)],
        };
        assert!(guest_packages(&system, &ws).is_err());
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
