//! The `platform` test guest: drives every device of the PC the vmm-server emulates (issue #14)
//! the way a kernel's drivers do, and checks what it sees against the TSC and the tables.
//! One line per check, `platform: <check>: ok|FAIL (<detail>)`, then
//! `platform: N passed, M failed`; it powers off through ACPI (S5) when all passed, else exits
//! with status 1.
//!
//! Command line: `memory=<N>M`, the RAM size fw_cfg must report; optionally `delay=<ms>`: sleep
//! that long first (in HLT, on the local APIC's one-shot timer), so that a second copy of the
//! guest measures its timers after the first one is done rather than competing with it.
//!
//! Timing checks measure against the TSC, whose frequency the guest first measures against PIT
//! channel 2 (as Linux does); periods must be within 25% of the programmed ones, averaged over
//! several. Timers run at 50 ms or slower: the hypervisor wakes a sleeping guest on its own
//! timer tick (3.2 ms), so each arrival may be a tick late.
#![no_std]
#![no_main]

mod acpi;
mod apic;
mod legacy;

use grt::println;

grt::elf64_entry!(main);

/// The checks' tally.
pub struct Report {
    passed: u32,
    failed: u32,
}

impl Report {
    pub fn check(&mut self, what: &str, ok: bool, detail: core::fmt::Arguments) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        println!(
            "platform: {}: {} ({})",
            what,
            if ok { "ok" } else { "FAIL" },
            detail
        );
    }
}

/// Whether `measured` is within 25% of `expected`.
pub fn near(measured: u64, expected: u64) -> bool {
    let slack = expected / 4;
    measured + slack >= expected && measured <= expected + slack
}

fn main(boot: &grt::Boot) -> u8 {
    let memory_mib: u64 = grt::boot::cmdline_value(boot.cmdline(), "memory")
        .and_then(|m| m.trim_end_matches('M').parse().ok())
        .unwrap_or(0);
    let mut report = Report {
        passed: 0,
        failed: 0,
    };
    if let Some(ms) = grt::boot::cmdline_value(boot.cmdline(), "delay").and_then(|d| d.parse().ok())
    {
        apic::sleep_ms(ms);
    }
    acpi::run(&mut report);
    legacy::fw_cfg(&mut report, memory_mib << 20);
    legacy::no_pci_device(&mut report);
    legacy::unknown_mmio(&mut report);
    let tsc_hz = legacy::calibrate_tsc(&mut report);
    legacy::pit_through_pic(&mut report, tsc_hz);
    legacy::rtc(&mut report, tsc_hz);
    apic::run(&mut report, tsc_hz);
    println!(
        "platform: {} passed, {} failed",
        report.passed, report.failed
    );
    if report.failed != 0 {
        return grt::EXIT_FAILURE;
    }
    // ACPI S5: SLP_TYP 0 (the DSDT's \_S5) with SLP_EN in PM1a control.
    grt::cpu::outw(0x604, 1 << 13);
    println!("platform: still running after the ACPI power-off");
    grt::EXIT_FAILURE
}
