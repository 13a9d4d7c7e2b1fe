//! The local APIC of one vCPU, as KVM presents it to a guest: the xAPIC page, the x2APIC MSRs,
//! `IA32_APIC_BASE`, the timer (one-shot, periodic, TSC deadline) and interrupt acceptance,
//! priority, acknowledge and EOI. No crate models a local APIC for a VMM without `std` (rust-vmm
//! leaves it to KVM), so this one is written here.
//!
//! How the vmm-server drives it:
//! - **MMIO**: route the page at [`Lapic::mmio_base`] (re-read it after every write of
//!   `IA32_APIC_BASE`) to [`Lapic::read`] / [`Lapic::write`]. Registers are 32 bits at 16-byte
//!   aligned offsets. As KVM: reads of 1, 2 or 4 bytes inside a readable register return those
//!   bytes; any other read (8 bytes, crossing the register, reserved or write-only registers,
//!   offsets past 0x3f0) returns 0, not all-ones; writes other than 4 bytes at an aligned
//!   offset, and writes of read-only or reserved registers, are dropped. While the APIC is
//!   disabled in `IA32_APIC_BASE` or in x2APIC mode the page reads all-ones and drops writes.
//! - **MSRs**: [`handles_msr`] says which are the APIC's (0x1b, 0x6e0, 0x800-0x8ff);
//!   [`Lapic::rdmsr`] / [`Lapic::wrmsr`] answer them, `Err(Fault)` meaning inject #GP(0).
//! - **Time**: every call that depends on it takes `now_ns` (guest ns). Arm a host timer for
//!   [`Lapic::next_deadline_ns`]; when it fires, call [`Lapic::advance`] (every `now_ns` call
//!   does too), which sets the LVT vector in the IRR. The guest TSC is `now_ns` × `tsc_hz` / 1e9
//!   plus [`Lapic::set_tsc_offset`]. The bus clock is [`Config::bus_hz`] (KVM's is 1 GHz).
//! - **Interrupts in**: [`Lapic::accept`] for fixed and lowest-priority messages from the
//!   IOAPIC (NMI and ExtINT messages are the vmm-server's to inject); the 8259's INTR reaches
//!   the CPU while [`Lapic::accepts_pic_interrupt`] (LINT0 unmasked in ExtINT mode, or the APIC
//!   disabled), and is injected before any APIC vector as KVM does.
//! - **Interrupts out**: when the guest can take one, [`Lapic::pending_vector`], then
//!   [`Lapic::acknowledge`] (IRR → ISR) and inject what it returns. After each register write,
//!   [`Lapic::take_eoi`] gives EOIs to broadcast to the IOAPIC (level-triggered ones clear its
//!   remote IRR), [`Lapic::take_nmi`] a self-NMI, [`Lapic::take_ipi`] an IPI this uniprocessor
//!   APIC could not deliver (to other CPUs, INIT, SIPI, SMI: log or ignore).
//! - **MOV CR8** reads and writes the TPR through [`Lapic::cr8`] / [`Lapic::set_cr8`].
//!
//! Choices, KVM's unless said otherwise: version 0x14 with 6 LVT entries (maximum LVT 5) and no
//! directed EOI, so no LVT CMCI (0x2f0 is reserved, as in KVM without `MCG_CMCI_P`) and the EOI
//! is always broadcast; reset leaves LINT0 unmasked in ExtINT mode on the BSP (KVM's
//! `LINT0_REENABLED` quirk: the 8259 reaches the guest as if a BIOS had set up virtual wire);
//! a periodic timer fires at most every [`timer::MIN_PERIODIC_NS`]; disabling the APIC keeps
//! its registers. Where KVM records nothing, this model follows the SDM: the ESR logs illegal
//! vectors (0-15) sent and received and raises the LVT error interrupt, and a nonzero x2APIC
//! EOI write is #GP. Not modelled: thermal, performance-counter and LINT1 sources, the
//! arbitration priority (APR reads 0), remote read, level-triggered LINT inputs.

mod access;
mod timer;
mod vectors;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod timer_tests;

pub use timer::{divisor, TimerMode, MIN_PERIODIC_NS};

use timer::Timer;
use vectors::VectorSet;

