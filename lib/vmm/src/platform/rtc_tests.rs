use super::calendar::civil_from_days;
use super::*;

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;
/// 2024-02-29 13:45:30 UTC, a Thursday.
const LEAP_DAY: i64 = 1_709_214_330;

fn cmos_read(rtc: &mut Rtc, now: u64, index: u8) -> u8 {
    rtc.write(now, INDEX, 1, u32::from(index));
    rtc.read(now, DATA, 1) as u8
}

fn cmos_write(rtc: &mut Rtc, now: u64, index: u8, value: u8) {
    rtc.write(now, INDEX, 1, u32::from(index));
    rtc.write(now, DATA, 1, u32::from(value));
}

/// (century, year, month, day, hour, minute, second) as read.
fn read_clock(rtc: &mut Rtc, now: u64) -> [u8; 7] {
    [
        reg::CENTURY,
        reg::YEAR,
        reg::MONTH,
        reg::DAY_OF_MONTH,
        reg::HOURS,
        reg::MINUTES,
        reg::SECONDS,
    ]
    .map(|index| cmos_read(rtc, now, index))
}

#[test]
fn reads_the_wall_clock_in_bcd_24_hour() {
    let mut rtc = Rtc::new(LEAP_DAY);
    assert_eq!(
        read_clock(&mut rtc, 0),
        [0x20, 0x24, 0x02, 0x29, 0x13, 0x45, 0x30]
    );
    assert_eq!(cmos_read(&mut rtc, 0, reg::DAY_OF_WEEK), 5);
    assert_eq!(cmos_read(&mut rtc, 0, reg::A), 0x26);
    assert_eq!(cmos_read(&mut rtc, 0, reg::B), 0x02);
    assert_eq!(cmos_read(&mut rtc, 0, reg::D), 0x80);
}

#[test]
fn binary_and_12_hour_forms() {
    let mut rtc = Rtc::new(LEAP_DAY);
    cmos_write(&mut rtc, 0, reg::B, b::BINARY | b::HOUR_24);
    assert_eq!(read_clock(&mut rtc, 0), [20, 24, 2, 29, 13, 45, 30]);
    cmos_write(&mut rtc, 0, reg::B, b::BINARY);
    assert_eq!(cmos_read(&mut rtc, 0, reg::HOURS), 0x80 | 1, "1 PM");
    cmos_write(&mut rtc, 0, reg::B, 0);
    let midnight = LEAP_DAY - (13 * 3600 + 45 * 60 + 30);
    let mut rtc = Rtc::new(midnight);
    cmos_write(&mut rtc, 0, reg::B, 0);
    assert_eq!(cmos_read(&mut rtc, 0, reg::HOURS), 0x12, "12 AM");
    assert_eq!(
        cmos_read(&mut rtc, 12 * 3600 * S, reg::HOURS),
        0x92,
        "12 PM"
    );
    assert_eq!(
        cmos_read(&mut rtc, 23 * 3600 * S, reg::HOURS),
        0x91,
        "11 PM"
    );
}

#[test]
fn time_advances_with_guest_time_across_dates() {
    let mut rtc = Rtc::new(LEAP_DAY);
    assert_eq!(read_clock(&mut rtc, 29 * S + 999 * MS)[6], 0x59);
    assert_eq!(
        read_clock(&mut rtc, 30 * S),
        [0x20, 0x24, 0x02, 0x29, 0x13, 0x46, 0x00]
    );
    // 2024-03-01 00:00:00 is 10h14m30s after the start.
    assert_eq!(
        read_clock(&mut rtc, (10 * 3600 + 14 * 60 + 30) * S),
        [0x20, 0x24, 0x03, 0x01, 0, 0, 0]
    );
    // 1999-12-31 23:59:59 to 2000-01-01.
    let mut rtc = Rtc::new(946_684_799);
    assert_eq!(
        read_clock(&mut rtc, 0),
        [0x19, 0x99, 0x12, 0x31, 0x23, 0x59, 0x59]
    );
    assert_eq!(
        read_clock(&mut rtc, S),
        [0x20, 0x00, 0x01, 0x01, 0x00, 0x00, 0x00]
    );
    assert_eq!(cmos_read(&mut rtc, S, reg::DAY_OF_WEEK), 7, "a Saturday");
}

