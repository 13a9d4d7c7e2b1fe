use super::*;

fn read_register(ioapic: &mut Ioapic, index: u8) -> u32 {
    ioapic.write(offset::SELECT, 4, u64::from(index));
    ioapic.read(offset::WINDOW, 4) as u32
}

fn write_register(ioapic: &mut Ioapic, index: u8, value: u32) {
    ioapic.write(offset::SELECT, 4, u64::from(index));
    ioapic.write(offset::WINDOW, 4, u64::from(value));
}

/// Linux's `ioapic_write_entry`: the high half (destination) first, then the low half.
fn program(ioapic: &mut Ioapic, pin: u8, low: u32, destination: u8) {
    write_register(
        ioapic,
        reg::REDIRECTION + 2 * pin + 1,
        u32::from(destination) << 24,
    );
    write_register(ioapic, reg::REDIRECTION + 2 * pin, low);
}

fn all(ioapic: &mut Ioapic) -> Vec<Delivery> {
    core::iter::from_fn(|| ioapic.pop_delivery()).collect()
}

const LEVEL: u32 = entry::LEVEL as u32;
const MASKED: u32 = entry::MASKED as u32;
const REMOTE_IRR: u32 = entry::REMOTE_IRR as u32;

#[test]
fn identification_registers() {
    let mut ioapic = Ioapic::new();
    assert_eq!(read_register(&mut ioapic, reg::VERSION), 0x0017_0020);
    assert_eq!(read_register(&mut ioapic, reg::ID), 0);
    write_register(&mut ioapic, reg::ID, 0x0f00_0000 | 0xf0ff_ffff);
    assert_eq!(read_register(&mut ioapic, reg::ID), 0x0f00_0000);
    assert_eq!(read_register(&mut ioapic, reg::ARBITRATION), 0x0f00_0000);
    write_register(&mut ioapic, reg::VERSION, 0);
    assert_eq!(read_register(&mut ioapic, reg::VERSION), VERSION);
    assert_eq!(ioapic.read(offset::SELECT, 4), u64::from(reg::VERSION));
}

#[test]
fn entries_reset_masked_and_others_read_all_ones() {
    let mut ioapic = Ioapic::new();
    for pin in 0..PINS as u8 {
        assert_eq!(
            read_register(&mut ioapic, reg::REDIRECTION + 2 * pin),
            MASKED
        );
        assert_eq!(
            read_register(&mut ioapic, reg::REDIRECTION + 2 * pin + 1),
            0
        );
    }
    for index in [0x03, 0x0f, 0x40, 0xff] {
        assert_eq!(
            read_register(&mut ioapic, index),
            u32::MAX,
            "register {index:#x}"
        );
    }
    assert_eq!(ioapic.read(0x20, 4), 0xffff_ffff);
    assert_eq!(
        ioapic.read(offset::EOI, 4),
        0xffff_ffff,
        "the EOI register is write-only"
    );
}

#[test]
fn edge_pin_delivers_each_assertion() {
    // The PIT through pin 2, as Linux routes IRQ 0 with the ACPI override.
    let mut ioapic = Ioapic::new();
    program(&mut ioapic, 2, 0x30, 0);
    assert_eq!(read_register(&mut ioapic, reg::REDIRECTION + 4), 0x30);
    ioapic.set_line(2, true);
    let expected = Delivery {
        pin: 2,
        vector: 0x30,
        mode: DeliveryMode::Fixed,
        level_triggered: false,
        logical: false,
        destination: 0,
    };
    assert_eq!(all(&mut ioapic), vec![expected]);
    ioapic.set_line(2, true);
    assert_eq!(all(&mut ioapic), vec![], "no new edge");
    ioapic.set_line(2, false);
    ioapic.set_line(2, true);
    assert_eq!(all(&mut ioapic), vec![expected]);
    // No EOI is needed, and an EOI changes nothing.
    ioapic.end_of_interrupt(0x30);
    assert_eq!(all(&mut ioapic), vec![]);
}

