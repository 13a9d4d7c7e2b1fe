//! Registers, MSRs, `IA32_APIC_BASE` and interrupt delivery, driven as Linux and KVM's tests
//! drive them.

use super::*;

pub(super) const TSC_HZ: u64 = 2_500_000_000;

pub(super) fn apic() -> Lapic {
    Lapic::new(Config::new(TSC_HZ))
}

/// Software enabled with spurious vector 0xff, as Linux leaves it.
pub(super) fn enabled() -> Lapic {
    let mut a = apic();
    w(&mut a, reg::SVR, 0x1ff);
    a
}

pub(super) fn r(a: &mut Lapic, offset: u32) -> u32 {
    a.read(u64::from(offset), 4, 0) as u32
}

pub(super) fn w(a: &mut Lapic, offset: u32, value: u32) {
    a.write(u64::from(offset), 4, u64::from(value), 0);
}

pub(super) fn x2apic() -> Lapic {
    let mut a = enabled();
    a.wrmsr(msr::APIC_BASE, base::RESET | base::X2APIC, 0)
        .unwrap();
    a
}

pub(super) fn x2_msr(offset: u32) -> u32 {
    msr::X2APIC_FIRST + offset / 16
}

#[test]
fn reset_state_is_kvms() {
    let mut a = apic();
    assert_eq!(a.apic_base(), 0xfee0_0900);
    assert_eq!(a.mmio_base(), 0xfee0_0000);
    assert!(a.hardware_enabled() && !a.software_enabled() && !a.x2apic_mode());
    assert_eq!(r(&mut a, reg::ID), 0);
    assert_eq!(r(&mut a, reg::VERSION), 0x0005_0014);
    assert_eq!(r(&mut a, reg::SVR), 0xff);
    assert_eq!(r(&mut a, reg::DFR), 0xffff_ffff);
    for offset in [
        reg::TPR,
        reg::PPR,
        reg::LDR,
        reg::ESR,
        reg::ICR_LOW,
        reg::ICR_HIGH,
    ] {
        assert_eq!(r(&mut a, offset), 0, "{offset:#x}");
    }
    for offset in [
        reg::LVT_TIMER,
        reg::LVT_THERMAL,
        reg::LVT_PERF,
        reg::LVT_LINT1,
        reg::LVT_ERROR,
    ] {
        assert_eq!(r(&mut a, offset), lvt::MASKED, "{offset:#x}");
    }
    assert_eq!(r(&mut a, reg::LVT_LINT0), lvt::EXTINT);
    assert!(a.lint0_is_extint() && a.accepts_pic_interrupt());
    for offset in [reg::TIMER_INITIAL, reg::TIMER_CURRENT, reg::TIMER_DIVIDE] {
        assert_eq!(r(&mut a, offset), 0, "{offset:#x}");
    }
    assert_eq!(a.next_deadline_ns(), None);

    // An AP starts with LINT0 masked; reset() brings back all of the above.
    let mut ap = Lapic::new(Config {
        apic_id: 5,
        bsp: false,
        ..Config::new(TSC_HZ)
    });
    assert_eq!(ap.apic_base(), 0xfee0_0800);
    assert_eq!(r(&mut ap, reg::ID), 5 << 24);
    assert!(!ap.lint0_is_extint());
    let mut b = enabled();
    w(&mut b, reg::TPR, 0x20);
    w(&mut b, reg::LVT_LINT0, lvt::MASKED);
    b.accept(0x40, true);
    b.wrmsr(msr::APIC_BASE, 0xfec0_0800 | base::X2APIC, 0)
        .unwrap();
    b.reset();
    assert_eq!(b.apic_base(), 0xfee0_0900);
    assert_eq!(r(&mut b, reg::TPR), 0);
    assert_eq!(r(&mut b, reg::IRR + 0x20), 0);
    assert_eq!(r(&mut b, reg::TMR + 0x20), 0);
    assert_eq!(r(&mut b, reg::LVT_LINT0), lvt::EXTINT);
}

