//! `cargo xtask run`: build, pack, boot, stream the console, judge the end.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::cli::RunArgs;
use crate::emulator::{self, Emulator, Spec};
use crate::image::{self, limine::Limine, Bootloader};
use crate::outcome::Outcome;
use crate::setup::{self, Need};
use crate::{build, layout, manifest, pack};

/// The bootloader to use when none was asked for: Limine when it is there, else GRUB (saying why).
pub fn default_bootloader() -> Bootloader {
    match Limine::find() {
        Ok(_) => Bootloader::Limine,
        Err(reason) => {
            eprintln!("xtask: note: booting with GRUB: {reason}");
            Bootloader::Grub
        }
    }
}

pub fn command(args: &RunArgs) -> Result<bool> {
    let emulator_need = match args.emulator {
        Emulator::Qemu => Need::Qemu,
        Emulator::Bochs => Need::Bochs,
    };
    setup::ensure(&[Need::KernelToolchain, Need::Iso, emulator_need])?;
    if args.icount && args.emulator != Emulator::Qemu {
        bail!("--icount is a QEMU option");
    }
    let root = layout::root();
    let system = match &args.manifest {
        Some(path) => manifest::load_file(&root, path)?,
        None => manifest::load(&root, &args.system)?,
    };
    let bootloader = match args.bootloader {
        Some(Bootloader::Limine) => {
            Limine::find().map_err(anyhow::Error::msg)?;
            Bootloader::Limine
        }
        Some(other) => other,
        None => default_bootloader(),
    };
    let kernel = match &args.kernel {
        Some(kernel) => kernel.clone(),
        None => build::kernel(&root, args.release)?,
    };
    let label = format!(
        "{}-{}-{}",
        system.name,
        args.emulator.name(),
        bootloader.name()
    );
    let work = layout::work_dir(&["run", &label])?;
    let iso = work.join(format!("{label}.iso"));
    let modules = pack::modules(&root, &system, args.release, true)?;
    image::for_system(
        &system,
        &modules,
        bootloader,
        &kernel,
        args.cmdline.as_deref().unwrap_or(""),
        &iso,
    )?;
    let timeout = args
        .timeout
        .unwrap_or_else(|| args.emulator.default_timeout());
    let spec = Spec {
        iso,
        cpu: args
            .cpu
            .clone()
            .unwrap_or_else(|| args.emulator.default_cpu().into()),
        timeout: Duration::from_secs(timeout),
        ram_mib: system.ram_mib,
        icount: args.icount,
        echo: true,
        work: work.clone(),
        extra: Vec::new(),
    };
    eprintln!(
        "xtask: booting system `{}` ({}) with {} on {} (timeout {timeout} s)",
        system.name,
        system.description,
        bootloader.name(),
        args.emulator.name()
    );
    let run = emulator::boot(args.emulator, &spec)?;
    let log = work.join("serial.log");
    std::fs::write(&log, run.log_text())?;
    let outcome = run.outcome();
    if !run.diagnostics.trim().is_empty() && outcome != Outcome::Success {
        eprintln!(
            "xtask: {} said:\n{}",
            args.emulator.name(),
            run.diagnostics.trim_end()
        );
    }
    eprintln!(
        "xtask: {outcome} ({:.1} s; transcript in {})",
        run.elapsed.as_secs_f64(),
        layout::show(&log)
    );
    Ok(outcome == Outcome::Success)
}