/// Register offsets in the xAPIC page (the x2APIC MSR is 0x800 + offset / 16).
pub mod reg {
    pub const ID: u32 = 0x20;
    pub const VERSION: u32 = 0x30;
    pub const TPR: u32 = 0x80;
    pub const APR: u32 = 0x90;
    pub const PPR: u32 = 0xa0;
    pub const EOI: u32 = 0xb0;
    pub const RRD: u32 = 0xc0;
    pub const LDR: u32 = 0xd0;
    pub const DFR: u32 = 0xe0;
    pub const SVR: u32 = 0xf0;
    pub const ISR: u32 = 0x100;
    pub const TMR: u32 = 0x180;
    pub const IRR: u32 = 0x200;
    pub const ESR: u32 = 0x280;
    pub const LVT_CMCI: u32 = 0x2f0;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_THERMAL: u32 = 0x330;
    pub const LVT_PERF: u32 = 0x340;
    pub const LVT_LINT0: u32 = 0x350;
    pub const LVT_LINT1: u32 = 0x360;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3e0;
    /// x2APIC only (MSR 0x83f).
    pub const SELF_IPI: u32 = 0x3f0;
}

/// MSR numbers the APIC answers.
pub mod msr {
    pub const APIC_BASE: u32 = 0x1b;
    pub const TSC_DEADLINE: u32 = 0x6e0;
    pub const X2APIC_FIRST: u32 = 0x800;
    pub const X2APIC_LAST: u32 = 0x8ff;
    pub const X2APIC_ICR: u32 = 0x830;
    pub const X2APIC_SELF_IPI: u32 = 0x83f;
}

/// `IA32_APIC_BASE` bits.
pub mod base {
    pub const BSP: u64 = 1 << 8;
    pub const X2APIC: u64 = 1 << 10;
    pub const ENABLE: u64 = 1 << 11;
    pub const ADDRESS: u64 = !0xfff;
    /// The default page, enabled, BSP: the value at reset.
    pub const RESET: u64 = 0xfee0_0000 | ENABLE | BSP;
}

/// LVT register bits.
pub mod lvt {
    pub const VECTOR: u32 = 0xff;
    pub const DELIVERY_MODE: u32 = 7 << 8;
    pub const NMI: u32 = 4 << 8;
    pub const EXTINT: u32 = 7 << 8;
    pub const POLARITY: u32 = 1 << 13;
    pub const LEVEL: u32 = 1 << 15;
    pub const MASKED: u32 = 1 << 16;
    pub const PERIODIC: u32 = 1 << 17;
    pub const TSC_DEADLINE: u32 = 2 << 17;
}

/// Error status register bits.
pub mod esr {
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
}

/// The version register: version 0x14, maximum LVT entry 5 (six entries), no directed EOI.
pub const VERSION: u32 = 0x0005_0014;
/// Spurious-interrupt vector register: APIC software enable.
pub const SVR_ENABLE: u32 = 1 << 8;
/// KVM's APIC bus clock.
pub const DEFAULT_BUS_HZ: u64 = 1_000_000_000;

/// Index of each LVT register other than the timer's in [`Lapic::lvt`].
const LVT_THERMAL: usize = 0;
const LVT_PERF: usize = 1;
const LVT_LINT0: usize = 2;
const LVT_LINT1: usize = 3;
const LVT_ERROR: usize = 4;

/// What the vmm-server tells the APIC about its vCPU and machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The x2APIC ID; the xAPIC ID is its low byte.
    pub apic_id: u32,
    /// The bootstrap processor: `IA32_APIC_BASE` bit 8, LINT0 in ExtINT mode at reset.
    pub bsp: bool,
    /// The guest TSC frequency, to convert IA32_TSC_DEADLINE.
    pub tsc_hz: u64,
    /// The APIC timer's input clock before the divider.
    pub bus_hz: u64,
    /// CPUID offers x2APIC: otherwise `IA32_APIC_BASE` bit 10 is reserved.
    pub x2apic: bool,
    /// The guest's physical-address width: `IA32_APIC_BASE` bits above it are reserved.
    pub phys_addr_bits: u8,
}

impl Config {
    /// The BSP of a uniprocessor guest: APIC ID 0, KVM's 1 GHz bus, x2APIC offered.
    pub fn new(tsc_hz: u64) -> Config {
        Config {
            apic_id: 0,
            bsp: true,
            tsc_hz,
            bus_hz: DEFAULT_BUS_HZ,
            x2apic: true,
            phys_addr_bits: 52,
        }
    }
}

/// The access raises #GP(0) in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault;

/// An EOI: the in-service vector it ended and whether that interrupt was level-triggered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eoi {
    pub vector: u8,
    pub level_triggered: bool,
}

/// An IPI the APIC did not deliver to itself: to other CPUs, or INIT, SIPI, SMI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipi {
    /// ICR bits 31:0 (vector, delivery mode, destination mode, level, trigger, shorthand).
    pub command: u32,
    /// The destination: the xAPIC ID or logical mask (8 bits) or the x2APIC one (32 bits).
    pub destination: u32,
}

