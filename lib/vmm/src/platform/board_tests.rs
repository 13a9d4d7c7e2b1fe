//! The board's wiring: a driver's programming sequences, followed from the device to the
//! vector the vCPU takes.

use super::*;

const TSC_HZ: u64 = 2_000_000_000;

fn board() -> Board {
    Board::new(BoardConfig {
        ram_bytes: 64 << 20,
        tsc_hz: TSC_HZ,
        rtc_unix_seconds: 1_767_225_600,
        x2apic: false,
    })
}

/// The 8259 pair initialised as Linux does: master at 0x20, slave at 0x28, every line masked
/// but `unmasked` (master lines).
fn init_pic(b: &mut Board, master_mask: u8) {
    for (port, value) in [
        (0x20, 0x11),
        (0x21, 0x20),
        (0x21, 0x04),
        (0x21, 0x01),
        (0xa0, 0x11),
        (0xa1, 0x28),
        (0xa1, 0x02),
        (0xa1, 0x01),
        (0x21, u32::from(master_mask)),
        (0xa1, 0xff),
    ] {
        b.port_write(0, port, 1, value);
    }
}

/// PIT channel 0 in mode 2 with `count`.
fn start_pit(b: &mut Board, now: u64, count: u16) {
    b.port_write(now, 0x43, 1, 0x34);
    b.port_write(now, 0x40, 1, u32::from(count & 0xff));
    b.port_write(now, 0x40, 1, u32::from(count >> 8));
}

fn software_enable_apic(b: &mut Board) {
    b.mmio_write(0, 0xfee0_00f0, 4, 0x1ff);
}

/// Follows the board's deadlines until an interrupt waits; when that was.
fn next_interrupt(b: &mut Board) -> u64 {
    for _ in 0..8 {
        let at = b.next_deadline_ns().expect("a timer runs");
        if b.pending(at).is_some() {
            return at;
        }
    }
    panic!("no interrupt after eight deadlines");
}

#[test]
fn clock_converts_both_ways() {
    let c = Clock::new(TSC_HZ);
    assert_eq!(c.ns(2_000_000_000), 1_000_000_000);
    assert_eq!(c.tsc(1_000_000_000), 2_000_000_000);
    assert_eq!(c.tsc(1), 2);
    assert_eq!(
        c.ns(u64::MAX),
        (u128::from(u64::MAX) * 1_000_000_000 / 2_000_000_000) as u64
    );
    assert_eq!(Clock::new(0).tsc_hz(), FALLBACK_TSC_HZ);
    assert_eq!(Clock::new(u64::MAX).tsc(u64::MAX), u64::MAX);
}

#[test]
fn pit_ticks_reach_the_cpu_through_the_8259() {
    let mut b = board();
    init_pic(&mut b, 0xfe);
    // 1193 input clocks: about 1 ms.
    start_pit(&mut b, 0, 1193);
    // Programming the mode raises OUT: the first edge is an interrupt at once.
    assert_eq!(b.acknowledge_external(0), Some(0x20));
    b.port_write(0, 0x20, 1, 0x20);
    assert_eq!(b.pending(0), None);
    let deadline = next_interrupt(&mut b);
    assert!((999_000..=1_001_000).contains(&deadline), "{deadline}");
    assert_eq!(b.acknowledge_external(deadline), Some(0x20));
    // In service until the EOI: nothing more, even after the next tick (the board sees each
    // edge at the deadlines it reported).
    let mut now = deadline;
    while now < 2 * deadline + 10 {
        now = b.next_deadline_ns().unwrap();
        assert_eq!(b.pending(now), None);
    }
    b.port_write(now, 0x20, 1, 0x20);
    assert_eq!(b.pending(now), Some(Interrupt::External(0x20)));
}

#[test]
fn masked_pic_line_stays_quiet() {
    let mut b = board();
    init_pic(&mut b, 0xff);
    start_pit(&mut b, 0, 1193);
    assert_eq!(b.pending(10_000_000), None);
}

#[test]
fn pit_reaches_the_apic_through_ioapic_pin_2() {
    let mut b = board();
    init_pic(&mut b, 0xff);
    software_enable_apic(&mut b);
    // Mask LINT0 (ExtINT) as an APIC-mode kernel does.
    b.mmio_write(0, 0xfee0_0350, 4, 1 << 16);
    // Pin 2: vector 0x30, edge, physical destination 0.
    b.mmio_write(0, 0xfec0_0000, 4, 0x10 + 2 * 2);
    b.mmio_write(0, 0xfec0_0010, 4, 0x30);
    b.mmio_write(0, 0xfec0_0000, 4, 0x10 + 2 * 2 + 1);
    b.mmio_write(0, 0xfec0_0010, 4, 0);
    start_pit(&mut b, 0, 1193);
    // The first edge (the mode write raises OUT), then the first period's.
    assert_eq!(b.acknowledge_external(0), Some(0x30));
    b.mmio_write(0, 0xfee0_00b0, 4, 0);
    let deadline = next_interrupt(&mut b);
    assert!((999_000..=1_001_000).contains(&deadline), "{deadline}");
    assert_eq!(b.pending(deadline), Some(Interrupt::External(0x30)));
    assert_eq!(b.acknowledge_external(deadline), Some(0x30));
    // ISR bit 0x30 set; EOI clears it and the next tick comes through.
    b.mmio_write(deadline, 0xfee0_00b0, 4, 0);
    let next = next_interrupt(&mut b);
    assert!((1_999_000..=2_001_000).contains(&next), "{next}");
}

