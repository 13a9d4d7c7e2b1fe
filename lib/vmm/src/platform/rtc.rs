//! The CMOS real-time clock (an MC146818 as QEMU presents it): index port `0x70` (bit 7, the
//! NMI mask, is ignored), data port `0x71`, 128 bytes of which 0x00-0x0d and the century (0x32)
//! are the clock and the rest NVRAM.
//!
//! The clock counts from a wall time given at creation (Unix seconds at guest time 0, read as
//! the RTC's local time) with guest time. Time and date read in BCD or binary (register B bit 2)
//! and 12- or 24-hour form (bit 1), converted on each read as QEMU does; the update-in-progress
//! bit (register A bit 7) is set for the 244 µs before each second's update, and registers read
//! then still show the old second. SET (register B bit 7) and a divider reset (register A bits
//! 6-4 = 11x) stop the clock: its registers then hold what the guest writes, and the clock
//! resumes from them; after a divider reset the first update comes 500 ms after it ends, as on
//! the part. While the clock runs a write to a time register sets that field at once.
//!
//! Interrupts: the periodic (rate from register A bits 3-0), alarm (with "don't care" values
//! 0xc0-0xff) and update-ended flags of register C are set whether enabled or not; IRQ 8
//! ([`Rtc::irq_level`]) is high while an enabled flag is set, until register C is read (which
//! clears it). [`Rtc::next_deadline_ns`] is the next instant the line would rise, so an idle
//! guest with no RTC interrupt enabled costs no wake-up.
//!
//! Not modelled: daylight saving (register B bit 0 is stored), the square-wave output, dates
//! outside what the registers hold (an invalid field written is clamped to its range when the
//! clock resumes), the day of week as a counter of its own (it is computed from the date).
//!
//! No crate: rust-vmm's `vm-superio` has only the ARM PL031 RTC.

use calendar::{days_from_civil, days_in_month, fields_of, Fields, SECONDS_PER_DAY};

/// The index and data ports.
/// What the vmm-server's RTC shows at guest time 0: 2026-01-01 00:00:00 UTC. A fixed start
/// keeps runs reproducible (the guest's clock does not depend on when it was started); the
/// kernel offers no wall clock to take the real time from.
pub const DEFAULT_UNIX_SECONDS: i64 = 1_767_225_600;

pub const INDEX: u16 = 0x70;
pub const DATA: u16 = 0x71;

/// Register indexes.
pub mod reg {
    pub const SECONDS: u8 = 0x00;
    pub const SECONDS_ALARM: u8 = 0x01;
    pub const MINUTES: u8 = 0x02;
    pub const MINUTES_ALARM: u8 = 0x03;
    pub const HOURS: u8 = 0x04;
    pub const HOURS_ALARM: u8 = 0x05;
    pub const DAY_OF_WEEK: u8 = 0x06;
    pub const DAY_OF_MONTH: u8 = 0x07;
    pub const MONTH: u8 = 0x08;
    pub const YEAR: u8 = 0x09;
    pub const A: u8 = 0x0a;
    pub const B: u8 = 0x0b;
    pub const C: u8 = 0x0c;
    pub const D: u8 = 0x0d;
    pub const CENTURY: u8 = 0x32;
}

/// Register A bits.
pub mod a {
    pub const UIP: u8 = 1 << 7;
    pub const DIVIDER: u8 = 0x70;
    /// The divider for a 32.768 kHz crystal; 0x60 and 0x70 hold it in reset.
    pub const DIVIDER_32K: u8 = 0x20;
    pub const RATE: u8 = 0x0f;
}

/// Register B bits.
pub mod b {
    pub const SET: u8 = 1 << 7;
    pub const PIE: u8 = 1 << 6;
    pub const AIE: u8 = 1 << 5;
    pub const UIE: u8 = 1 << 4;
    pub const SQWE: u8 = 1 << 3;
    pub const BINARY: u8 = 1 << 2;
    pub const HOUR_24: u8 = 1 << 1;
    pub const DSE: u8 = 1 << 0;
}

/// Register C bits.
pub mod c {
    pub const IRQF: u8 = 1 << 7;
    pub const PF: u8 = 1 << 6;
    pub const AF: u8 = 1 << 5;
    pub const UF: u8 = 1 << 4;
}

