use super::*;

/// Guest nanoseconds of `ticks` input clocks.
fn ns(ticks: u64) -> u64 {
    (u128::from(ticks) * 1_000_000_000).div_ceil(u128::from(FREQUENCY_HZ)) as u64
}

fn outb(pit: &mut Pit, now: u64, port: u16, value: u8) {
    pit.write(now, port, 1, u32::from(value));
}

fn inb(pit: &mut Pit, now: u64, port: u16) -> u8 {
    pit.read(now, port, 1) as u8
}

/// Programs `channel` with a control word for `mode` (low then high byte) and `count`.
fn program(pit: &mut Pit, now: u64, channel: u16, mode: u8, count: u16) {
    outb(pit, now, COMMAND, (channel as u8) << 6 | 0x30 | mode << 1);
    outb(pit, now, CHANNEL0 + channel, count as u8);
    outb(pit, now, CHANNEL0 + channel, (count >> 8) as u8);
}

/// Follows IRQ 0 from `start` to `end` as a VMM would (sampling at each deadline) and returns
/// the instants of its rising edges.
fn rising_edges(pit: &mut Pit, start: u64, end: u64) -> Vec<u64> {
    let mut edges = Vec::new();
    pit.advance(start);
    let mut level = pit.irq_level();
    while let Some(deadline) = pit.next_deadline_ns() {
        if deadline > end {
            break;
        }
        assert!(deadline >= start);
        pit.advance(deadline);
        let now_level = pit.irq_level();
        assert_ne!(
            now_level, level,
            "a deadline without a change at {deadline}"
        );
        if now_level {
            edges.push(deadline);
        }
        level = now_level;
    }
    edges
}

#[test]
fn linux_pit_calibrate_tsc_sees_out2_after_the_latch() {
    // arch/x86/kernel/tsc.c pit_calibrate_tsc(latch = 1193182 / 100, ms = 10).
    let mut pit = Pit::new();
    let start = 5_000_000;
    let b = inb(&mut pit, start, PORT_B);
    outb(
        &mut pit,
        start,
        PORT_B,
        (b & !port_b::SPEAKER) | port_b::GATE2,
    );
    outb(&mut pit, start, COMMAND, 0xb0);
    let latch: u16 = 11_931;
    outb(&mut pit, start, CHANNEL2, latch as u8);
    outb(&mut pit, start, CHANNEL2, (latch >> 8) as u8);
    let mut now = start;
    while inb(&mut pit, now, PORT_B) & port_b::OUT2 == 0 {
        now += 100;
        assert!(now < start + 50_000_000, "OUT2 never rose");
    }
    let elapsed = now - start;
    let expected = ns(u64::from(latch));
    assert!(
        elapsed >= expected && elapsed < expected + 100,
        "OUT2 rose after {elapsed} ns, expected {expected}"
    );
    // 9.999 ms: the TSC frequency Linux derives is right to 0.01 ‰.
    assert!((9_999_000..10_000_000).contains(&elapsed));
}

#[test]
fn linux_quick_pit_calibrate_reads_a_falling_msb() {
    // quick_pit_calibrate: channel 2, mode 0, count 0xffff, then pairs of inb(0x42) (LSB, MSB).
    let mut pit = Pit::new();
    outb(&mut pit, 0, PORT_B, port_b::GATE2);
    outb(&mut pit, 0, COMMAND, 0xb0);
    outb(&mut pit, 0, CHANNEL2, 0xff);
    outb(&mut pit, 0, CHANNEL2, 0xff);
    for ticks in [0u64, 1, 255, 256, 1000, 50_000, 65_534] {
        let now = ns(ticks);
        let lsb = inb(&mut pit, now, CHANNEL2);
        let msb = inb(&mut pit, now, CHANNEL2);
        let count = u16::from(msb) << 8 | u16::from(lsb);
        assert_eq!(u64::from(count), 0xffff - ticks, "after {ticks} ticks");
    }
}

#[test]
fn linux_periodic_mode_2_ticks_at_hz() {
    // The i8253 clockevent: control word 0x34, LATCH = (1193182 + HZ/2) / HZ for HZ = 1000.
    let mut pit = Pit::new();
    let latch = 1193;
    program(&mut pit, 1_000, 0, 2, latch);
    let edges = rising_edges(&mut pit, 1_000, 1_000_000_000);
    assert_eq!(edges.len(), 1000, "one interrupt per period for 1 s");
    for (k, edge) in edges.iter().enumerate() {
        assert_eq!(*edge, 1_000 + ns((k as u64 + 1) * u64::from(latch)));
    }
}

