//! The ACPI fixed hardware of a non-HW-reduced PC, at QEMU's PIIX4/ICH9 PM base 0x600: the
//! PM1a event block (status, enable), the PM1a control block (SCI_EN, sleep type and enable)
//! and the PM timer (24 bits at 3.579545 MHz, from guest time). A sleep-enable write with the
//! S5 type raises [`Event::PowerOff`]; other sleep types do nothing (the DSDT offers only S5).
//! The SCI ([`PowerManagement::irq_level`], IRQ [`SCI_IRQ`], level) is up while SCI_EN is set
//! and an enabled status bit is set: the timer carry or the power button.

use crate::platform::misc::{all_ones, Event};

pub const PM_BASE: u16 = 0x600;
pub const PM1_EVENT_PORT: u16 = PM_BASE;
pub const PM1_EVENT_BYTES: u8 = 4;
pub const PM1_CONTROL_PORT: u16 = PM_BASE + 4;
pub const PM1_CONTROL_BYTES: u8 = 2;
pub const PM_TIMER_PORT: u16 = PM_BASE + 8;
pub const PM_TIMER_BYTES: u8 = 4;
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The timer's width: TMR_VAL_EXT is clear in the FADT.
pub const PM_TIMER_MASK: u32 = 0x00ff_ffff;
pub const SCI_IRQ: u8 = 9;
/// The SLP_TYP of S5 (soft off), as in the DSDT's `\_S5`.
pub const S5_SLEEP_TYPE: u16 = 0;

/// PM1 status and enable bits.
pub mod pm1 {
    pub const TIMER: u16 = 1 << 0;
    pub const BUS_MASTER: u16 = 1 << 4;
    pub const GLOBAL: u16 = 1 << 5;
    pub const POWER_BUTTON: u16 = 1 << 8;
    pub const SLEEP_BUTTON: u16 = 1 << 9;
    pub const RTC: u16 = 1 << 10;
    pub const WAKE: u16 = 1 << 15;
}

/// PM1 control bits.
pub mod pm1_control {
    pub const SCI_ENABLE: u16 = 1 << 0;
    pub const GLOBAL_RELEASE: u16 = 1 << 2;
    pub const SLEEP_TYPE_SHIFT: u16 = 10;
    pub const SLEEP_TYPE: u16 = 0x7 << SLEEP_TYPE_SHIFT;
    pub const SLEEP_ENABLE: u16 = 1 << 13;
}

/// Status bits that can raise the SCI.
const SCI_SOURCES: u16 =
    pm1::TIMER | pm1::GLOBAL | pm1::POWER_BUTTON | pm1::SLEEP_BUTTON | pm1::RTC;

/// The PM registers.
#[derive(Clone, Debug)]
pub struct PowerManagement {
    status: u16,
    enable: u16,
    control: u16,
    /// Carries of the timer's top bit (bit 23) seen so far.
    timer_carries: u64,
}

impl Default for PowerManagement {
    fn default() -> Self {
        PowerManagement::new()
    }
}

/// PM timer ticks at `now_ns` (the timer counts from guest time 0).
pub fn timer_ticks(now_ns: u64) -> u64 {
    (u128::from(now_ns) * u128::from(PM_TIMER_HZ) / 1_000_000_000) as u64
}