#[test]
fn read_only_registers_ignore_writes() {
    // Linux's verify_local_APIC: the version does not change, the xAPIC ID does.
    let mut a = enabled();
    w(&mut a, reg::VERSION, VERSION ^ 0x00ff_00ff);
    assert_eq!(r(&mut a, reg::VERSION), VERSION);
    w(&mut a, reg::ID, 0x0f00_0000);
    assert_eq!(r(&mut a, reg::ID), 0x0f00_0000);
    a.accept(0x40, false);
    for offset in [
        reg::PPR,
        reg::IRR + 0x20,
        reg::ISR,
        reg::TMR,
        reg::TIMER_CURRENT,
    ] {
        w(&mut a, offset, 0xffff_ffff);
    }
    assert_eq!(r(&mut a, reg::PPR), 0);
    assert_eq!(r(&mut a, reg::IRR + 0x20), 1);
    assert_eq!(r(&mut a, reg::ISR), 0);
    assert_eq!(r(&mut a, reg::TIMER_CURRENT), 0);
}

#[test]
fn reads_of_parts_reserved_and_write_only_registers() {
    let mut a = Lapic::new(Config {
        apic_id: 0x12,
        ..Config::new(TSC_HZ)
    });
    assert_eq!(a.read(0x23, 1, 0), 0x12);
    assert_eq!(a.read(0x22, 2, 0), 0x1200);
    assert_eq!(a.read(0x30, 2, 0), 0x14);
    assert_eq!(a.read(0x32, 1, 0), 0x05);
    // Crossing the register, 8 bytes, odd sizes: 0, as KVM.
    assert_eq!(a.read(0x22, 4, 0), 0);
    assert_eq!(a.read(0x20, 8, 0), 0);
    assert_eq!(a.read(0x20, 3, 0), 0);
    // Reserved, write-only (EOI, RRD, self-IPI, CMCI absent) and past 0x3f0: 0.
    for offset in [
        0x00,
        0x40,
        reg::EOI,
        reg::RRD,
        0x290,
        reg::LVT_CMCI,
        0x3a0,
        0x3f0,
        0x400,
    ] {
        assert_eq!(r(&mut a, offset), 0, "{offset:#x}");
    }
    assert_eq!(a.read(0xffc, 4, 0), 0);
    // The APR reads 0 in xAPIC mode.
    assert_eq!(a.read(u64::from(reg::APR), 4, 0), 0);
}

#[test]
fn writes_must_be_aligned_dwords() {
    let mut a = enabled();
    a.write(u64::from(reg::TPR), 1, 0x40, 0);
    a.write(u64::from(reg::TPR) + 4, 4, 0x40, 0);
    a.write(u64::from(reg::TPR), 8, 0x40, 0);
    assert_eq!(r(&mut a, reg::TPR), 0);
    a.write(u64::from(reg::TPR), 4, 0xffff_ff40, 0);
    assert_eq!(r(&mut a, reg::TPR), 0x40);
    // The self-IPI register does not exist in xAPIC mode, nor the CMCI LVT.
    w(&mut a, reg::SELF_IPI, 0x40);
    assert_eq!(a.pending_vector(0), None);
    w(&mut a, reg::LVT_CMCI, 0x40);
    assert_eq!(r(&mut a, reg::LVT_CMCI), 0);
}

#[test]
fn logical_destination_registers() {
    let mut a = enabled();
    w(&mut a, reg::LDR, 0x0123_4567);
    assert_eq!(r(&mut a, reg::LDR), 0x0100_0000);
    w(&mut a, reg::DFR, 0);
    assert_eq!(r(&mut a, reg::DFR), 0x0fff_ffff);
    w(&mut a, reg::DFR, 0xffff_ffff);
    assert_eq!(r(&mut a, reg::DFR), 0xffff_ffff);
}

#[test]
fn disabled_apic_reads_all_ones_and_delivers_nothing() {
    let mut a = enabled();
    w(&mut a, reg::TPR, 0x20);
    w(&mut a, reg::LVT_LINT0, lvt::EXTINT | lvt::MASKED);
    a.accept(0x40, false);
    assert!(!a.accepts_pic_interrupt());
    a.wrmsr(msr::APIC_BASE, 0xfee0_0000, 0).unwrap();
    assert!(!a.hardware_enabled());
    assert_eq!(a.read(u64::from(reg::TPR), 4, 0), 0xffff_ffff);
    assert_eq!(a.read(u64::from(reg::VERSION), 1, 0), 0xff);
    assert_eq!(a.read(0x20, 8, 0), u64::MAX);
    w(&mut a, reg::TPR, 0x50);
    assert_eq!(a.pending_vector(0), None);
    assert!(!a.accept(0x50, false));
    // The 8259 goes straight to the CPU, whatever LINT0 says.
    assert!(!a.lint0_is_extint() && a.accepts_pic_interrupt());
    // Re-enabled, it kept its registers (as KVM) and its pending vector.
    a.wrmsr(msr::APIC_BASE, 0xfee0_0800, 0).unwrap();
    assert_eq!(r(&mut a, reg::TPR), 0x20);
    assert_eq!(a.pending_vector(0), Some(0x40));
    assert!(!a.accepts_pic_interrupt());
}

