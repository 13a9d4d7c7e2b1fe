//! The guest's two ways into the APIC's registers, the xAPIC page and the x2APIC MSRs, over
//! one register file; and the other MSRs the APIC answers.

use super::timer::LVT_MODE_MASK;
use super::{
    lvt, msr, reg, Fault, Lapic, LVT_ERROR, LVT_LINT0, LVT_LINT1, LVT_PERF, LVT_THERMAL, VERSION,
};

/// ICR busy (delivery status): always clear, the send is immediate.
const ICR_BUSY: u32 = 1 << 12;
/// x2APIC ICR bits that must be zero (KVM: 31:20, 17:16, 13).
const X2APIC_ICR_RESERVED: u64 = 0xfff0_0000 | 3 << 16 | 1 << 13;

/// Writable bits of each LVT register.
const LVT_TIMER_BITS: u32 = lvt::VECTOR | lvt::MASKED | LVT_MODE_MASK;
const LVT_LOCAL_BITS: u32 = lvt::VECTOR | lvt::DELIVERY_MODE | lvt::MASKED;
const LVT_LINT_BITS: u32 = LVT_LOCAL_BITS | lvt::POLARITY | lvt::LEVEL;
const LVT_ERROR_BITS: u32 = lvt::VECTOR | lvt::MASKED;

/// The other LVT registers: offset, index in `Lapic::lvt`, writable bits.
const LVTS: [(u32, usize, u32); 5] = [
    (reg::LVT_THERMAL, LVT_THERMAL, LVT_LOCAL_BITS),
    (reg::LVT_PERF, LVT_PERF, LVT_LOCAL_BITS),
    (reg::LVT_LINT0, LVT_LINT0, LVT_LINT_BITS),
    (reg::LVT_LINT1, LVT_LINT1, LVT_LINT_BITS),
    (reg::LVT_ERROR, LVT_ERROR, LVT_ERROR_BITS),
];

/// The bytes `size` selects of a value.
fn size_mask(size: u8) -> u64 {
    match size {
        0 => 0,
        1..=7 => (1 << (u32::from(size) * 8)) - 1,
        _ => u64::MAX,
    }
}

impl Lapic {
    /// Reads `size` bytes at `offset` in the xAPIC page.
    pub fn read(&mut self, offset: u64, size: u8, now_ns: u64) -> u64 {
        if !self.hardware_enabled() || self.x2apic_mode() {
            return size_mask(size);
        }
        let within = (offset & 0xf) as u32;
        if !matches!(size, 1 | 2 | 4) || within + u32::from(size) > 4 || offset > 0x3f0 {
            return 0;
        }
        match self.read_register(offset as u32 & !0xf, now_ns) {
            Some(value) => u64::from(value >> (within * 8)) & size_mask(size),
            None => 0,
        }
    }

    /// Writes `size` bytes of `value` at `offset` in the xAPIC page.
    pub fn write(&mut self, offset: u64, size: u8, value: u64, now_ns: u64) {
        if !self.hardware_enabled() || self.x2apic_mode() {
            return;
        }
        if size != 4 || offset & 0xf != 0 || offset > 0x3f0 {
            return;
        }
        // Writes of read-only and reserved registers are dropped.
        let _ = self.write_register(offset as u32, value as u32, now_ns);
    }

    /// RDMSR of one of the APIC's MSRs ([`super::handles_msr`]); other MSRs are #GP.
    pub fn rdmsr(&mut self, index: u32, now_ns: u64) -> Result<u64, Fault> {
        match index {
            msr::APIC_BASE => Ok(self.apic_base),
            msr::TSC_DEADLINE if self.hardware_enabled() => {
                self.advance(now_ns);
                Ok(self.timer.tsc_deadline())
            }
            msr::TSC_DEADLINE => Ok(0),
            msr::X2APIC_FIRST..=msr::X2APIC_LAST if self.x2apic_mode() => {
                if index == msr::X2APIC_ICR {
                    return Ok(u64::from(self.icr_high) << 32 | u64::from(self.icr_low));
                }
                let offset = (index - msr::X2APIC_FIRST) << 4;
                let value = self.read_register(offset, now_ns).ok_or(Fault)?;
                Ok(u64::from(value))
            }
            _ => Err(Fault),
        }
    }

    /// WRMSR of one of the APIC's MSRs ([`super::handles_msr`]); other MSRs are #GP.
    pub fn wrmsr(&mut self, index: u32, value: u64, now_ns: u64) -> Result<(), Fault> {
        match index {
            msr::APIC_BASE => self.set_apic_base(value),
            msr::TSC_DEADLINE => {
                if self.hardware_enabled() {
                    self.advance(now_ns);
                    self.timer.set_tsc_deadline(value, now_ns);
                    self.advance(now_ns);
                }
                Ok(())
            }
            msr::X2APIC_FIRST..=msr::X2APIC_LAST if self.x2apic_mode() => {
                if index == msr::X2APIC_ICR {
                    if value & X2APIC_ICR_RESERVED != 0 {
                        return Err(Fault);
                    }
                    self.set_icr(value as u32, (value >> 32) as u32);
                    return Ok(());
                }
                let offset = (index - msr::X2APIC_FIRST) << 4;
                if value >> 32 != 0 || offset == reg::EOI && value != 0 {
                    return Err(Fault);
                }
                self.write_register(offset, value as u32, now_ns)
            }
            _ => Err(Fault),
        }
    }

