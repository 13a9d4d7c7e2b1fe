//! The PC the vmm-server gives a guest: every device model wired together as on a real board
//! (and as QEMU's `pc` machine without PCI devices). The board answers port I/O and MMIO,
//! routes the devices' interrupt lines through the 8259 pair and the IOAPIC to the local APIC,
//! and tells the vmm-server which interrupt the vCPU should take and when the next timer
//! fires.
//!
//! | ISA IRQ | source | 8259 line | IOAPIC pin |
//! |---|---|---|---|
//! | 0 | PIT channel 0 | 0 | 2 (the MADT's interrupt source override) |
//! | 1 | i8042 keyboard | 1 | 1 |
//! | 4 | COM1 | 4 | 4 |
//! | 8 | RTC | 8 | 8 |
//! | 9 | ACPI SCI (PM timer carry, power button) | 9 | 9 |
//! | 12 | i8042 auxiliary | 12 | 12 |
//!
//! **Time.** Guest time is the guest's TSC (which runs unshifted) converted at the TSC
//! frequency the kernel measured ([`Clock`]); every model takes it in nanoseconds.
//!
//! **MMIO.** The local APIC's page (where `IA32_APIC_BASE` puts it, while in xAPIC mode) and
//! the IOAPIC's page at 0xfec00000 are devices; any other guest-physical address outside RAM
//! is unknown MMIO: reads return all-ones, writes are dropped, and the first access to each
//! page is reported once for the log (as KVM with QEMU's unassigned-memory handler).

use alloc::collections::BTreeSet;

use super::acpi::pm::PowerManagement;
use super::fw_cfg::FwCfg;
use super::ioapic::{self, DeliveryMode, Ioapic};
use super::lapic::{self, Lapic};
use super::misc::{all_ones, Chipset, Event, I8042};
use super::pic::{self, Pic};
use super::pit::Pit;
use super::rtc::Rtc;
use super::serial::{Serial, COM1_IRQ};

/// The TSC frequency used when the kernel could not measure one (1 GHz: under QEMU's
/// `-icount shift=0` one instruction is one nanosecond).
pub const FALLBACK_TSC_HZ: u64 = 1_000_000_000;

/// Guest time from the guest's TSC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    tsc_hz: u64,
}

impl Clock {
    /// A clock for a TSC of `tsc_hz` (0: [`FALLBACK_TSC_HZ`]).
    pub fn new(tsc_hz: u64) -> Clock {
        Clock {
            tsc_hz: if tsc_hz == 0 { FALLBACK_TSC_HZ } else { tsc_hz },
        }
    }

    pub fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }

    /// Nanoseconds of guest time at TSC value `tsc`.
    pub fn ns(&self, tsc: u64) -> u64 {
        (u128::from(tsc) * 1_000_000_000 / u128::from(self.tsc_hz)) as u64
    }

    /// The first TSC value at or after guest time `ns` (saturating).
    pub fn tsc(&self, ns: u64) -> u64 {
        let tsc = (u128::from(ns) * u128::from(self.tsc_hz)).div_ceil(1_000_000_000);
        u64::try_from(tsc).unwrap_or(u64::MAX)
    }
}

/// What the board's owner configures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoardConfig {
    pub ram_bytes: u64,
    pub tsc_hz: u64,
    /// What the RTC shows at guest time 0 (seconds since 1970).
    pub rtc_unix_seconds: i64,
    /// CPUID offers x2APIC to the guest.
    pub x2apic: bool,
}

/// An interrupt for the vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    Nmi,
    External(u8),
}

/// What a port or MMIO access did besides its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoardEvent {
    None,
    /// The guest asked for a reset or power-off.
    Machine(Event),
    /// The first access to an unknown MMIO page (its address), for the log.
    UnknownPage(u64),
}

/// The devices of one guest's PC.
#[derive(Clone, Debug)]
pub struct Board {
    clock: Clock,
    pub pic: Pic,
    pub pit: Pit,
    pub ioapic: Ioapic,
    pub rtc: Rtc,
    pub serial: Serial,
    pub fw_cfg: FwCfg,
    pub chipset: Chipset,
    pub i8042: I8042,
    pub pm: PowerManagement,
    pub lapic: Lapic,
    nmi: bool,
    /// After the last [`Board::sync`]: whether an interrupt waited, and the TSC value before
    /// which nothing can change unless the guest touches a device ([`Board::quiet_at`]).
    any_pending: bool,
    quiet_until_tsc: u64,
    quiet_until_ns: u64,
    unknown_pages: BTreeSet<u64>,
    /// Unknown pages seen beyond those recorded (the set is bounded).
    unknown_untracked: u64,
}

