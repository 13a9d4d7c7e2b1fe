//! `cargo xtask build`: the host crates, then the kernel.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cli::BuildArgs;
use crate::setup::{self, Need};
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
    println!("{}", elf.display());
    Ok(true)
}
