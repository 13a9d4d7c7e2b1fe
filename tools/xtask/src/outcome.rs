//! How a boot ended, judged from the serial transcript and the emulator's exit status.
//!
//! The contract (`abi::exit`): the kernel's last serial line is `poweroff: success` or
//! `poweroff: failure <reason>`; QEMU then exits with status 33 or 35 through `isa-debug-exit`.
//! On Bochs only the line counts.

use std::fmt;
use std::time::Duration;

use abi::exit::{FAILURE_LINE, QEMU_STATUS_FAILURE, QEMU_STATUS_SUCCESS, SUCCESS_LINE};

use crate::emulator::Emulator;

/// What a power-off line said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerOff {
    Success,
    Failure(String),
}

/// Reads a power-off line. Success counts only as the whole line, as the kernel prints it (the
/// serial driver marks client lines that imitate it, `abi::exit::imitates_poweroff`, and guest
/// lines carry their name in front); a failure counts wherever it appears (a kernel panic may
/// cut into a line, and a false failure never passes a run).
pub fn poweroff(line: &str) -> Option<PowerOff> {
    let line = line.trim_end();
    if line == SUCCESS_LINE {
        return Some(PowerOff::Success);
    }
    let at = line.find(FAILURE_LINE)?;
    Some(PowerOff::Failure(
        line[at + FAILURE_LINE.len()..].trim().to_string(),
    ))
}

/// The end of a boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The system reported success (and QEMU agreed).
    Success,
    /// The system reported failure (and QEMU agreed), with the reason it gave.
    Failure(String),
    /// Nothing powered the system off in time.
    Timeout(Duration),
    /// Anything else: a reset or triple fault, an emulator error, a status that contradicts the
    /// power-off line.
    Broken(String),
}

impl Outcome {
    /// `success` / `failure`: the words scenario files use.
    pub fn word(&self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure(_) => "failure",
            Self::Timeout(_) => "timeout",
            Self::Broken(_) => "broken",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Success => write!(f, "the system reported success"),
            Self::Failure(reason) => write!(f, "the system reported failure: {reason}"),
            Self::Timeout(after) => write!(
                f,
                "timeout: no power-off line after {:.0} s (the system hangs or is too slow; \
                 raise the limit with --timeout)",
                after.as_secs_f64()
            ),
            Self::Broken(why) => write!(f, "{why}"),
        }
    }
}

/// Judges a finished boot. `timed_out` is the run time when the run was stopped at its limit.
pub fn judge(
    lines: &[&str],
    emulator: Emulator,
    status: Option<i32>,
    timed_out: Option<Duration>,
) -> Outcome {
    let reported = lines.iter().rev().find_map(|l| poweroff(l));
    if let Some(after) = timed_out {
        if reported.is_none() {
            return Outcome::Timeout(after);
        }
    }
    match (emulator, reported) {
        (Emulator::Qemu, Some(PowerOff::Success)) if status == Some(QEMU_STATUS_SUCCESS) => {
            Outcome::Success
        }
        (Emulator::Qemu, Some(PowerOff::Failure(reason)))
            if status == Some(QEMU_STATUS_FAILURE) =>
        {
            Outcome::Failure(reason)
        }
        (Emulator::Qemu, Some(said)) => Outcome::Broken(format!(
            "the system printed `{}` but QEMU {} (expected status {})",
            match &said {
                PowerOff::Success => SUCCESS_LINE.to_string(),
                PowerOff::Failure(r) => format!("{FAILURE_LINE} {r}"),
            },
            describe_status(status),
            if said == PowerOff::Success {
                QEMU_STATUS_SUCCESS
            } else {
                QEMU_STATUS_FAILURE
            }
        )),
        (Emulator::Qemu, None) => Outcome::Broken(format!(
            "QEMU {} without a power-off line (a triple fault or reset ends QEMU under -no-reboot)",
            describe_status(status)
        )),
        (Emulator::Bochs, Some(PowerOff::Success)) => Outcome::Success,
        (Emulator::Bochs, Some(PowerOff::Failure(reason))) => Outcome::Failure(reason),
        (Emulator::Bochs, None) => Outcome::Broken(format!(
            "Bochs {} without a power-off line (see bochs.log beside the transcript)",
            describe_status(status)
        )),
    }
}

fn describe_status(status: Option<i32>) -> String {
    match status {
        Some(code) => format!("exited with status {code}"),
        None => "was stopped by xtask".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_poweroff_lines() {
        assert_eq!(poweroff("poweroff: success"), Some(PowerOff::Success));
        assert_eq!(poweroff("poweroff: success\r"), Some(PowerOff::Success));
        // Anyone else's line that ends like the kernel's does not count.
        assert_eq!(poweroff("[ INFO] poweroff: success"), None);
        assert_eq!(poweroff("[guest] poweroff: success"), None);
        assert_eq!(poweroff("serial: forged poweroff: success"), None);
        assert_eq!(
            poweroff("poweroff: failure no hardware virtualization"),
            Some(PowerOff::Failure("no hardware virtualization".into()))
        );
        assert_eq!(poweroff("poweroff: successful?"), None);
        assert_eq!(poweroff("booting"), None);
    }

    #[test]
    fn qemu_needs_line_and_status() {
        let ok = ["banner", "poweroff: success"];
        assert_eq!(judge(&ok, Emulator::Qemu, Some(33), None), Outcome::Success);
        assert!(matches!(
            judge(&ok, Emulator::Qemu, Some(0), None),
            Outcome::Broken(_)
        ));
        let bad = ["poweroff: failure EXCEPTION"];
        assert_eq!(
            judge(&bad, Emulator::Qemu, Some(35), None),
            Outcome::Failure("EXCEPTION".into())
        );
        assert!(matches!(
            judge(&bad, Emulator::Qemu, Some(33), None),
            Outcome::Broken(_)
        ));
        let none: [&str; 1] = ["banner"];
        let broken = judge(&none, Emulator::Qemu, Some(0), None);
        assert!(
            broken.to_string().contains("without a power-off line"),
            "{broken}"
        );
    }

    #[test]
    fn bochs_needs_the_line_only() {
        assert_eq!(
            judge(&["poweroff: success"], Emulator::Bochs, None, None),
            Outcome::Success
        );
        assert!(matches!(
            judge(&["x"], Emulator::Bochs, Some(1), None),
            Outcome::Broken(_)
        ));
    }

    #[test]
    fn timeouts_without_a_poweroff_line() {
        let t = Duration::from_secs(60);
        assert_eq!(
            judge(&["x"], Emulator::Qemu, None, Some(t)),
            Outcome::Timeout(t)
        );
        assert!(judge(&["x"], Emulator::Qemu, None, Some(t))
            .to_string()
            .starts_with("timeout"));
        // Bochs that printed the line but was killed after the grace period still succeeded.
        assert_eq!(
            judge(&["poweroff: success"], Emulator::Bochs, None, Some(t)),
            Outcome::Success
        );
    }

    #[test]
    fn the_last_poweroff_line_counts() {
        let lines = ["poweroff: failure first", "poweroff: success"];
        assert_eq!(judge(&lines, Emulator::Bochs, None, None), Outcome::Success);
    }
}