#[test]
fn uip_is_set_for_244_us_before_each_update() {
    let mut rtc = Rtc::new(LEAP_DAY);
    let window_start = S - 244_140;
    assert_eq!(cmos_read(&mut rtc, window_start - 1, reg::A) & a::UIP, 0);
    assert_eq!(cmos_read(&mut rtc, window_start, reg::A) & a::UIP, a::UIP);
    // During the window the registers still hold the old second.
    assert_eq!(cmos_read(&mut rtc, S - 1, reg::SECONDS), 0x30);
    assert_eq!(cmos_read(&mut rtc, S, reg::A) & a::UIP, 0);
    assert_eq!(cmos_read(&mut rtc, S, reg::SECONDS), 0x31);
}

#[test]
fn linux_read_on_the_falling_edge_of_uip() {
    // The classic get_cmos_time: wait for UIP to rise, then to fall, then read.
    let mut rtc = Rtc::new(LEAP_DAY);
    let mut now = 300 * MS;
    while cmos_read(&mut rtc, now, reg::A) & a::UIP == 0 {
        now += 10_000;
    }
    let rose = now;
    while cmos_read(&mut rtc, now, reg::A) & a::UIP != 0 {
        now += 10_000;
    }
    assert!(rose > S - 244_140 - 10_000 && rose <= S - 244_140 + 10_000);
    assert!((S..S + 10_000).contains(&now), "UIP fell at {now}");
    assert_eq!(
        read_clock(&mut rtc, now),
        [0x20, 0x24, 0x02, 0x29, 0x13, 0x45, 0x31]
    );
}

#[test]
fn linux_set_time_with_divider_reset() {
    // mc146818_set_time: SET, divider reset, the fields, then B and A restored.
    let mut rtc = Rtc::new(LEAP_DAY);
    let t = 1_234 * MS;
    let control = cmos_read(&mut rtc, t, reg::B);
    cmos_write(&mut rtc, t, reg::B, control | b::SET);
    let freq_select = cmos_read(&mut rtc, t, reg::A);
    cmos_write(&mut rtc, t, reg::A, freq_select | 0x70);
    for (index, value) in [
        (reg::YEAR, 0x30),
        (reg::MONTH, 0x06),
        (reg::DAY_OF_MONTH, 0x15),
        (reg::HOURS, 0x08),
        (reg::MINUTES, 0x00),
        (reg::SECONDS, 0x00),
        (reg::CENTURY, 0x20),
    ] {
        cmos_write(&mut rtc, t, index, value);
    }
    // Stopped: the registers hold what was written, however long it takes.
    assert_eq!(
        read_clock(&mut rtc, t + 3 * S),
        [0x20, 0x30, 0x06, 0x15, 0x08, 0x00, 0x00]
    );
    let t = t + 3 * S;
    cmos_write(&mut rtc, t, reg::B, control);
    cmos_write(&mut rtc, t, reg::A, freq_select);
    assert_eq!(read_clock(&mut rtc, t + 499 * MS)[6], 0x00);
    assert_eq!(
        read_clock(&mut rtc, t + 500 * MS),
        [0x20, 0x30, 0x06, 0x15, 0x08, 0x00, 0x01]
    );
    assert_eq!(read_clock(&mut rtc, t + 1500 * MS)[6], 0x02);
    assert_eq!(
        cmos_read(&mut rtc, t + 1500 * MS, reg::DAY_OF_WEEK),
        7,
        "2030-06-15 is a Saturday"
    );
}

#[test]
fn set_bit_freezes_and_resumes_on_the_same_phase() {
    let mut rtc = Rtc::new(LEAP_DAY);
    cmos_write(&mut rtc, 1500 * MS, reg::B, b::HOUR_24 | b::SET);
    assert_eq!(cmos_read(&mut rtc, 10 * S, reg::SECONDS), 0x31);
    assert_eq!(
        cmos_read(&mut rtc, 10 * S, reg::A) & a::UIP,
        0,
        "no update while SET"
    );
    cmos_write(&mut rtc, 10_200 * MS, reg::B, b::HOUR_24);
    assert_eq!(cmos_read(&mut rtc, 10_999 * MS, reg::SECONDS), 0x31);
    assert_eq!(cmos_read(&mut rtc, 11 * S, reg::SECONDS), 0x32);
}