#[test]
fn mode_2_out_pulses_low_at_count_one() {
    let mut pit = Pit::new();
    program(&mut pit, 0, 0, 2, 100);
    let status = |pit: &mut Pit, ticks: u64| {
        outb(pit, ns(ticks), COMMAND, 0xe2);
        inb(pit, ns(ticks), CHANNEL0)
    };
    assert_eq!(status(&mut pit, 98) & 0x80, 0x80);
    assert_eq!(
        status(&mut pit, 99) & 0x80,
        0,
        "OUT low while the count is 1"
    );
    assert_eq!(status(&mut pit, 100) & 0x80, 0x80);
    assert_eq!(status(&mut pit, 199) & 0x80, 0);
}

#[test]
fn mode_3_is_a_square_wave() {
    let mut pit = Pit::new();
    program(&mut pit, 0, 0, 3, 1000);
    for (ticks, level) in [
        (0, true),
        (499, true),
        (500, false),
        (999, false),
        (1000, true),
    ] {
        pit.advance(ns(ticks));
        assert_eq!(pit.irq_level(), level, "at {ticks} ticks");
    }
    let edges = rising_edges(&mut pit, ns(1000), ns(10_500));
    assert_eq!(edges, (2..=10).map(|k| ns(k * 1000)).collect::<Vec<_>>());
    // Mode 3 counts down by two.
    assert_eq!(pit.read(ns(10_600), CHANNEL0, 1), (1000u32 - 200) & 0xff);
}

#[test]
fn linux_oneshot_mode_4_fires_once() {
    // The i8253 clockevent in one-shot mode: control word 0x38, then the delta.
    let mut pit = Pit::new();
    outb(&mut pit, 0, COMMAND, 0x38);
    outb(&mut pit, 0, CHANNEL0, 0xe8);
    outb(&mut pit, 0, CHANNEL0, 0x03); // 1000 ticks.
    let edges = rising_edges(&mut pit, 0, 1_000_000_000);
    assert_eq!(edges, vec![ns(1001)]);
    assert_eq!(pit.next_deadline_ns(), None);
}

#[test]
fn mode_0_raises_irq0_at_terminal_count_and_a_new_count_lowers_it() {
    let mut pit = Pit::new();
    program(&mut pit, 0, 0, 0, 500);
    assert!(!pit.irq_level());
    assert_eq!(pit.next_deadline_ns(), Some(ns(500)));
    pit.advance(ns(500) - 1);
    assert!(!pit.irq_level());
    pit.advance(ns(500));
    assert!(pit.irq_level());
    assert_eq!(pit.next_deadline_ns(), None);
    // The counter wraps and goes on counting.
    assert_eq!(pit.read(ns(600), CHANNEL0, 1), 0xff9c & 0xff);
    outb(&mut pit, ns(700), CHANNEL0, 10);
    outb(&mut pit, ns(700), CHANNEL0, 0);
    assert!(!pit.irq_level());
    assert_eq!(pit.next_deadline_ns(), Some(ns(700) + ns(10)));
}

#[test]
fn count_zero_is_65536() {
    let mut pit = Pit::new();
    program(&mut pit, 0, 0, 0, 0);
    pit.advance(ns(65_535));
    assert!(!pit.irq_level());
    pit.advance(ns(65_536));
    assert!(pit.irq_level());
    let mut pit = Pit::new();
    program(&mut pit, 0, 0, 2, 0);
    assert_eq!(rising_edges(&mut pit, 0, ns(65_536 * 3)).len(), 3);
}

#[test]
fn counter_latch_holds_the_value_until_read() {
    let mut pit = Pit::new();
    program(&mut pit, 0, 0, 2, 10_000);
    outb(&mut pit, ns(1234), COMMAND, 0x00);
    // A second latch before the read does not replace the first.
    outb(&mut pit, ns(2000), COMMAND, 0x00);
    let lsb = inb(&mut pit, ns(5000), CHANNEL0);
    let msb = inb(&mut pit, ns(6000), CHANNEL0);
    assert_eq!(u16::from(msb) << 8 | u16::from(lsb), 10_000 - 1234);
    // Latch consumed: the next read sees the live counter.
    let lsb = inb(&mut pit, ns(7000), CHANNEL0);
    let msb = inb(&mut pit, ns(7000), CHANNEL0);
    assert_eq!(u16::from(msb) << 8 | u16::from(lsb), 10_000 - 7000);
}