/// Unknown MMIO pages remembered for once-per-page logging.
const MAX_UNKNOWN_PAGES: usize = 64;

/// The ISA lines routed to both interrupt controllers (PIT's IRQ 0 goes to IOAPIC pin 2).
const ISA_LINES: [u8; 6] = [0, 1, COM1_IRQ, 8, 9, 12];

fn ioapic_pin(isa_irq: u8) -> u8 {
    if isa_irq == 0 {
        2
    } else {
        isa_irq
    }
}

fn is_pic_port(port: u16) -> bool {
    matches!(
        port,
        pic::MASTER_COMMAND
            | pic::MASTER_DATA
            | pic::SLAVE_COMMAND
            | pic::SLAVE_DATA
            | pic::ELCR_MASTER
            | pic::ELCR_SLAVE
    )
}

impl Board {
    pub fn new(config: BoardConfig) -> Board {
        let clock = Clock::new(config.tsc_hz);
        let below_4g = config.ram_bytes.min(0xc000_0000);
        let above_4g = config.ram_bytes - below_4g;
        let apic_config = lapic::Config {
            x2apic: config.x2apic,
            ..lapic::Config::new(clock.tsc_hz())
        };
        Board {
            clock,
            pic: Pic::default(),
            pit: Pit::default(),
            ioapic: Ioapic::new(),
            rtc: Rtc::with_memory(config.rtc_unix_seconds, below_4g, above_4g),
            serial: Serial::com1(),
            fw_cfg: FwCfg::new(config.ram_bytes, 1),
            chipset: Chipset::new(),
            i8042: I8042::new(),
            pm: PowerManagement::new(),
            lapic: Lapic::new(apic_config),
            nmi: false,
            any_pending: false,
            quiet_until_tsc: u64::MAX,
            quiet_until_ns: 0,
            unknown_pages: BTreeSet::new(),
            unknown_untracked: 0,
        }
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Whether a device answers `port` (the vmm-server's own ports are not the board's).
    pub fn claims_port(&self, port: u16) -> bool {
        is_pic_port(port)
            || Pit::claims(port)
            || Rtc::claims(port)
            || self.serial.claims(port)
            || FwCfg::claims(port)
            || Chipset::claims(port)
            || I8042::claims(port)
            || PowerManagement::claims(port)
    }

    /// `in` of `size` bytes from a claimed port.
    pub fn port_read(&mut self, now_ns: u64, port: u16, size: u8) -> u32 {
        let value = if is_pic_port(port) {
            self.pic.read(port, size)
        } else if Pit::claims(port) {
            self.pit.read(now_ns, port, size)
        } else if Rtc::claims(port) {
            self.rtc.read(now_ns, port, size)
        } else if self.serial.claims(port) {
            self.serial.read(now_ns, port, size)
        } else if FwCfg::claims(port) {
            self.fw_cfg.read(port, size)
        } else if Chipset::claims(port) {
            self.chipset.read(port, size)
        } else if I8042::claims(port) {
            self.i8042.read(port, size)
        } else if PowerManagement::claims(port) {
            self.pm.read(now_ns, port, size)
        } else {
            all_ones(size)
        };
        self.sync(now_ns);
        value
    }

    /// `out` of `size` bytes to a claimed port.
    pub fn port_write(&mut self, now_ns: u64, port: u16, size: u8, value: u32) -> BoardEvent {
        let mut event = None;
        if is_pic_port(port) {
            self.pic.write(port, size, value);
        } else if Pit::claims(port) {
            self.pit.write(now_ns, port, size, value);
        } else if Rtc::claims(port) {
            self.rtc.write(now_ns, port, size, value);
        } else if self.serial.claims(port) {
            self.serial.write(now_ns, port, size, value);
        } else if FwCfg::claims(port) {
            self.fw_cfg.write(port, size, value);
        } else if Chipset::claims(port) {
            event = self.chipset.write(port, size, value);
        } else if I8042::claims(port) {
            event = self.i8042.write(port, size, value);
        } else if PowerManagement::claims(port) {
            event = self.pm.write(now_ns, port, size, value);
        }
        self.sync(now_ns);
        event.map_or(BoardEvent::None, BoardEvent::Machine)
    }

    fn lapic_page(&self, gpa: u64) -> bool {
        self.lapic.hardware_enabled()
            && !self.lapic.x2apic_mode()
            && gpa & !0xfff == self.lapic.mmio_base()
    }

    fn ioapic_page(gpa: u64) -> bool {
        gpa & !0xfff == ioapic::BASE
    }

    fn unknown(&mut self, gpa: u64) -> BoardEvent {
        let page = gpa & !0xfff;
        if self.unknown_pages.contains(&page) {
            return BoardEvent::None;
        }
        if self.unknown_pages.len() >= MAX_UNKNOWN_PAGES {
            self.unknown_untracked += 1;
            return BoardEvent::None;
        }
        self.unknown_pages.insert(page);
        BoardEvent::UnknownPage(page)
    }

    /// Unknown MMIO pages seen: the ones reported, and accesses to pages beyond them.
    pub fn unknown_mmio(&self) -> (usize, u64) {
        (self.unknown_pages.len(), self.unknown_untracked)
    }

    /// MMIO read of `size` bytes (1, 2, 4 or 8) at guest-physical `gpa` outside RAM.
    pub fn mmio_read(&mut self, now_ns: u64, gpa: u64, size: u8) -> (u64, BoardEvent) {
        let (value, event) = if self.lapic_page(gpa) {
            (self.lapic.read(gpa & 0xfff, size, now_ns), BoardEvent::None)
        } else if Self::ioapic_page(gpa) {
            (self.ioapic.read(gpa & 0xfff, size), BoardEvent::None)
        } else {
            let ones = match size {
                8 => u64::MAX,
                _ => u64::from(all_ones(size)),
            };
            (ones, self.unknown(gpa))
        };
        self.sync(now_ns);
        (value, event)
    }

    /// MMIO write of `size` bytes at guest-physical `gpa` outside RAM.
    pub fn mmio_write(&mut self, now_ns: u64, gpa: u64, size: u8, value: u64) -> BoardEvent {
        let event = if self.lapic_page(gpa) {
            self.lapic.write(gpa & 0xfff, size, value, now_ns);
            BoardEvent::None
        } else if Self::ioapic_page(gpa) {
            self.ioapic.write(gpa & 0xfff, size, value);
            BoardEvent::None
        } else {
            self.unknown(gpa)
        };
        self.sync(now_ns);
        event
    }

    /// RDMSR of an MSR the local APIC owns (`IA32_APIC_BASE`, TSC deadline, x2APIC); `None`
    /// for other MSRs, `Some(Err)` for #GP.
    pub fn rdmsr(&mut self, now_ns: u64, index: u32) -> Option<Result<u64, lapic::Fault>> {
        if !lapic::handles_msr(index) {
            return None;
        }
        let value = self.lapic.rdmsr(index, now_ns);
        self.sync(now_ns);
        Some(value)
    }

    /// WRMSR of an MSR the local APIC owns; `None` for other MSRs.
    pub fn wrmsr(
        &mut self,
        now_ns: u64,
        index: u32,
        value: u64,
    ) -> Option<Result<(), lapic::Fault>> {
        if !lapic::handles_msr(index) {
            return None;
        }
        let result = self.lapic.wrmsr(index, value, now_ns);
        self.sync(now_ns);
        Some(result)
    }

    /// Brings every device to guest time `now_ns` and moves interrupts along the wires:
    /// device lines to the controllers, IOAPIC messages to the local APIC, the APIC's EOIs
    /// back to the IOAPIC.
    pub fn sync(&mut self, now_ns: u64) {
        // The PIT's line toggles by itself: when the sync comes after two or more of its
        // changes, the controllers would see no edge at all. A missed period is delivered as one
        // edge (ticks coalesce, as with KVM's PIT without reinjection).
        let pit_before = (self.pit.irq_level(), self.pit.next_deadline_ns());
        self.pit.advance(now_ns);
        let pit_after = self.pit.irq_level();
        if pit_before.1.is_some_and(|change| change <= now_ns) && pit_before.0 == pit_after {
            self.pic.set_line(0, false);
            self.ioapic.set_line(ioapic_pin(0), false);
            self.pic.set_line(0, true);
            self.ioapic.set_line(ioapic_pin(0), true);
        }
        self.rtc.advance(now_ns);
        self.serial.advance(now_ns);
        self.pm.advance(now_ns);
        self.lapic.advance(now_ns);
        for irq in ISA_LINES {
            let level = match irq {
                0 => self.pit.irq_level(),
                1 => self.i8042.keyboard_irq_level(),
                COM1_IRQ => self.serial.irq_level(),
                8 => self.rtc.irq_level(),
                9 => self.pm.irq_level(),
                _ => self.i8042.aux_irq_level(),
            };
            self.pic.set_line(irq, level);
            self.ioapic.set_line(ioapic_pin(irq), level);
        }
        while let Some(eoi) = self.lapic.take_eoi() {
            if eoi.level_triggered {
                self.ioapic.end_of_interrupt(eoi.vector);
            }
        }
        while let Some(message) = self.ioapic.pop_delivery() {
            if !self
                .lapic
                .accepts_destination(message.destination, message.logical)
            {
                continue;
            }
            match message.mode {
                DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                    self.lapic.accept(message.vector, message.level_triggered);
                }
                DeliveryMode::Nmi => self.nmi = true,
                // ExtINT: the 8259 supplies the vector; the others do not apply to a
                // uniprocessor guest.
                _ => {}
            }
        }
        if self.lapic.take_nmi() {
            self.nmi = true;
        }
        self.any_pending = self.nmi
            || self.lapic.pending_vector(now_ns).is_some()
            || (self.lapic.accepts_pic_interrupt() && self.pic.output_level());
        let deadline = self.next_deadline_ns();
        self.quiet_until_ns = deadline.unwrap_or(u64::MAX);
        self.quiet_until_tsc = deadline.map_or(u64::MAX, |ns| self.clock.tsc(ns));
    }

