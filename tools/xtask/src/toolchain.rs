//! Which Rust toolchain builds the kernel for `x86_64-unknown-none`, and the commands to run it.
//!
//! Two ways, picked from what the machine has:
//! - **Prebuilt**: a toolchain whose sysroot ships the target's `core`/`alloc` (rustup after
//!   `rustup target add x86_64-unknown-none`): plain `cargo build --target x86_64-unknown-none`.
//! - **Build-std**: Debian's `rustc-web`/`rust-web-src` (`/usr/bin/cargo`, `/usr/bin/rustc`):
//!   `core`, `alloc` and `compiler_builtins` are built from source with `-Zbuild-std`, unlocked by
//!   `RUSTC_BOOTSTRAP=1`.
//!
//! `KERNEL_CARGO` and `KERNEL_RUSTC` override the cargo and rustc used for the kernel.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const TARGET: &str = "x86_64-unknown-none";
const BUILD_STD: [&str; 2] = [
    "-Zbuild-std=core,alloc,compiler_builtins",
    "-Zbuild-std-features=compiler-builtins-mem",
];
/// Variables set by the outer (rustup) cargo that must not leak into the kernel's cargo.
const FOREIGN_ENV: [&str; 7] = [
    "RUSTUP_TOOLCHAIN",
    "CARGO",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_TARGET_DIR",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
];
pub const DEBIAN_CARGO: &str = "/usr/bin/cargo";
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
pub const DEBIAN_CLIPPY: &str = "/usr/bin/cargo-clippy";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelToolchain {
    /// The toolchain has the target's standard library. `rustc` is `None` for the host's own.
    Prebuilt {
        cargo: PathBuf,
        rustc: Option<PathBuf>,
    },
    /// The target's standard library is built from source.
    BuildStd { cargo: PathBuf, rustc: PathBuf },
}

/// The cargo that runs xtask (rustup's), for host builds and tests.
pub fn host_cargo() -> PathBuf {
    std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from)
}

