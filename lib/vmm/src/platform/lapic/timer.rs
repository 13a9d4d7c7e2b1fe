//! The APIC timer: one-shot and periodic countdown of the initial count at the bus clock over
//! the divide configuration, and the TSC deadline. It knows nothing of interrupts: `expire`
//! says when the LVT fires and the APIC delivers (or, masked, drops) the vector.

/// Nanoseconds in a second.
const NS_PER_S: u128 = 1_000_000_000;

/// Shortest period of a periodic timer, as KVM's `min_timer_period_us` (200 µs): a guest that
/// programs a tiny period must not make the VMM fire host timers back to back.
pub const MIN_PERIODIC_NS: u64 = 200_000;

/// LVT timer mode field (bits 18:17).
pub(super) const LVT_MODE_SHIFT: u32 = 17;
pub(super) const LVT_MODE_MASK: u32 = 3 << LVT_MODE_SHIFT;

/// The timer modes of the LVT timer register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
    /// Mode 3: reserved; the timer does not run (as KVM).
    Reserved,
}

impl TimerMode {
    pub fn from_lvt(lvt: u32) -> TimerMode {
        match (lvt & LVT_MODE_MASK) >> LVT_MODE_SHIFT {
            0 => TimerMode::OneShot,
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            _ => TimerMode::Reserved,
        }
    }
}

/// The divisor a divide configuration register value selects (bits 0, 1 and 3).
pub fn divisor(config: u32) -> u64 {
    let code = (config & 3) | (config & 8) >> 1;
    // Codes 0..=6 divide by 2..=128, code 7 by 1.
    1 << ((code + 1) & 7)
}

#[derive(Clone, Debug)]
pub(super) struct Timer {
    bus_hz: u64,
    tsc_hz: u64,
    tsc_offset: u64,
    /// The LVT timer register.
    pub(super) lvt: u32,
    initial_count: u32,
    /// Divide configuration register (bits 0, 1, 3).
    divide_config: u32,
    /// One initial count at the current divisor, in ns; 0 while no count was started.
    period_ns: u64,
    /// The next expiry (count reaching 0 or the TSC deadline), if one is armed.
    next_ns: Option<u64>,
    /// IA32_TSC_DEADLINE as the guest wrote it; 0 once it fired or was disarmed.
    tsc_deadline: u64,
}

impl Timer {
    pub(super) fn new(bus_hz: u64, tsc_hz: u64, lvt: u32) -> Timer {
        Timer {
            bus_hz: bus_hz.max(1),
            tsc_hz: tsc_hz.max(1),
            tsc_offset: 0,
            lvt,
            initial_count: 0,
            divide_config: 0,
            period_ns: 0,
            next_ns: None,
            tsc_deadline: 0,
        }
    }

    /// Back to the reset state (count stopped, divide by 2), keeping the clocks.
    pub(super) fn reset(&mut self, lvt: u32) {
        *self = Timer {
            tsc_offset: self.tsc_offset,
            ..Timer::new(self.bus_hz, self.tsc_hz, lvt)
        };
    }

    pub(super) fn mode(&self) -> TimerMode {
        TimerMode::from_lvt(self.lvt)
    }

    pub(super) fn initial_count(&self) -> u32 {
        self.initial_count
    }

    pub(super) fn divide_config(&self) -> u32 {
        self.divide_config
    }

    pub(super) fn next_deadline_ns(&self) -> Option<u64> {
        self.next_ns
    }

    /// The guest TSC at `now_ns`.
    pub(super) fn tsc(&self, now_ns: u64) -> u64 {
        let ticks = u128::from(now_ns) * u128::from(self.tsc_hz) / NS_PER_S;
        (ticks as u64).wrapping_add(self.tsc_offset)
    }

    pub(super) fn set_tsc_offset(&mut self, offset: u64) {
        self.tsc_offset = offset;
    }

    /// Time for `count` bus ticks at the current divisor, rounded up.
    fn count_ns(&self, count: u64) -> u64 {
        let scaled = u128::from(count) * u128::from(divisor(self.divide_config)) * NS_PER_S;
        saturate(scaled.div_ceil(u128::from(self.bus_hz)))
    }

    /// Whole counts left in `ns` at the current divisor.
    fn ns_count(&self, ns: u64) -> u64 {
        let per = u128::from(divisor(self.divide_config)) * NS_PER_S;
        saturate(u128::from(ns) * u128::from(self.bus_hz) / per)
    }

