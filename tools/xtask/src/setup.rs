//! Checks for the tools each command needs and, on Debian, installs the missing ones.
//!
//! Every check looks for a file or a program (no package database needed), and maps what is
//! missing to the Debian package that provides it. Missing packages are installed with `apt-get`
//! when we are root or `sudo -n` works, after printing the command; otherwise the exact command is
//! printed and the check fails. Nothing is printed when everything is present.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::image::limine;
use crate::toolchain;

/// A group of tools a command needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Something that builds the kernel for x86_64-unknown-none.
    KernelToolchain,
    /// GRUB's `grub-mkrescue` and the ISO tools (also used for Limine ISOs).
    Iso,
    Qemu,
    Bochs,
}

pub const ALL: [Need; 4] = [Need::KernelToolchain, Need::Iso, Need::Qemu, Need::Bochs];

/// One checkable fact and the Debian package that makes it true.
struct Requirement {
    what: &'static str,
    package: &'static str,
    present: fn() -> bool,
}

const DEBIAN_TOOLCHAIN: [Requirement; 7] = [
    Requirement {
        what: "Debian rustc >= 1.85 (/usr/bin/rustc)",
        package: "rustc-web",
        present: || modern_rust(toolchain::DEBIAN_RUSTC),
    },
    Requirement {
        what: "Debian cargo >= 1.85 (/usr/bin/cargo)",
        package: "cargo-web",
        present: || modern_rust(toolchain::DEBIAN_CARGO),
    },
    Requirement {
        what: "Rust library sources for -Zbuild-std",
        package: "rust-web-src",
        present: || Path::new("/usr/lib/rustlib/src/rust/library/core/Cargo.toml").is_file(),
    },
    Requirement {
        what: "Debian clippy (/usr/bin/cargo-clippy)",
        package: "rust-web-clippy",
        present: || Path::new(toolchain::DEBIAN_CLIPPY).is_file(),
    },
    Requirement {
        what: "Debian rustfmt (/usr/bin/rustfmt)",
        package: "rustfmt-web",
        present: || Path::new("/usr/bin/rustfmt").is_file(),
    },
    Requirement {
        what: "rust-lld (/usr/bin/rust-lld, the target's default linker)",
        package: "rust-web-llvm",
        present: || Path::new("/usr/bin/rust-lld").exists(),
    },
    Requirement {
        what: "lld 22 (the linker behind /usr/bin/rust-lld)",
        package: "lld-22",
        present: || Path::new("/usr/lib/llvm-22/bin/ld.lld").is_file(),
    },
];

const ISO: [Requirement; 4] = [
    Requirement {
        what: "grub-mkrescue",
        package: "grub-common",
        present: || on_path("grub-mkrescue"),
    },
    Requirement {
        what: "GRUB's BIOS modules (/usr/lib/grub/i386-pc)",
        package: "grub-pc-bin",
        present: || Path::new("/usr/lib/grub/i386-pc/multiboot2.mod").is_file(),
    },
    Requirement {
        what: "xorriso",
        package: "xorriso",
        present: || on_path("xorriso"),
    },
    Requirement {
        what: "mtools (mformat)",
        package: "mtools",
        present: || on_path("mformat"),
    },
];

pub const QEMU_PACKAGE: &str = "qemu-system-x86";
const QEMU: [Requirement; 1] = [Requirement {
    what: "qemu-system-x86_64",
    package: QEMU_PACKAGE,
    present: || on_path("qemu-system-x86_64"),
}];

pub const BOCHS_BIOS: &str = "/usr/share/bochs/BIOS-bochs-latest";
/// VGA BIOS candidates, in order: the `vgabios` package's file, the `bochs` package's link to it.
pub const VGA_BIOSES: [&str; 2] = [
    "/usr/share/vgabios/vgabios.bin",
    "/usr/share/bochs/VGABIOS-lgpl-latest",
];
const BOCHS_PLUGINS: &str = "/usr/lib/x86_64-linux-gnu/bochs/plugins";
const BOCHS: [Requirement; 4] = [
    Requirement {
        what: "bochs",
        package: "bochs",
        present: || on_path("bochs"),
    },
    Requirement {
        what: "Bochs's terminal display (libbx_term_gui plugin)",
        package: "bochs-term",
        present: || Path::new(BOCHS_PLUGINS).join("libbx_term_gui.so").exists(),
    },
    Requirement {
        what: "Bochs BIOS (/usr/share/bochs/BIOS-bochs-latest)",
        package: "bochsbios",
        present: || Path::new(BOCHS_BIOS).is_file(),
    },
    Requirement {
        what: "VGA BIOS (/usr/share/vgabios/vgabios.bin)",
        package: "vgabios",
        present: || VGA_BIOSES.iter().any(|p| Path::new(p).is_file()),
    },
];

fn requirements(need: Need) -> &'static [Requirement] {
    match need {
        // A toolchain with the prebuilt target (rustup) or one the user named needs nothing here.
        Need::KernelToolchain if toolchain::overridden() || toolchain::host_has_target() => &[],
        Need::KernelToolchain => &DEBIAN_TOOLCHAIN,
        Need::Iso => &ISO,
        Need::Qemu => &QEMU,
        Need::Bochs => &BOCHS,
    }
}

/// True when `program` is an executable file in a directory of `PATH`.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// True when `program --version` reports Rust 1.85 or newer (Debian's plain `rustc` is 1.63).
fn modern_rust(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| rust_minor(&String::from_utf8_lossy(&out.stdout)))
        .is_some_and(|minor| minor >= 85)
}