#[test]
fn read_back_latches_status_then_count() {
    let mut pit = Pit::new();
    outb(&mut pit, 0, PORT_B, port_b::GATE2);
    program(&mut pit, 0, 2, 0, 300);
    // Status and count of channel 2, right after the count was written: null count set.
    outb(&mut pit, 0, COMMAND, 0xc8);
    assert_eq!(inb(&mut pit, 0, CHANNEL2), 0x70);
    assert_eq!(inb(&mut pit, 0, CHANNEL2), 44);
    assert_eq!(inb(&mut pit, 0, CHANNEL2), 1);
    // After terminal count: OUT high, count loaded.
    outb(&mut pit, ns(400), COMMAND, 0xc8);
    assert_eq!(inb(&mut pit, ns(400), CHANNEL2), 0xb0);
    let lsb = inb(&mut pit, ns(900), CHANNEL2);
    let msb = inb(&mut pit, ns(900), CHANNEL2);
    assert_eq!(u16::from(msb) << 8 | u16::from(lsb), 0u16.wrapping_sub(100));
    // Status only, of channels 0 and 1 (unprogrammed: mode 0, null count).
    outb(&mut pit, 0, COMMAND, 0xe6);
    assert_eq!(inb(&mut pit, 0, CHANNEL0), 0x70);
    assert_eq!(inb(&mut pit, 0, CHANNEL1), 0x70);
}

#[test]
fn bcd_counts() {
    let mut pit = Pit::new();
    outb(&mut pit, 0, COMMAND, 0x31); // Channel 0, mode 0, BCD.
    outb(&mut pit, 0, CHANNEL0, 0x00);
    outb(&mut pit, 0, CHANNEL0, 0x10); // 1000 decimal.
    assert_eq!(pit.next_deadline_ns(), Some(ns(1000)));
    let lsb = inb(&mut pit, ns(1), CHANNEL0);
    let msb = inb(&mut pit, ns(1), CHANNEL0);
    assert_eq!((msb, lsb), (0x09, 0x99));
    // BCD count 0 is 10000.
    let t = ns(1);
    outb(&mut pit, t, COMMAND, 0x35); // Mode 2, BCD.
    outb(&mut pit, t, CHANNEL0, 0);
    outb(&mut pit, t, CHANNEL0, 0);
    let edges = rising_edges(&mut pit, t, t + ns(30_000));
    assert_eq!(
        edges,
        (1..=3).map(|k| t + ns(k * 10_000)).collect::<Vec<_>>()
    );
}

#[test]
fn low_only_and_high_only_access() {
    let mut pit = Pit::new();
    outb(&mut pit, 0, COMMAND, 0x10); // Channel 0, low byte only, mode 0.
    outb(&mut pit, 0, CHANNEL0, 200);
    assert_eq!(pit.next_deadline_ns(), Some(ns(200)));
    assert_eq!(inb(&mut pit, ns(50), CHANNEL0), 150);
    assert_eq!(inb(&mut pit, ns(60), CHANNEL0), 140);
    let t = ns(100);
    outb(&mut pit, t, COMMAND, 0x20); // High byte only.
    outb(&mut pit, t, CHANNEL0, 2);
    assert_eq!(pit.next_deadline_ns(), Some(t + ns(512)));
    assert_eq!(inb(&mut pit, t + ns(256), CHANNEL0), 1);
}

#[test]
fn gate2_suspends_mode_0_and_port_b_reads_back() {
    let mut pit = Pit::new();
    assert_eq!(inb(&mut pit, 0, PORT_B) & 0x23, 0);
    outb(&mut pit, 0, PORT_B, port_b::GATE2 | port_b::SPEAKER);
    assert_eq!(inb(&mut pit, 0, PORT_B) & 0x03, 0x03);
    program(&mut pit, 0, 2, 0, 1000);
    outb(&mut pit, ns(400), PORT_B, 0);
    assert_eq!(
        inb(&mut pit, ns(5000), PORT_B) & port_b::OUT2,
        0,
        "suspended"
    );
    outb(&mut pit, ns(5000), PORT_B, port_b::GATE2);
    assert_eq!(inb(&mut pit, ns(5599), PORT_B) & port_b::OUT2, 0);
    assert_ne!(inb(&mut pit, ns(5601), PORT_B) & port_b::OUT2, 0);
}