/// Register D's valid-RAM-and-time bit (always set).
pub const D_VRT: u8 = 1 << 7;

const NS_PER_S: i128 = 1_000_000_000;
const CRYSTAL_HZ: i128 = 32_768;
/// How long before each update the UIP bit is set: 8 crystal cycles (244 µs).
const UIP_NS: i128 = 8 * NS_PER_S / CRYSTAL_HZ;

/// The RTC and its NVRAM.
#[derive(Clone, Debug)]
pub struct Rtc {
    cmos: [u8; 128],
    index: u8,
    /// A second boundary of the divider chain (guest ns; may lie ahead after a divider reset).
    phase_ns: i128,
    /// The Unix time shown from `phase_ns` for one second (while the clock runs).
    seconds_at_phase: i64,
    /// PF, AF and UF.
    flags: u8,
    /// The last second and periodic tick accounted in `flags`.
    last_second: i64,
    last_period: i128,
    now: u64,
}

impl Rtc {
    /// An RTC showing `unix_seconds` at guest time 0, in QEMU's reset state: register A 0x26
    /// (32.768 kHz, 1024 Hz periodic rate), B 0x02 (24-hour BCD, no interrupts), NVRAM zero.
    pub fn new(unix_seconds: i64) -> Rtc {
        let mut cmos = [0; 128];
        cmos[usize::from(reg::A)] = a::DIVIDER_32K | 0x06;
        cmos[usize::from(reg::B)] = b::HOUR_24;
        let mut rtc = Rtc {
            cmos,
            index: 0,
            phase_ns: 0,
            seconds_at_phase: unix_seconds,
            flags: 0,
            last_second: unix_seconds,
            last_period: 0,
            now: 0,
        };
        rtc.last_period = rtc.period_index(0);
        rtc
    }

    /// [`Rtc::new`] with the memory-size bytes filled as QEMU's PC does, for kernels that size
    /// memory from the CMOS: 0x15-0x16 base memory in KiB (at most 640), 0x17-0x18 and
    /// 0x30-0x31 KiB above 1 MiB (at most 65535), 0x34-0x35 64-KiB units between 16 MiB and
    /// 4 GiB, 0x5b-0x5d 64-KiB units above 4 GiB.
    pub fn with_memory(unix_seconds: i64, below_4g_bytes: u64, above_4g_bytes: u64) -> Rtc {
        const KIB: u64 = 1024;
        const MIB: u64 = 1024 * KIB;
        let mut rtc = Rtc::new(unix_seconds);
        let base = (below_4g_bytes / KIB).min(640);
        let extended = (below_4g_bytes.saturating_sub(MIB) / KIB).min(0xffff);
        let above_16m = (below_4g_bytes.saturating_sub(16 * MIB) / (64 * KIB)).min(0xffff);
        let above_4g = (above_4g_bytes / (64 * KIB)).min(0xff_ffff);
        let mut put = |index: usize, value: u64, bytes: usize| {
            for i in 0..bytes {
                rtc.cmos[index + i] = (value >> (8 * i)) as u8;
            }
        };
        put(0x15, base, 2);
        put(0x17, extended, 2);
        put(0x30, extended, 2);
        put(0x34, above_16m, 2);
        put(0x5b, above_4g, 3);
        rtc
    }

    /// Whether the RTC answers `port`.
    pub fn claims(port: u16) -> bool {
        port == INDEX || port == DATA
    }

    fn control_a(&self) -> u8 {
        self.cmos[usize::from(reg::A)]
    }

    fn control_b(&self) -> u8 {
        self.cmos[usize::from(reg::B)]
    }

    fn divider_running(&self) -> bool {
        self.control_a() & a::DIVIDER <= a::DIVIDER_32K
    }

    fn clock_running(&self) -> bool {
        self.divider_running() && self.control_b() & b::SET == 0
    }

    /// Whole seconds from the phase to `now` (negative while the phase lies ahead).
    fn seconds_since_phase(&self, now: u64) -> i64 {
        (i128::from(now) - self.phase_ns).div_euclid(NS_PER_S) as i64
    }

    /// The Unix time the running clock shows at `now`.
    fn unix_seconds(&self, now: u64) -> i64 {
        self.seconds_at_phase
            .saturating_add(self.seconds_since_phase(now))
    }