/// Whether `msr` is one of the APIC's.
pub fn handles_msr(msr: u32) -> bool {
    matches!(
        msr,
        msr::APIC_BASE | msr::TSC_DEADLINE | msr::X2APIC_FIRST..=msr::X2APIC_LAST
    )
}

/// The local APIC of one vCPU.
#[derive(Clone, Debug)]
pub struct Lapic {
    config: Config,
    apic_base: u64,
    xapic_id: u8,
    tpr: u8,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: VectorSet,
    tmr: VectorSet,
    irr: VectorSet,
    /// The ESR as the guest reads it, and the errors logged since its last write.
    esr: u32,
    esr_pending: u32,
    icr_low: u32,
    icr_high: u32,
    /// LVT thermal, performance, LINT0, LINT1, error (the timer's is in `timer`).
    lvt: [u32; 5],
    timer: Timer,
    /// EOIs not yet taken, and which of them were level-triggered.
    eois: VectorSet,
    eoi_levels: VectorSet,
    nmi: bool,
    ipi: Option<Ipi>,
}

impl Lapic {
    /// An APIC in its power-on state.
    pub fn new(config: Config) -> Lapic {
        let mut apic = Lapic {
            config,
            apic_base: 0,
            xapic_id: 0,
            tpr: 0,
            ldr: 0,
            dfr: 0,
            svr: 0,
            isr: VectorSet::EMPTY,
            tmr: VectorSet::EMPTY,
            irr: VectorSet::EMPTY,
            esr: 0,
            esr_pending: 0,
            icr_low: 0,
            icr_high: 0,
            lvt: [0; 5],
            timer: Timer::new(config.bus_hz, config.tsc_hz, lvt::MASKED),
            eois: VectorSet::EMPTY,
            eoi_levels: VectorSet::EMPTY,
            nmi: false,
            ipi: None,
        };
        apic.reset();
        apic
    }

    /// Power-on reset (KVM's `kvm_lapic_reset`): enabled in xAPIC mode at 0xfee00000, software
    /// disabled (SVR 0xff), every LVT masked except LINT0 on the BSP (ExtINT), no interrupt
    /// pending or in service, timer stopped. The TSC offset is kept.
    pub fn reset(&mut self) {
        let bsp = if self.config.bsp { base::BSP } else { 0 };
        self.apic_base = base::RESET & !base::BSP | bsp;
        self.xapic_id = self.config.apic_id as u8;
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = u32::MAX;
        self.svr = 0xff;
        self.isr = VectorSet::EMPTY;
        self.tmr = VectorSet::EMPTY;
        self.irr = VectorSet::EMPTY;
        self.esr = 0;
        self.esr_pending = 0;
        self.icr_low = 0;
        self.icr_high = 0;
        self.lvt = [lvt::MASKED; 5];
        if self.config.bsp {
            self.lvt[LVT_LINT0] = lvt::EXTINT;
        }
        self.timer.reset(lvt::MASKED);
        self.eois = VectorSet::EMPTY;
        self.eoi_levels = VectorSet::EMPTY;
        self.nmi = false;
        self.ipi = None;
    }

    /// Enabled in `IA32_APIC_BASE` ("hardware enabled").
    pub fn hardware_enabled(&self) -> bool {
        self.apic_base & base::ENABLE != 0
    }

    /// In x2APIC mode.
    pub fn x2apic_mode(&self) -> bool {
        self.apic_base & base::X2APIC != 0 && self.hardware_enabled()
    }

    /// Software enabled (SVR bit 8).
    pub fn software_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// Both enabled: the APIC accepts interrupts.
    fn enabled(&self) -> bool {
        self.hardware_enabled() && self.software_enabled()
    }

    /// The guest-physical address of the xAPIC page.
    pub fn mmio_base(&self) -> u64 {
        self.apic_base & base::ADDRESS
    }

    /// `IA32_APIC_BASE`.
    pub fn apic_base(&self) -> u64 {
        self.apic_base
    }

