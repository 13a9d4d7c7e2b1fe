//! The APIC timer: one-shot, periodic and TSC-deadline modes, divide values, and the sequences
//! Linux uses to calibrate and drive it.

use super::tests::{enabled, r, w, TSC_HZ};
use super::*;

/// Linux's LOCAL_TIMER_VECTOR.
const TIMER_VECTOR: u32 = 0xec;

fn read_at(a: &mut Lapic, offset: u32, now_ns: u64) -> u32 {
    a.read(u64::from(offset), 4, now_ns) as u32
}

fn write_at(a: &mut Lapic, offset: u32, value: u32, now_ns: u64) {
    a.write(u64::from(offset), 4, u64::from(value), now_ns);
}

/// Takes the pending timer interrupt, if any, and EOIs it.
fn take_timer(a: &mut Lapic, now_ns: u64) -> bool {
    match a.pending_vector(now_ns) {
        Some(v) => {
            assert_eq!(u32::from(v), TIMER_VECTOR);
            a.acknowledge(v);
            a.eoi();
            true
        }
        None => false,
    }
}

#[test]
fn divide_configuration_values() {
    let expected = [
        (0b0000, 2),
        (0b0001, 4),
        (0b0010, 8),
        (0b0011, 16),
        (0b1000, 32),
        (0b1001, 64),
        (0b1010, 128),
        (0b1011, 1),
    ];
    for (config, div) in expected {
        assert_eq!(divisor(config), div, "{config:#b}");
        // Bit 2 is not part of it.
        assert_eq!(divisor(config | 4), div);
    }
    let mut a = enabled();
    w(&mut a, reg::TIMER_DIVIDE, 0xffff_ffff);
    assert_eq!(r(&mut a, reg::TIMER_DIVIDE), 0xb);
}

#[test]
fn one_shot_counts_down_and_fires_once() {
    let mut a = enabled();
    w(&mut a, reg::LVT_TIMER, TIMER_VECTOR);
    w(&mut a, reg::TIMER_DIVIDE, 0x3); // divide by 16: one count is 16 ns at 1 GHz
    write_at(&mut a, reg::TIMER_INITIAL, 1000, 5_000);
    assert_eq!(a.next_deadline_ns(), Some(5_000 + 16_000));
    assert_eq!(read_at(&mut a, reg::TIMER_CURRENT, 5_000), 1000);
    assert_eq!(read_at(&mut a, reg::TIMER_CURRENT, 5_000 + 8_000), 500);
    assert_eq!(read_at(&mut a, reg::TIMER_CURRENT, 5_000 + 15_999), 0);
    assert!(!take_timer(&mut a, 20_999));
    assert!(take_timer(&mut a, 21_000));
    assert_eq!(a.next_deadline_ns(), None);
    assert_eq!(read_at(&mut a, reg::TIMER_CURRENT, 30_000), 0);
    assert_eq!(r(&mut a, reg::TIMER_INITIAL), 1000);
    assert!(!take_timer(&mut a, 1_000_000));
    // A new initial count restarts it; 0 stops it.
    write_at(&mut a, reg::TIMER_INITIAL, 10, 2_000_000);
    assert_eq!(a.next_deadline_ns(), Some(2_000_160));
    write_at(&mut a, reg::TIMER_INITIAL, 0, 2_000_001);
    assert_eq!(a.next_deadline_ns(), None);
    assert!(!take_timer(&mut a, 3_000_000));
}

#[test]
fn periodic_reloads_and_catches_up_once() {
    let mut a = enabled();
    w(&mut a, reg::LVT_TIMER, lvt::PERIODIC | TIMER_VECTOR);
    w(&mut a, reg::TIMER_DIVIDE, 0xb); // divide by 1
    write_at(&mut a, reg::TIMER_INITIAL, 1_000_000, 0); // 1 ms
    for tick in 1..=5u64 {
        assert_eq!(a.next_deadline_ns(), Some(tick * 1_000_000));
        assert!(!take_timer(&mut a, tick * 1_000_000 - 1));
        assert_eq!(
            read_at(&mut a, reg::TIMER_CURRENT, tick * 1_000_000 - 250_000),
            250_000
        );
        assert!(take_timer(&mut a, tick * 1_000_000));
    }
    // The host was late by 3.5 periods: one interrupt, then back on the 1 ms grid.
    assert!(take_timer(&mut a, 8_500_000));
    assert!(!take_timer(&mut a, 8_600_000));
    assert_eq!(a.next_deadline_ns(), Some(9_000_000));
    assert_eq!(read_at(&mut a, reg::TIMER_CURRENT, 8_600_000), 400_000);
}

