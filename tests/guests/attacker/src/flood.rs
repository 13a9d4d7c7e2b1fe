//! Attempt 3: flood the hypervisor with exits (CPUID and port output are intercepted), then show
//! that the guest survived and how long the exits took.
//!
//! Surviving is not enough to count as blocked: every CPUID of the flood must answer as the
//! first one of its leaf did, and port 0x80 must keep reading all-ones (nothing behind it). A
//! hypervisor that loses state under the flood, or lets the port through to a device, fails.

use core::hint::black_box;

use grt::cpu::{cpuid, inb, outb, rdtsc};

use crate::Report;

/// The POST-code port: no device behind it here.
const PORT_80: u16 = 0x80;

/// Every this many port writes, a read of the port checks that no device latched the value.
const PORT_CHECK_EVERY: u32 = 1000;

pub fn run(report: &mut Report, count: u32) {
    let first = [cpuid(0, 0), cpuid(1, 0)];
    let mut differing = 0u32;
    let start = rdtsc();
    for i in 0..count {
        let leaf = black_box(i & 1);
        // Leaf 1's EBX holds the APIC id and CLFLUSH size, which stay put on one CPU.
        if cpuid(leaf, 0) != first[leaf as usize] {
            differing += 1;
        }
    }
    let ticks = rdtsc().wrapping_sub(start);
    let what = "flood CPUID exits";
    survived(report, what, count, ticks, (differing, "answers changed"));
    let mut latched = 0u32;
    let start = rdtsc();
    for i in 0..count {
        outb(PORT_80, i as u8);
        if i % PORT_CHECK_EVERY == 0 && inb(PORT_80) != 0xff {
            latched += 1;
        }
    }
    let ticks = rdtsc().wrapping_sub(start);
    let what = "flood port 0x80 exits";
    survived(report, what, count, ticks, (latched, "reads not all-ones"));
}

fn survived(report: &mut Report, what: &str, count: u32, ticks: u64, bad: (u32, &str)) {
    let per = ticks / u64::from(count.max(1));
    report.attempt(
        what,
        bad.0 == 0 && count > 0,
        format_args!(
            "survived {} exits in {} TSC ticks, {} per exit; {} {}",
            count, ticks, per, bad.0, bad.1
        ),
    );
}