#[test]
fn apic_base_transitions() {
    let mut a = enabled();
    let xapic = base::RESET;
    let x2 = base::RESET | base::X2APIC;
    let disabled = 0xfee0_0000;
    // x2APIC without the enable bit is invalid; reserved bits are #GP.
    assert_eq!(
        a.wrmsr(msr::APIC_BASE, disabled | base::X2APIC, 0),
        Err(Fault)
    );
    for bit in [0, 7, 9, 52, 63] {
        assert_eq!(
            a.wrmsr(msr::APIC_BASE, xapic | 1 << bit, 0),
            Err(Fault),
            "bit {bit}"
        );
    }
    assert_eq!(a.apic_base(), xapic);
    // xAPIC -> x2APIC -> (no way back to xAPIC) -> disabled -> (not straight to x2APIC) ->
    // xAPIC.
    assert_eq!(a.wrmsr(msr::APIC_BASE, x2, 0), Ok(()));
    assert!(a.x2apic_mode());
    assert_eq!(a.wrmsr(msr::APIC_BASE, x2, 0), Ok(()));
    assert_eq!(a.wrmsr(msr::APIC_BASE, xapic, 0), Err(Fault));
    assert_eq!(a.wrmsr(msr::APIC_BASE, disabled, 0), Ok(()));
    assert_eq!(
        a.wrmsr(msr::APIC_BASE, disabled | base::X2APIC | base::ENABLE, 0),
        Err(Fault)
    );
    assert_eq!(a.wrmsr(msr::APIC_BASE, xapic, 0), Ok(()));
    assert!(a.hardware_enabled() && !a.x2apic_mode());
    // BSP is read-only; the page moves.
    assert_eq!(a.wrmsr(msr::APIC_BASE, 0xfed0_0800, 0), Ok(()));
    assert_eq!(a.rdmsr(msr::APIC_BASE, 0), Ok(0xfed0_0900));
    assert_eq!(a.mmio_base(), 0xfed0_0000);
    // A guest with a 36-bit physical address space, and one not offered x2APIC.
    let mut narrow = Lapic::new(Config {
        phys_addr_bits: 36,
        x2apic: false,
        ..Config::new(TSC_HZ)
    });
    assert_eq!(narrow.wrmsr(msr::APIC_BASE, 0xf_fee0_0900, 0), Ok(()));
    assert_eq!(narrow.wrmsr(msr::APIC_BASE, 0x10_fee0_0900, 0), Err(Fault));
    assert_eq!(
        narrow.wrmsr(msr::APIC_BASE, base::RESET | base::X2APIC, 0),
        Err(Fault)
    );
}

#[test]
fn reenabling_restores_the_xapic_id() {
    let mut a = Lapic::new(Config {
        apic_id: 3,
        ..Config::new(TSC_HZ)
    });
    w(&mut a, reg::ID, 0x0900_0000);
    a.wrmsr(msr::APIC_BASE, 0xfee0_0000, 0).unwrap();
    a.wrmsr(msr::APIC_BASE, base::RESET, 0).unwrap();
    assert_eq!(r(&mut a, reg::ID), 0x0300_0000);
}

#[test]
fn msrs_the_apic_answers() {
    assert!(handles_msr(0x1b) && handles_msr(0x6e0) && handles_msr(0x800) && handles_msr(0x8ff));
    assert!(!handles_msr(0x7ff) && !handles_msr(0x900) && !handles_msr(0x10));
    let mut a = enabled();
    assert_eq!(a.rdmsr(0x10, 0), Err(Fault));
    assert_eq!(a.wrmsr(0x10, 0, 0), Err(Fault));
    // x2APIC MSRs outside x2APIC mode are #GP.
    assert_eq!(a.rdmsr(x2_msr(reg::VERSION), 0), Err(Fault));
    assert_eq!(a.wrmsr(x2_msr(reg::TPR), 0, 0), Err(Fault));
}

