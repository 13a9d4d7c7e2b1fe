//! Interrupt acceptance, priority, acknowledge, EOI, IPIs and the error register, driven as
//! Linux drives them.

use super::tests::{apic, enabled, r, w, x2apic};
use super::*;

#[test]
fn x2apic_icr_and_self_ipi() {
    let mut a = x2apic();
    // Reserved ICR bits: 31:20, 17:16, 13.
    for bit in [13, 16, 17, 20, 31] {
        assert_eq!(
            a.wrmsr(msr::X2APIC_ICR, 0x40 | 1 << bit, 0),
            Err(Fault),
            "bit {bit}"
        );
    }
    // Fixed, physical, destination 0 (this APIC); busy reads clear.
    assert_eq!(a.wrmsr(msr::X2APIC_ICR, 0x40 | 1 << 12, 0), Ok(()));
    assert_eq!(a.rdmsr(msr::X2APIC_ICR, 0), Ok(0x40));
    assert_eq!(a.take_ipi(), None);
    assert_eq!(a.pending_vector(0), Some(0x40));
    // Destination 7 is another CPU.
    a.wrmsr(msr::X2APIC_ICR, 7 << 32 | 0x41, 0).unwrap();
    assert_eq!(a.rdmsr(msr::X2APIC_ICR, 0), Ok(7 << 32 | 0x41));
    assert_eq!(
        a.take_ipi(),
        Some(Ipi {
            command: 0x41,
            destination: 7
        })
    );
    assert_eq!(a.pending_vector(0), Some(0x40));
    // SELF_IPI takes a vector only.
    assert_eq!(a.wrmsr(msr::X2APIC_SELF_IPI, 0x100, 0), Err(Fault));
    assert_eq!(a.wrmsr(msr::X2APIC_SELF_IPI, 0x50, 0), Ok(()));
    assert_eq!(a.pending_vector(0), Some(0x50));
    assert_eq!(a.take_ipi(), None);
    // x2APIC broadcast reaches this APIC and the others.
    a.wrmsr(msr::X2APIC_ICR, 0xffff_ffff << 32 | 0x60, 0)
        .unwrap();
    assert_eq!(a.pending_vector(0), Some(0x60));
    assert!(a.take_ipi().is_some());
}

#[test]
fn xapic_icr_shorthands_and_destinations() {
    const SELF: u32 = 1 << 18;
    const ALL: u32 = 2 << 18;
    const OTHERS: u32 = 3 << 18;
    let mut a = enabled();
    w(&mut a, reg::ICR_HIGH, 0x0512_3456);
    assert_eq!(r(&mut a, reg::ICR_HIGH), 0x0500_0000);
    w(&mut a, reg::ICR_LOW, SELF | 0x31);
    assert_eq!(a.pending_vector(0), Some(0x31));
    assert_eq!(r(&mut a, reg::ICR_LOW), SELF | 0x31);
    assert_eq!(a.take_ipi(), None);
    w(&mut a, reg::ICR_LOW, OTHERS | 0x32);
    assert_eq!(a.pending_vector(0), Some(0x31));
    assert_eq!(a.take_ipi().map(|i| i.command), Some(OTHERS | 0x32));
    w(&mut a, reg::ICR_LOW, ALL | 0x33);
    assert_eq!(a.pending_vector(0), Some(0x33));
    assert!(a.take_ipi().is_some());
    // Physical destination 5 is another CPU; 0 (this one) is not; 0xff is everyone.
    w(&mut a, reg::ICR_LOW, 0x34);
    assert_eq!(a.take_ipi().map(|i| i.destination), Some(5));
    assert_eq!(a.pending_vector(0), Some(0x33));
    w(&mut a, reg::ICR_HIGH, 0);
    w(&mut a, reg::ICR_LOW, 0x35);
    assert_eq!((a.pending_vector(0), a.take_ipi()), (Some(0x35), None));
    w(&mut a, reg::ICR_HIGH, 0xff00_0000);
    w(&mut a, reg::ICR_LOW, 0x36);
    assert_eq!(a.pending_vector(0), Some(0x36));
    assert!(a.take_ipi().is_some());
    // Logical flat: LDR bit 1 matches mask 0x02, not 0x04.
    w(&mut a, reg::LDR, 0x0200_0000);
    w(&mut a, reg::ICR_HIGH, 0x0400_0000);
    w(&mut a, reg::ICR_LOW, 1 << 11 | 0x37);
    assert_eq!(a.pending_vector(0), Some(0x36));
    w(&mut a, reg::ICR_HIGH, 0x0200_0000);
    w(&mut a, reg::ICR_LOW, 1 << 11 | 0x38);
    assert_eq!(a.pending_vector(0), Some(0x38));
    // Logical cluster (DFR model 0): cluster 0, member bit 1.
    w(&mut a, reg::DFR, 0x0fff_ffff);
    w(&mut a, reg::LDR, 0x1200_0000);
    w(&mut a, reg::ICR_HIGH, 0x1200_0000);
    w(&mut a, reg::ICR_LOW, 1 << 11 | 0x39);
    assert_eq!(a.pending_vector(0), Some(0x39));
    w(&mut a, reg::ICR_HIGH, 0x2200_0000);
    w(&mut a, reg::ICR_LOW, 1 << 11 | 0x3a);
    assert_eq!(a.pending_vector(0), Some(0x39));
    // Level-triggered de-assert delivers nothing; level assert sets the TMR.
    w(&mut a, reg::ICR_LOW, SELF | 1 << 15 | 0x70);
    assert_eq!(a.pending_vector(0), Some(0x39));
    w(&mut a, reg::ICR_LOW, SELF | 1 << 15 | 1 << 14 | 0x70);
    assert_eq!(a.pending_vector(0), Some(0x70));
    assert_eq!(r(&mut a, reg::TMR + 0x30), 1 << 16);
}