#[test]
fn refresh_bit_toggles_every_16us() {
    let mut pit = Pit::new();
    let a = inb(&mut pit, 0, PORT_B) & port_b::REFRESH;
    let b = inb(&mut pit, 1 << 14, PORT_B) & port_b::REFRESH;
    let c = inb(&mut pit, 2 << 14, PORT_B) & port_b::REFRESH;
    assert_ne!(a, b);
    assert_eq!(a, c);
}

#[test]
fn mode_1_on_channel_2_starts_on_a_rising_gate() {
    let mut pit = Pit::new();
    program(&mut pit, 0, 2, 1, 100);
    assert_ne!(
        inb(&mut pit, ns(500), PORT_B) & port_b::OUT2,
        0,
        "idle high"
    );
    outb(&mut pit, ns(1000), PORT_B, port_b::GATE2);
    assert_eq!(
        inb(&mut pit, ns(1050), PORT_B) & port_b::OUT2,
        0,
        "low while counting"
    );
    assert_ne!(inb(&mut pit, ns(1000) + ns(100), PORT_B) & port_b::OUT2, 0);
    // Retrigger.
    outb(&mut pit, ns(2000), PORT_B, 0);
    outb(&mut pit, ns(2000), PORT_B, port_b::GATE2);
    assert_eq!(inb(&mut pit, ns(2050), PORT_B) & port_b::OUT2, 0);
}

#[test]
fn mode_2_on_channel_2_stops_with_the_gate_and_restarts() {
    let mut pit = Pit::new();
    outb(&mut pit, 0, PORT_B, port_b::GATE2);
    program(&mut pit, 0, 2, 2, 100);
    outb(&mut pit, ns(50), PORT_B, 0);
    outb(&mut pit, ns(1000), PORT_B, port_b::GATE2);
    let lsb = inb(&mut pit, ns(1010), CHANNEL2);
    inb(&mut pit, ns(1010), CHANNEL2);
    assert_eq!(lsb, 90, "reloaded at the rising gate");
}

#[test]
fn channel_1_counts() {
    let mut pit = Pit::new();
    program(&mut pit, 0, 1, 2, 18);
    assert_eq!(inb(&mut pit, ns(5), CHANNEL1), 13);
    assert_eq!(inb(&mut pit, ns(5), CHANNEL1), 0);
    assert_eq!(pit.next_deadline_ns(), None, "channel 1 drives no IRQ");
}

#[test]
fn command_port_reads_zero_and_other_ports_are_not_claimed() {
    let mut pit = Pit::new();
    assert_eq!(pit.read(0, COMMAND, 1), 0);
    assert!(Pit::claims(0x40) && Pit::claims(0x43) && Pit::claims(0x61));
    assert!(!Pit::claims(0x44) && !Pit::claims(0x60));
    assert_eq!(pit.read(0, 0x44, 1), 0xff);
}

#[test]
fn any_access_is_safe() {
    let mut seed = 0x0dd_ba11_cafe_f00du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let ports = [0x40, 0x41, 0x42, 0x43, 0x61, 0x3f, 0x44, 0xffff];
    let mut pit = Pit::new();
    let mut now = 0u64;
    for _ in 0..200_000 {
        let r = next();
        let port = ports[(r % ports.len() as u64) as usize];
        let size = [1, 2, 4, 0, 3, 8][((r >> 8) % 6) as usize];
        now = match (r >> 12) % 4 {
            0 => now,
            1 => now + (r >> 40) % 100_000,
            2 => now.saturating_sub(1000),
            _ => now.saturating_add(r >> 20),
        };
        if r & (1 << 11) != 0 {
            pit.write(now, port, size, (r >> 32) as u32);
        } else {
            pit.read(now, port, size);
        }
        pit.advance(now);
        pit.irq_level();
        if let Some(deadline) = pit.next_deadline_ns() {
            assert!(deadline > pit.now || deadline == u64::MAX);
        }
    }
    pit.write(u64::MAX, 0x40, 1, 1);
    pit.read(u64::MAX, 0x40, 4);
}