    /// [`Board::sync`] when a device timer has run out since the last one: every access already
    /// syncs, so only time can have changed anything.
    fn catch_up(&mut self, now_ns: u64) {
        if now_ns >= self.quiet_until_ns {
            self.sync(now_ns);
        }
    }

    /// Nothing waits for the vCPU and nothing can before TSC value `tsc` (no device timer runs
    /// out, no device was touched since): the exit path's cheap test, which spares it a
    /// [`Board::sync`].
    pub fn quiet_at(&self, tsc: u64) -> bool {
        !self.any_pending && tsc < self.quiet_until_tsc
    }

    /// [`Board::next_deadline_ns`] as a TSC value, as of the last [`Board::sync`].
    pub fn next_deadline_tsc(&self) -> Option<u64> {
        (self.quiet_until_tsc != u64::MAX).then_some(self.quiet_until_tsc)
    }

    /// Whether an NMI waits for delivery.
    pub fn nmi_pending(&mut self, now_ns: u64) -> bool {
        self.catch_up(now_ns);
        self.nmi
    }

    /// The external (maskable) interrupt the vCPU should take next, without taking it: the
    /// local APIC's, or through LINT0 the 8259's.
    pub fn external_pending(&mut self, now_ns: u64) -> Option<u8> {
        self.catch_up(now_ns);
        if let Some(vector) = self.lapic.pending_vector(now_ns) {
            return Some(vector);
        }
        if self.lapic.accepts_pic_interrupt() && self.pic.output_level() {
            return self.pic.pending_vector();
        }
        None
    }