#[test]
fn periodic_period_has_a_floor() {
    let mut a = enabled();
    w(&mut a, reg::LVT_TIMER, lvt::PERIODIC | TIMER_VECTOR);
    w(&mut a, reg::TIMER_DIVIDE, 0xb);
    write_at(&mut a, reg::TIMER_INITIAL, 10, 0);
    assert_eq!(a.next_deadline_ns(), Some(MIN_PERIODIC_NS));
    assert!(read_at(&mut a, reg::TIMER_CURRENT, 1) <= 10);
    assert!(take_timer(&mut a, MIN_PERIODIC_NS));
    assert_eq!(a.next_deadline_ns(), Some(2 * MIN_PERIODIC_NS));
}

#[test]
fn masked_timer_counts_but_delivers_nothing() {
    let mut a = enabled();
    w(
        &mut a,
        reg::LVT_TIMER,
        lvt::MASKED | lvt::PERIODIC | TIMER_VECTOR,
    );
    w(&mut a, reg::TIMER_DIVIDE, 0xb);
    write_at(&mut a, reg::TIMER_INITIAL, 1_000_000, 0);
    assert_eq!(read_at(&mut a, reg::TIMER_CURRENT, 300_000), 700_000);
    assert_eq!(a.next_deadline_ns(), Some(1_000_000));
    assert!(!take_timer(&mut a, 1_500_000));
    assert_eq!(a.next_deadline_ns(), Some(2_000_000));
    // Unmasked, the next expiry is delivered; the masked ones are not remembered.
    write_at(
        &mut a,
        reg::LVT_TIMER,
        lvt::PERIODIC | TIMER_VECTOR,
        1_600_000,
    );
    assert!(!take_timer(&mut a, 1_900_000));
    assert!(take_timer(&mut a, 2_000_000));
}

#[test]
fn divide_change_keeps_the_current_count() {
    let mut a = enabled();
    w(&mut a, reg::LVT_TIMER, TIMER_VECTOR);
    w(&mut a, reg::TIMER_DIVIDE, 0xb);
    write_at(&mut a, reg::TIMER_INITIAL, 1000, 0);
    write_at(&mut a, reg::TIMER_DIVIDE, 0x0, 400); // now divide by 2
    assert_eq!(read_at(&mut a, reg::TIMER_CURRENT, 400), 600);
    assert_eq!(a.next_deadline_ns(), Some(400 + 1200));
    assert_eq!(read_at(&mut a, reg::TIMER_CURRENT, 1000), 300);
    assert!(take_timer(&mut a, 1600));
}

#[test]
fn one_shot_and_periodic_trade_places_at_the_next_expiry() {
    let mut a = enabled();
    w(&mut a, reg::LVT_TIMER, TIMER_VECTOR);
    w(&mut a, reg::TIMER_DIVIDE, 0xb);
    write_at(&mut a, reg::TIMER_INITIAL, 500_000, 0);
    write_at(
        &mut a,
        reg::LVT_TIMER,
        lvt::PERIODIC | TIMER_VECTOR,
        100_000,
    );
    assert!(take_timer(&mut a, 500_000));
    assert_eq!(a.next_deadline_ns(), Some(1_000_000));
    write_at(&mut a, reg::LVT_TIMER, TIMER_VECTOR, 600_000);
    assert!(take_timer(&mut a, 1_000_000));
    assert_eq!(a.next_deadline_ns(), None);
    // Mode 3 is reserved: the count does not run.
    write_at(&mut a, reg::LVT_TIMER, 3 << 17 | TIMER_VECTOR, 2_000_000);
    write_at(&mut a, reg::TIMER_INITIAL, 100, 2_000_000);
    assert_eq!(a.next_deadline_ns(), None);
    assert_eq!(read_at(&mut a, reg::TIMER_CURRENT, 2_000_010), 0);
}

