//! `cargo xtask`: the project's build tool.
//!
//! It builds the host crates and the kernel, packs boot images (GRUB or Limine) for a system
//! described by `manifests/<system>.toml`, boots them in QEMU or Bochs while streaming the serial
//! console, runs the whole test suite (host unit tests, lints, emulator scenarios from
//! `tests/scenarios/*.toml`) and the boot benchmark. Every command first checks (and on Debian
//! installs) the tools it needs, see [`setup`].
//!
//! Each module has one job; the pure logic (file formats, output parsing, judging) is in functions
//! with unit tests.

mod bench;
mod bench_exits;
mod bench_ipc;
mod bench_svg;
mod bench_transcript;
mod bench_workloads;
mod budget;
mod build;
mod cargo_test;
mod cli;
mod elf;
mod emulator;
mod image;
mod layout;
mod manifest;
mod mutate;
mod outcome;
mod own_kernel;
mod pack;
mod profile;
mod run;
mod scenario;
mod setup;
mod suite;
mod summary;
mod toml_file;
mod toolchain;
mod workspace;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(args) => build::command(&args),
        Command::Run(args) => run::command(&args),
        Command::Test(args) => suite::command(&args),
        Command::Image(args) => image::command(&args),
        Command::Setup => setup::command(),
        Command::Bench(args) => bench::command(&args),
        Command::Profile(args) => profile::command(&args),
        Command::Mutate(args) => mutate::command(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
