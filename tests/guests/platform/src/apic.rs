//! The APICs: the local APIC's registers, its timer (periodic and one-shot) and self-IPI; the
//! IOAPIC's routing of the PIT and of the UART's receive interrupt.

use grt::cpu::{inb, mmio_read32, mmio_write32, outb, rdtsc, sti_hlt_cli};
use grt::irq::{self, Eoi};

use crate::legacy::{once, periods, start_pit};
use crate::{near, Report};

const LAPIC: u64 = 0xfee0_0000;
const IOAPIC: u64 = 0xfec0_0000;
const PIT_VECTOR: u8 = 0x32;
const TIMER_VECTOR: u8 = 0x40;
const ONE_SHOT_VECTOR: u8 = 0x41;
const IPI_VECTOR: u8 = 0x44;
const UART_VECTOR: u8 = 0x34;
/// The local APIC timer's input clock (KVM's and the vmm-server's: 1 GHz).
const BUS_HZ: u64 = 1_000_000_000;

fn lapic(reg: u64) -> u32 {
    mmio_read32(LAPIC + reg)
}

fn set_lapic(reg: u64, value: u32) {
    mmio_write32(LAPIC + reg, value);
}

fn ioapic(index: u32) -> u32 {
    mmio_write32(IOAPIC, index);
    mmio_read32(IOAPIC + 0x10)
}

fn set_ioapic(index: u32, value: u32) {
    mmio_write32(IOAPIC, index);
    mmio_write32(IOAPIC + 0x10, value);
}

/// Routes IOAPIC `pin` to `vector` (edge, active high, physical destination 0), or masks it.
fn route(pin: u32, vector: u8, on: bool) {
    set_ioapic(0x10 + 2 * pin + 1, 0);
    set_ioapic(
        0x10 + 2 * pin,
        u32::from(vector) | if on { 0 } else { 1 << 16 },
    );
}

/// Sleeps `ms` milliseconds (at most 4,000) in HLT on a one-shot local APIC timer.
pub fn sleep_ms(ms: u64) {
    irq::set_eoi(Eoi::Lapic, 0);
    set_lapic(0xf0, 0x1ff);
    set_lapic(0x3e0, 0b1011);
    set_lapic(0x320, u32::from(ONE_SHOT_VECTOR));
    set_lapic(0x380, (BUS_HZ / 1000 * ms.min(4000)) as u32);
    let _ = once(ONE_SHOT_VECTOR, u64::MAX);
    set_lapic(0x320, 1 << 16);
}

pub fn run(report: &mut Report, tsc_hz: u64) {
    let (id, version) = (lapic(0x20) >> 24, lapic(0x30));
    let base = grt::cpu::rdmsr(0x1b);
    report.check(
        "local apic registers",
        id == 0
            && version & 0xff == 0x14
            && base & !0xfff == 0xfee0_0900 & !0xfff
            && base & (1 << 11) != 0,
        format_args!("id {id}, version {version:#x}, IA32_APIC_BASE {base:#x}"),
    );
    let ioapic_version = ioapic(0x01);
    report.check(
        "ioapic version",
        ioapic_version == 0x0017_0020,
        format_args!("{ioapic_version:#x} (24 pins)"),
    );
    // APIC mode: software-enable, mask LINT0 (the 8259's path), end interrupts at the APIC.
    set_lapic(0xf0, 0x1ff);
    set_lapic(0x350, 1 << 16);
    set_lapic(0x80, 0);
    irq::set_eoi(Eoi::Lapic, 0);
    outb(0x21, 0xff);
    outb(0xa1, 0xff);

    // The PIT through IOAPIC pin 2 (the MADT's override of ISA IRQ 0).
    route(2, PIT_VECTOR, true);
    start_pit(20);
    let got = periods(PIT_VECTOR, 5, 2 * tsc_hz, tsc_hz);
    route(2, PIT_VECTOR, false);
    let period = got.unwrap_or(0);
    report.check(
        "pit through ioapic pin 2",
        near(period, 50_000_000),
        format_args!("period {} us", period / 1000),
    );

    // The local APIC timer, periodic at 20 Hz (divide by 1).
    set_lapic(0x3e0, 0b1011);
    set_lapic(0x320, u32::from(TIMER_VECTOR) | 1 << 17);
    set_lapic(0x380, (BUS_HZ / 20) as u32);
    let got = periods(TIMER_VECTOR, 5, 2 * tsc_hz, tsc_hz);
    set_lapic(0x320, 1 << 16);
    set_lapic(0x380, 0);
    let period = got.unwrap_or(0);
    report.check(
        "local apic timer periodic (20 Hz)",
        near(period, 50_000_000),
        format_args!("period {} us", period / 1000),
    );

    // One-shot, 100 ms: one interrupt, near its time, and no second one.
    set_lapic(0x320, u32::from(ONE_SHOT_VECTOR));
    let start = rdtsc();
    set_lapic(0x380, (BUS_HZ / 10) as u32);
    let got = once(ONE_SHOT_VECTOR, tsc_hz);
    let after_ns = got.map_or(0, |l| (l - start) * 1_000_000_000 / tsc_hz);
    let current = lapic(0x390);
    report.check(
        "local apic timer one-shot (100 ms)",
        got.is_some() && near(after_ns, 100_000_000) && current == 0,
        format_args!("after {} us, current count {current}", after_ns / 1000),
    );

    // Self-IPI through the ICR (shorthand "self", fixed).
    let before = irq::count(IPI_VECTOR);
    set_lapic(0x300, u32::from(IPI_VECTOR) | 1 << 18);
    grt::cpu::sti();
    grt::cpu::cli();
    let ipis = irq::count(IPI_VECTOR) - before;
    report.check("self ipi", ipis == 1, format_args!("{ipis} interrupt(s)"));

    uart_receive(report, tsc_hz);
}

/// COM1 in loopback with the receive interrupt on, routed through IOAPIC pin 4: a byte sent
/// comes back and raises the interrupt. (Nothing can be printed meanwhile: loopback
/// disconnects the line.)
fn uart_receive(report: &mut Report, tsc_hz: u64) {
    route(4, UART_VECTOR, true);
    let before = irq::count(UART_VECTOR);
    outb(0x3fc, 0x18); // loopback, OUT2
    outb(0x3f9, 0x01); // receive-data interrupt
    let iir_idle = inb(0x3fa);
    outb(0x3f8, b'Z');
    let iir_ready = inb(0x3fa);
    let start = rdtsc();
    while irq::count(UART_VECTOR) == before && rdtsc() - start < tsc_hz / 10 {
        sti_hlt_cli();
    }
    let byte = inb(0x3f8);
    let iir_after = inb(0x3fa);
    outb(0x3f9, 0x00);
    outb(0x3fc, 0x03);
    route(4, UART_VECTOR, false);
    let n = irq::count(UART_VECTOR) - before;
    report.check(
        "uart receive interrupt through ioapic pin 4",
        n == 1 && byte == b'Z' && iir_idle & 0xf == 1 && iir_ready & 0xf == 4 && iir_after & 0xf == 1,
        format_args!(
            "{n} interrupt(s), byte {byte:#x}, IIR {iir_idle:#x} -> {iir_ready:#x} -> {iir_after:#x}"
        ),
    );
}
