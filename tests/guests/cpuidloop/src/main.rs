//! The `cpuidloop` test guest: executes CPUID (an instruction every hypervisor intercepts) in a
//! loop and prints what one iteration cost in TSC ticks. Under QEMU `-icount shift=0` the TSC
//! counts executed instructions, so the figure is the instructions of one exit round trip
//! (hardware exit, kernel, VMM, reply, entry) plus the loop's own few instructions.
//!
//! Command line: `count=<N>` iterations (default 100,000), after 1,000 warm-up iterations.
//! Output: `cpuidloop: <N> iterations, <T> tsc, <P> tsc per iteration`, then exit 0.
#![no_std]
#![no_main]

use core::hint::black_box;

use grt::cpu::{cpuid, rdtsc};
use grt::println;

grt::elf64_entry!(main);

const WARM_UP: u32 = 1_000;
const DEFAULT_COUNT: u32 = 100_000;

fn main(boot: &grt::Boot) -> u8 {
    let count: u32 = grt::boot::cmdline_value(boot.cmdline(), "count")
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_COUNT);
    spin(WARM_UP);
    let start = rdtsc();
    spin(count);
    let ticks = rdtsc().wrapping_sub(start);
    println!(
        "cpuidloop: {} iterations, {} tsc, {} tsc per iteration",
        count,
        ticks,
        ticks / u64::from(count)
    );
    grt::EXIT_SUCCESS
}

/// `count` CPUIDs of leaf 0, each one VM exit.
fn spin(count: u32) {
    for _ in 0..count {
        black_box(cpuid(black_box(0), 0));
    }
}