/// The minor version in `rustc 1.96.0 (…)` / `cargo 1.96.0 (…)`.
fn rust_minor(version: &str) -> Option<u32> {
    let number = version.split_whitespace().nth(1)?;
    let mut parts = number.split('.');
    (parts.next()? == "1").then_some(())?;
    parts.next()?.parse().ok()
}

/// Makes sure everything `needs` asks for is present, installing it where possible.
pub fn ensure(needs: &[Need]) -> Result<()> {
    let missing: Vec<(Need, &Requirement)> = needs
        .iter()
        .flat_map(|&need| requirements(need).iter().map(move |req| (need, req)))
        .filter(|(_, req)| !(req.present)())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = Vec::new();
    for (_, req) in &missing {
        eprintln!(
            "setup: missing {} (Debian package {})",
            req.what, req.package
        );
        if !packages.contains(&req.package) {
            packages.push(req.package);
        }
    }
    if missing
        .iter()
        .any(|(need, _)| *need == Need::KernelToolchain)
    {
        eprintln!(
            "setup: the kernel needs a Rust toolchain for {}: either `rustup target add {}` \
             or Debian's rustc-web with build-std (below)",
            toolchain::TARGET,
            toolchain::TARGET
        );
    }
    let Some(prefix) = privilege() else {
        bail!(
            "missing tools; install them with:\n    {}\n(run it as root; then run this command again)",
            install_lines(&packages).join("\n    ")
        );
    };
    install(&prefix, &packages)?;
    let still: Vec<&str> = missing
        .iter()
        .filter(|(_, req)| !(req.present)())
        .map(|(_, req)| req.what)
        .collect();
    if !still.is_empty() {
        bail!("still missing after installation: {}", still.join(", "));
    }
    eprintln!("setup: installed {}", packages.join(" "));
    Ok(())
}

/// The commands a person would type to install `packages` (QEMU separately, see [`install`]).
fn install_lines(packages: &[&str]) -> Vec<String> {
    let (qemu, others): (Vec<&str>, Vec<&str>) = packages.iter().partition(|p| **p == QEMU_PACKAGE);
    let mut lines = vec!["apt-get update".to_string()];
    if !others.is_empty() {
        lines.push(format!("apt-get install -y {}", others.join(" ")));
    }
    if !qemu.is_empty() {
        lines.push(format!(
            "apt-get install -y {QEMU_PACKAGE}   # if apt reports held broken packages: \
             apt-get install -y --allow-downgrades {QEMU_PACKAGE} qemu-utils/bookworm"
        ));
    }
    lines
}

/// The command prefix that gives root: empty for root, `sudo -n` where that works, else `None`.
fn privilege() -> Option<Vec<String>> {
    if !on_path("apt-get") {
        return None;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Some(Vec::new());
    }
    let sudo_works = Command::new("sudo")
        .args(["-n", "true"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    sudo_works.then(|| vec!["sudo".into(), "-n".into()])
}

fn apt(prefix: &[String], args: &[&str]) -> Result<bool> {
    let mut argv: Vec<String> = prefix.to_vec();
    argv.extend(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"].map(String::from));
    argv.extend(args.iter().map(|a| a.to_string()));
    eprintln!("setup: running: {}", argv.join(" "));
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", argv[0]))?;
    Ok(status.success())
}

fn install(prefix: &[String], packages: &[&str]) -> Result<()> {
    if !apt(prefix, &["update"])? {
        bail!("apt-get update failed");
    }
    let (qemu, others): (Vec<&str>, Vec<&str>) = packages.iter().partition(|p| **p == QEMU_PACKAGE);
    if !others.is_empty() {
        let mut args = vec!["install", "-y"];
        args.extend(&others);
        if !apt(prefix, &args)? {
            bail!("apt-get install {} failed", others.join(" "));
        }
    }
    if !qemu.is_empty() && !apt(prefix, &["install", "-y", QEMU_PACKAGE])? {
        // Images that carry a newer qemu-utils than Debian 12's QEMU 7.2 need it downgraded.
        eprintln!("setup: retrying with Debian 12's qemu-utils (the newer one conflicts)");
        let args = [
            "install",
            "-y",
            "--allow-downgrades",
            QEMU_PACKAGE,
            "qemu-utils/bookworm",
        ];
        if !apt(prefix, &args)? {
            bail!("apt-get install {QEMU_PACKAGE} failed");
        }
    }
    Ok(())
}

/// `cargo xtask setup`: everything, then a short report.
pub fn command() -> Result<bool> {
    ensure(&ALL)?;
    println!("setup: all tools present");
    println!("  kernel toolchain: {}", toolchain::detect().describe());
    match limine::Limine::find() {
        Ok(found) => println!("  Limine: {}", found.describe()),
        Err(reason) => println!("  Limine: {reason} (Limine runs are skipped, GRUB is used)"),
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_versions() {
        assert_eq!(
            rust_minor("rustc 1.96.0 (abc 2026-01-01) (built from a source tarball)"),
            Some(96)
        );
        assert_eq!(rust_minor("cargo 1.63.0"), Some(63));
        assert_eq!(rust_minor("garbage"), None);
    }

    #[test]
    fn install_lines_keep_qemu_separate() {
        let lines = install_lines(&["bochs", QEMU_PACKAGE, "xorriso"]);
        assert_eq!(lines[0], "apt-get update");
        assert_eq!(lines[1], "apt-get install -y bochs xorriso");
        assert!(lines[2].starts_with("apt-get install -y qemu-system-x86"));
        assert!(lines[2].contains("qemu-utils/bookworm"));
    }

    #[test]
    fn on_path_finds_sh() {
        assert!(on_path("sh"));
        assert!(!on_path("no-such-program-xtask"));
    }
}
