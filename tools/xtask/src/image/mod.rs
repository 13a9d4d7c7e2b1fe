//! Boot images: an ISO 9660 file holding the kernel, its boot modules and a bootloader (GRUB with
//! Multiboot2, or Limine with its native protocol).

pub mod grub;
pub mod limine;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use serde::Deserialize;

use crate::cli::ImageArgs;
use crate::manifest::{self, System};
use crate::setup::{self, Need};
use crate::{build, layout, pack};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bootloader {
    Limine,
    Grub,
}

impl Bootloader {
    pub fn name(self) -> &'static str {
        match self {
            Self::Limine => "limine",
            Self::Grub => "grub",
        }
    }
}

/// A file loaded next to the kernel, and the name (module command line) it is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootModule {
    pub source: PathBuf,
    pub name: String,
}

/// A module as it appears inside the image: `/boot/<file>`, with its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageModule {
    pub file: String,
    pub name: String,
}

/// What goes into an image.
pub struct Contents<'a> {
    pub kernel: &'a Path,
    pub cmdline: &'a str,
    pub modules: &'a [BootModule],
}

/// Where each module goes inside the image: `/boot/<its file name>`. File names must be unique
/// and must not collide with the image's own entries.
pub fn plan_modules(modules: &[BootModule]) -> Result<Vec<ImageModule>> {
    let mut planned: Vec<ImageModule> = Vec::new();
    for module in modules {
        let file = module
            .source
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("module path {} has no file name", module.source.display()))?
            .to_string();
        if ["kernel", "grub", "limine"].contains(&file.as_str())
            || planned.iter().any(|m| m.file == file)
        {
            bail!("module file name `{file}` is used twice in /boot");
        }
        planned.push(ImageModule {
            file,
            name: module.name.clone(),
        });
    }
    Ok(planned)
}

/// Lays out the kernel and modules in a fresh `root` directory (`/boot/kernel`, `/boot/<file>`).
fn stage(root: &Path, contents: &Contents) -> Result<Vec<ImageModule>> {
    let planned = plan_modules(contents.modules)?;
    if root.exists() {
        std::fs::remove_dir_all(root)
            .with_context(|| format!("cannot clear {}", layout::show(root)))?;
    }
    let boot = root.join("boot");
    std::fs::create_dir_all(&boot)?;
    copy(contents.kernel, &boot.join("kernel"))?;
    for (module, image) in contents.modules.iter().zip(&planned) {
        copy(&module.source, &boot.join(&image.file))?;
    }
    Ok(planned)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("cannot copy {} to {}", layout::show(from), layout::show(to)))
}

/// Builds `out` with `bootloader`, staging the files in `staging` (a scratch directory).
pub fn build_image(
    bootloader: Bootloader,
    contents: &Contents,
    out: &Path,
    staging: &Path,
    system: &str,
) -> Result<()> {
    let modules = stage(staging, contents)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match bootloader {
        Bootloader::Grub => grub::build(staging, out, contents.cmdline, &modules),
        Bootloader::Limine => {
            let found = limine::Limine::find().map_err(anyhow::Error::msg)?;
            found.build(staging, out, system, contents.cmdline, &modules)
        }
    }
}

/// Runs a tool, showing its output only when it fails.
pub fn run_quiet(mut cmd: Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| {
        format!(
            "cannot run {what} ({})",
            cmd.get_program().to_string_lossy()
        )
    })?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The image of `system` for `bootloader` with `extra` appended to its command line: builds the
/// ISO at `out` around an already built kernel and the system's `modules` (see [`crate::pack`]).
pub fn for_system(
    system: &System,
    modules: &[BootModule],
    bootloader: Bootloader,
    kernel: &Path,
    extra: &str,
    out: &Path,
) -> Result<()> {
    let cmdline = manifest::join_cmdline([system.cmdline.as_str(), extra]);
    let contents = Contents {
        kernel,
        cmdline: &cmdline,
        modules,
    };
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
    let staging = layout::work_dir(&["images", &format!("{stem}.root")])?;
    build_image(bootloader, &contents, out, &staging, &system.name)
}

/// `cargo xtask image`.
pub fn command(args: &ImageArgs) -> Result<bool> {
    setup::ensure(&[Need::KernelToolchain, Need::Iso])?;
    let root = layout::root();
    let system = manifest::load(&root, &args.system)?;
    if args.bootloader == Bootloader::Limine {
        limine::Limine::find().map_err(anyhow::Error::msg)?;
    }
    let kernel = match &args.kernel {
        Some(kernel) => kernel.clone(),
        None => build::kernel(&root, args.release)?,
    };
    let modules = pack::modules(&root, &system, args.release, true)?;
    for_system(
        &system,
        &modules,
        args.bootloader,
        &kernel,
        args.cmdline.as_deref().unwrap_or(""),
        &args.out,
    )?;
    println!("{}", args.out.display());
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(path: &str, name: &str) -> BootModule {
        BootModule {
            source: path.into(),
            name: name.into(),
        }
    }

    #[test]
    fn modules_go_to_boot_by_file_name() {
        let planned =
            plan_modules(&[module("/a/init", "init"), module("/b/g.elf", "guest")]).unwrap();
        assert_eq!(planned[1].file, "g.elf");
        assert_eq!(planned[1].name, "guest");
    }

    #[test]
    fn clashing_module_files_are_refused() {
        assert!(plan_modules(&[module("/a/x", "1"), module("/b/x", "2")]).is_err());
        assert!(plan_modules(&[module("/a/kernel", "k")]).is_err());
    }
}