#[test]
fn self_nmi_init_and_sipi() {
    let mut a = enabled();
    w(&mut a, reg::ICR_LOW, 1 << 18 | 4 << 8);
    assert!(a.take_nmi());
    assert!(!a.take_nmi());
    assert_eq!(a.take_ipi(), None);
    assert_eq!(a.pending_vector(0), None);
    for mode in [2, 5, 6] {
        w(&mut a, reg::ICR_LOW, 1 << 18 | mode << 8 | 0x10);
        assert_eq!(a.take_ipi().map(|i| i.command >> 8 & 7), Some(mode));
    }
    assert_eq!(a.pending_vector(0), None);
}

#[test]
fn priority_tpr_ppr_and_nesting() {
    let mut a = enabled();
    assert!(a.accept(0x31, false));
    assert!(a.accept(0x51, false));
    assert_eq!(a.pending_vector(0), Some(0x51));
    assert_eq!(a.acknowledge(0x51), 0x51);
    assert_eq!(r(&mut a, reg::PPR), 0x50);
    assert_eq!(r(&mut a, reg::ISR + 0x20), 1 << 0x11);
    assert_eq!(r(&mut a, reg::IRR + 0x20), 0);
    // Same class as the one in service: held; a higher class nests.
    a.accept(0x5f, false);
    assert_eq!(a.pending_vector(0), None);
    a.accept(0x61, false);
    assert_eq!(a.pending_vector(0), Some(0x61));
    assert_eq!(a.acknowledge(0x61), 0x61);
    assert_eq!(a.ppr(), 0x60);
    assert_eq!(a.eoi().map(|e| e.vector), Some(0x61));
    assert_eq!(a.pending_vector(0), None);
    assert_eq!(a.eoi().map(|e| e.vector), Some(0x51));
    assert_eq!(a.pending_vector(0), Some(0x5f));
    // The TPR: PPR is the TPR when its class is at least the ISR's.
    w(&mut a, reg::TPR, 0x5f);
    assert_eq!(r(&mut a, reg::PPR), 0x5f);
    assert_eq!(a.pending_vector(0), None);
    w(&mut a, reg::TPR, 0x4f);
    assert_eq!(a.pending_vector(0), Some(0x5f));
    a.acknowledge(0x5f);
    assert_eq!(a.ppr(), 0x50);
    w(&mut a, reg::TPR, 0x45);
    assert_eq!(a.ppr(), 0x50);
    // Same class as the in-service vector: PPR is the whole TPR.
    w(&mut a, reg::TPR, 0x5a);
    assert_eq!(r(&mut a, reg::PPR), 0x5a);
    w(&mut a, reg::TPR, 0x45);
    a.eoi();
    assert_eq!(a.ppr(), 0x45);
    assert_eq!(a.pending_vector(0), None);
    w(&mut a, reg::TPR, 0);
    assert_eq!(a.pending_vector(0), Some(0x31));
    // CR8 is TPR bits 7:4.
    a.set_cr8(0x7);
    assert_eq!(r(&mut a, reg::TPR), 0x70);
    w(&mut a, reg::TPR, 0x9a);
    assert_eq!(a.cr8(), 9);
}

