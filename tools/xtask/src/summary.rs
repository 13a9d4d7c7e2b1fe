//! The test suite's closing table and its last line, `N passed, M failed, K skipped`.

use std::fmt::Write as _;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Passed,
    Failed,
    Skipped,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

/// How many tests a row stands for: one for a lint or a scenario, the test counts for a crate's
/// unit tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl Counts {
    pub fn single(status: Status) -> Self {
        match status {
            Status::Passed => Self {
                passed: 1,
                ..Self::default()
            },
            Status::Failed => Self {
                failed: 1,
                ..Self::default()
            },
            Status::Skipped => Self {
                skipped: 1,
                ..Self::default()
            },
        }
    }
}

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub status: Status,
    pub time: Duration,
    /// Why it failed or was skipped, or a short note.
    pub reason: String,
    pub counts: Counts,
}

impl Row {
    /// A row that counts as one test.
    pub fn single(name: &str, status: Status, time: Duration, reason: impl Into<String>) -> Self {
        Self {
            name: name.to_string(),
            status,
            time,
            reason: reason.into(),
            counts: Counts::single(status),
        }
    }
}

/// The sums over all rows.
pub fn totals(rows: &[Row]) -> Counts {
    rows.iter().fold(Counts::default(), |sum, row| Counts {
        passed: sum.passed + row.counts.passed,
        failed: sum.failed + row.counts.failed,
        skipped: sum.skipped + row.counts.skipped,
    })
}

/// The closing line.
pub fn last_line(counts: Counts) -> String {
    format!(
        "{} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.skipped
    )
}

/// The table and, last, the closing line.
pub fn render(rows: &[Row], total_time: Duration) -> String {
    let name_width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<name_width$}  {:<7}  {:>8}  reason / note",
        "item", "result", "time"
    );
    let _ = writeln!(out, "{}", "-".repeat(name_width + 40));
    for row in rows {
        let _ = writeln!(
            out,
            "{:<name_width$}  {:<7}  {:>7.1}s  {}",
            row.name,
            row.status.word(),
            row.time.as_secs_f64(),
            row.reason
        );
    }
    let _ = writeln!(out, "{}", "-".repeat(name_width + 40));
    let _ = writeln!(out, "suite time {:.1}s", total_time.as_secs_f64());
    out.push_str(&last_line(totals(rows)));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_counts_and_single_rows_add_up() {
        let rows = [
            Row {
                name: "unit:mem".into(),
                status: Status::Passed,
                time: Duration::from_millis(100),
                reason: "12 tests".into(),
                counts: Counts {
                    passed: 12,
                    failed: 0,
                    skipped: 1,
                },
            },
            Row::single("fmt", Status::Passed, Duration::ZERO, ""),
            Row::single(
                "scenario:boot-qemu-grub",
                Status::Failed,
                Duration::from_secs(3),
                "missing `SVM`",
            ),
            Row::single(
                "scenario:boot-qemu-limine",
                Status::Skipped,
                Duration::ZERO,
                "Limine not found",
            ),
        ];
        assert_eq!(
            totals(&rows),
            Counts {
                passed: 13,
                failed: 1,
                skipped: 2
            }
        );
        let text = render(&rows, Duration::from_secs(4));
        assert!(
            text.ends_with("\n13 passed, 1 failed, 2 skipped\n"),
            "{text}"
        );
        assert!(
            text.contains("scenario:boot-qemu-limine  skipped      0.0s  Limine not found\n"),
            "{text}"
        );
    }

    #[test]
    fn empty_suite() {
        assert_eq!(last_line(totals(&[])), "0 passed, 0 failed, 0 skipped");
    }
}