    /// The periodic interrupt's period in crystal cycles, if the rate selects one.
    fn period_cycles(&self) -> Option<i128> {
        match self.control_a() & a::RATE {
            0 => None,
            // Rates 1 and 2 repeat rates 8 and 9 (256 and 128 Hz).
            rate @ 1..=2 => Some(1 << (rate + 6)),
            rate => Some(1 << (rate - 1)),
        }
    }

    fn period_index(&self, now: u64) -> i128 {
        let cycles = ((i128::from(now) - self.phase_ns) * CRYSTAL_HZ).div_euclid(NS_PER_S);
        self.period_cycles()
            .map_or(0, |period| cycles.div_euclid(period))
    }

    /// Brings the flags of register C up to guest time `now_ns`.
    pub fn advance(&mut self, now_ns: u64) {
        self.now = self.now.max(now_ns);
        let now = self.now;
        if self.divider_running() && self.period_cycles().is_some() {
            let period = self.period_index(now);
            if period > self.last_period {
                self.flags |= c::PF;
                self.last_period = period;
            }
        }
        if self.clock_running() {
            let second = self.unix_seconds(now);
            if second > self.last_second {
                self.flags |= c::UF;
                if self
                    .next_alarm(self.last_second)
                    .is_some_and(|alarm| alarm <= second)
                {
                    self.flags |= c::AF;
                }
                self.last_second = second;
            }
        }
    }

    /// IRQ 8: an enabled interrupt flag is set (register C bit 7).
    pub fn irq_level(&self) -> bool {
        self.flags & self.control_b() & (c::PF | c::AF | c::UF) != 0
    }