#[test]
fn writing_a_field_while_running_sets_it() {
    let mut rtc = Rtc::new(LEAP_DAY);
    cmos_write(&mut rtc, 200 * MS, reg::MINUTES, 0x10);
    assert_eq!(
        read_clock(&mut rtc, 300 * MS),
        [0x20, 0x24, 0x02, 0x29, 0x13, 0x10, 0x30]
    );
    assert_eq!(
        cmos_read(&mut rtc, S, reg::SECONDS),
        0x31,
        "the phase is kept"
    );
}

#[test]
fn set_bit_clears_uie() {
    let mut rtc = Rtc::new(LEAP_DAY);
    cmos_write(&mut rtc, 0, reg::B, b::SET | b::UIE | b::HOUR_24);
    assert_eq!(cmos_read(&mut rtc, 0, reg::B), b::SET | b::HOUR_24);
}

#[test]
fn flags_are_set_without_interrupts_and_cleared_by_reading_c() {
    let mut rtc = Rtc::new(LEAP_DAY);
    assert_eq!(rtc.next_deadline_ns(), None, "nothing enabled: no wake-ups");
    let c = cmos_read(&mut rtc, 1500 * MS, reg::C);
    assert_eq!(c, c::PF | c::UF, "1024 Hz periodic and an update, no IRQF");
    assert!(!rtc.irq_level());
    assert_eq!(cmos_read(&mut rtc, 1500 * MS, reg::C), 0);
    cmos_write(&mut rtc, 1500 * MS, reg::C, 0xff);
    cmos_write(&mut rtc, 1500 * MS, reg::D, 0);
    assert_eq!(cmos_read(&mut rtc, 1500 * MS, reg::D), D_VRT);
    cmos_write(&mut rtc, 1500 * MS, reg::A, 0xa6);
    assert_eq!(
        cmos_read(&mut rtc, 1500 * MS, reg::A),
        0x26,
        "UIP is read-only"
    );
}

#[test]
fn periodic_interrupt_at_each_rate() {
    for (rate, hz) in [(3u8, 8192u64), (1, 256), (2, 128), (6, 1024), (15, 2)] {
        let mut rtc = Rtc::new(LEAP_DAY);
        cmos_write(&mut rtc, 0, reg::A, 0x20 | rate);
        cmos_write(&mut rtc, 0, reg::B, b::PIE | b::HOUR_24);
        cmos_read(&mut rtc, 0, reg::C);
        let mut interrupts = 0;
        // An interrupt handler that reads C at each rising edge, for one second.
        while let Some(deadline) = rtc.next_deadline_ns() {
            if deadline > S {
                break;
            }
            rtc.advance(deadline);
            assert!(
                rtc.irq_level(),
                "rate {rate}: no interrupt at its deadline {deadline}"
            );
            let c = cmos_read(&mut rtc, deadline, reg::C);
            assert_eq!(c & (c::IRQF | c::PF), c::IRQF | c::PF);
            assert!(!rtc.irq_level());
            interrupts += 1;
        }
        assert_eq!(interrupts, hz, "rate {rate}");
    }
}

#[test]
fn the_line_stays_high_until_c_is_read() {
    let mut rtc = Rtc::new(LEAP_DAY);
    cmos_write(&mut rtc, 0, reg::B, b::PIE | b::HOUR_24);
    rtc.advance(5 * MS);
    assert!(rtc.irq_level());
    assert_eq!(rtc.next_deadline_ns(), None);
    rtc.advance(50 * MS);
    assert!(rtc.irq_level());
    cmos_read(&mut rtc, 50 * MS, reg::C);
    assert!(!rtc.irq_level());
    // Disabling PIE with PF pending drops the line too (IRQF = PF & PIE).
    rtc.advance(60 * MS);
    assert!(rtc.irq_level());
    cmos_write(&mut rtc, 60 * MS, reg::B, b::HOUR_24);
    assert!(!rtc.irq_level());
}