#[test]
fn tsc_deadline_mode() {
    let mut a = enabled();
    // Outside TSC-deadline mode the MSR reads 0 and ignores writes.
    assert_eq!(a.wrmsr(msr::TSC_DEADLINE, 12345, 0), Ok(()));
    assert_eq!(a.rdmsr(msr::TSC_DEADLINE, 0), Ok(0));
    // Entering the mode stops a count and clears the initial count.
    w(&mut a, reg::TIMER_INITIAL, 1_000_000);
    w(&mut a, reg::LVT_TIMER, lvt::TSC_DEADLINE | TIMER_VECTOR);
    assert_eq!(a.timer_mode(), TimerMode::TscDeadline);
    assert_eq!(
        (r(&mut a, reg::TIMER_INITIAL), a.next_deadline_ns()),
        (0, None)
    );
    // The initial count is ignored and the current count reads 0.
    w(&mut a, reg::TIMER_INITIAL, 1_000_000);
    assert_eq!(r(&mut a, reg::TIMER_INITIAL), 0);
    // At 2.5 GHz, 1 ms after t = 4 ms is TSC 12,500,000.
    let now = 4_000_000;
    let deadline = 5_000_000 * TSC_HZ / 1_000_000_000;
    a.wrmsr(msr::TSC_DEADLINE, deadline, now).unwrap();
    assert_eq!(a.rdmsr(msr::TSC_DEADLINE, now), Ok(deadline));
    assert_eq!(a.next_deadline_ns(), Some(5_000_000));
    assert_eq!(read_at(&mut a, reg::TIMER_CURRENT, now), 0);
    assert!(!take_timer(&mut a, 4_999_999));
    assert!(take_timer(&mut a, 5_000_000));
    // Fired: the MSR reads 0, nothing is armed.
    assert_eq!(a.rdmsr(msr::TSC_DEADLINE, 5_000_000), Ok(0));
    assert_eq!(a.next_deadline_ns(), None);
    // A deadline in the past fires at once; 0 disarms.
    a.wrmsr(msr::TSC_DEADLINE, 1, 6_000_000).unwrap();
    assert!(take_timer(&mut a, 6_000_000));
    a.wrmsr(msr::TSC_DEADLINE, u64::MAX, 6_000_000).unwrap();
    assert!(a.next_deadline_ns().is_some());
    a.wrmsr(msr::TSC_DEADLINE, 0, 6_000_000).unwrap();
    assert_eq!(a.next_deadline_ns(), None);
    // Leaving the mode clears the deadline.
    a.wrmsr(msr::TSC_DEADLINE, deadline * 2, 6_000_000).unwrap();
    w(&mut a, reg::LVT_TIMER, TIMER_VECTOR);
    assert_eq!(a.next_deadline_ns(), None);
    w(&mut a, reg::LVT_TIMER, lvt::TSC_DEADLINE | TIMER_VECTOR);
    assert_eq!(a.rdmsr(msr::TSC_DEADLINE, 6_000_000), Ok(0));
    // A disabled APIC reads 0 and ignores the MSR.
    a.wrmsr(msr::APIC_BASE, 0xfee0_0000, 0).unwrap();
    a.wrmsr(msr::TSC_DEADLINE, deadline * 2, 6_000_000).unwrap();
    assert_eq!(a.rdmsr(msr::TSC_DEADLINE, 6_000_000), Ok(0));
    assert_eq!(a.next_deadline_ns(), None);
}

#[test]
fn tsc_deadline_with_an_offset_tsc() {
    let mut a = enabled();
    a.set_tsc_offset(1_000_000_000);
    w(&mut a, reg::LVT_TIMER, lvt::TSC_DEADLINE | TIMER_VECTOR);
    // Guest TSC at 1 ms is 2,500,000 + 10^9; 2,500 cycles later is 1 µs later.
    a.wrmsr(msr::TSC_DEADLINE, 1_002_502_500, 1_000_000)
        .unwrap();
    assert_eq!(a.next_deadline_ns(), Some(1_001_000));
}