    /// The next instant IRQ 8 would rise; None while it is high (it stays so until register C
    /// is read) or no enabled interrupt will come.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        if self.irq_level() {
            return None;
        }
        let enabled = self.control_b() & !self.flags;
        let mut deadline: Option<i128> = None;
        let mut consider = |at: i128| deadline = Some(deadline.map_or(at, |d| d.min(at)));
        if enabled & b::PIE != 0 && self.divider_running() {
            if let Some(period) = self.period_cycles() {
                let cycles = (self.period_index(self.now) + 1) * period;
                let offset = (cycles * NS_PER_S + CRYSTAL_HZ - 1).div_euclid(CRYSTAL_HZ);
                consider(self.phase_ns + offset);
            }
        }
        if self.clock_running() {
            let next_second = i128::from(self.seconds_since_phase(self.now)) + 1;
            if enabled & b::UIE != 0 {
                consider(self.phase_ns + next_second * NS_PER_S);
            }
            if enabled & b::AIE != 0 {
                if let Some(alarm) = self.next_alarm(self.unix_seconds(self.now)) {
                    let ahead = i128::from(alarm) - i128::from(self.seconds_at_phase);
                    consider(self.phase_ns + ahead * NS_PER_S);
                }
            }
        }
        deadline.map(|d| u64::try_from(d.max(0)).unwrap_or(u64::MAX))
    }

    /// The first second after `after` whose time of day matches the alarm registers.
    fn next_alarm(&self, after: i64) -> Option<i64> {
        let matching = |alarm: u8, count: u8, encode: &dyn Fn(u8) -> u8| -> u64 {
            (0..count)
                .filter(|v| alarm & 0xc0 == 0xc0 || alarm == encode(*v))
                .fold(0, |mask, v| mask | 1 << v)
        };
        let hours = matching(self.cmos[usize::from(reg::HOURS_ALARM)], 24, &|h| {
            self.encode_hour(h)
        });
        let minutes = matching(self.cmos[usize::from(reg::MINUTES_ALARM)], 60, &|m| {
            self.encode(m)
        });
        let seconds = matching(self.cmos[usize::from(reg::SECONDS_ALARM)], 60, &|s| {
            self.encode(s)
        });
        let start = after.checked_add(1)?;
        let day = start - start.rem_euclid(SECONDS_PER_DAY);
        let time_of_day = start.rem_euclid(SECONDS_PER_DAY) as u32;
        match first_match(hours, minutes, seconds, time_of_day) {
            Some(at) => Some(day + i64::from(at)),
            None => {
                let at = first_match(hours, minutes, seconds, 0)?;
                Some(day + SECONDS_PER_DAY + i64::from(at))
            }
        }
    }

    fn binary(&self) -> bool {
        self.control_b() & b::BINARY != 0
    }

    fn encode(&self, value: u8) -> u8 {
        if self.binary() {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        }
    }

    fn decode(&self, value: u8) -> u8 {
        if self.binary() {
            value
        } else {
            (value >> 4) * 10 + (value & 0xf)
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.control_b() & b::HOUR_24 != 0 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { 0x80 } else { 0 };
        let twelve = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(twelve) | pm
    }

    fn decode_hour(&self, value: u8) -> u8 {
        if self.control_b() & b::HOUR_24 != 0 {
            return self.decode(value);
        }
        let pm = if value & 0x80 != 0 { 12 } else { 0 };
        self.decode(value & 0x7f) % 12 + pm
    }

    /// The time registers' contents for `fields`, as (index, value).
    fn encoded(&self, fields: Fields) -> [(u8, u8); 8] {
        let year = fields.year.rem_euclid(10_000);
        [
            (reg::SECONDS, self.encode(fields.second)),
            (reg::MINUTES, self.encode(fields.minute)),
            (reg::HOURS, self.encode_hour(fields.hour)),
            (reg::DAY_OF_WEEK, self.encode(fields.weekday)),
            (reg::DAY_OF_MONTH, self.encode(fields.day)),
            (reg::MONTH, self.encode(fields.month)),
            (reg::YEAR, self.encode((year % 100) as u8)),
            (reg::CENTURY, self.encode((year / 100) as u8)),
        ]
    }

    /// The Unix time the stored time registers hold, each field clamped to its range.
    fn stored_seconds(&self) -> i64 {
        let get = |index: u8| self.cmos[usize::from(index)];
        let year = i64::from(self.decode(get(reg::CENTURY)).min(99)) * 100
            + i64::from(self.decode(get(reg::YEAR)).min(99));
        let month = self.decode(get(reg::MONTH)).clamp(1, 12);
        let day = self
            .decode(get(reg::DAY_OF_MONTH))
            .clamp(1, days_in_month(year, month));
        let hour = self.decode_hour(get(reg::HOURS)).min(23);
        let minute = self.decode(get(reg::MINUTES)).min(59);
        let second = self.decode(get(reg::SECONDS)).min(59);
        days_from_civil(year, month, day) * SECONDS_PER_DAY
            + i64::from(hour) * 3600
            + i64::from(minute) * 60
            + i64::from(second)
    }

    /// Copies the running clock into the time registers.
    fn store_time(&mut self, now: u64) {
        for (index, value) in self.encoded(fields_of(self.unix_seconds(now))) {
            self.cmos[usize::from(index)] = value;
        }
    }

    /// Starts the clock from the time registers, on the divider's phase.
    fn resume(&mut self, now: u64) {
        self.set_clock(self.stored_seconds(), now);
    }

    /// Makes the running clock show `seconds` at `now` without moving the update phase.
    fn set_clock(&mut self, seconds: i64, now: u64) {
        self.seconds_at_phase = seconds.saturating_sub(self.seconds_since_phase(now));
        self.last_second = self.unix_seconds(now);
    }

    /// Port read of `size` bytes; a wider access reads consecutive ports.
    pub fn read(&mut self, now_ns: u64, port: u16, size: u8) -> u32 {
        self.advance(now_ns);
        super::isa_read(port, size, |p| self.read_byte(p))
    }

    /// Port write of `size` bytes; a wider access writes consecutive ports (a 16-bit write to
    /// 0x70 selects and writes a register).
    pub fn write(&mut self, now_ns: u64, port: u16, size: u8, value: u32) {
        self.advance(now_ns);
        super::isa_write(port, size, value, |p, b| self.write_byte(p, b));
    }

    fn read_byte(&mut self, port: u16) -> u8 {
        match port {
            DATA => self.read_register(self.index),
            // The index port is write-only.
            _ => 0xff,
        }
    }

    fn write_byte(&mut self, port: u16, value: u8) {
        match port {
            INDEX => self.index = value & 0x7f,
            DATA => self.write_register(self.index, value),
            _ => {}
        }
    }

    /// Reads CMOS byte `index` (0-127) at the current time.
    fn read_register(&mut self, index: u8) -> u8 {
        let now = self.now;
        match index {
            reg::A => {
                let in_update = self.clock_running()
                    && (i128::from(now) - self.phase_ns).rem_euclid(NS_PER_S) >= NS_PER_S - UIP_NS;
                self.control_a() & !a::UIP | if in_update { a::UIP } else { 0 }
            }
            reg::C => {
                let value = self.flags | if self.irq_level() { c::IRQF } else { 0 };
                self.flags = 0;
                value
            }
            reg::D => D_VRT,
            _ if self.clock_running() && is_time_register(index) => {
                let registers = self.encoded(fields_of(self.unix_seconds(now)));
                registers
                    .iter()
                    .find(|(i, _)| *i == index)
                    .map_or(0xff, |(_, v)| *v)
            }
            _ => self.cmos[usize::from(index & 0x7f)],
        }
    }

    fn write_register(&mut self, index: u8, value: u8) {
        let now = self.now;
        match index {
            reg::A => {
                let value = value & !a::UIP;
                self.change_control(value, self.control_b(), now);
            }
            reg::B => {
                // Setting SET clears UIE (the part does, and QEMU).
                let value = if value & b::SET != 0 {
                    value & !b::UIE
                } else {
                    value
                };
                self.change_control(self.control_a(), value, now);
            }
            reg::C | reg::D => {}
            _ if self.clock_running() && is_time_register(index) => {
                self.store_time(now);
                self.cmos[usize::from(index)] = value;
                let seconds = self.stored_seconds();
                self.set_clock(seconds, now);
            }
            _ => self.cmos[usize::from(index & 0x7f)] = value,
        }
    }

    fn change_control(&mut self, new_a: u8, new_b: u8, now: u64) {
        let was_running = self.clock_running();
        let divider_was_running = self.divider_running();
        let old_rate = self.control_a() & a::RATE;
        if was_running {
            // Registers keep the format they were written in until the clock resumes.
            self.store_time(now);
        }
        self.cmos[usize::from(reg::A)] = new_a;
        self.cmos[usize::from(reg::B)] = new_b;
        if !divider_was_running && self.divider_running() {
            // Out of reset, the first update comes 500 ms later.
            self.phase_ns = i128::from(now) + NS_PER_S / 2;
        }
        if !divider_was_running || old_rate != new_a & a::RATE {
            self.last_period = self.period_index(now);
        }
        if !was_running && self.clock_running() {
            self.resume(now);
        }
    }
}

