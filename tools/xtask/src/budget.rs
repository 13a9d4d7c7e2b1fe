//! `cargo xtask test` item `budget:fast-paths` (issue #13): the instruction budgets of the paths
//! every guest and server pays for, checked with a release kernel under QEMU `-icount`, where
//! the counts are exact and a run cannot flake.
//!
//! A budget is today's figure with about 1% room (toolchain updates move code a little), and
//! never above the figures the issue was filed with (1,579, 359, 4,263); the goal beside it is
//! what the fast paths must reach. Once a goal is reached it becomes the
//! budget. Raising a budget is a decision for the commit message and `docs/ARCHITECTURE.md`.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use crate::summary::{Row, Status};
use crate::{bench_exits, bench_ipc, build};

/// One budgeted path: (name, budget, goal), in instructions.
pub struct Budget {
    pub name: &'static str,
    pub budget: u64,
    pub goal: u64,
}

/// IPC call + reply between two domains (user code of both included; `bench ipc`).
pub const IPC_ROUND_TRIP: Budget = Budget {
    name: "IPC round trip",
    budget: 1_310,
    goal: 600,
};

/// A syscall the kernel refuses at once: entry, decode, refusal, exit (`bench ipc`).
pub const NULL_SYSCALL: Budget = Budget {
    name: "null syscall",
    budget: 302,
    goal: 120,
};

/// CPUID exit to the user-level VMM and back into the guest (`bench exits`, SVM). Raised from
/// 4,260 to 4,500 with issue #14: the PC platform's interrupt check and timer re-arm in the VMM
/// (+40), and in the kernel the per-vCPU TSC_AUX switch on SVM and the confinement rules of the
/// new shadow modes (reply path 2,023 -> 2,103, exit path +14; 4,362), and the XSAVE support
/// (+91: 4,453 measured; XCR0 is checked around every entry and switched only when it differs,
/// so the cost is the bookkeeping, not profiled further yet).
pub const EXIT_ROUND_TRIP: Budget = Budget {
    name: "exit round trip",
    budget: 4_500,
    goal: 1_500,
};

/// The figures over budget, one line each; empty when all fit.
pub fn over(measured: &[(&Budget, u64)]) -> Vec<String> {
    measured
        .iter()
        .filter(|(b, value)| *value > b.budget)
        .map(|(b, value)| {
            format!(
                "{}: {value} instructions, budget {} (goal {})",
                b.name, b.budget, b.goal
            )
        })
        .collect()
}

/// Builds the release kernel, measures the three paths and compares them with their budgets.
pub fn row(root: &Path) -> Row {
    let started = Instant::now();
    let result = measure(root);
    let time = started.elapsed();
    match result {
        Err(err) => Row::single(
            "budget:fast-paths",
            Status::Failed,
            time,
            format!("{err:#}"),
        ),
        Ok(measured) => {
            let refs: Vec<(&Budget, u64)> = measured.iter().map(|(b, v)| (*b, *v)).collect();
            for (b, value) in &refs {
                println!(
                    "budget: {:<16} {value:>6} instructions (budget {:>5}, goal {:>5})",
                    b.name, b.budget, b.goal
                );
            }
            let over = over(&refs);
            if over.is_empty() {
                Row::single("budget:fast-paths", Status::Passed, time, "")
            } else {
                Row::single("budget:fast-paths", Status::Failed, time, over.join("; "))
            }
        }
    }
}

fn measure(root: &Path) -> Result<Vec<(&'static Budget, u64)>> {
    let kernel = build::kernel(root, true)?;
    let ipc = bench_ipc::measure(&kernel, true)?;
    let exits = bench_exits::measure(&kernel, true)?;
    Ok(vec![
        (&IPC_ROUND_TRIP, ipc.instructions_per_round_trip),
        (&NULL_SYSCALL, ipc.instructions_per_null_syscall),
        (&EXIT_ROUND_TRIP, exits.instructions_per_round_trip),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_over_its_budget_is_reported_and_one_at_it_is_not() {
        let at = [(&IPC_ROUND_TRIP, IPC_ROUND_TRIP.budget)];
        assert!(over(&at).is_empty());
        let above = [
            (&IPC_ROUND_TRIP, IPC_ROUND_TRIP.budget + 1),
            (&NULL_SYSCALL, 1),
        ];
        let lines = over(&above);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("IPC round trip: 1311 instructions"),
            "{lines:?}"
        );
    }

    #[test]
    fn budgets_never_sit_below_their_goals() {
        for b in [&IPC_ROUND_TRIP, &NULL_SYSCALL, &EXIT_ROUND_TRIP] {
            assert!(b.goal <= b.budget, "{}", b.name);
        }
    }
}