#[test]
fn acknowledge_of_a_vector_no_longer_deliverable_is_spurious() {
    let mut a = enabled();
    w(&mut a, reg::SVR, 0x1ef);
    a.accept(0x41, false);
    assert_eq!(a.pending_vector(0), Some(0x41));
    w(&mut a, reg::TPR, 0x80);
    assert_eq!(a.acknowledge(0x41), 0xef);
    assert_eq!(r(&mut a, reg::ISR + 0x20), 0);
    assert_eq!(r(&mut a, reg::IRR + 0x20), 1 << 1);
    w(&mut a, reg::TPR, 0);
    assert_eq!(a.acknowledge(0x42), 0xef);
    assert_eq!(a.acknowledge(0x41), 0x41);
}

#[test]
fn eoi_reports_level_triggered_vectors_for_the_ioapic() {
    let mut a = enabled();
    assert_eq!(a.eoi(), None);
    a.accept(0x92, true);
    a.accept(0x81, false);
    assert_eq!(r(&mut a, reg::TMR + 0x40), 1 << 0x12);
    let v = a.pending_vector(0).unwrap();
    a.acknowledge(v);
    let v = a.pending_vector(0);
    assert_eq!(v, None, "0x81 waits behind 0x92");
    w(&mut a, reg::EOI, 0);
    assert_eq!(
        a.take_eoi(),
        Some(Eoi {
            vector: 0x92,
            level_triggered: true
        })
    );
    assert_eq!(a.take_eoi(), None);
    let v = a.pending_vector(0).unwrap();
    a.acknowledge(v);
    w(&mut a, reg::EOI, 0);
    assert_eq!(
        a.take_eoi(),
        Some(Eoi {
            vector: 0x81,
            level_triggered: false
        })
    );
    // EOI with nothing in service: nothing to broadcast.
    w(&mut a, reg::EOI, 0);
    assert_eq!(a.take_eoi(), None);
    // An edge message for a vector clears its TMR bit.
    a.accept(0x92, false);
    assert_eq!(r(&mut a, reg::TMR + 0x40), 0);
}

#[test]
fn lint0_routes_the_8259() {
    let mut a = enabled();
    // Linux on an IOAPIC system masks ExtINT on LINT0 ...
    w(&mut a, reg::LVT_LINT0, lvt::EXTINT | lvt::MASKED);
    assert!(!a.lint0_is_extint() && !a.accepts_pic_interrupt());
    // ... and in PIC mode leaves it open; NMI mode is not ExtINT.
    w(&mut a, reg::LVT_LINT0, lvt::EXTINT);
    assert!(a.lint0_is_extint() && a.accepts_pic_interrupt());
    w(&mut a, reg::LVT_LINT0, lvt::NMI);
    assert!(!a.accepts_pic_interrupt());
}