    /// A readable register (16-byte aligned `offset`) in the current mode; None for reserved
    /// and write-only ones.
    fn read_register(&mut self, offset: u32, now_ns: u64) -> Option<u32> {
        let x2apic = self.x2apic_mode();
        let value = match offset {
            reg::ID if x2apic => self.config.apic_id,
            reg::ID => u32::from(self.xapic_id) << 24,
            reg::VERSION => VERSION,
            reg::TPR => u32::from(self.tpr),
            reg::APR if !x2apic => 0,
            reg::PPR => u32::from(self.ppr()),
            reg::LDR => self.ldr,
            reg::DFR if !x2apic => self.dfr,
            reg::SVR => self.svr,
            0x100..=0x170 => self.isr.word((offset - reg::ISR) as usize / 16),
            0x180..=0x1f0 => self.tmr.word((offset - reg::TMR) as usize / 16),
            0x200..=0x270 => self.irr.word((offset - reg::IRR) as usize / 16),
            reg::ESR => self.esr,
            reg::ICR_LOW => self.icr_low,
            reg::ICR_HIGH if !x2apic => self.icr_high,
            reg::LVT_TIMER => self.timer.lvt,
            reg::TIMER_INITIAL => self.timer.initial_count(),
            reg::TIMER_CURRENT => {
                self.advance(now_ns);
                self.timer.current_count(now_ns)
            }
            reg::TIMER_DIVIDE => self.timer.divide_config(),
            _ => {
                let &(_, index, _) = LVTS.iter().find(|(at, _, _)| *at == offset)?;
                self.lvt[index]
            }
        };
        Some(value)
    }

    /// Writes a register (16-byte aligned `offset`) in the current mode. `Err` for read-only
    /// and reserved registers and for values x2APIC mode refuses: #GP from an MSR, dropped
    /// from the page.
    fn write_register(&mut self, offset: u32, value: u32, now_ns: u64) -> Result<(), Fault> {
        let x2apic = self.x2apic_mode();
        self.advance(now_ns);
        match offset {
            reg::ID if !x2apic => self.xapic_id = (value >> 24) as u8,
            reg::TPR => self.tpr = value as u8,
            reg::EOI => {
                self.eoi();
            }
            reg::LDR if !x2apic => self.ldr = value & 0xff00_0000,
            reg::DFR if !x2apic => self.dfr = value | 0x0fff_ffff,
            reg::SVR => self.set_svr(value),
            reg::ESR if x2apic && value != 0 => return Err(Fault),
            reg::ESR => self.esr = core::mem::take(&mut self.esr_pending),
            reg::ICR_LOW if !x2apic => self.set_icr(value, self.icr_high),
            reg::ICR_HIGH if !x2apic => self.icr_high = value & 0xff00_0000,
            reg::LVT_TIMER => {
                let value = self.lvt_value(value, LVT_TIMER_BITS);
                self.timer.set_lvt(value);
            }
            reg::TIMER_INITIAL => {
                self.timer.set_initial_count(value, now_ns);
                self.advance(now_ns);
            }
            reg::TIMER_DIVIDE => self.timer.set_divide_config(value, now_ns),
            reg::SELF_IPI if x2apic && value <= 0xff => self.send_ipi(1 << 18 | value, 0),
            _ => {
                let &(_, index, bits) =
                    LVTS.iter().find(|(at, _, _)| *at == offset).ok_or(Fault)?;
                self.lvt[index] = self.lvt_value(value, bits);
            }
        }
        Ok(())
    }

    /// An LVT value as stored: its writable bits, masked while the APIC is software disabled.
    fn lvt_value(&self, value: u32, bits: u32) -> u32 {
        let forced = if self.software_enabled() {
            0
        } else {
            lvt::MASKED
        };
        (value | forced) & bits
    }

    /// SVR: vector, enable, focus-check disable (bits 9:0; no directed EOI). Clearing the
    /// enable bit masks every LVT entry.
    fn set_svr(&mut self, value: u32) {
        self.svr = value & 0x3ff;
        if !self.software_enabled() {
            for entry in &mut self.lvt {
                *entry |= lvt::MASKED;
            }
            self.timer.lvt |= lvt::MASKED;
        }
    }

    /// Writes the ICR (the busy bit reads clear: delivery is immediate) and sends the IPI.
    fn set_icr(&mut self, low: u32, high: u32) {
        self.icr_low = low & !ICR_BUSY;
        self.icr_high = high;
        let destination = if self.x2apic_mode() { high } else { high >> 24 };
        self.send_ipi(self.icr_low, destination);
    }
}
