//! The command line (`cargo xtask <command> …`). Later issues add flags; existing ones keep their
//! meaning because outside checks call them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::emulator::Emulator;
use crate::image::Bootloader;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, boot, test and benchmark the microhypervisor"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Build the host crates, the kernel and the user-space crates; print the kernel's path.
    Build(BuildArgs),
    /// Build, pack a boot image, boot it and stream the serial console; exit 0 only on success.
    Run(RunArgs),
    /// Run host unit tests, lints, the kernel build and every emulator scenario.
    Test(TestArgs),
    /// Pack a bootable ISO image for a system.
    Image(ImageArgs),
    /// Check for (and on Debian install) every tool the other commands need.
    Setup,
    /// Boot benchmark: time and instructions to the banner, kernel size.
    Bench(BenchArgs),
    /// Profile a system's kernel: instructions per kernel function under QEMU `-icount`.
    Profile(ProfileArgs),
    /// Apply each deliberate breakage of `tests/mutants.toml` in a scratch copy and check that
    /// the tests it names catch it: `mutants: N caught, M survived`.
    Mutate(MutateArgs),
}

#[derive(Args)]
pub struct ProfileArgs {
    /// The system to boot (from `manifests/`), e.g. `ipcbench` or `exitbench`.
    #[arg(long, default_value = "ipcbench")]
    pub system: String,
    /// How many functions the table shows.
    #[arg(long, default_value_t = 25)]
    pub top: usize,
}

#[derive(Args)]
pub struct MutateArgs {
    /// Only the mutants whose name contains SUBSTR.
    #[arg(long, value_name = "SUBSTR")]
    pub only: Option<String>,
    /// List the mutants and check that each applies; run nothing.
    #[arg(long)]
    pub list: bool,
}

#[derive(Args)]
pub struct BuildArgs {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

#[derive(Args)]
pub struct RunArgs {
    /// The system to boot (`manifests/<NAME>.toml`).
    #[arg(long, default_value = "demo", value_name = "NAME")]
    pub system: String,
    /// Boot the manifest at PATH instead (anywhere; its name is the file's stem, and guest
    /// `image` and `initrd` paths are relative to its directory).
    #[arg(long, value_name = "PATH", conflicts_with = "system")]
    pub manifest: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Emulator::Qemu)]
    pub emulator: Emulator,
    /// Default: Limine when it is found (LIMINE_DIR or /usr/share/limine), else GRUB.
    #[arg(long, value_enum)]
    pub bootloader: Option<Bootloader>,
    #[arg(long)]
    pub release: bool,
    /// Appended to the system's kernel command line.
    #[arg(long, value_name = "ARGS")]
    pub cmdline: Option<String>,
    /// Seconds before a run that has not powered off is stopped (default 60 QEMU, 120 Bochs).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// QEMU only: `-icount shift=0,sleep=off` (the guest TSC then counts instructions).
    #[arg(long)]
    pub icount: bool,
    /// CPU model (QEMU `-cpu` value or Bochs `cpu: model=`); default per emulator.
    #[arg(long)]
    pub cpu: Option<String>,
    /// Pack this kernel ELF instead of building one.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
}

#[derive(Args)]
pub struct TestArgs {
    /// Run only the items whose name contains SUBSTR (e.g. `unit:`, `clippy`, `scenario:boot-`).
    #[arg(long, value_name = "SUBSTR")]
    pub filter: Option<String>,
    /// Build the kernel with the release profile for the scenarios.
    #[arg(long)]
    pub release: bool,
    /// Stream every scenario's serial console (by default only failures are shown).
    #[arg(long)]
    pub verbose: bool,
}

#[derive(Args)]
pub struct ImageArgs {
    #[arg(long, value_name = "NAME")]
    pub system: String,
    #[arg(long, value_enum)]
    pub bootloader: Bootloader,
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[arg(long)]
    pub release: bool,
    /// Appended to the system's kernel command line.
    #[arg(long, value_name = "ARGS")]
    pub cmdline: Option<String>,
    /// Pack this kernel ELF instead of building one.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Which benchmark: `boot`, `ipc`, `exits`, `workloads`, or all of them when left out.
    #[arg(value_enum)]
    pub which: Option<BenchKind>,
    /// Boots per configuration (the table shows the median wall-clock time).
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Benchmark the debug kernel instead of the release kernel.
    #[arg(long)]
    pub debug: bool,
    /// Benchmark this kernel ELF instead of building one.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// `workloads` only: run on this backend alone (default: every backend this machine has).
    #[arg(long, value_enum)]
    pub backend: Option<crate::bench_workloads::Backend>,
}

/// The benchmarks `cargo xtask bench` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchKind {
    /// Time and instructions from power-on to the kernel banner, kernel size.
    Boot,
    /// Instructions per IPC call/reply round trip between two domains.
    Ipc,
    /// Instructions per VM-exit round trip (guest, kernel, vmm-server), split by part.
    Exits,
    /// The pagingos workloads in every memory mode on every backend: exits, modeled cycles.
    Workloads,
}
