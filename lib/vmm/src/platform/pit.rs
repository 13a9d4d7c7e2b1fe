//! The 8254 programmable interval timer at ports `0x40-0x43`, and the bits of port `0x61`
//! (system control port B) that belong to it.
//!
//! Three channels count down at [`FREQUENCY_HZ`] against guest time: channel 0 drives IRQ 0,
//! channel 1 (DRAM refresh on a real PC) counts but drives nothing, channel 2's gate is port
//! `0x61` bit 0 and its output is bit 5 (Linux calibrates the TSC on it). All six modes, binary
//! and BCD counts, the three access modes, the counter latch and the read-back command
//! (count and status) are modelled; a count of 0 means 65536 (10000 in BCD).
//!
//! Where the 8254 datasheet and the emulators differ, this follows QEMU and KVM: a count takes
//! effect when written (also in modes 2 and 3, where the part would wait for the period's end),
//! mode 3 counts down by two from the reload value, and the counter reads as the count minus
//! the elapsed input clocks (no extra clock for loading). A control word stops the channel until
//! a new count is written.
//!
//! **Channel 0's IRQ line.** In modes 0, 1 and 3 it is the OUT pin. Modes 2 and 4 pulse OUT low
//! for one input clock (838 ns), too short for a VMM to sample, so for the IRQ line mode 2 is
//! given the waveform of mode 3 (high for the first half of each period, rising at the same
//! instants as the real OUT) and mode 4 stays low until its strobe has passed. The read-back
//! status reports the real OUT pin. [`Pit::next_deadline_ns`] is the next change of the line,
//! so a VMM that samples [`Pit::irq_level`] at each deadline sees every edge.
//!
//! No crate: rust-vmm's `vm-superio` has no PIT.

/// The channels' data ports, the mode/command port and system control port B.
pub const CHANNEL0: u16 = 0x40;
pub const CHANNEL1: u16 = 0x41;
pub const CHANNEL2: u16 = 0x42;
pub const COMMAND: u16 = 0x43;
pub const PORT_B: u16 = 0x61;

/// The input clock of every channel.
pub const FREQUENCY_HZ: u64 = 1_193_182;

const NS_PER_S: u128 = 1_000_000_000;

/// Port B bits.
pub mod port_b {
    /// Channel 2's gate (read/write).
    pub const GATE2: u8 = 1 << 0;
    /// Speaker data enable (read/write; no sound is made).
    pub const SPEAKER: u8 = 1 << 1;
    /// Toggles every 16.4 µs of guest time, as KVM's refresh clock does.
    pub const REFRESH: u8 = 1 << 4;
    /// Channel 2's OUT pin (read-only).
    pub const OUT2: u8 = 1 << 5;
}

/// How the data port of a channel takes and gives the 16-bit count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Low,
    High,
    LowHigh,
}

impl Access {
    fn bits(self) -> u8 {
        match self {
            Access::Low => 1,
            Access::High => 2,
            Access::LowHigh => 3,
        }
    }
}

/// One counter.
#[derive(Clone, Debug)]
struct Channel {
    mode: u8,
    access: Access,
    bcd: bool,
    /// The count written, 1..=65536 (1..=10000 in BCD).
    reload: u32,
    /// A count was written since the last control word.
    has_count: bool,
    /// Counting began (modes 1 and 5 wait for a rising gate).
    triggered: bool,
    /// When the count was loaded (or the gate triggered it).
    loaded_at: u64,
    /// Counting is suspended by a low gate since then (modes 0, 2, 3, 4).
    paused_at: Option<u64>,
    /// The counter's value while it does not count.
    frozen: u16,
    gate: bool,
    /// The low byte of a low-then-high write, waiting for its high byte.
    write_low: Option<u8>,
    /// The next unlatched low-then-high read returns the high byte.
    read_high_next: bool,
    latched_count: Option<u16>,
    latch_high_next: bool,
    latched_status: Option<u8>,
}