#[test]
fn masked_edges_are_lost() {
    let mut ioapic = Ioapic::new();
    program(&mut ioapic, 4, 0x34 | MASKED, 0);
    ioapic.set_line(4, true);
    assert_eq!(ioapic.pop_delivery(), None);
    program(&mut ioapic, 4, 0x34, 0);
    assert_eq!(
        ioapic.pop_delivery(),
        None,
        "unmasking an edge pin delivers nothing"
    );
    ioapic.set_line(4, false);
    ioapic.set_line(4, true);
    assert_eq!(ioapic.pop_delivery().map(|d| d.vector), Some(0x34));
}

#[test]
fn level_pin_waits_for_eoi_and_redelivers_while_asserted() {
    let mut ioapic = Ioapic::new();
    let low = 0x41 | LEVEL | entry::ACTIVE_LOW as u32;
    program(&mut ioapic, 9, low, 1);
    ioapic.set_line(9, true);
    let delivered = ioapic.pop_delivery().unwrap();
    assert_eq!(
        (
            delivered.vector,
            delivered.level_triggered,
            delivered.destination
        ),
        (0x41, true, 1)
    );
    assert_eq!(
        read_register(&mut ioapic, reg::REDIRECTION + 18),
        low | REMOTE_IRR
    );
    // While the remote IRR is set nothing more goes out, whatever the line does.
    ioapic.set_line(9, false);
    ioapic.set_line(9, true);
    assert_eq!(ioapic.pop_delivery(), None);
    // The EOI with the line still asserted delivers again.
    ioapic.end_of_interrupt(0x41);
    assert_eq!(ioapic.pop_delivery().map(|d| d.pin), Some(9));
    // The handler quiets the device before its EOI: nothing more.
    ioapic.set_line(9, false);
    ioapic.end_of_interrupt(0x41);
    assert_eq!(ioapic.pop_delivery(), None);
    assert_eq!(read_register(&mut ioapic, reg::REDIRECTION + 18), low);
}

#[test]
fn eoi_of_another_vector_changes_nothing() {
    let mut ioapic = Ioapic::new();
    program(&mut ioapic, 10, 0x50 | LEVEL, 0);
    ioapic.set_line(10, true);
    ioapic.pop_delivery();
    ioapic.end_of_interrupt(0x51);
    assert_eq!(
        read_register(&mut ioapic, reg::REDIRECTION + 20) & REMOTE_IRR,
        REMOTE_IRR
    );
}

#[test]
fn eoi_register_is_the_directed_eoi() {
    let mut ioapic = Ioapic::new();
    program(&mut ioapic, 11, 0x52 | LEVEL, 0);
    ioapic.set_line(11, true);
    ioapic.pop_delivery();
    ioapic.write(offset::EOI, 4, 0x52);
    assert_eq!(ioapic.pop_delivery().map(|d| d.vector), Some(0x52));
}

#[test]
fn unmasking_an_asserted_level_pin_delivers() {
    let mut ioapic = Ioapic::new();
    program(&mut ioapic, 16, 0x60 | LEVEL | MASKED, 0);
    ioapic.set_line(16, true);
    assert_eq!(ioapic.pop_delivery(), None);
    program(&mut ioapic, 16, 0x60 | LEVEL, 0);
    assert_eq!(ioapic.pop_delivery().map(|d| d.vector), Some(0x60));
}

#[test]
fn read_only_bits_ignore_writes_and_edge_clears_remote_irr() {
    let mut ioapic = Ioapic::new();
    program(
        &mut ioapic,
        5,
        0x70 | REMOTE_IRR | entry::DELIVERY_STATUS as u32,
        0,
    );
    assert_eq!(read_register(&mut ioapic, reg::REDIRECTION + 10), 0x70);
    program(&mut ioapic, 5, 0x70 | LEVEL, 0);
    ioapic.set_line(5, true);
    ioapic.pop_delivery();
    program(&mut ioapic, 5, 0x70 | LEVEL, 0);
    assert_eq!(
        read_register(&mut ioapic, reg::REDIRECTION + 10),
        0x70 | LEVEL | REMOTE_IRR
    );
    program(&mut ioapic, 5, 0x70, 0);
    assert_eq!(read_register(&mut ioapic, reg::REDIRECTION + 10), 0x70);
}

