//! Reading `cargo test` output: the `test result:` lines and the names of failed tests.

use std::time::Duration;

/// Totals over every test binary (unit tests, integration tests, doctests) of one run.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// Sum of the `finished in` times.
    pub time: Duration,
    /// How many `test result:` lines were seen.
    pub binaries: usize,
    /// `path::to::test` of each failed test.
    pub failures: Vec<String>,
}

/// One `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s`.
#[derive(Debug, PartialEq)]
pub struct ResultLine {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub time: Duration,
}

pub fn parse_result_line(line: &str) -> Option<ResultLine> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_verdict, counts) = rest.split_once(". ")?;
    let mut result = ResultLine {
        passed: 0,
        failed: 0,
        ignored: 0,
        time: Duration::ZERO,
    };
    for part in counts.split(';').map(str::trim) {
        if let Some(secs) = part.strip_prefix("finished in ") {
            let secs: f64 = secs.trim_end_matches('s').parse().ok()?;
            result.time = Duration::from_secs_f64(secs.max(0.0));
            continue;
        }
        let (number, what) = part.split_once(' ')?;
        let number: u64 = number.parse().ok()?;
        match what {
            "passed" => result.passed = number,
            "failed" => result.failed = number,
            "ignored" => result.ignored = number,
            _ => {}
        }
    }
    Some(result)
}

/// Sums the result lines of a whole `cargo test` run.
pub fn parse(output: &str) -> Report {
    let mut report = Report::default();
    for line in output.lines() {
        if let Some(result) = parse_result_line(line) {
            report.passed += result.passed;
            report.failed += result.failed;
            report.ignored += result.ignored;
            report.time += result.time;
            report.binaries += 1;
        } else if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"))
        {
            report.failures.push(name.to_string());
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines() {
        let line = "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.25s";
        assert_eq!(
            parse_result_line(line),
            Some(ResultLine {
                passed: 12,
                failed: 0,
                ignored: 1,
                time: Duration::from_millis(250)
            })
        );
        let failed = "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s";
        assert_eq!(parse_result_line(failed).unwrap().failed, 1);
        assert_eq!(parse_result_line("test foo ... ok"), None);
    }

    #[test]
    fn whole_run() {
        let out = "\
running 2 tests
test a::b ... ok
test a::c ... FAILED

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.10s

running 0 tests

test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

   Doc-tests mem
running 1 test
test src/lib.rs - f (line 3) ... ok

test result: ok. 1 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.50s
";
        let r = parse(out);
        assert_eq!((r.passed, r.failed, r.ignored, r.binaries), (2, 1, 2, 3));
        assert_eq!(r.failures, ["a::c"]);
        assert_eq!(r.time, Duration::from_millis(600));
    }
}
