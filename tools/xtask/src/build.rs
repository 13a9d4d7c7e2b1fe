//! `cargo xtask build`: the host crates, the kernel, the user-space crates, then the guest crates.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cli::BuildArgs;
use crate::setup::{self, Need};
use crate::workspace::Workspace;
use crate::{layout, toolchain};

/// Builds the kernel (cargo's output goes to our stderr) and returns the ELF's path.
pub fn kernel(root: &Path, release: bool) -> Result<PathBuf> {
    let tc = toolchain::detect();
    let mut cmd = tc.build(root, release);
    let status = cmd
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", tc.describe()))?;
    if !status.success() {
        bail!("kernel build failed ({status}) with {}", tc.describe());
    }
    let elf = toolchain::kernel_elf(root, release);
    if !elf.is_file() {
        bail!(
            "the kernel build succeeded but {} is missing",
            layout::show(&elf)
        );
    }
    Ok(elf)
}

/// Builds the user-space `packages` for the target (cargo's output goes to our stderr).
pub fn user(root: &Path, packages: &[String], release: bool) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    let tc = toolchain::detect();
    let started = Instant::now();
    let status = tc
        .build_user(root, packages, release)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", tc.describe()))?;
    if !status.success() {
        let hint = if root.join("user/link.ld").is_file() {
            ""
        } else {
            " (user/link.ld, the user linker script, is missing)"
        };
        bail!(
            "build of {} failed ({status}) with {}{hint}",
            packages.join(", "),
            tc.describe()
        );
    }
    eprintln!(
        "xtask: built {} in {:.1} s",
        packages.join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Builds the guest crates `packages` (cargo's output goes to our stderr).
pub fn guests(root: &Path, packages: &[String], release: bool) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    let tc = toolchain::detect();
    let started = Instant::now();
    let status = tc
        .build_guest(root, packages, release)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", tc.describe()))?;
    if !status.success() {
        bail!(
            "build of the guest crates {} failed ({status}) with {}",
            packages.join(", "),
            tc.describe()
        );
    }
    eprintln!(
        "xtask: built guests {} in {:.1} s",
        packages.join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cargo build` of the host crates (the workspace's default members).
fn host(root: &Path, release: bool) -> Result<()> {
    let mut cmd = Command::new(toolchain::host_cargo());
    cmd.current_dir(root).arg("build");
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("host build failed ({status})");
    }
    Ok(())
}

pub fn command(args: &BuildArgs) -> Result<bool> {
    setup::ensure(&[Need::KernelToolchain])?;
    let root = layout::root();
    host(&root, args.release)?;
    let elf = kernel(&root, args.release)?;
    let ws = Workspace::load(&root)?;
    user(&root, &ws.user_crates(), args.release)?;
    guests(&root, &ws.guest_crates(), args.release)?;
    println!("{}", elf.display());
    Ok(true)
}
