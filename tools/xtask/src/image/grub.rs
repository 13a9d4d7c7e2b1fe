//! GRUB images: `grub-mkrescue` around a `grub.cfg` that loads the kernel with Multiboot2.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use super::{run_quiet, ImageModule};

/// The `grub.cfg` that boots `/boot/kernel` with `cmdline` and `modules` at once.
pub fn config(cmdline: &str, modules: &[ImageModule]) -> String {
    let mut cfg = String::from("set timeout=0\nset default=0\n\nmenuentry \"dmphv\" {\n");
    cfg.push_str(&line("    multiboot2 /boot/kernel", cmdline));
    for module in modules {
        cfg.push_str(&line(
            &format!("    module2 /boot/{}", module.file),
            &module.name,
        ));
    }
    cfg.push_str("    boot\n}\n");
    cfg
}

fn line(command: &str, args: &str) -> String {
    if args.is_empty() {
        format!("{command}\n")
    } else {
        format!("{command} {args}\n")
    }
}

/// Writes `boot/grub/grub.cfg` into the staged `root` and makes the ISO `out`.
pub fn build(root: &Path, out: &Path, cmdline: &str, modules: &[ImageModule]) -> Result<()> {
    let dir = root.join("boot/grub");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("grub.cfg"), config(cmdline, modules))?;
    let mut cmd = Command::new("grub-mkrescue");
    cmd.arg("-o").arg(out).arg(root);
    run_quiet(cmd, "grub-mkrescue")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_without_modules() {
        assert_eq!(
            config("", &[]),
            "set timeout=0\nset default=0\n\nmenuentry \"dmphv\" {\n    multiboot2 /boot/kernel\n    boot\n}\n"
        );
    }

    #[test]
    fn config_with_cmdline_and_modules() {
        let modules = [ImageModule {
            file: "init".into(),
            name: "init root".into(),
        }];
        let cfg = config("selftest=fault", &modules);
        assert!(cfg.contains("    multiboot2 /boot/kernel selftest=fault\n"));
        assert!(cfg.contains("    module2 /boot/init init root\n    boot\n"));
    }
}