#[test]
fn x2apic_registers() {
    let mut a = Lapic::new(Config {
        apic_id: 0x23,
        ..Config::new(TSC_HZ)
    });
    w(&mut a, reg::SVR, 0x1ff);
    a.wrmsr(msr::APIC_BASE, base::RESET | base::X2APIC, 0)
        .unwrap();
    assert_eq!(a.rdmsr(x2_msr(reg::ID), 0), Ok(0x23));
    assert_eq!(a.rdmsr(x2_msr(reg::LDR), 0), Ok(2 << 16 | 1 << 3));
    assert_eq!(a.rdmsr(x2_msr(reg::VERSION), 0), Ok(u64::from(VERSION)));
    assert_eq!(a.rdmsr(x2_msr(reg::SVR), 0), Ok(0x1ff));
    // The page is gone.
    assert_eq!(a.read(u64::from(reg::VERSION), 4, 0), 0xffff_ffff);
    // Not readable in x2APIC mode: APR, EOI, RRD, DFR, ICR2, self-IPI, CMCI, beyond 0x83f.
    for offset in [
        reg::APR,
        reg::EOI,
        reg::RRD,
        reg::DFR,
        reg::ICR_HIGH,
        reg::SELF_IPI,
    ] {
        assert_eq!(a.rdmsr(x2_msr(offset), 0), Err(Fault), "{offset:#x}");
    }
    assert_eq!(a.rdmsr(x2_msr(reg::LVT_CMCI), 0), Err(Fault));
    assert_eq!(a.rdmsr(0x840, 0), Err(Fault));
    assert_eq!(a.rdmsr(0x8ff, 0), Err(Fault));
    // Read-only, derived or absent in x2APIC mode: writes are #GP.
    for offset in [
        reg::ID,
        reg::VERSION,
        reg::APR,
        reg::PPR,
        reg::RRD,
        reg::LDR,
        reg::DFR,
        reg::ISR,
        reg::TMR + 0x10,
        reg::IRR + 0x70,
        reg::ICR_HIGH,
        reg::LVT_CMCI,
        reg::TIMER_CURRENT,
    ] {
        assert_eq!(a.wrmsr(x2_msr(offset), 0, 0), Err(Fault), "{offset:#x}");
    }
    // Bits 63:32 are reserved; EOI and ESR take only 0.
    assert_eq!(a.wrmsr(x2_msr(reg::TPR), 1 << 32, 0), Err(Fault));
    assert_eq!(a.wrmsr(x2_msr(reg::EOI), 1, 0), Err(Fault));
    assert_eq!(a.wrmsr(x2_msr(reg::EOI), 0, 0), Ok(()));
    assert_eq!(a.wrmsr(x2_msr(reg::ESR), 1, 0), Err(Fault));
    assert_eq!(a.wrmsr(x2_msr(reg::ESR), 0, 0), Ok(()));
    assert_eq!(a.wrmsr(x2_msr(reg::TPR), 0x30, 0), Ok(()));
    assert_eq!(a.rdmsr(x2_msr(reg::TPR), 0), Ok(0x30));
    assert_eq!(a.rdmsr(x2_msr(reg::PPR), 0), Ok(0x30));
    assert_eq!(a.wrmsr(x2_msr(reg::LVT_TIMER), 0x2_00ef, 0), Ok(()));
    assert_eq!(a.rdmsr(x2_msr(reg::LVT_TIMER), 0), Ok(0x2_00ef));
}

#[test]
fn software_disable_masks_lvts_and_refuses_interrupts() {
    let mut a = apic();
    assert!(!a.accept(0x40, false));
    // LVT writes while disabled keep the mask bit.
    w(&mut a, reg::LVT_TIMER, 0xec);
    assert_eq!(r(&mut a, reg::LVT_TIMER), lvt::MASKED | 0xec);
    w(&mut a, reg::SVR, 0xffff_ffff);
    assert_eq!(r(&mut a, reg::SVR), 0x3ff, "no directed-EOI bit");
    w(&mut a, reg::LVT_ERROR, 0xfe);
    w(&mut a, reg::LVT_LINT1, lvt::NMI);
    w(&mut a, reg::LVT_TIMER, 0x2_00ec);
    assert_eq!(r(&mut a, reg::LVT_ERROR), 0xfe);
    w(&mut a, reg::SVR, 0xff);
    for offset in [
        reg::LVT_TIMER,
        reg::LVT_ERROR,
        reg::LVT_LINT1,
        reg::LVT_LINT0,
    ] {
        assert_ne!(r(&mut a, offset) & lvt::MASKED, 0, "{offset:#x}");
    }
    assert_eq!(r(&mut a, reg::LVT_TIMER), 0x3_00ec);
    assert!(!a.lint0_is_extint());
}

