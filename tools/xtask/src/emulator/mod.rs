//! Booting an image in an emulator while streaming and recording its serial console.

mod bochs;
mod child;
mod qemu;

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::ValueEnum;
use serde::Deserialize;

use crate::outcome;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Emulator {
    Qemu,
    Bochs,
}

impl Emulator {
    pub fn name(self) -> &'static str {
        match self {
            Self::Qemu => "qemu",
            Self::Bochs => "bochs",
        }
    }

    /// Seconds a run may take before it counts as a hang.
    pub fn default_timeout(self) -> u64 {
        match self {
            Self::Qemu => 60,
            Self::Bochs => 120,
        }
    }

    /// The CPU model used when none is given: one that offers hardware virtualization.
    pub fn default_cpu(self) -> &'static str {
        match self {
            Self::Qemu => qemu::DEFAULT_CPU,
            Self::Bochs => bochs::DEFAULT_CPU,
        }
    }
}

/// How to boot.
pub struct Spec {
    pub iso: PathBuf,
    pub cpu: String,
    pub timeout: Duration,
    /// RAM of the machine in MiB (`[system] ram` of the manifest).
    pub ram_mib: u64,
    /// QEMU's deterministic instruction counting (`-icount shift=0,sleep=off`).
    pub icount: bool,
    /// Copy the serial console to our stdout as it arrives.
    pub echo: bool,
    /// A directory for the run's generated files and logs.
    pub work: PathBuf,
    /// More emulator arguments (QEMU only; e.g. the profiler's `-d exec`).
    pub extra: Vec<String>,
}

/// One line of serial output and when it arrived (since the emulator started).
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Duration,
    pub text: String,
}

/// What a run produced.
pub struct Run {
    pub emulator: Emulator,
    pub command: String,
    pub lines: Vec<Line>,
    /// The emulator's exit code, when it ended by itself.
    pub status: Option<i32>,
    pub timed_out: bool,
    pub elapsed: Duration,
    /// The emulator's own messages (QEMU's stderr, the tail of Bochs's log), for diagnosis.
    pub diagnostics: String,
}

impl Run {
    pub fn texts(&self) -> Vec<&str> {
        self.lines.iter().map(|l| l.text.as_str()).collect()
    }

    pub fn outcome(&self) -> outcome::Outcome {
        outcome::judge(
            &self.texts(),
            self.emulator,
            self.status,
            self.timed_out.then_some(self.elapsed),
        )
    }

    /// The whole transcript with a header, as saved in log files.
    pub fn log_text(&self) -> String {
        let mut text = format!(
            "# {}\n# emulator status: {}, elapsed {:.1} s{}\n",
            self.command,
            self.status
                .map_or("none (stopped by xtask)".into(), |s| s.to_string()),
            self.elapsed.as_secs_f64(),
            if self.timed_out { ", timed out" } else { "" }
        );
        for line in &self.lines {
            text.push_str(&format!("[{:8.3}] {}\n", line.at.as_secs_f64(), line.text));
        }
        if !self.diagnostics.trim().is_empty() {
            text.push_str("# emulator messages:\n");
            text.push_str(&self.diagnostics);
            if !self.diagnostics.ends_with('\n') {
                text.push('\n');
            }
        }
        text
    }
}

/// Boots `spec.iso` in `emulator` until the system powers off, the emulator exits, or the
/// timeout passes.
pub fn boot(emulator: Emulator, spec: &Spec) -> Result<Run> {
    std::fs::create_dir_all(&spec.work)?;
    match emulator {
        Emulator::Qemu => qemu::boot(spec),
        Emulator::Bochs => bochs::boot(spec),
    }
}

/// Splits serial output into lines, echoing it when asked.
struct Splitter {
    partial: Vec<u8>,
    lines: Vec<Line>,
    echo: bool,
    powered_off: bool,
}

impl Splitter {
    fn new(echo: bool) -> Self {
        Self {
            partial: Vec::new(),
            lines: Vec::new(),
            echo,
            powered_off: false,
        }
    }

    fn push(&mut self, chunk: &[u8], at: Duration) {
        if self.echo {
            let shown: Vec<u8> = chunk.iter().copied().filter(|&b| b != b'\r').collect();
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&shown);
            let _ = out.flush();
        }
        for &byte in chunk {
            if byte == b'\n' {
                self.end_line(at);
            } else if byte != b'\r' {
                self.partial.push(byte);
            }
        }
    }

    fn end_line(&mut self, at: Duration) {
        let text = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        if outcome::poweroff(&text).is_some() {
            self.powered_off = true;
        }
        self.lines.push(Line { at, text });
    }

    fn finish(mut self, at: Duration) -> Vec<Line> {
        if !self.partial.is_empty() {
            self.end_line(at);
            if self.echo {
                println!();
            }
        }
        self.lines
    }
}

/// How a run ended, from the loop's point of view.
struct Ended {
    lines: Vec<Line>,
    status: Option<i32>,
    timed_out: bool,
    elapsed: Duration,
}

/// Drives a started emulator: collects `output`, waits for the end, kills on timeout or when it
/// lingers `grace` after the power-off line. `stop_output` makes the output source send what is
/// left and hang up.
fn supervise(
    child: &mut child::Child,
    output: Receiver<Vec<u8>>,
    spec: &Spec,
    start: Instant,
    grace: Duration,
    stop_output: impl FnOnce(),
) -> Result<Ended> {
    let mut splitter = Splitter::new(spec.echo);
    let mut powered_off_at: Option<Instant> = None;
    let mut status = None;
    let mut timed_out = false;
    let mut connected = true;
    loop {
        if connected {
            match output.recv_timeout(Duration::from_millis(20)) {
                Ok(chunk) => splitter.push(&chunk, start.elapsed()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => connected = false,
            }
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
        if splitter.powered_off && powered_off_at.is_none() {
            powered_off_at = Some(Instant::now());
        }
        if let Some(exit) = child.try_wait()? {
            status = exit.code();
            break;
        }
        if powered_off_at.is_some_and(|t| t.elapsed() > grace) {
            child.kill();
            break;
        }
        if start.elapsed() > spec.timeout {
            timed_out = true;
            child.kill();
            break;
        }
    }
    let elapsed = start.elapsed();
    stop_output();
    let drain_until = Instant::now() + Duration::from_secs(2);
    while let Some(left) = drain_until.checked_duration_since(Instant::now()) {
        match output.recv_timeout(left) {
            Ok(chunk) => splitter.push(&chunk, start.elapsed()),
            Err(_) => break,
        }
    }
    Ok(Ended {
        lines: splitter.finish(start.elapsed()),
        status,
        timed_out,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_handles_crlf_and_partial_lines() {
        let mut s = Splitter::new(false);
        s.push(b"hel", Duration::ZERO);
        s.push(b"lo\r\nwor", Duration::from_millis(5));
        s.push(b"ld\npoweroff: success\r\n", Duration::from_millis(9));
        assert!(s.powered_off);
        s.push(b"tail", Duration::from_millis(10));
        let lines = s.finish(Duration::from_millis(11));
        let texts: Vec<_> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["hello", "world", "poweroff: success", "tail"]);
        assert_eq!(lines[0].at, Duration::from_millis(5));
    }
}