#[test]
fn update_ended_interrupt_each_second() {
    let mut rtc = Rtc::new(LEAP_DAY);
    cmos_write(&mut rtc, 100 * MS, reg::B, b::UIE | b::HOUR_24);
    assert_eq!(rtc.next_deadline_ns(), Some(S));
    rtc.advance(S);
    assert!(rtc.irq_level());
    assert_eq!(cmos_read(&mut rtc, S, reg::C) & !c::PF, c::IRQF | c::UF);
    assert_eq!(rtc.next_deadline_ns(), Some(2 * S));
}

#[test]
fn alarm_interrupt_at_the_matching_second() {
    let mut rtc = Rtc::new(LEAP_DAY);
    cmos_write(&mut rtc, 0, reg::HOURS_ALARM, 0x13);
    cmos_write(&mut rtc, 0, reg::MINUTES_ALARM, 0x46);
    cmos_write(&mut rtc, 0, reg::SECONDS_ALARM, 0x05);
    cmos_write(&mut rtc, 0, reg::B, b::AIE | b::HOUR_24);
    assert_eq!(rtc.next_deadline_ns(), Some(35 * S));
    rtc.advance(35 * S - 1);
    assert!(!rtc.irq_level());
    rtc.advance(35 * S);
    assert!(rtc.irq_level());
    assert_eq!(
        cmos_read(&mut rtc, 35 * S, reg::C) & (c::IRQF | c::AF),
        c::IRQF | c::AF
    );
    // The same time tomorrow.
    assert_eq!(rtc.next_deadline_ns(), Some(35 * S + 86_400 * S));
}

#[test]
fn alarm_dont_care_fields() {
    let mut rtc = Rtc::new(LEAP_DAY);
    // Every hour at minute 0, second 0: 14:00:00 is 14m30s ahead.
    cmos_write(&mut rtc, 0, reg::HOURS_ALARM, 0xc0);
    cmos_write(&mut rtc, 0, reg::MINUTES_ALARM, 0x00);
    cmos_write(&mut rtc, 0, reg::SECONDS_ALARM, 0x00);
    cmos_write(&mut rtc, 0, reg::B, b::AIE | b::HOUR_24);
    assert_eq!(rtc.next_deadline_ns(), Some((14 * 60 + 30) * S));
    // All don't care: every second.
    cmos_write(&mut rtc, 0, reg::MINUTES_ALARM, 0xff);
    cmos_write(&mut rtc, 0, reg::SECONDS_ALARM, 0xff);
    assert_eq!(rtc.next_deadline_ns(), Some(S));
    // An alarm no time matches never fires.
    cmos_write(&mut rtc, 0, reg::SECONDS_ALARM, 0x61);
    assert_eq!(rtc.next_deadline_ns(), None);
}

#[test]
fn alarm_is_caught_up_after_a_long_gap() {
    let mut rtc = Rtc::new(LEAP_DAY);
    cmos_write(&mut rtc, 0, reg::HOURS_ALARM, 0x02);
    cmos_write(&mut rtc, 0, reg::MINUTES_ALARM, 0x00);
    cmos_write(&mut rtc, 0, reg::SECONDS_ALARM, 0x00);
    // 13 hours on (02:45:30 the next day) 02:00:00 has passed.
    assert_eq!(cmos_read(&mut rtc, 13 * 3600 * S, reg::C) & c::AF, c::AF);
    assert_eq!(cmos_read(&mut rtc, 14 * 3600 * S, reg::C) & c::AF, 0);
}

#[test]
fn alarm_in_12_hour_binary_form() {
    let mut rtc = Rtc::new(LEAP_DAY);
    cmos_write(&mut rtc, 0, reg::B, b::BINARY | b::AIE);
    cmos_write(&mut rtc, 0, reg::HOURS_ALARM, 0x80 | 2); // 2 PM.
    cmos_write(&mut rtc, 0, reg::MINUTES_ALARM, 0);
    cmos_write(&mut rtc, 0, reg::SECONDS_ALARM, 0);
    assert_eq!(rtc.next_deadline_ns(), Some((14 * 60 + 30) * S));
}