    /// Whether anything waits for the vCPU (what wakes it from HLT).
    pub fn pending(&mut self, now_ns: u64) -> Option<Interrupt> {
        if self.nmi_pending(now_ns) {
            return Some(Interrupt::Nmi);
        }
        self.external_pending(now_ns).map(Interrupt::External)
    }

    /// Takes the NMI for delivery, if one waits.
    pub fn take_nmi(&mut self) -> bool {
        core::mem::take(&mut self.nmi)
    }

    /// The vCPU takes an external interrupt now (it can: IF set, no interrupt shadow): the
    /// vector to inject, from the local APIC or, through LINT0, the 8259.
    pub fn acknowledge_external(&mut self, now_ns: u64) -> Option<u8> {
        self.catch_up(now_ns);
        if let Some(vector) = self.lapic.pending_vector(now_ns) {
            let taken = self.lapic.acknowledge(vector);
            self.sync(now_ns);
            return Some(taken);
        }
        if self.lapic.accepts_pic_interrupt() && self.pic.output_level() {
            let vector = self.pic.acknowledge();
            self.sync(now_ns);
            return Some(vector);
        }
        None
    }

    /// When the next device timer fires (guest ns), if any runs.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        [
            self.pit.next_deadline_ns(),
            self.rtc.next_deadline_ns(),
            self.serial.next_deadline_ns(),
            self.pm.next_deadline_ns(),
            self.lapic.next_deadline_ns(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[cfg(test)]
#[path = "board_tests.rs"]
mod tests;