#[test]
fn linux_calibration_against_the_pit() {
    // calibrate_APIC_clock without a known frequency: the LAPIC counts masked in periodic
    // mode from 0xffffffff / 16 at divide-by-16 while the PIT ticks LAPIC_CAL_LOOPS (HZ/10)
    // times; lapic_timer_period = (t1 - t2) * 16 / LAPIC_CAL_LOOPS counts per jiffy.
    for bus_hz in [DEFAULT_BUS_HZ, 200_000_000, 66_666_666] {
        const HZ: u64 = 250;
        const LOOPS: u64 = HZ / 10;
        let jiffy_ns = 1_000_000_000 / HZ;
        let mut a = Lapic::new(Config {
            bus_hz,
            ..Config::new(TSC_HZ)
        });
        write_at(&mut a, reg::SVR, 0x1ff, 0);
        let start = 123_456_789;
        write_at(
            &mut a,
            reg::LVT_TIMER,
            lvt::MASKED | lvt::PERIODIC | TIMER_VECTOR,
            start,
        );
        let tdcr = read_at(&mut a, reg::TIMER_DIVIDE, start) & !0xf;
        write_at(&mut a, reg::TIMER_DIVIDE, tdcr | 0x3, start);
        write_at(&mut a, reg::TIMER_INITIAL, 0xffff_ffff / 16, start);
        // The PIT interrupts on a jiffy grid not aligned with the LAPIC start.
        let first = start + 1_234_567;
        let t1 = read_at(&mut a, reg::TIMER_CURRENT, first);
        let t2 = read_at(&mut a, reg::TIMER_CURRENT, first + LOOPS * jiffy_ns);
        let period = u64::from(t1 - t2) * 16 / LOOPS;
        let expected = bus_hz / HZ;
        assert!(
            period.abs_diff(expected) <= 16,
            "{bus_hz}: {period} vs {expected}"
        );
        assert_eq!(a.pending_vector(first + LOOPS * jiffy_ns), None, "masked");

        // Then the clockevent in periodic mode: one interrupt per jiffy.
        let now = first + LOOPS * jiffy_ns;
        write_at(&mut a, reg::LVT_TIMER, lvt::PERIODIC | TIMER_VECTOR, now);
        write_at(&mut a, reg::TIMER_DIVIDE, tdcr | 0x3, now);
        write_at(&mut a, reg::TIMER_INITIAL, (period / 16) as u32, now);
        let mut fired = 0;
        for step in 1..=1000 {
            if take_timer(&mut a, now + step * jiffy_ns / 10) {
                fired += 1;
            }
        }
        assert_eq!(fired, 100, "{bus_hz}: 100 jiffies in 100 jiffies");
    }
}

#[test]
fn linux_one_shot_clockevent() {
    // lapic_timer_set_oneshot then lapic_next_event(delta) repeatedly.
    let mut a = enabled();
    w(&mut a, reg::LVT_TIMER, TIMER_VECTOR);
    w(&mut a, reg::TIMER_DIVIDE, 0x3);
    let mut now = 1_000_000;
    for delta in [1u32, 100, 62_500, 1_000_000] {
        write_at(&mut a, reg::TIMER_INITIAL, delta, now);
        let due = now + u64::from(delta) * 16;
        assert_eq!(a.next_deadline_ns(), Some(due));
        assert!(!take_timer(&mut a, due - 1));
        assert!(take_timer(&mut a, due));
        now = due + 7;
    }
    // Shutdown: masked, count 0.
    write_at(&mut a, reg::LVT_TIMER, lvt::MASKED | TIMER_VECTOR, now);
    write_at(&mut a, reg::TIMER_INITIAL, 0, now);
    assert_eq!(a.next_deadline_ns(), None);
}

#[test]
fn linux_tsc_deadline_clockevent() {
    // lapic_next_deadline: wrmsr(TSC_DEADLINE, rdtsc() + delta * TSC_DIVISOR (8)).
    let mut a = Lapic::new(Config::new(3_000_000_000));
    w(&mut a, reg::SVR, 0x1ff);
    w(&mut a, reg::LVT_TIMER, lvt::TSC_DEADLINE | TIMER_VECTOR);
    let mut now = 50_000_000;
    for delta in [10u64, 375_000, 3_000_000] {
        let tsc = now * 3;
        a.wrmsr(msr::TSC_DEADLINE, tsc + delta * 8, now).unwrap();
        let due = now + (delta * 8).div_ceil(3);
        assert_eq!(a.next_deadline_ns(), Some(due));
        assert!(!take_timer(&mut a, due - 1));
        assert!(take_timer(&mut a, due));
        now = due + 1000;
    }
}

#[test]
fn software_disable_stops_delivery_not_the_count() {
    let mut a = enabled();
    w(&mut a, reg::LVT_TIMER, TIMER_VECTOR);
    w(&mut a, reg::TIMER_DIVIDE, 0xb);
    write_at(&mut a, reg::TIMER_INITIAL, 1000, 0);
    write_at(&mut a, reg::SVR, 0xff, 100);
    assert_eq!(read_at(&mut a, reg::TIMER_CURRENT, 500), 500);
    assert!(!take_timer(&mut a, 1000));
    assert_eq!(a.next_deadline_ns(), None);
}