#[test]
fn nvram_and_index_port() {
    let mut rtc = Rtc::new(LEAP_DAY);
    for index in 0x0eu8..0x80 {
        if index == reg::CENTURY {
            continue;
        }
        cmos_write(&mut rtc, 0, index, index ^ 0x5a);
    }
    for index in 0x0eu8..0x80 {
        if index == reg::CENTURY {
            continue;
        }
        // Bit 7 of the index (NMI disable) does not select another byte.
        assert_eq!(cmos_read(&mut rtc, 0, index | 0x80), index ^ 0x5a);
    }
    assert_eq!(rtc.read(0, INDEX, 1), 0xff);
    // A 16-bit write to 0x70 selects and writes; a 16-bit read gives the index port and data.
    rtc.write(0, INDEX, 2, 0x7740);
    assert_eq!(rtc.read(0, INDEX, 2), 0x77ff);
    assert!(Rtc::claims(0x70) && Rtc::claims(0x71) && !Rtc::claims(0x72));
}

#[test]
fn memory_size_bytes_as_qemu_fills_them() {
    let mut rtc = Rtc::with_memory(0, 512 << 20, 1 << 30);
    let mut byte = |index| cmos_read(&mut rtc, 0, index);
    assert_eq!((byte(0x15), byte(0x16)), (0x80, 0x02), "640 KiB");
    assert_eq!(
        (byte(0x17), byte(0x18)),
        (0xff, 0xff),
        "capped at 65535 KiB"
    );
    assert_eq!((byte(0x30), byte(0x31)), (0xff, 0xff));
    assert_eq!(
        (byte(0x34), byte(0x35)),
        (0x00, 0x1f),
        "7936 x 64 KiB above 16 MiB"
    );
    assert_eq!(
        (byte(0x5b), byte(0x5c), byte(0x5d)),
        (0x00, 0x40, 0x00),
        "1 GiB above 4 GiB"
    );
    let mut rtc = Rtc::with_memory(0, 8 << 20, 0);
    let mut byte = |index| cmos_read(&mut rtc, 0, index);
    assert_eq!((byte(0x17), byte(0x18)), (0x00, 0x1c), "7168 KiB");
    assert_eq!((byte(0x34), byte(0x35)), (0, 0));
}

#[test]
fn calendar_round_trips() {
    for days in (-800_000i64..3_000_000).step_by(997) {
        let (year, month, day) = civil_from_days(days);
        assert!((1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month));
        assert_eq!(days_from_civil(year, month, day), days);
    }
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    assert_eq!(fields_of(LEAP_DAY).weekday, 5);
}

#[test]
fn invalid_fields_are_clamped_when_the_clock_resumes() {
    let mut rtc = Rtc::new(LEAP_DAY);
    cmos_write(&mut rtc, 0, reg::B, b::SET | b::HOUR_24);
    cmos_write(&mut rtc, 0, reg::MONTH, 0x02);
    cmos_write(&mut rtc, 0, reg::DAY_OF_MONTH, 0x31);
    cmos_write(&mut rtc, 0, reg::SECONDS, 0xff);
    cmos_write(&mut rtc, 0, reg::B, b::HOUR_24);
    assert_eq!(
        read_clock(&mut rtc, 0),
        [0x20, 0x24, 0x02, 0x29, 0x13, 0x45, 0x59]
    );
}

#[test]
fn any_access_is_safe() {
    let mut seed = 0xfeed_beef_0bad_c0deu64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for start in [
        0i64,
        -62_135_596_800,
        253_402_300_799,
        i64::MAX / 2,
        i64::MIN / 2,
    ] {
        let mut rtc = Rtc::with_memory(start, u64::MAX, u64::MAX);
        let mut now = 0u64;
        for _ in 0..30_000 {
            let r = next();
            now = match r % 4 {
                0 => now,
                1 => now.saturating_add((r >> 40) % (2 * S)),
                2 => now.saturating_sub(r >> 50),
                _ => now.saturating_add(r >> 10),
            };
            let port = [INDEX, DATA, 0x72][((r >> 2) % 3) as usize];
            let size = [1, 2, 4, 0, 3][((r >> 5) % 5) as usize];
            if r & (1 << 8) != 0 {
                rtc.write(now, port, size, (r >> 16) as u32);
            } else {
                rtc.read(now, port, size);
            }
            rtc.advance(now);
            rtc.irq_level();
            if let Some(deadline) = rtc.next_deadline_ns() {
                assert!(
                    deadline > rtc.now || rtc.now == u64::MAX,
                    "deadline {deadline} at {}",
                    rtc.now
                );
            }
        }
    }
}