fn is_time_register(index: u8) -> bool {
    matches!(
        index,
        reg::SECONDS
            | reg::MINUTES
            | reg::HOURS
            | reg::DAY_OF_WEEK
            | reg::DAY_OF_MONTH
            | reg::MONTH
            | reg::YEAR
            | reg::CENTURY
    )
}

/// The earliest time of day at or after `from` (seconds) whose hour, minute and second are in
/// the masks; None if none is left that day.
fn first_match(hours: u64, minutes: u64, seconds: u64, from: u32) -> Option<u32> {
    let lowest = |mask: u64, from: u32| -> Option<u32> {
        let rest = mask.checked_shr(from).map_or(0, |m| m << from);
        (rest != 0).then(|| rest.trailing_zeros())
    };
    let (hour, minute, second) = (from / 3600, from / 60 % 60, from % 60);
    let at = |h: u32, m: u32, s: u32| h * 3600 + m * 60 + s;
    if hours & 1 << hour != 0 {
        if minutes & 1 << minute != 0 {
            if let Some(s) = lowest(seconds, second) {
                return Some(at(hour, minute, s));
            }
        }
        if let Some(m) = lowest(minutes, minute + 1) {
            return Some(at(hour, m, lowest(seconds, 0)?));
        }
    }
    let h = lowest(hours, hour + 1)?;
    Some(at(h, lowest(minutes, 0)?, lowest(seconds, 0)?))
}

/// Bytes in an access of `size` (1, 2 or 4; anything else counts as 4).
#[path = "rtc_calendar.rs"]
mod calendar;

#[cfg(test)]
#[path = "rtc_tests.rs"]
mod tests;