impl Channel {
    const fn new(gate: bool) -> Channel {
        Channel {
            mode: 0,
            access: Access::LowHigh,
            bcd: false,
            reload: 0x1_0000,
            has_count: false,
            triggered: false,
            loaded_at: 0,
            paused_at: None,
            frozen: 0,
            gate,
            write_low: None,
            read_high_next: false,
            latched_count: None,
            latch_high_next: false,
            latched_status: None,
        }
    }

    fn counting(&self) -> bool {
        self.has_count && self.triggered
    }

    /// Input clocks counted since the load, at `now`.
    fn elapsed_ticks(&self, now: u64) -> u64 {
        let end = self.paused_at.unwrap_or(now);
        let ns = u128::from(end.saturating_sub(self.loaded_at));
        (ns * u128::from(FREQUENCY_HZ) / NS_PER_S) as u64
    }

    /// The instant of the `ticks`th input clock after the load.
    fn tick_time(&self, ticks: u64) -> u64 {
        let ns = (u128::from(ticks) * NS_PER_S).div_ceil(u128::from(FREQUENCY_HZ));
        self.loaded_at
            .saturating_add(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    fn modulus(&self) -> u64 {
        if self.bcd {
            10_000
        } else {
            0x1_0000
        }
    }

    /// The counting element, in binary.
    fn counter(&self, now: u64) -> u16 {
        if !self.counting() {
            return self.frozen;
        }
        let n = u64::from(self.reload);
        let d = self.elapsed_ticks(now);
        let value = match self.mode {
            2 => n - d % n,
            3 => n - (2 * (d % n)) % n,
            _ => (n + self.modulus() - d % self.modulus()) % self.modulus(),
        };
        (value % self.modulus()) as u16
    }

    /// The OUT pin.
    fn out(&self, now: u64) -> bool {
        if !self.counting() {
            // The level a control word (or an untriggered count) leaves.
            return self.mode != 0;
        }
        let n = u64::from(self.reload);
        let d = self.elapsed_ticks(now);
        match self.mode {
            0 | 1 => d >= n,
            2 => !self.gate || n < 2 || d % n != n - 1,
            3 => !self.gate || d % n < n.div_ceil(2),
            _ => d != n,
        }
    }

    /// The IRQ line channel 0 drives (see the module comment for modes 2 and 4).
    fn irq_line(&self, now: u64) -> bool {
        if !self.counting() {
            return self.mode != 0;
        }
        let n = u64::from(self.reload);
        let d = self.elapsed_ticks(now);
        match self.mode {
            2 | 3 => !self.gate || d % n < n.div_ceil(2),
            4 | 5 => d > n,
            _ => self.out(now),
        }
    }

    /// The next instant after `now` at which the IRQ line changes, if it will.
    fn next_irq_change(&self, now: u64) -> Option<u64> {
        if !self.counting() || self.paused_at.is_some() || !self.gate {
            return None;
        }
        let n = u64::from(self.reload);
        let d = self.elapsed_ticks(now);
        let tick = match self.mode {
            0 | 1 => (d < n).then_some(n)?,
            2 | 3 => {
                let half = n.div_ceil(2);
                if half == n {
                    return None;
                }
                let start = d - d % n;
                if d % n < half {
                    start + half
                } else {
                    start + n
                }
            }
            _ => (d <= n).then_some(n + 1)?,
        };
        Some(self.tick_time(tick))
    }

    fn control(&mut self, command: u8, now: u64) {
        self.frozen = self.counter(now);
        self.access = match (command >> 4) & 3 {
            1 => Access::Low,
            2 => Access::High,
            _ => Access::LowHigh,
        };
        self.mode = match (command >> 1) & 7 {
            6 => 2,
            7 => 3,
            mode => mode,
        };
        self.bcd = command & 1 != 0;
        self.has_count = false;
        self.triggered = false;
        self.paused_at = None;
        self.write_low = None;
        self.read_high_next = false;
        self.latched_count = None;
        self.latch_high_next = false;
        self.latched_status = None;
    }

    fn write(&mut self, value: u8, now: u64) {
        let count = match self.access {
            Access::Low => u16::from(value),
            Access::High => u16::from(value) << 8,
            Access::LowHigh => match self.write_low.take() {
                None => {
                    self.write_low = Some(value);
                    return;
                }
                Some(low) => u16::from(value) << 8 | u16::from(low),
            },
        };
        self.load(count, now);
    }

    fn load(&mut self, count: u16, now: u64) {
        let count = if self.bcd {
            from_bcd(count)
        } else {
            u32::from(count)
        };
        self.reload = if count == 0 {
            self.modulus() as u32
        } else {
            count
        };
        self.has_count = true;
        self.loaded_at = now;
        self.triggered = !matches!(self.mode, 1 | 5);
        let suspends = matches!(self.mode, 0 | 2 | 3 | 4);
        self.paused_at = (suspends && !self.gate).then_some(now);
    }

    fn set_gate(&mut self, gate: bool, now: u64) {
        if gate == self.gate {
            return;
        }
        if !self.counting() {
            if gate && self.has_count {
                // Modes 1 and 5 start on a rising gate.
                self.triggered = true;
                self.loaded_at = now;
            }
            self.gate = gate;
            return;
        }
        match (self.mode, gate) {
            // Modes 0 and 4 suspend while the gate is low and go on where they stopped.
            (0 | 4, false) => self.paused_at = Some(now),
            (0 | 4, true) => {
                if let Some(paused) = self.paused_at.take() {
                    self.loaded_at = self.loaded_at.saturating_add(now - paused.min(now));
                }
            }
            // Modes 2 and 3 stop (OUT high) and restart from the reload value.
            (2 | 3, false) => self.paused_at = Some(now),
            // Modes 1 and 5 (re)trigger on a rising gate.
            (_, true) => {
                self.paused_at = None;
                self.loaded_at = now;
            }
            (_, false) => {}
        }
        self.gate = gate;
    }

    fn latch_count(&mut self, now: u64) {
        if self.latched_count.is_none() {
            self.latched_count = Some(self.display(self.counter(now)));
            self.latch_high_next = false;
        }
    }

    fn latch_status(&mut self, now: u64) {
        if self.latched_status.is_some() {
            return;
        }
        let null_count = !self.counting() || self.elapsed_ticks(now) == 0;
        let status = u8::from(self.out(now)) << 7
            | u8::from(null_count) << 6
            | self.access.bits() << 4
            | self.mode << 1
            | u8::from(self.bcd);
        self.latched_status = Some(status);
    }

    /// The counter as the data port gives it (BCD-encoded in BCD mode).
    fn display(&self, value: u16) -> u16 {
        if self.bcd {
            to_bcd(value)
        } else {
            value
        }
    }

    fn read(&mut self, now: u64) -> u8 {
        if let Some(status) = self.latched_status.take() {
            return status;
        }
        if let Some(latched) = self.latched_count {
            let (byte, done) = match self.access {
                Access::Low => (latched as u8, true),
                Access::High => ((latched >> 8) as u8, true),
                Access::LowHigh if self.latch_high_next => ((latched >> 8) as u8, true),
                Access::LowHigh => (latched as u8, false),
            };
            self.latch_high_next = !done;
            if done {
                self.latched_count = None;
            }
            return byte;
        }
        let value = self.display(self.counter(now));
        match self.access {
            Access::Low => value as u8,
            Access::High => (value >> 8) as u8,
            Access::LowHigh => {
                self.read_high_next = !self.read_high_next;
                if self.read_high_next {
                    value as u8
                } else {
                    (value >> 8) as u8
                }
            }
        }
    }
}

/// BCD digits to binary; a nibble above 9 counts with its binary value, as the part does not
/// check them.
fn from_bcd(value: u16) -> u32 {
    (0..4).rev().fold(0, |acc, digit| {
        acc * 10 + u32::from((value >> (4 * digit)) & 0xf)
    })
}

fn to_bcd(value: u16) -> u16 {
    let value = value % 10_000;
    (0..4).fold(0, |acc, digit| {
        acc | ((value / 10u16.pow(digit)) % 10) << (4 * digit)
    })
}

/// The 8254 and the speaker bits of port B.
#[derive(Clone, Debug)]
pub struct Pit {
    channels: [Channel; 3],
    speaker: bool,
    /// The latest guest time seen.
    now: u64,
}

impl Default for Pit {
    fn default() -> Self {
        Pit::new()
    }
}

impl Pit {
    /// The PIT after reset: no channel counts until programmed, the gates of channels 0 and 1
    /// are tied high, channel 2's gate (port B bit 0) is low.
    pub const fn new() -> Pit {
        Pit {
            channels: [Channel::new(true), Channel::new(true), Channel::new(false)],
            speaker: false,
            now: 0,
        }
    }

    /// Whether the PIT answers `port`.
    pub fn claims(port: u16) -> bool {
        matches!(port, CHANNEL0..=COMMAND | PORT_B)
    }

    /// Brings the model to guest time `now_ns` (earlier times are taken as the latest one).
    pub fn advance(&mut self, now_ns: u64) {
        self.now = self.now.max(now_ns);
    }

    /// IRQ 0 as channel 0 drives it, at the time of the last [`Pit::advance`] or access.
    pub fn irq_level(&self) -> bool {
        self.channels[0].irq_line(self.now)
    }

    /// When IRQ 0 changes next; None while it will not change by itself.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.channels[0].next_irq_change(self.now)
    }

    /// Port read of `size` bytes; a wider access reads consecutive ports, as on the ISA bus.
    pub fn read(&mut self, now_ns: u64, port: u16, size: u8) -> u32 {
        self.advance(now_ns);
        super::isa_read(port, size, |p| self.read_byte(p))
    }

    /// Port write of `size` bytes; a wider access writes consecutive ports.
    pub fn write(&mut self, now_ns: u64, port: u16, size: u8, value: u32) {
        self.advance(now_ns);
        super::isa_write(port, size, value, |p, b| self.write_byte(p, b));
    }

    fn read_byte(&mut self, port: u16) -> u8 {
        let now = self.now;
        match port {
            CHANNEL0..=CHANNEL2 => self.channels[usize::from(port - CHANNEL0)].read(now),
            // The command register is write-only; QEMU and KVM read it as 0.
            COMMAND => 0,
            PORT_B => {
                let channel2 = &self.channels[2];
                let refresh = (now >> 14) & 1 != 0;
                u8::from(channel2.gate)
                    | u8::from(self.speaker) << 1
                    | u8::from(refresh) << 4
                    | u8::from(channel2.out(now)) << 5
            }
            _ => 0xff,
        }
    }

    fn write_byte(&mut self, port: u16, value: u8) {
        let now = self.now;
        match port {
            CHANNEL0..=CHANNEL2 => self.channels[usize::from(port - CHANNEL0)].write(value, now),
            COMMAND => self.command(value),
            PORT_B => {
                self.speaker = value & port_b::SPEAKER != 0;
                self.channels[2].set_gate(value & port_b::GATE2 != 0, now);
            }
            _ => {}
        }
    }

    fn command(&mut self, value: u8) {
        let now = self.now;
        let select = value >> 6;
        if select == 3 {
            // Read-back: bit 5 clear latches the count, bit 4 clear the status, of each
            // channel whose bit (1-3) is set.
            for (index, channel) in self.channels.iter_mut().enumerate() {
                if value & (2 << index) == 0 {
                    continue;
                }
                if value & 0x20 == 0 {
                    channel.latch_count(now);
                }
                if value & 0x10 == 0 {
                    channel.latch_status(now);
                }
            }
            return;
        }
        let channel = &mut self.channels[usize::from(select)];
        if (value >> 4) & 3 == 0 {
            channel.latch_count(now);
        } else {
            channel.control(value, now);
        }
    }
}

/// Bytes in an access of `size` (1, 2 or 4; anything else counts as 4).
#[cfg(test)]
#[path = "pit_tests.rs"]
mod tests;
