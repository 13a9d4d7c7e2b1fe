//! The ISA side: fw_cfg, PCI configuration, unknown device memory, the PIT (TSC calibration on
//! channel 2, the tick on channel 0 through the 8259) and the CMOS RTC.

use grt::cpu::{inb, inl, mmio_read32, outb, outl, outw, rdtsc, sti_hlt_cli};
use grt::irq::{self, Eoi};

use crate::{near, Report};

/// The vector of the 8259's IRQ 0 and of the slave's first line.
pub const PIC_BASE: u8 = 0x20;
pub const PIC_SLAVE_BASE: u8 = 0x28;
const PIT_HZ: u64 = 1_193_182;

fn fw_cfg_read(key: u16, out: &mut [u8]) {
    outw(0x510, key);
    for b in out {
        *b = inb(0x511);
    }
}

pub fn fw_cfg(report: &mut Report, memory: u64) {
    let mut signature = [0u8; 4];
    fw_cfg_read(0x00, &mut signature);
    let mut cpus = [0u8; 2];
    fw_cfg_read(0x05, &mut cpus);
    let mut ram = [0u8; 8];
    fw_cfg_read(0x03, &mut ram);
    let (cpus, ram) = (u16::from_le_bytes(cpus), u64::from_le_bytes(ram));
    report.check(
        "fw_cfg read",
        &signature == b"QEMU" && cpus == 1 && ram == memory,
        format_args!(
            "signature {:?}, {cpus} CPU, RAM {ram:#x} (expected {memory:#x})",
            core::str::from_utf8(&signature).unwrap_or("?")
        ),
    );
}

pub fn no_pci_device(report: &mut Report) {
    outl(0xcf8, 0x8000_0000);
    let id = inl(0xcfc);
    report.check(
        "pci: no device",
        id == 0xffff_ffff,
        format_args!("bus 0 device 0 id {id:#x}"),
    );
}

pub fn unknown_mmio(report: &mut Report) {
    let value = mmio_read32(0xd000_0000);
    report.check(
        "unknown mmio reads all-ones",
        value == 0xffff_ffff,
        format_args!("0xd0000000 = {value:#x}"),
    );
}

/// The TSC frequency, measured over 50 ms of PIT channel 2 in mode 0.
pub fn calibrate_tsc(report: &mut Report) -> u64 {
    const COUNT: u64 = PIT_HZ / 20;
    let b = inb(0x61);
    outb(0x61, (b & !0x02) | 0x01);
    outb(0x43, 0b1011_0000);
    outb(0x42, COUNT as u8);
    outb(0x42, (COUNT >> 8) as u8);
    let start = rdtsc();
    let mut polls = 0u32;
    while inb(0x61) & 0x20 == 0 && polls < 10_000_000 {
        polls += 1;
    }
    let hz = (rdtsc() - start) * PIT_HZ / COUNT;
    outb(0x61, b & !0x03);
    report.check(
        "tsc calibrated on pit channel 2",
        polls < 10_000_000 && hz > 1_000_000,
        format_args!("{} kHz", hz / 1000),
    );
    hz.max(1)
}

/// The 8259 pair at vectors 0x20/0x28 with the masks given, reaching the CPU in virtual-wire
/// mode (the local APIC software-enabled, its LINT0 in ExtINT delivery, unmasked: a disabled
/// APIC keeps every LVT entry masked).
pub fn init_pic(master_mask: u8, slave_mask: u8) {
    grt::cpu::mmio_write32(0xfee0_00f0, 0x1ff);
    grt::cpu::mmio_write32(0xfee0_0350, 0x700);
    for (port, value) in [
        (0x20, 0x11),
        (0x21, PIC_BASE),
        (0x21, 0x04),
        (0x21, 0x01),
        (0xa0, 0x11),
        (0xa1, PIC_SLAVE_BASE),
        (0xa1, 0x02),
        (0xa1, 0x01),
        (0x21, master_mask),
        (0xa1, slave_mask),
    ] {
        outb(port, value);
    }
}

/// PIT channel 0 as a rate generator at `hz`.
pub fn start_pit(hz: u64) {
    let count = PIT_HZ / hz;
    outb(0x43, 0x34);
    outb(0x40, count as u8);
    outb(0x40, (count >> 8) as u8);
}

/// Sleeps in HLT until `vector` has come `periods + 2` more times (at most `limit_tsc` TSC
/// ticks); the average period in ns from the second arrival to the last. The first is left
/// out: it may have come from programming the source (the PIT's mode write) or late after it.
/// Each arrival can be late by one tick of the hypervisor's timer; averaging over `periods`
/// spreads that.
pub fn periods(vector: u8, periods: u32, limit_tsc: u64, tsc_hz: u64) -> Option<u64> {
    let start = rdtsc();
    let base = irq::count(vector);
    let mut second = None;
    while irq::count(vector) < base + periods + 2 {
        if rdtsc() - start > limit_tsc {
            return None;
        }
        sti_hlt_cli();
        if second.is_none() && irq::count(vector) >= base + 2 {
            second = Some((irq::last_tsc(vector), irq::count(vector) - base));
        }
    }
    let (first, at) = second?;
    let n = u64::from(irq::count(vector) - base - at);
    Some((irq::last_tsc(vector) - first) * 1_000_000_000 / tsc_hz / n.max(1))
}