/// The guest time at which the timer reaches `ticks` (the first nanosecond it reads so).
fn ticks_time_ns(ticks: u64) -> u64 {
    let ns = (u128::from(ticks) * 1_000_000_000).div_ceil(u128::from(PM_TIMER_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

const CARRY_SHIFT: u32 = 23;

impl PowerManagement {
    /// After reset: in ACPI mode (SCI_EN set; there is no SMI command port), nothing enabled.
    pub fn new() -> PowerManagement {
        PowerManagement {
            status: 0,
            enable: 0,
            control: pm1_control::SCI_ENABLE,
            timer_carries: 0,
        }
    }

    /// Whether this model answers `port`.
    pub fn claims(port: u16) -> bool {
        matches!(port, PM_BASE..=0x605 | PM_TIMER_PORT..=0x60b)
    }

    /// The timer register at `now_ns`.
    pub fn timer(now_ns: u64) -> u32 {
        timer_ticks(now_ns) as u32 & PM_TIMER_MASK
    }

    /// Applies what guest time `now_ns` brings: TMR_STS on a carry of the timer's top bit.
    pub fn advance(&mut self, now_ns: u64) {
        let carries = timer_ticks(now_ns) >> CARRY_SHIFT;
        if carries > self.timer_carries {
            self.timer_carries = carries;
            self.status |= pm1::TIMER;
        }
    }

    /// When TMR_STS will next be set, while its interrupt is enabled and it is clear.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        let waiting = self.enable & pm1::TIMER != 0 && self.status & pm1::TIMER == 0;
        waiting.then(|| ticks_time_ns((self.timer_carries + 1) << CARRY_SHIFT))
    }

    /// The SCI.
    pub fn irq_level(&self) -> bool {
        self.control & pm1_control::SCI_ENABLE != 0 && self.status & self.enable & SCI_SOURCES != 0
    }

    /// The power button was pressed (the OS shuts down if it enabled the button's event).
    pub fn press_power_button(&mut self) {
        self.status |= pm1::POWER_BUTTON;
    }

    /// PM1 status, enable and control, for inspection.
    pub fn registers(&self) -> (u16, u16, u16) {
        (self.status, self.enable, self.control)
    }

    fn read_byte(&self, now_ns: u64, port: u16) -> u8 {
        let byte = |word: u16, high: bool| if high { (word >> 8) as u8 } else { word as u8 };
        match port.wrapping_sub(PM_BASE) {
            offset @ 0..=1 => byte(self.status, offset == 1),
            offset @ 2..=3 => byte(self.enable, offset == 3),
            // SLP_EN and GBL_RLS are write-only.
            offset @ 4..=5 => byte(self.control, offset == 5),
            offset @ 8..=11 => (PowerManagement::timer(now_ns) >> (8 * (offset - 8))) as u8,
            _ => 0xff,
        }
    }

    pub fn read(&mut self, now_ns: u64, port: u16, size: u8) -> u32 {
        if !matches!(size, 1 | 2 | 4) {
            return all_ones(size);
        }
        self.advance(now_ns);
        (0..u16::from(size)).fold(0, |value, i| {
            value | u32::from(self.read_byte(now_ns, port.wrapping_add(i))) << (8 * i)
        })
    }

    pub fn write(&mut self, now_ns: u64, port: u16, size: u8, value: u32) -> Option<Event> {
        if !matches!(size, 1 | 2 | 4) {
            return None;
        }
        self.advance(now_ns);
        // Gather the bytes per 16-bit register: (mask, value) for status, enable, control.
        let mut regs = [(0u16, 0u16); 3];
        for i in 0..u16::from(size) {
            let offset = port.wrapping_add(i).wrapping_sub(PM_BASE);
            if offset < 6 {
                let shift = 8 * (offset % 2);
                let byte = u16::from((value >> (8 * i)) as u8);
                let reg = &mut regs[usize::from(offset / 2)];
                reg.0 |= 0xff << shift;
                reg.1 |= byte << shift;
            }
        }
        let [(status_mask, status), (enable_mask, enable), (control_mask, control)] = regs;
        // Status bits clear where a 1 is written.
        self.status &= !(status & status_mask);
        self.enable = (self.enable & !enable_mask) | (enable & enable_mask);
        if control_mask == 0 {
            return None;
        }
        let written = (self.control & !control_mask) | (control & control_mask);
        self.control = written & !(pm1_control::SLEEP_ENABLE | pm1_control::GLOBAL_RELEASE);
        let sleep_type = (written & pm1_control::SLEEP_TYPE) >> pm1_control::SLEEP_TYPE_SHIFT;
        (written & pm1_control::SLEEP_ENABLE != 0 && sleep_type == S5_SLEEP_TYPE)
            .then_some(Event::PowerOff)
    }
}