    /// A guest write of `IA32_APIC_BASE`. #GP for reserved bits, x2APIC without enable, and
    /// the transitions the SDM forbids (x2APIC → xAPIC, disabled → x2APIC). Bit 8 (BSP) is
    /// read-only. Enabling sets the xAPIC ID back to the vCPU's; entering x2APIC mode derives
    /// the logical ID from the x2APIC ID.
    pub fn set_apic_base(&mut self, value: u64) -> Result<(), Fault> {
        let value = value & !base::BSP | self.apic_base & base::BSP;
        if value == self.apic_base {
            return Ok(());
        }
        let phys_bits = u32::from(self.config.phys_addr_bits.clamp(32, 52));
        let mut reserved = 0x2ff | u64::MAX << phys_bits;
        if !self.config.x2apic {
            reserved |= base::X2APIC;
        }
        let enable = value & base::ENABLE != 0;
        let x2apic = value & base::X2APIC != 0;
        if value & reserved != 0 || x2apic && !enable {
            return Err(Fault);
        }
        let was_enabled = self.hardware_enabled();
        let was_x2apic = self.x2apic_mode();
        if was_x2apic && enable && !x2apic || !was_enabled && x2apic {
            return Err(Fault);
        }
        self.apic_base = value;
        if enable && !was_enabled {
            self.xapic_id = self.config.apic_id as u8;
        }
        if x2apic && !was_x2apic {
            self.ldr = x2apic_ldr(self.config.apic_id);
        }
        Ok(())
    }

    /// The task priority as CR8 shows it (TPR bits 7:4).
    pub fn cr8(&self) -> u64 {
        u64::from(self.tpr >> 4)
    }

    /// MOV to CR8: TPR = value bits 3:0 << 4 (the caller checks reserved bits).
    pub fn set_cr8(&mut self, value: u64) {
        self.tpr = ((value & 0xf) << 4) as u8;
    }

    /// Processor priority: the TPR, or the class of the highest in-service vector if higher.
    pub fn ppr(&self) -> u8 {
        let isr_class = self.isr.highest().unwrap_or(0) & 0xf0;
        if self.tpr & 0xf0 >= isr_class {
            self.tpr
        } else {
            isr_class
        }
    }

    /// Catches the timer up to `now_ns`, delivering its LVT vector if it expired.
    pub fn advance(&mut self, now_ns: u64) {
        if self.timer.expire(now_ns) {
            self.deliver_lvt(self.timer.lvt, false);
        }
    }

    /// The timer mode in the LVT timer register.
    pub fn timer_mode(&self) -> TimerMode {
        self.timer.mode()
    }