/// Sleeps in HLT until `vector` has come once more (at most `limit_tsc` TSC ticks): when.
pub fn once(vector: u8, limit_tsc: u64) -> Option<u64> {
    let start = rdtsc();
    let base = irq::count(vector);
    while irq::count(vector) == base {
        if rdtsc() - start > limit_tsc {
            return None;
        }
        sti_hlt_cli();
    }
    Some(irq::last_tsc(vector))
}

fn pm_timer() -> u32 {
    inl(0x608) & 0x00ff_ffff
}

pub fn pit_through_pic(report: &mut Report, tsc_hz: u64) {
    irq::set_eoi(Eoi::Pic, PIC_SLAVE_BASE);
    init_pic(0xfe, 0xff);
    let pm_start = (pm_timer(), rdtsc());
    start_pit(20);
    let got = periods(PIC_BASE, 5, 2 * tsc_hz, tsc_hz);
    let pm_end = (pm_timer(), rdtsc());
    outb(0x21, 0xff);
    match got {
        Some(period) => {
            report.check(
                "pit periodic through the 8259 (20 Hz)",
                near(period, 50_000_000),
                format_args!("period {} us", period / 1000),
            );
        }
        None => report.check(
            "pit periodic through the 8259 (20 Hz)",
            false,
            format_args!("{} interrupts in a second", irq::count(PIC_BASE)),
        ),
    }
    let pm_ticks = u64::from(pm_end.0.wrapping_sub(pm_start.0) & 0x00ff_ffff);
    let elapsed_ns = (pm_end.1 - pm_start.1) * 1_000_000_000 / tsc_hz;
    let pm_hz = pm_ticks * 1_000_000_000 / elapsed_ns.max(1);
    report.check(
        "acpi pm timer runs at 3.58 MHz",
        near(pm_hz, 3_579_545),
        format_args!("{pm_hz} Hz over {} ms", elapsed_ns / 1_000_000),
    );
}

fn cmos(index: u8) -> u8 {
    outb(0x70, index);
    inb(0x71)
}

fn set_cmos(index: u8, value: u8) {
    outb(0x70, index);
    outb(0x71, value);
}

pub fn rtc(report: &mut Report, tsc_hz: u64) {
    // Wait for no update in progress, then read the date (BCD, as at reset).
    let mut tries = 0;
    while cmos(0x0a) & 0x80 != 0 && tries < 100_000 {
        tries += 1;
    }
    let (year, month, day, century) = (cmos(0x09), cmos(0x08), cmos(0x07), cmos(0x32));
    report.check(
        "rtc date",
        century == 0x20 && year == 0x26 && month == 0x01 && day == 0x01,
        format_args!("{century:02x}{year:02x}-{month:02x}-{day:02x}"),
    );
    // NVRAM keeps what is written.
    set_cmos(0x40, 0x5a);
    let nvram = cmos(0x40);
    report.check("rtc nvram", nvram == 0x5a, format_args!("{nvram:#x}"));
    // Periodic interrupt at 8 Hz (rate 13) on IRQ 8: the slave 8259's line 0.
    irq::set_eoi(Eoi::Pic, PIC_SLAVE_BASE);
    init_pic(0xfb, 0xfe);
    let a = cmos(0x0a);
    set_cmos(0x0a, (a & 0xf0) | 13);
    let b = cmos(0x0b);
    set_cmos(0x0b, b | 0x40);
    let _ = cmos(0x0c);
    let start = rdtsc();
    let base = irq::count(PIC_SLAVE_BASE);
    let mut second = None;
    while irq::count(PIC_SLAVE_BASE) < base + 7 && rdtsc() - start < 3 * tsc_hz {
        sti_hlt_cli();
        // Reading C acknowledges the RTC's interrupt (its line falls).
        let _ = cmos(0x0c);
        if second.is_none() && irq::count(PIC_SLAVE_BASE) >= base + 2 {
            second = Some((
                irq::last_tsc(PIC_SLAVE_BASE),
                irq::count(PIC_SLAVE_BASE) - base,
            ));
        }
    }
    set_cmos(0x0b, b & !0x40);
    let _ = cmos(0x0c);
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    let n = irq::count(PIC_SLAVE_BASE) - base;
    let ok_count = n >= 7;
    let period = match (second, ok_count) {
        (Some((first, at)), true) => {
            (irq::last_tsc(PIC_SLAVE_BASE) - first) * 1_000_000_000 / tsc_hz / u64::from(n - at)
        }
        _ => 0,
    };
    report.check(
        "rtc periodic interrupt (8 Hz) through the slave 8259",
        ok_count && near(period, 125_000_000),
        format_args!("{n} interrupts, period {} us", period / 1000),
    );
}
