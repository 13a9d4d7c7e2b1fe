//! Attempt 3: flood the hypervisor with exits (CPUID and port output are intercepted), then show
//! that the guest survived and how long the exits took.

use core::hint::black_box;

use grt::cpu::{cpuid, outb, rdtsc};

use crate::Report;

/// The POST-code port: no device behind it here.
const PORT_80: u16 = 0x80;

pub fn run(report: &mut Report, count: u32) {
    let start = rdtsc();
    for i in 0..count {
        black_box(cpuid(black_box(i & 1), 0));
    }
    let ticks = rdtsc().wrapping_sub(start);
    survived(report, "flood CPUID exits", count, ticks);

    let start = rdtsc();
    for i in 0..count {
        outb(PORT_80, i as u8);
    }
    let ticks = rdtsc().wrapping_sub(start);
    survived(report, "flood port 0x80 exits", count, ticks);
}

fn survived(report: &mut Report, what: &str, count: u32, ticks: u64) {
    let per = ticks / u64::from(count.max(1));
    report.attempt(
        what,
        true,
        format_args!(
            "survived {} exits in {} TSC ticks, {} per exit",
            count, ticks, per
        ),
    );
}