#[test]
fn delivery_modes_and_destinations_are_reported() {
    let mut ioapic = Ioapic::new();
    program(&mut ioapic, 0, 7 << 8, 0); // ExtINT: the 8259A's output through pin 0.
    program(&mut ioapic, 1, 4 << 8 | entry::LOGICAL as u32, 0x03);
    program(&mut ioapic, 3, 0x33 | 1 << 8, 0xff);
    ioapic.set_line(0, true);
    ioapic.set_line(1, true);
    ioapic.set_line(3, true);
    let got = all(&mut ioapic);
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].mode, DeliveryMode::ExtInt);
    assert_eq!(
        (got[1].mode, got[1].logical, got[1].destination),
        (DeliveryMode::Nmi, true, 3)
    );
    assert_eq!(
        (got[2].mode, got[2].vector, got[2].destination),
        (DeliveryMode::LowestPriority, 0x33, 0xff)
    );
    assert_eq!(DeliveryMode::from_bits(3), DeliveryMode::Reserved(3));
    assert_eq!(DeliveryMode::from_bits(2), DeliveryMode::Smi);
    assert_eq!(DeliveryMode::from_bits(5), DeliveryMode::Init);
}

#[test]
fn pending_deliveries_of_one_pin_merge() {
    let mut ioapic = Ioapic::new();
    program(&mut ioapic, 7, 0x37, 0);
    for _ in 0..3 {
        ioapic.set_line(7, true);
        ioapic.set_line(7, false);
    }
    assert_eq!(all(&mut ioapic).len(), 1);
}

#[test]
fn byte_accesses_and_page_mirrors() {
    let mut ioapic = Ioapic::new();
    ioapic.write(0x100 + offset::SELECT, 1, u64::from(reg::REDIRECTION + 2));
    ioapic.write(offset::WINDOW + 1, 1, 0x80); // Level bit (15) through the second byte.
    ioapic.write(offset::WINDOW, 1, 0x44);
    assert_eq!(
        ioapic.read(offset::WINDOW, 4),
        u64::from(0x44 | LEVEL | MASKED)
    );
    assert_eq!(ioapic.read(0xf00 + offset::WINDOW + 2, 1), 0x01);
    assert_eq!(ioapic.read(offset::SELECT, 8), 0xffff_ffff_0000_0012);
    // An 8-byte read at the window: the window, then four bytes of nothing.
    assert_eq!(ioapic.read(offset::WINDOW, 8), 0xffff_ffff_0001_8044);
}

#[test]
fn pins_past_23_are_ignored() {
    let mut ioapic = Ioapic::new();
    ioapic.set_line(24, true);
    ioapic.set_line(255, true);
    assert_eq!(ioapic.pop_delivery(), None);
    assert_eq!(ioapic.entry(24), None);
    assert_eq!(ioapic.entry(23), Some(entry::MASKED));
}

#[test]
fn any_access_is_safe() {
    let mut seed = 0x5eed_1234_abcd_0001u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut ioapic = Ioapic::new();
    for _ in 0..200_000 {
        let r = next();
        let offset = match r % 4 {
            0 => 0x00,
            1 => 0x10,
            2 => 0x40,
            _ => (r >> 4) & 0xfff,
        } + ((r >> 16) & 3);
        let size = [1, 2, 4, 8, 0, 3][((r >> 20) % 6) as usize];
        match (r >> 24) % 5 {
            0 | 1 => ioapic.write(offset, size, next()),
            2 => {
                ioapic.read(offset, size);
            }
            3 => ioapic.set_line((r >> 32) as u8 % 30, r & (1 << 40) != 0),
            _ => ioapic.end_of_interrupt((r >> 32) as u8),
        }
        while let Some(delivery) = ioapic.pop_delivery() {
            assert!(usize::from(delivery.pin) < PINS);
        }
    }
}