    /// The time between periodic expiries.
    fn reload_ns(&self) -> u64 {
        self.period_ns.max(MIN_PERIODIC_NS)
    }

    /// A write of the LVT timer register (already masked to its writable bits). Moving into or
    /// out of TSC-deadline mode stops the timer and clears the initial count and the deadline,
    /// as KVM does; one-shot and periodic trade places at the next expiry.
    pub(super) fn set_lvt(&mut self, lvt: u32) {
        let was_deadline = self.mode() == TimerMode::TscDeadline;
        self.lvt = lvt;
        if was_deadline != (self.mode() == TimerMode::TscDeadline) {
            self.initial_count = 0;
            self.period_ns = 0;
            self.next_ns = None;
            self.tsc_deadline = 0;
        }
    }

    /// A write of the initial count register: (re)starts the count; 0 stops it. Ignored in
    /// TSC-deadline mode.
    pub(super) fn set_initial_count(&mut self, count: u32, now_ns: u64) {
        let mode = self.mode();
        if mode == TimerMode::TscDeadline {
            return;
        }
        self.initial_count = count;
        self.period_ns = self.count_ns(u64::from(count));
        self.next_ns = match mode {
            _ if count == 0 => None,
            TimerMode::OneShot => Some(now_ns.saturating_add(self.period_ns)),
            TimerMode::Periodic => Some(now_ns.saturating_add(self.reload_ns())),
            TimerMode::TscDeadline | TimerMode::Reserved => None,
        };
    }

    /// A write of the divide configuration: a running count keeps its current value and goes
    /// on at the new rate.
    pub(super) fn set_divide_config(&mut self, config: u32, now_ns: u64) {
        let old = divisor(self.divide_config);
        self.divide_config = config & 0xb;
        let new = divisor(self.divide_config);
        if old == new || self.mode() == TimerMode::TscDeadline {
            return;
        }
        self.period_ns = self.count_ns(u64::from(self.initial_count));
        if let Some(next) = self.next_ns {
            let remaining = u128::from(next.saturating_sub(now_ns));
            let scaled = saturate(remaining * u128::from(new) / u128::from(old));
            self.next_ns = Some(now_ns.saturating_add(scaled));
        }
    }

    /// The current count register at `now_ns` (after `expire` caught up).
    pub(super) fn current_count(&self, now_ns: u64) -> u32 {
        if self.mode() == TimerMode::TscDeadline || self.initial_count == 0 {
            return 0;
        }
        let Some(next) = self.next_ns else {
            return 0;
        };
        let left = self.ns_count(next.saturating_sub(now_ns));
        // A periodic period stretched to the minimum would count above the initial count.
        left.min(u64::from(self.initial_count)) as u32
    }

    /// IA32_TSC_DEADLINE as the guest reads it: 0 outside TSC-deadline mode.
    pub(super) fn tsc_deadline(&self) -> u64 {
        if self.mode() == TimerMode::TscDeadline {
            self.tsc_deadline
        } else {
            0
        }
    }

    /// A write of IA32_TSC_DEADLINE: ignored outside TSC-deadline mode; 0 disarms; a deadline
    /// already passed fires at once.
    pub(super) fn set_tsc_deadline(&mut self, deadline: u64, now_ns: u64) {
        if self.mode() != TimerMode::TscDeadline {
            return;
        }
        self.tsc_deadline = deadline;
        if deadline == 0 {
            self.next_ns = None;
            return;
        }
        let tsc = self.tsc(now_ns);
        let ahead = deadline.saturating_sub(tsc);
        let ns = (u128::from(ahead) * NS_PER_S).div_ceil(u128::from(self.tsc_hz));
        self.next_ns = Some(now_ns.saturating_add(saturate(ns)));
    }

    /// Catches up to `now_ns`: true when the timer expired since the last call (periodic
    /// expiries missed in between count once, as one IRR bit would hold them).
    pub(super) fn expire(&mut self, now_ns: u64) -> bool {
        let Some(next) = self.next_ns else {
            return false;
        };
        if next > now_ns {
            return false;
        }
        self.next_ns = match self.mode() {
            TimerMode::Periodic if self.initial_count != 0 => {
                let reload = self.reload_ns();
                let missed = (now_ns - next) / reload + 1;
                Some(next.saturating_add(missed.saturating_mul(reload)))
            }
            TimerMode::TscDeadline => {
                self.tsc_deadline = 0;
                None
            }
            _ => None,
        };
        true
    }
}

fn saturate(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}