/// The sysroot of `rustc`, if it runs.
fn sysroot(rustc: &Path) -> Option<PathBuf> {
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn has_target(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir()
}

/// True when the host toolchain (rustup's `rustc` on PATH) has the target installed.
pub fn host_has_target() -> bool {
    sysroot(Path::new("rustc")).is_some_and(|s| has_target(&s))
}

/// True when the user chose the kernel's toolchain with `KERNEL_CARGO`/`KERNEL_RUSTC`.
pub fn overridden() -> bool {
    std::env::var_os("KERNEL_CARGO").is_some() || std::env::var_os("KERNEL_RUSTC").is_some()
}

/// Picks the kernel's toolchain (see the module documentation).
pub fn detect() -> KernelToolchain {
    if !overridden() && host_has_target() {
        return KernelToolchain::Prebuilt {
            cargo: host_cargo(),
            rustc: None,
        };
    }
    let cargo = std::env::var_os("KERNEL_CARGO").map_or_else(|| DEBIAN_CARGO.into(), PathBuf::from);
    let rustc = std::env::var_os("KERNEL_RUSTC").map_or_else(|| DEBIAN_RUSTC.into(), PathBuf::from);
    if sysroot(&rustc).is_some_and(|s| has_target(&s)) {
        KernelToolchain::Prebuilt {
            cargo,
            rustc: Some(rustc),
        }
    } else {
        KernelToolchain::BuildStd { cargo, rustc }
    }
}

impl KernelToolchain {
    pub fn describe(&self) -> String {
        match self {
            Self::Prebuilt { cargo, rustc } => format!(
                "{} with the prebuilt {TARGET} library{}",
                cargo.display(),
                rustc
                    .as_ref()
                    .map(|r| format!(" (RUSTC={})", r.display()))
                    .unwrap_or_default()
            ),
            Self::BuildStd { cargo, rustc } => format!(
                "{} with RUSTC={} and -Zbuild-std",
                cargo.display(),
                rustc.display()
            ),
        }
    }

    /// `cargo build -p kernel` for the target, run from `root`.
    pub fn build(&self, root: &Path, release: bool) -> Command {
        let mut cmd = self.cargo_command(root);
        cmd.args(["build", "-p", "kernel", "--target", TARGET]);
        self.add_build_std(&mut cmd);
        if release {
            cmd.arg("--release");
        }
        cmd
    }

    /// `cargo build` of the user-space `packages` for the target, with their own flags and
    /// target directory (see [`user_rustflags`]).
    pub fn build_user(&self, root: &Path, packages: &[String], release: bool) -> Command {
        let mut cmd = self.cargo_command(root);
        cmd.arg("build");
        self.add_user_args(&mut cmd, root, packages);
        if release {
            cmd.arg("--release");
        }
        cmd
    }

    /// `cargo build` of the guest crates `packages` (see [`guest_rustflags`]), in their own
    /// target directory.
    pub fn build_guest(&self, root: &Path, packages: &[String], release: bool) -> Command {
        let mut cmd = self.cargo_command(root);
        cmd.arg("build");
        self.add_guest_args(&mut cmd, root, packages);
        if release {
            cmd.arg("--release");
        }
        cmd
    }

    /// Clippy on the guest crates `packages` with warnings denied, built as by
    /// [`Self::build_guest`].
    pub fn clippy_guest(&self, root: &Path, packages: &[String]) -> Result<Command, String> {
        let mut cmd = self.clippy_command(root)?;
        self.add_guest_args(&mut cmd, root, packages);
        cmd.args(["--", "-D", "warnings"]);
        Ok(cmd)
    }

    /// Clippy on the kernel with warnings denied, or the reason it cannot run here.
    pub fn clippy(&self, root: &Path) -> Result<Command, String> {
        let mut cmd = self.clippy_command(root)?;
        cmd.args(["-p", "kernel", "--target", TARGET]);
        self.add_build_std(&mut cmd);
        cmd.args(["--", "-D", "warnings"]);
        Ok(cmd)
    }

    /// Clippy on the user-space `packages` with warnings denied, built as by [`Self::build_user`].
    pub fn clippy_user(&self, root: &Path, packages: &[String]) -> Result<Command, String> {
        let mut cmd = self.clippy_command(root)?;
        self.add_user_args(&mut cmd, root, packages);
        cmd.args(["--", "-D", "warnings"]);
        Ok(cmd)
    }

    /// `cargo clippy` with this toolchain, or why there is none.
    fn clippy_command(&self, root: &Path) -> Result<Command, String> {
        match self {
            Self::Prebuilt { .. } => {
                let mut probe = self.cargo_command(root);
                probe.args(["clippy", "--version"]);
                if !probe.output().is_ok_and(|out| out.status.success()) {
                    return Err("clippy is not installed for the kernel's toolchain \
                                (rustup component add clippy)"
                        .into());
                }
                let mut cmd = self.cargo_command(root);
                cmd.arg("clippy");
                Ok(cmd)
            }
            Self::BuildStd { cargo, rustc } => {
                // `cargo clippy` would find rustup's cargo-clippy first (it searches
                // $CARGO_HOME/bin before PATH), whose clippy does not match this rustc.
                let clippy = cargo.with_file_name("cargo-clippy");
                if !clippy.is_file() {
                    return Err(format!(
                        "{} not found (Debian package rust-web-clippy)",
                        clippy.display()
                    ));
                }
                let mut cmd = Command::new(clippy);
                clean_env(&mut cmd, root);
                cmd.env("CARGO", cargo)
                    .env("RUSTC", rustc)
                    .env("RUSTC_BOOTSTRAP", "1");
                cmd.arg("clippy");
                Ok(cmd)
            }
        }
    }

    fn add_user_args(&self, cmd: &mut Command, root: &Path, packages: &[String]) {
        self.add_target_args(
            cmd,
            packages,
            &root.join(USER_TARGET_DIR),
            user_rustflags(root),
        );
    }

    fn add_guest_args(&self, cmd: &mut Command, root: &Path, packages: &[String]) {
        self.add_target_args(
            cmd,
            packages,
            &root.join(GUEST_TARGET_DIR),
            guest_rustflags(root),
        );
    }

    fn add_target_args(&self, cmd: &mut Command, packages: &[String], dir: &Path, flags: String) {
        for package in packages {
            cmd.args(["-p", package]);
        }
        cmd.args(["--target", TARGET, "--target-dir"]).arg(dir);
        self.add_build_std(cmd);
        cmd.env("CARGO_ENCODED_RUSTFLAGS", flags);
    }

    fn cargo_command(&self, root: &Path) -> Command {
        match self {
            Self::Prebuilt { cargo, rustc } => {
                let mut cmd = Command::new(cargo);
                cmd.current_dir(root);
                for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_TARGET_DIR"] {
                    cmd.env_remove(var);
                }
                if let Some(rustc) = rustc {
                    cmd.env("RUSTC", rustc);
                }
                cmd
            }
            Self::BuildStd { cargo, rustc } => {
                let mut cmd = Command::new(cargo);
                clean_env(&mut cmd, root);
                cmd.env("RUSTC", rustc).env("RUSTC_BOOTSTRAP", "1");
                cmd
            }
        }
    }

    fn add_build_std(&self, cmd: &mut Command) {
        if matches!(self, Self::BuildStd { .. }) {
            cmd.args(BUILD_STD);
        }
    }
}

