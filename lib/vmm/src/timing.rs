//! Where an exit's time goes, as the VMM sees it: from the hardware exit (the kernel's
//! `EXIT_TSC` word) to the VMM receiving the message (the kernel's exit path), and from receiving
//! it to sending the reply (the VMM's handler). The rest of a round trip, the reply path back
//! into the guest, is what the guest measures minus these two. Under QEMU `-icount` the TSC
//! counts instructions, so the figures are instructions (the exit-cost benchmark reads them).

use alloc::format;
use alloc::string::String;

use abi::vm::{Exit, EXIT_COUNT};

const REASONS: usize = EXIT_COUNT as usize;

/// Sums per exit reason, and the guest/hypervisor split of the whole run.
#[derive(Default)]
pub struct ExitTiming {
    count: [u64; REASONS],
    delivery: [u64; REASONS],
    handler: [u64; REASONS],
    /// `EXIT_TSC` of the first exit seen (the start-up) and of the last one.
    first_exit: Option<u64>,
    last_exit: u64,
    /// `GUEST_TSC` of the last exit: ticks spent in guest mode so far.
    guest: u64,
    /// HLT sleeps that ended after their deadline: how many, and their lateness (sum, most).
    wakes: u64,
    late_sum: u64,
    late_max: u64,
}

impl ExitTiming {
    /// Records one exit of `reason`: TSC at the hardware exit, at the VMM's receipt, at its reply.
    /// A clock that went backwards (a synthetic exit, another CPU's TSC) counts as zero time.
    pub fn record(&mut self, reason: u64, exit_tsc: u64, received: u64, replied: u64) {
        let Some(i) = usize::try_from(reason).ok().filter(|&i| i < REASONS) else {
            return;
        };
        self.first_exit.get_or_insert(exit_tsc);
        self.last_exit = self.last_exit.max(exit_tsc);
        self.count[i] += 1;
        self.delivery[i] += received.saturating_sub(exit_tsc);
        self.handler[i] += replied.saturating_sub(received);
    }

    /// Notes the `GUEST_TSC` word of an exit (ticks in guest mode so far).
    pub fn guest_time(&mut self, guest_tsc: u64) {
        self.guest = self.guest.max(guest_tsc);
    }

    /// `(guest, hypervisor)` ticks between the first and the last exit seen: the guest's part
    /// from `GUEST_TSC`, the rest is kernel and VMM (exits included).
    pub fn split(&self) -> (u64, u64) {
        let span = self
            .last_exit
            .saturating_sub(self.first_exit.unwrap_or(self.last_exit));
        let guest = self.guest.min(span);
        (guest, span - guest)
    }

    /// `(exits, kernel delivery ticks, VMM handler ticks)` summed for `exit`.
    pub fn totals(&self, exit: Exit) -> (u64, u64, u64) {
        let i = exit as usize;
        (self.count[i], self.delivery[i], self.handler[i])
    }

    /// One line, the reasons seen only, averages per exit:
    /// `exit timing (tsc per exit): cpuid 1000 exits, kernel to vmm 812, vmm 1450; ...`.
    /// A halted vCPU woke `late` TSC ticks after its device deadline.
    pub fn wake_late(&mut self, late: u64) {
        self.wakes += 1;
        self.late_sum = self.late_sum.saturating_add(late);
        self.late_max = self.late_max.max(late);
    }

    pub fn summary(&self) -> String {
        let mut out = String::from("exit timing (tsc per exit):");
        let mut any = false;
        for v in 0..EXIT_COUNT {
            let (Some(exit), i) = (Exit::from_u64(v), v as usize) else {
                continue;
            };
            let n = self.count[i];
            if n == 0 {
                continue;
            }
            out.push_str(&format!(
                "{} {} {n} exits, kernel to vmm {}, vmm {}",
                if any { ";" } else { "" },
                exit.name(),
                self.delivery[i] / n,
                self.handler[i] / n
            ));
            any = true;
        }
        if !any {
            out.push_str(" none");
        }
        let (guest, hypervisor) = self.split();
        out.push_str(&format!("; run: guest {guest}, hypervisor {hypervisor}"));
        if self.wakes > 0 {
            out.push_str(&format!(
                "; hlt wakes {}, late by {} on average, {} at most",
                self.wakes,
                self.late_sum / self.wakes,
                self.late_max
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_per_reason() {
        let mut t = ExitTiming::default();
        t.record(Exit::Cpuid as u64, 100, 900, 2_400);
        t.record(Exit::Cpuid as u64, 5_000, 5_700, 7_300);
        t.record(Exit::Io as u64, 10, 20, 50);
        t.guest_time(4_000);
        assert_eq!(t.totals(Exit::Cpuid), (2, 1_500, 3_100));
        assert_eq!(t.split(), (4_000, 900));
        assert_eq!(
            t.summary(),
            "exit timing (tsc per exit): cpuid 2 exits, kernel to vmm 750, vmm 1550; io 1 exits, \
             kernel to vmm 10, vmm 30; run: guest 4000, hypervisor 900"
        );
    }

    #[test]
    fn backwards_clocks_and_bad_reasons_do_no_harm() {
        let mut t = ExitTiming::default();
        t.record(Exit::Hlt as u64, 1_000, 10, 5);
        t.record(EXIT_COUNT, 0, 1, 2);
        t.record(u64::MAX, 0, 1, 2);
        assert_eq!(t.totals(Exit::Hlt), (1, 0, 0));
        assert_eq!(
            ExitTiming::default().summary(),
            "exit timing (tsc per exit): none; run: guest 0, hypervisor 0"
        );
    }
}