#[test]
fn lvt_writable_bits() {
    let mut a = enabled();
    for (offset, bits) in [
        (reg::LVT_TIMER, 0x0007_00ff),
        (reg::LVT_THERMAL, 0x0001_07ff),
        (reg::LVT_PERF, 0x0001_07ff),
        (reg::LVT_LINT0, 0x0001_a7ff),
        (reg::LVT_LINT1, 0x0001_a7ff),
        (reg::LVT_ERROR, 0x0001_00ff),
    ] {
        w(&mut a, offset, 0xffff_ffff);
        assert_eq!(r(&mut a, offset), bits, "{offset:#x}");
    }
}

/// A small xorshift generator: reproducible inputs without a crate.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Mostly interesting values: small, register-shaped, all-ones, random.
    pub(super) fn value(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => u64::MAX,
            2 => self.below(0x100),
            3 => self.below(0x8_0000) | 0x100,
            4 => self.next() & 0xffff_ffff,
            _ => self.next(),
        }
    }
}

#[test]
fn any_access_is_safe_and_keeps_invariants() {
    let mut rng = Rng::new(0x5eed_1a71c);
    for round in 0..40 {
        let mut a = Lapic::new(Config {
            apic_id: rng.below(300) as u32,
            tsc_hz: rng.below(5_000_000_000),
            bus_hz: rng.below(2_000_000_000),
            bsp: round % 2 == 0,
            x2apic: round % 3 != 0,
            phys_addr_bits: rng.below(64) as u8,
        });
        let mut now = 0u64;
        for _ in 0..5_000 {
            now = match rng.below(50) {
                0 => u64::MAX - rng.below(1000),
                1 => now.saturating_sub(rng.below(1_000_000)),
                _ => now.saturating_add(rng.below(1_000_000)),
            };
            match rng.below(12) {
                0 => {
                    let size = rng.below(10) as u8;
                    a.read(rng.below(0x1010), size, now);
                }
                1 | 2 => {
                    let offset = rng.below(0x40) * 16;
                    a.write(offset, 4, rng.value(), now);
                }
                3 => {
                    let size = rng.below(10) as u8;
                    a.write(rng.below(0x1010), size, rng.value(), now);
                }
                4 => {
                    let index = match rng.below(5) {
                        0 => msr::APIC_BASE,
                        1 => {
                            let modes = [0, base::ENABLE, base::ENABLE | base::X2APIC];
                            let value = base::RESET & base::ADDRESS | modes[rng.below(3) as usize];
                            let _ = a.wrmsr(msr::APIC_BASE, value, now);
                            continue;
                        }
                        2 => msr::TSC_DEADLINE,
                        3 => rng.next() as u32,
                        _ => msr::X2APIC_FIRST + rng.below(0x100) as u32,
                    };
                    if rng.below(2) == 0 {
                        let _ = a.rdmsr(index, now);
                    } else {
                        let _ = a.wrmsr(index, rng.value(), now);
                    }
                }
                5 => {
                    a.accept(rng.next() as u8, rng.below(2) == 0);
                }
                6 => {
                    if let Some(v) = a.pending_vector(now) {
                        assert!(v & 0xf0 > a.ppr());
                        assert_eq!(a.acknowledge(v), v);
                    }
                }
                7 => {
                    a.acknowledge(rng.next() as u8);
                }
                8 => {
                    a.eoi();
                    a.take_eoi();
                }
                9 => a.set_cr8(rng.next()),
                10 => {
                    a.advance(now);
                    if let Some(deadline) = a.next_deadline_ns() {
                        assert!(deadline > now || now == u64::MAX);
                    }
                }
                _ => {
                    if rng.below(100) == 0 {
                        a.reset();
                    }
                    a.take_ipi();
                    a.take_nmi();
                }
            }
            assert!(a.ppr() >= a.tpr & 0xf0);
            // x2APIC mode without the enable bit is never reached.
            assert!(a.hardware_enabled() || a.apic_base() & base::X2APIC == 0);
            if !a.hardware_enabled() || a.x2apic_mode() {
                assert_eq!(a.read(u64::from(reg::VERSION), 4, now), 0xffff_ffff);
            }
        }
    }
}