#[test]
fn esr_logs_illegal_vectors_write_then_read() {
    let mut a = enabled();
    w(&mut a, reg::LVT_ERROR, 0xfe);
    assert!(!a.accept(0x0e, false));
    // Nothing shows until the ESR is written.
    assert_eq!(r(&mut a, reg::ESR), 0);
    w(&mut a, reg::ESR, 0);
    assert_eq!(r(&mut a, reg::ESR), esr::RECEIVE_ILLEGAL_VECTOR);
    // The error interrupt was raised.
    assert_eq!(a.pending_vector(0), Some(0xfe));
    assert_eq!(r(&mut a, reg::IRR + 0x70), 1 << 30);
    w(&mut a, reg::ESR, 0);
    assert_eq!(r(&mut a, reg::ESR), 0);
    // A self-IPI with vector 3: sent and received illegal.
    w(&mut a, reg::ICR_LOW, 1 << 18 | 3);
    w(&mut a, reg::ESR, 0);
    assert_eq!(
        r(&mut a, reg::ESR),
        esr::SEND_ILLEGAL_VECTOR | esr::RECEIVE_ILLEGAL_VECTOR
    );
    assert_eq!(r(&mut a, reg::IRR), 0);
    // A timer LVT with an illegal vector, and an error LVT with one: logged, never raised.
    let mut b = enabled();
    w(&mut b, reg::LVT_ERROR, 0x05);
    w(&mut b, reg::LVT_TIMER, 0x07);
    w(&mut b, reg::TIMER_DIVIDE, 0xb);
    w(&mut b, reg::TIMER_INITIAL, 10);
    b.advance(10);
    w(&mut b, reg::ESR, 0);
    assert_eq!(r(&mut b, reg::ESR), esr::RECEIVE_ILLEGAL_VECTOR);
    assert_eq!(b.pending_vector(10), None);
    assert_eq!((r(&mut b, reg::IRR), r(&mut b, reg::ISR)), (0, 0));
}

#[test]
fn linux_bsp_setup_sequence() {
    // setup_local_APIC + lapic_setup_esr + end_local_APIC_setup on the BSP, xAPIC mode.
    let mut a = apic();
    // A leftover interrupt in service from before (kexec): Linux EOIs until the ISR is clear.
    w(&mut a, reg::SVR, 0x1ff);
    a.accept(0x30, false);
    let v = a.pending_vector(0).unwrap();
    a.acknowledge(v);
    // TPR 0x10 blocks vectors 0x00-0x1f during setup.
    let tpr = r(&mut a, reg::TPR) & !0xff | 0x10;
    w(&mut a, reg::TPR, tpr);
    for _ in 0..512 {
        if (0..8).all(|i| r(&mut a, reg::ISR + i * 0x10) == 0) {
            break;
        }
        w(&mut a, reg::EOI, 0);
    }
    assert_eq!(r(&mut a, reg::ISR + 0x10), 0);
    assert_eq!(a.take_eoi().map(|e| e.vector), Some(0x30));
    let spiv = r(&mut a, reg::SVR) & !0xff | SVR_ENABLE | 0xff;
    w(&mut a, reg::SVR, spiv);
    // LINT0: open ExtINT on CPU 0 if it was not masked (KVM's reset leaves it open).
    let masked = r(&mut a, reg::LVT_LINT0) & lvt::MASKED;
    let lint0 = if masked == 0 {
        lvt::EXTINT
    } else {
        lvt::EXTINT | lvt::MASKED
    };
    w(&mut a, reg::LVT_LINT0, lint0);
    w(&mut a, reg::LVT_LINT1, lvt::NMI);
    assert!(a.lint0_is_extint());
    // lapic_setup_esr.
    w(&mut a, reg::ESR, 0);
    let before = r(&mut a, reg::ESR);
    w(&mut a, reg::LVT_ERROR, 0xfe);
    w(&mut a, reg::ESR, 0);
    assert_eq!((before, r(&mut a, reg::ESR)), (0, 0));
    assert_eq!(r(&mut a, reg::LVT_ERROR), 0xfe);
    // A device interrupt through the IOAPIC, handled and EOId.
    assert!(a.accept(0x21, true));
    assert_eq!(a.pending_vector(0), Some(0x21));
    assert_eq!(a.acknowledge(0x21), 0x21);
    w(&mut a, reg::EOI, 0);
    assert_eq!(a.take_eoi().map(|e| e.level_triggered), Some(true));
}