    /// When the timer next expires: arm a host timer and call [`Lapic::advance`] then. A
    /// masked timer still counts, and still has a deadline.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.timer.next_deadline_ns()
    }

    /// The guest TSC is `now_ns` × `tsc_hz` / 1e9 + `offset` (wrapping), as the vmm-server
    /// defines it.
    pub fn set_tsc_offset(&mut self, offset: u64) {
        self.timer.set_tsc_offset(offset);
    }

    /// A fixed or lowest-priority interrupt message for this APIC (from the IOAPIC): sets the
    /// vector in the IRR, and in the TMR when level-triggered. Dropped (false) while the APIC
    /// is disabled in hardware or software; an illegal vector (0-15) is dropped and logged in
    /// the ESR.
    pub fn accept(&mut self, vector: u8, level_triggered: bool) -> bool {
        if !self.enabled() {
            return false;
        }
        if vector < 16 {
            self.log_error(esr::RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        self.irr.insert(vector);
        self.tmr.set(vector, level_triggered);
        true
    }

    /// The vector the vCPU should take next: the highest requested one whose priority class is
    /// above the processor priority. None while the APIC is disabled in `IA32_APIC_BASE`.
    pub fn pending_vector(&mut self, now_ns: u64) -> Option<u8> {
        self.advance(now_ns);
        self.deliverable()
    }

    fn deliverable(&self) -> Option<u8> {
        if !self.hardware_enabled() {
            return None;
        }
        let vector = self.irr.highest()?;
        (vector & 0xf0 > self.ppr()).then_some(vector)
    }

    /// The vCPU takes `vector` (from [`Lapic::pending_vector`]): it moves from the IRR to the
    /// ISR and is returned. If it is no longer deliverable (the guest raised the TPR in
    /// between), nothing moves and the spurious vector is returned instead, as real hardware
    /// does.
    pub fn acknowledge(&mut self, vector: u8) -> u8 {
        if self.deliverable() != Some(vector) {
            return self.svr as u8;
        }
        self.irr.remove(vector);
        self.isr.insert(vector);
        vector
    }

    /// End of interrupt: clears the highest in-service vector (none: nothing happens).
    pub fn eoi(&mut self) -> Option<Eoi> {
        let vector = self.isr.highest()?;
        self.isr.remove(vector);
        let level_triggered = self.tmr.contains(vector);
        self.eois.insert(vector);
        self.eoi_levels.set(vector, level_triggered);
        Some(Eoi {
            vector,
            level_triggered,
        })
    }

    /// An EOI the guest wrote that the IOAPIC has not heard of yet (highest vector first).
    pub fn take_eoi(&mut self) -> Option<Eoi> {
        let vector = self.eois.highest()?;
        self.eois.remove(vector);
        Some(Eoi {
            vector,
            level_triggered: self.eoi_levels.contains(vector),
        })
    }

    /// Whether the guest sent itself an NMI since the last call.
    pub fn take_nmi(&mut self) -> bool {
        core::mem::take(&mut self.nmi)
    }

    /// The last IPI the APIC could not deliver itself, since the last call.
    pub fn take_ipi(&mut self) -> Option<Ipi> {
        self.ipi.take()
    }

    /// LINT0 is unmasked in ExtINT mode.
    pub fn lint0_is_extint(&self) -> bool {
        self.lvt[LVT_LINT0] & (lvt::MASKED | lvt::DELIVERY_MODE) == lvt::EXTINT
    }

    /// The 8259's INTR reaches the CPU: LINT0 in ExtINT mode, or the APIC disabled in
    /// `IA32_APIC_BASE` (then LINT0 is the processor's INTR pin). KVM's
    /// `kvm_apic_accept_pic_intr`.
    pub fn accepts_pic_interrupt(&self) -> bool {
        !self.hardware_enabled() || self.lint0_is_extint()
    }

    /// A local interrupt from an LVT entry (fixed delivery, edge unless `level`).
    fn deliver_lvt(&mut self, entry: u32, level: bool) {
        if !self.hardware_enabled() || entry & lvt::MASKED != 0 {
            return;
        }
        self.accept(entry as u8, level);
    }

    /// Logs `bits` in the ESR and raises the LVT error interrupt (whose own illegal vector is
    /// not logged again).
    fn log_error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let entry = self.lvt[LVT_ERROR];
        if self.enabled() && entry & lvt::MASKED == 0 && entry as u8 >= 16 {
            self.irr.insert(entry as u8);
            self.tmr.remove(entry as u8);
        }
    }

    /// Sends the IPI in `command` to `destination`: to itself when the shorthand or the
    /// destination names it; the rest is recorded for [`Lapic::take_ipi`].
    fn send_ipi(&mut self, command: u32, destination: u32) {
        let vector = command as u8;
        let mode = command >> 8 & 7;
        let logical = command & 1 << 11 != 0;
        let assert = command & 1 << 14 != 0;
        let level = command & 1 << 15 != 0;
        let (to_self, to_others) = match command >> 18 & 3 {
            0 => {
                let own = self.matches_destination(destination, logical);
                (own, !own || logical || destination == self.broadcast())
            }
            1 => (true, false),
            2 => (true, true),
            _ => (false, true),
        };
        let fixed = mode == 0 || mode == 1;
        if fixed && vector < 16 {
            self.log_error(esr::SEND_ILLEGAL_VECTOR);
        }
        let handled = match mode {
            _ if !to_self => false,
            // A level-triggered de-assert delivers nothing.
            0 | 1 if level && !assert => true,
            0 | 1 => {
                self.accept(vector, level);
                true
            }
            4 => {
                self.nmi = self.hardware_enabled();
                true
            }
            _ => false,
        };
        if to_others || !handled {
            self.ipi = Some(Ipi {
                command,
                destination,
            });
        }
    }

    fn broadcast(&self) -> u32 {
        if self.x2apic_mode() {
            u32::MAX
        } else {
            0xff
        }
    }

    /// Whether a physical or logical destination names this APIC.
    fn matches_destination(&self, destination: u32, logical: bool) -> bool {
        if destination == self.broadcast() {
            return true;
        }
        if !logical {
            return destination == self.id();
        }
        if self.x2apic_mode() {
            return destination >> 16 == self.ldr >> 16 && destination & self.ldr & 0xffff != 0;
        }
        let id = self.ldr >> 24;
        match self.dfr >> 28 {
            0xf => id & destination != 0,
            0x0 => id >> 4 == destination >> 4 && id & destination & 0xf != 0,
            _ => false,
        }
    }

    /// The APIC ID in the current mode.
    fn id(&self) -> u32 {
        if self.x2apic_mode() {
            self.config.apic_id
        } else {
            u32::from(self.xapic_id)
        }
    }
}

/// The x2APIC logical ID: cluster (ID bits 31:4) in bits 31:16, one bit for ID bits 3:0.
pub fn x2apic_ldr(id: u32) -> u32 {
    (id >> 4) << 16 | 1 << (id & 0xf)
}