fn clean_env(cmd: &mut Command, root: &Path) {
    cmd.current_dir(root);
    for var in FOREIGN_ENV {
        cmd.env_remove(var);
    }
}

/// Where user-space crates are built: their code generation differs from the kernel's, so they
/// must not share its artifacts.
pub const USER_TARGET_DIR: &str = "target/user";

/// The flags of user-space crates, as `CARGO_ENCODED_RUSTFLAGS` (which takes precedence over
/// the kernel's `target.x86_64-unknown-none.rustflags` in `.cargo/config.toml`): static
/// executables in the low 2 GiB linked with `user/link.ld`, with frame pointers for traces.
pub fn user_rustflags(root: &Path) -> String {
    static_rustflags(&root.join("user/link.ld"))
}

/// Where guest crates (`tests/guests/`) are built: they run inside a virtual machine, linked
/// for guest-physical addresses by their own script.
pub const GUEST_TARGET_DIR: &str = "target/guest";

/// The flags of guest crates: as for user crates, but linked with `tests/guests/link.ld`.
pub fn guest_rustflags(root: &Path) -> String {
    static_rustflags(&root.join(crate::workspace::GUEST_DIR).join("link.ld"))
}

/// Static, small-code-model executables linked with `script`, with frame pointers.
fn static_rustflags(script: &Path) -> String {
    let link = format!("link-arg=-T{}", script.display());
    [
        "-C",
        "relocation-model=static",
        "-C",
        "code-model=small",
        "-C",
        &link,
        "-C",
        "force-frame-pointers=yes",
    ]
    .join("\x1f")
}

/// Where the ELF of user-space binary `name` lands.
pub fn user_elf(root: &Path, name: &str, release: bool) -> PathBuf {
    root.join(USER_TARGET_DIR)
        .join(TARGET)
        .join(if release { "release" } else { "debug" })
        .join(name)
}

/// Where the ELF of guest binary `name` lands.
pub fn guest_elf(root: &Path, name: &str, release: bool) -> PathBuf {
    root.join(GUEST_TARGET_DIR)
        .join(TARGET)
        .join(if release { "release" } else { "debug" })
        .join(name)
}