#[test]
fn ioapic_to_another_cpu_is_not_delivered() {
    let mut b = board();
    software_enable_apic(&mut b);
    b.mmio_write(0, 0xfee0_0350, 4, 1 << 16);
    b.mmio_write(0, 0xfec0_0000, 4, 0x10 + 2 * 2);
    b.mmio_write(0, 0xfec0_0010, 4, 0x30);
    b.mmio_write(0, 0xfec0_0000, 4, 0x10 + 2 * 2 + 1);
    b.mmio_write(0, 0xfec0_0010, 4, 3 << 24);
    start_pit(&mut b, 0, 1193);
    assert_eq!(b.pending(5_000_000), None);
}

#[test]
fn serial_receive_in_loopback_raises_irq_4() {
    let mut b = board();
    init_pic(&mut b, !(1 << 4));
    // Loopback, OUT2, receive interrupt enabled; a byte sent comes back as received.
    b.port_write(0, 0x3fc, 1, 0x18);
    b.port_write(0, 0x3f9, 1, 0x01);
    assert_eq!(b.pending(0), None);
    b.port_write(0, 0x3f8, 1, u32::from(b'z'));
    assert_eq!(b.pending(0), Some(Interrupt::External(0x24)));
    assert_eq!(b.port_read(0, 0x3f8, 1), u32::from(b'z'));
    // The byte was read: the line drops; the 8259 (edge) keeps the request until acknowledged.
    assert_eq!(b.acknowledge_external(0), Some(0x24));
    b.port_write(0, 0x20, 1, 0x20);
    assert_eq!(b.pending(0), None);
    // Nothing reached the console.
    assert!(b.serial.take_output().is_empty());
}

#[test]
fn apic_timer_one_shot() {
    let mut b = board();
    software_enable_apic(&mut b);
    // Divide by 1, vector 0x40 one-shot, 1000 bus clocks (1 us at 1 GHz).
    b.mmio_write(0, 0xfee0_03e0, 4, 0b1011);
    b.mmio_write(0, 0xfee0_0320, 4, 0x40);
    b.mmio_write(0, 0xfee0_0380, 4, 1000);
    assert_eq!(b.next_deadline_ns(), Some(1000));
    assert_eq!(b.pending(999), None);
    assert_eq!(b.pending(1000), Some(Interrupt::External(0x40)));
    assert_eq!(b.acknowledge_external(1000), Some(0x40));
    assert_eq!(b.next_deadline_ns(), None);
}

#[test]
fn unknown_mmio_reads_ones_and_reports_each_page_once() {
    let mut b = board();
    assert_eq!(
        b.mmio_read(0, 0xc000_0000, 4),
        (0xffff_ffff, BoardEvent::UnknownPage(0xc000_0000))
    );
    assert_eq!(b.mmio_read(0, 0xc000_0ff8, 8), (u64::MAX, BoardEvent::None));
    assert_eq!(b.mmio_write(0, 0xc000_0004, 2, 7), BoardEvent::None);
    assert_eq!(
        b.mmio_write(0, 0xc000_1000, 1, 7),
        BoardEvent::UnknownPage(0xc000_1000)
    );
    for page in 0..200u64 {
        b.mmio_read(0, 0xd000_0000 + page * 0x1000, 1);
    }
    let (reported, beyond) = b.unknown_mmio();
    assert_eq!(reported, MAX_UNKNOWN_PAGES);
    assert!(beyond > 0);
}

#[test]
fn apic_page_moves_and_disappears_with_the_apic() {
    let mut b = board();
    assert_eq!(b.mmio_read(0, 0xfee0_0030, 4).0, u64::from(lapic::VERSION));
    // Disabled in IA32_APIC_BASE: the page is unknown MMIO.
    assert_eq!(b.wrmsr(0, 0x1b, 0xfee0_0000 | 1 << 8), Some(Ok(())));
    assert_eq!(b.mmio_read(0, 0xfee0_0030, 4).0, 0xffff_ffff);
    // The 8259 now reaches the CPU directly.
    init_pic(&mut b, 0xfe);
    start_pit(&mut b, 0, 1193);
    assert_eq!(b.pending(2_000_000), Some(Interrupt::External(0x20)));
    assert_eq!(b.rdmsr(0, 0x10), None);
}

#[test]
fn reset_and_power_off_come_out_as_events() {
    let mut b = board();
    assert_eq!(
        b.port_write(0, 0xcf9, 1, 0x06),
        BoardEvent::Machine(Event::Reset)
    );
    assert_eq!(
        b.port_write(0, 0x64, 1, 0xfe),
        BoardEvent::Machine(Event::Reset)
    );
    // ACPI S5: SLP_TYP 0 with SLP_EN.
    assert_eq!(
        b.port_write(0, 0x604, 2, 1 << 13),
        BoardEvent::Machine(Event::PowerOff)
    );
}

#[test]
fn every_claimed_port_answers_without_panicking() {
    let mut b = board();
    for port in 0..=u16::MAX {
        if !b.claims_port(port) {
            continue;
        }
        for size in [1, 2, 4] {
            b.port_read(7, port, size);
            if !matches!(port, 0xcf9 | 0x64 | 0x604..=0x605) {
                b.port_write(7, port, size, 0xffff_ffff);
            }
        }
    }
    assert!(b.claims_port(0x3f8) && b.claims_port(0x40) && b.claims_port(0x510));
    assert!(!b.claims_port(0xf4));
}

#[test]
fn a_late_sync_still_sees_one_pit_edge() {
    let mut b = board();
    init_pic(&mut b, 0xfe);
    start_pit(&mut b, 0, 1193);
    assert_eq!(b.acknowledge_external(0), Some(0x20));
    b.port_write(0, 0x20, 1, 0x20);
    // Sampled only 2.2 periods later, with the line high both times: one interrupt.
    assert_eq!(b.pending(2_200_000), Some(Interrupt::External(0x20)));
}
