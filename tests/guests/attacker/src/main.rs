//! The `attacker` test guest: a plain ELF64 kernel (no Multiboot header; the hypervisor starts it
//! in long mode with a Multiboot 2 information structure) that tries to break out of its VM and
//! prints one `attacker: <attempt>: blocked|BREACH (<detail>)` line per attempt:
//!
//! 1. [`scan`]: all of its RAM (reserved pages too) for `SECRET:<name>:<hex>`; only its own, at
//!    0x90000, is allowed;
//! 2. [`devices`]: programs the PIC, PIT, PCI configuration ports and CMOS it was not given and
//!    reads them back; anything but all-ones is a device that answered;
//! 3. [`flood`]: 200,000 CPUIDs and 200,000 `out 0x80` (`flood=<N>` on the command line changes
//!    the count), then prints that it survived and the TSC ticks they took;
//! 4. [`escape`]: VMCALL, VMMCALL and XSETBV must raise #UD, and EFER.SVME must not stick;
//!
//! then `attacker: N attempts blocked, M breaches`. With breaches it exits 1. Otherwise, last,
//! it reads guest-physical 3 GiB, outside its RAM, through the loader's identity map: the
//! hypervisor is expected to stop it there; if the read returns it prints
//! `attacker: BREACH read outside memory` and exits 1.
#![no_std]
#![no_main]

mod devices;
mod escape;
mod flood;
mod scan;

use core::fmt;

use grt::println;

grt::elf64_entry!(main);

/// Where the last attempt reads: outside the RAM of any reasonable test guest, inside the 4 GiB
/// the loader identity-maps.
const OUTSIDE: u64 = 0xc000_0000;

/// Counts and prints the attempts.
pub struct Report {
    blocked: u32,
    breaches: u32,
}

impl Report {
    /// Records one attempt and prints its line.
    pub fn attempt(&mut self, what: &str, blocked: bool, detail: fmt::Arguments) {
        if blocked {
            self.blocked += 1;
        } else {
            self.breaches += 1;
        }
        println!(
            "attacker: {}: {} ({})",
            what,
            if blocked { "blocked" } else { "BREACH" },
            detail
        );
    }
}

fn main(boot: &grt::Boot) -> u8 {
    let cmdline = boot.cmdline();
    println!(
        "attacker: booted via {}, cmdline \"{}\"",
        boot.protocol(),
        cmdline
    );
    let mut report = Report {
        blocked: 0,
        breaches: 0,
    };
    scan::run(&mut report, boot);
    devices::run(&mut report);
    let count = grt::boot::cmdline_value(cmdline, "flood")
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    flood::run(&mut report, count);
    escape::run(&mut report);
    println!(
        "attacker: {} attempts blocked, {} breaches",
        report.blocked, report.breaches
    );
    if report.breaches != 0 {
        println!("attacker: not trying the outside read: breaches already found");
        return grt::EXIT_FAILURE;
    }
    read_outside(boot)
}

/// The last attempts beyond the guest's RAM: a read, which must find no device (all-ones, as
/// on a PC where nothing decodes the address), then a jump there, which the hypervisor cannot
/// emulate and must stop.
fn read_outside(boot: &grt::Boot) -> u8 {
    if boot.ram_top().is_some_and(|top| top > OUTSIDE) {
        println!(
            "attacker: RAM reaches past {:#x}; no outside read possible",
            OUTSIDE
        );
        return grt::EXIT_FAILURE;
    }
    // SAFETY: the address is identity-mapped (the loader maps 4 GiB) and nothing of this
    // program lives there; the read is the attack.
    let value = unsafe { core::ptr::read_volatile(OUTSIDE as *const u64) };
    if value != u64::MAX {
        println!(
            "attacker: BREACH read outside memory ({:#x} = {:#x})",
            OUTSIDE, value
        );
        return grt::EXIT_FAILURE;
    }
    println!(
        "attacker: read outside memory: blocked ({:#x} reads all-ones: no device there)",
        OUTSIDE
    );
    println!(
        "attacker: jumping to guest-physical {:#x}, outside its RAM; the hypervisor should stop it now",
        OUTSIDE
    );
    // SAFETY: the jump is the attack: the address is mapped but holds no code of this program,
    // and the hypervisor stops the guest at its first instruction fetch there.
    let escape: extern "C" fn() = unsafe { core::mem::transmute(OUTSIDE as usize) };
    escape();
    println!("attacker: BREACH executed outside memory at {:#x}", OUTSIDE);
    grt::EXIT_FAILURE
}