/// Where the kernel ELF lands.
pub fn kernel_elf(root: &Path, release: bool) -> PathBuf {
    root.join("target")
        .join(TARGET)
        .join(if release { "release" } else { "debug" })
        .join("kernel")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn build_std_command_uses_debian_tools_and_clean_env() {
        let tc = KernelToolchain::BuildStd {
            cargo: DEBIAN_CARGO.into(),
            rustc: DEBIAN_RUSTC.into(),
        };
        let cmd = tc.build(Path::new("/repo"), true);
        assert_eq!(cmd.get_program(), DEBIAN_CARGO);
        assert_eq!(
            args(&cmd),
            [
                "build",
                "-p",
                "kernel",
                "--target",
                TARGET,
                BUILD_STD[0],
                BUILD_STD[1],
                "--release"
            ]
        );
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs.contains(&("RUSTC_BOOTSTRAP".as_ref(), Some("1".as_ref()))));
        assert!(envs.contains(&("RUSTUP_TOOLCHAIN".as_ref(), None)));
    }

    #[test]
    fn prebuilt_command_has_no_build_std() {
        let tc = KernelToolchain::Prebuilt {
            cargo: "cargo".into(),
            rustc: None,
        };
        let cmd = tc.build(Path::new("/repo"), false);
        assert_eq!(args(&cmd), ["build", "-p", "kernel", "--target", TARGET]);
        match tc.clippy(&crate::layout::root()) {
            Ok(clippy) => assert_eq!(
                args(&clippy),
                ["clippy", "-p", "kernel", "--target", TARGET, "--", "-D", "warnings"]
            ),
            Err(reason) => assert!(reason.contains("rustup component add clippy")),
        }
    }

    #[test]
    fn user_crates_get_their_own_flags_and_directory() {
        let tc = KernelToolchain::BuildStd {
            cargo: DEBIAN_CARGO.into(),
            rustc: DEBIAN_RUSTC.into(),
        };
        let cmd = tc.build_user(Path::new("/repo"), &["init".into(), "serial".into()], true);
        assert_eq!(
            args(&cmd),
            [
                "build",
                "-p",
                "init",
                "-p",
                "serial",
                "--target",
                TARGET,
                "--target-dir",
                "/repo/target/user",
                BUILD_STD[0],
                BUILD_STD[1],
                "--release"
            ]
        );
        let flags = "-C\x1frelocation-model=static\x1f-C\x1fcode-model=small\x1f-C\x1f\
                     link-arg=-T/repo/user/link.ld\x1f-C\x1fforce-frame-pointers=yes";
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs.contains(&("CARGO_ENCODED_RUSTFLAGS".as_ref(), Some(flags.as_ref()))));
        assert_eq!(
            user_elf(Path::new("/r"), "serial", false),
            Path::new("/r/target/user/x86_64-unknown-none/debug/serial")
        );
    }

    #[test]
    fn guest_crates_get_their_own_flags_and_directory() {
        let tc = KernelToolchain::Prebuilt {
            cargo: "cargo".into(),
            rustc: None,
        };
        let cmd = tc.build_guest(Path::new("/repo"), &["hello".into()], false);
        assert_eq!(
            args(&cmd),
            [
                "build",
                "-p",
                "hello",
                "--target",
                TARGET,
                "--target-dir",
                "/repo/target/guest"
            ]
        );
        let flags = "-C\x1frelocation-model=static\x1f-C\x1fcode-model=small\x1f-C\x1f\
                     link-arg=-T/repo/tests/guests/link.ld\x1f-C\x1fforce-frame-pointers=yes";
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs.contains(&("CARGO_ENCODED_RUSTFLAGS".as_ref(), Some(flags.as_ref()))));
        assert_eq!(
            guest_elf(Path::new("/r"), "hello", true),
            Path::new("/r/target/guest/x86_64-unknown-none/release/hello")
        );
    }

    #[test]
    fn kernel_path_per_profile() {
        assert_eq!(
            kernel_elf(Path::new("/r"), false),
            Path::new("/r/target/x86_64-unknown-none/debug/kernel")
        );
    }
}
