//! Attempt 2: program the PC's devices and read them back. The 8259 pair, the PIT and the CMOS
//! are the guest's own models in its VMM (every port access of a guest exits; the host's
//! devices are the kernel's): they answer, and their lines are shown but not counted as
//! attempts. PCI configuration must find no device: reads are all-ones.

use grt::cpu::{inb, inl, outb, outl};

use crate::Report;

pub fn run(report: &mut Report) {
    // PIC: initialise both controllers (ICW1..4), then mask patterns that all-ones cannot be.
    for (port, value) in [
        (0x20, 0x11),
        (0x21, 0x20),
        (0x21, 0x04),
        (0x21, 0x01),
        (0xa0, 0x11),
        (0xa1, 0x28),
        (0xa1, 0x02),
        (0xa1, 0x01),
        (0x21, 0x5a),
        (0xa1, 0xa5),
    ] {
        outb(port, value);
    }
    let reads = [inb(0x21), inb(0xa1), inb(0x20), inb(0xa0)];
    shown(
        "program the PIC (0x20/0x21/0xa0/0xa1)",
        &reads.map(u32::from),
    );

    // PIT: channel 0 rate generator with count 0x1000, channel 2 square wave, latch channel 0.
    for (port, value) in [
        (0x43, 0x34),
        (0x40, 0x00),
        (0x40, 0x10),
        (0x43, 0xb6),
        (0x42, 0x55),
        (0x42, 0x55),
        (0x43, 0x00),
    ] {
        outb(port, value);
    }
    let reads = [inb(0x40), inb(0x40), inb(0x42), inb(0x43)];
    shown("program the PIT (0x40-0x43)", &reads.map(u32::from));

    // PCI: select bus 0, device 0, function 0, register 0 and write the (read-only) ID word.
    outl(0xcf8, 0x8000_0000);
    outl(0xcfc, 0);
    // The address register holds what was written (as on every PC); the data must be
    // all-ones: no device answers.
    let address = inl(0xcf8);
    let data = inl(0xcfc);
    report.attempt(
        "PCI configuration (0xcf8/0xcfc)",
        data == 0xffff_ffff,
        format_args!("address {address:#x}, data {data:#x}"),
    );

    // CMOS: status register A, then the shutdown-status byte set to 0 (normal reset).
    outb(0x70, 0x0a);
    let status_a = inb(0x71);
    outb(0x70, 0x0f);
    outb(0x71, 0x00);
    let shutdown = inb(0x71);
    let index = inb(0x70);
    shown(
        "CMOS (0x70/0x71)",
        &[status_a, shutdown, index].map(u32::from),
    );
}

/// A device model's answer: shown, not judged.
fn shown(what: &str, reads: &[u32]) {
    grt::println!("attacker: {what}: the guest's own model (read back {reads:x?})");
}
