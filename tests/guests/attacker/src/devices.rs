//! Attempt 2: program devices this guest was not given (PIC, PIT, PCI configuration, CMOS) and
//! read them back. With no device behind a port the reads return all-ones; anything else means
//! a device answered.

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
    verdict(
        report,
        "program the PIC (0x20/0x21/0xa0/0xa1)",
        &reads.map(u32::from),
        0xff,
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
    verdict(
        report,
        "program the PIT (0x40-0x43)",
        &reads.map(u32::from),
        0xff,
    );

    // PCI: select bus 0, device 0, function 0, register 0 and write the (read-only) ID word.
    outl(0xcf8, 0x8000_0000);
    outl(0xcfc, 0);
    let reads = [inl(0xcf8), inl(0xcfc)];
    verdict(
        report,
        "PCI configuration (0xcf8/0xcfc)",
        &reads,
        0xffff_ffff,
    );

    // CMOS: status register A, then the shutdown-status byte set to 0 (normal reset).
    outb(0x70, 0x0a);
    let status_a = inb(0x71);
    outb(0x70, 0x0f);
    outb(0x71, 0x00);
    let shutdown = inb(0x71);
    let index = inb(0x70);
    verdict(
        report,
        "CMOS (0x70/0x71)",
        &[status_a, shutdown, index].map(u32::from),
        0xff,
    );
}

fn verdict(report: &mut Report, what: &str, reads: &[u32], all_ones: u32) {
    let blocked = reads.iter().all(|&r| r == all_ones);
    report.attempt(what, blocked, format_args!("read back {:x?}", reads));
}
