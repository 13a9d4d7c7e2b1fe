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
//! a periodic timer fires at most every [`MIN_PERIODIC_NS`]; disabling the APIC keeps
//! its registers. Where KVM records nothing, this model follows the SDM: the ESR logs illegal
//! vectors (0-15) sent and received and raises the LVT error interrupt, and a nonzero x2APIC
//! EOI write is #GP. Not modelled: thermal, performance-counter and LINT1 sources, the
//! arbitration priority (APR reads 0), remote read, level-triggered LINT inputs.

mod access;
mod interrupts;
mod timer;
mod vectors;

#[cfg(test)]
mod interrupt_tests;
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
}

/// The x2APIC logical ID: cluster (ID bits 31:4) in bits 31:16, one bit for ID bits 3:0.
pub fn x2apic_ldr(id: u32) -> u32 {
    (id >> 4) << 16 | 1 << (id & 0xf)
}
