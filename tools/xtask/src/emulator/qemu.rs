//! QEMU (TCG): serial console on a pipe, `isa-debug-exit` for the exit status.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::child::{Child, Terminal};
use super::{supervise, Emulator, Run, Spec};

/// QEMU's TCG offers SVM with nested paging on this CPU model (it refuses VMX).
pub const DEFAULT_CPU: &str = "qemu64,+svm,+npt";
/// How long QEMU may live on after the power-off line before it is killed.
const GRACE: Duration = Duration::from_secs(3);

/// The QEMU command line for `spec`.
pub fn args(spec: &Spec) -> Vec<String> {
    let ram = format!("{}M", spec.ram_mib);
    let mut args: Vec<String> = [
        "-accel",
        "tcg",
        "-machine",
        "pc",
        "-cpu",
        &spec.cpu,
        "-m",
        &ram,
        "-smp",
        "1",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-no-reboot",
    ]
    .map(String::from)
    .to_vec();
    args.push("-device".into());
    args.push(format!(
        "isa-debug-exit,iobase={:#x},iosize=0x04",
        abi::exit::DEBUG_EXIT_PORT
    ));
    args.push("-cdrom".into());
    args.push(spec.iso.display().to_string());
    args.extend(["-boot", "d"].map(String::from));
    if spec.icount {
        args.extend(["-icount", "shift=0,sleep=off"].map(String::from));
    }
    args.extend(spec.extra.iter().cloned());
    args
}

pub fn boot(spec: &Spec) -> Result<Run> {
    let args = args(spec);
    let command = format!("qemu-system-x86_64 {}", args.join(" "));
    let stderr_path = spec.work.join("qemu.stderr");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(&args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path)?);
    let start = Instant::now();
    let mut child = Child::spawn(cmd, Terminal::None)?;
    let mut stdout = child.stdout().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let ended = supervise(&mut child, rx, spec, start, GRACE, || {})?;
    drop(child);
    let _ = reader.join();
    Ok(Run {
        emulator: Emulator::Qemu,
        command,
        lines: ended.lines,
        status: ended.status,
        timed_out: ended.timed_out,
        elapsed: ended.elapsed,
        diagnostics: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let spec = Spec {
            iso: "/t/a.iso".into(),
            cpu: DEFAULT_CPU.into(),
            timeout: Duration::from_secs(1),
            ram_mib: 256,
            icount: true,
            echo: false,
            work: "/t".into(),
            extra: Vec::new(),
        };
        let line = args(&spec).join(" ");
        assert!(line.starts_with("-accel tcg -machine pc -cpu qemu64,+svm,+npt -m 256M -smp 1"));
        assert!(line.contains("-device isa-debug-exit,iobase=0xf4,iosize=0x04"));
        assert!(line.ends_with("-cdrom /t/a.iso -boot d -icount shift=0,sleep=off"));
    }
}
