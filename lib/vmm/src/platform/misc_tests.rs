use super::*;

#[test]
fn linux_cf9_reboot_sequence_resets_on_the_second_write() {
    let mut chipset = Chipset::new();
    // arch/x86/kernel/reboot.c: cf9 = inb(0xcf9) & ~6; outb(cf9|2); udelay; outb(cf9|6).
    let cf9 = chipset.read(RESET_CONTROL_PORT, 1) as u8 & !0x06;
    assert_eq!(
        chipset.write(RESET_CONTROL_PORT, 1, u32::from(cf9 | 2)),
        None
    );
    assert_eq!(chipset.read(RESET_CONTROL_PORT, 1), 0x02);
    assert_eq!(
        chipset.write(RESET_CONTROL_PORT, 1, u32::from(cf9 | 6)),
        Some(Event::Reset)
    );
    // RST_CPU self-clears; the reset type stays.
    assert_eq!(chipset.read(RESET_CONTROL_PORT, 1), 0x02);
    assert_eq!(
        chipset.write(RESET_CONTROL_PORT, 1, 0x0e),
        Some(Event::Reset)
    );
    assert_eq!(chipset.read(RESET_CONTROL_PORT, 1), 0x0a);
}

#[test]
fn pci_config_mechanism_one_finds_no_device() {
    let mut chipset = Chipset::new();
    // pci_check_type1: outb(0x01, 0xcfb); tmp = inl(0xcf8); outl(0x80000000, 0xcf8); inl(0xcf8).
    assert_eq!(chipset.write(0xcfb, 1, 0x01), None);
    assert_eq!(chipset.read(PCI_CONFIG_ADDRESS, 4), 0);
    chipset.write(PCI_CONFIG_ADDRESS, 4, 0x8000_0000);
    assert_eq!(chipset.read(PCI_CONFIG_ADDRESS, 4), 0x8000_0000);
    // Vendor/device of bus 0 device 0 and every other register: no device.
    for port in PCI_CONFIG_DATA..=0xcff {
        assert_eq!(chipset.read(port, 1), 0xff);
        assert_eq!(chipset.read(port, 2), 0xffff);
        chipset.write(port, 4, 0x1234_5678);
    }
    assert_eq!(chipset.read(PCI_CONFIG_DATA, 4), 0xffff_ffff);
    // A byte access to 0xcf8 is not the address register.
    chipset.write(PCI_CONFIG_ADDRESS, 1, 0x12);
    assert_eq!(chipset.read(PCI_CONFIG_ADDRESS, 4), 0x8000_0000);
    assert_eq!(chipset.read(PCI_CONFIG_ADDRESS, 2), 0xffff);
}

#[test]
fn post_codes_are_kept_and_read_all_ones() {
    let mut chipset = Chipset::new();
    assert_eq!(chipset.write(POST_PORT, 1, 0x42), None);
    assert_eq!(chipset.post_code(), 0x42);
    assert_eq!(chipset.read(POST_PORT, 1), 0xff);
    assert!(Chipset::claims(0x80) && Chipset::claims(0xcf9) && !Chipset::claims(0xd00));
}

fn command(kbc: &mut I8042, byte: u8) -> Option<Event> {
    assert_eq!(kbc.status() & i8042_status::INPUT_FULL, 0);
    kbc.write(I8042_COMMAND_PORT, 1, u32::from(byte))
}

fn result(kbc: &mut I8042) -> u8 {
    assert_ne!(
        kbc.read(I8042_COMMAND_PORT, 1) as u8 & i8042_status::OUTPUT_FULL,
        0
    );
    kbc.read(I8042_DATA_PORT, 1) as u8
}

#[test]
fn linux_i8042_probe() {
    let mut kbc = I8042::new();
    // i8042_flush: nothing waiting.
    assert_eq!(kbc.status() & i8042_status::OUTPUT_FULL, 0);
    assert_ne!(kbc.read(I8042_COMMAND_PORT, 1), 0xff);
    // Self-test.
    command(&mut kbc, 0xaa);
    assert_eq!(result(&mut kbc), 0x55);
    assert_eq!(kbc.status() & i8042_status::OUTPUT_FULL, 0);
    // Read the configuration twice, write it back with interrupts off.
    command(&mut kbc, 0x20);
    let ctr = result(&mut kbc);
    command(&mut kbc, 0x20);
    assert_eq!(result(&mut kbc), ctr);
    assert_ne!(ctr & CTR_SYSTEM_FLAG, 0);
    command(&mut kbc, 0x60);
    kbc.write(
        I8042_DATA_PORT,
        1,
        u32::from(ctr & !(CTR_KBD_INT | CTR_AUX_INT)),
    );
    command(&mut kbc, 0x20);
    assert_eq!(result(&mut kbc), ctr & !(CTR_KBD_INT | CTR_AUX_INT));
    // i8042_check_aux: echo 0x5a through the mouse side; toggle the mouse port.
    command(&mut kbc, 0xd3);
    kbc.write(I8042_DATA_PORT, 1, 0x5a);
    assert_ne!(kbc.status() & i8042_status::AUX_DATA, 0);
    assert_eq!(result(&mut kbc), 0x5a);
    command(&mut kbc, 0xa7);
    command(&mut kbc, 0x20);
    assert_ne!(result(&mut kbc) & CTR_AUX_DISABLE, 0);
    command(&mut kbc, 0xa8);
    command(&mut kbc, 0x20);
    assert_eq!(result(&mut kbc) & CTR_AUX_DISABLE, 0);
    command(&mut kbc, 0xa9);
    assert_eq!(result(&mut kbc), 0x00);
    command(&mut kbc, 0xab);
    assert_eq!(result(&mut kbc), 0x00);
}

#[test]
fn absent_devices_time_out() {
    let mut kbc = I8042::new();
    // atkbd's GET ID goes to the keyboard: nobody answers.
    kbc.write(I8042_DATA_PORT, 1, 0xf2);
    let status = kbc.status();
    assert_ne!(status & i8042_status::TIMEOUT, 0);
    assert_eq!(status & i8042_status::AUX_DATA, 0);
    assert!(kbc.keyboard_irq_level());
    assert!(!kbc.aux_irq_level());
    assert_eq!(result(&mut kbc), 0xfe);
    assert_eq!(kbc.status() & i8042_status::TIMEOUT, 0);
    assert!(!kbc.keyboard_irq_level());
    // The same for the mouse, on IRQ 12.
    command(&mut kbc, 0xd4);
    kbc.write(I8042_DATA_PORT, 1, 0xf2);
    assert!(kbc.aux_irq_level());
    assert_ne!(kbc.status() & i8042_status::AUX_DATA, 0);
    assert_eq!(result(&mut kbc), 0xfe);
    // With interrupts off in the configuration, no line rises.
    command(&mut kbc, 0x60);
    kbc.write(I8042_DATA_PORT, 1, 0);
    kbc.write(I8042_DATA_PORT, 1, 0xf2);
    assert!(!kbc.keyboard_irq_level());
}

#[test]
fn reset_pulse_and_output_port() {
    let mut kbc = I8042::new();
    assert_eq!(command(&mut kbc, 0xfe), Some(Event::Reset));
    // Pulses that leave line 0 alone do nothing.
    assert_eq!(command(&mut kbc, 0xff), None);
    assert_eq!(command(&mut kbc, 0xfd), None);
    command(&mut kbc, 0xd0);
    let out = result(&mut kbc);
    assert!(kbc.a20());
    command(&mut kbc, 0xd1);
    assert_eq!(
        kbc.write(I8042_DATA_PORT, 1, u32::from(out & !OUTPUT_A20)),
        None
    );
    assert!(!kbc.a20());
    command(&mut kbc, 0xd1);
    assert_eq!(
        kbc.write(I8042_DATA_PORT, 1, u32::from(out & !OUTPUT_RESET_LINE)),
        Some(Event::Reset)
    );
}

#[test]
fn any_access_is_safe() {
    let mut kbc = I8042::new();
    let mut chipset = Chipset::new();
    let mut seed = 0x1234_5678_9abc_def0u64;
    for _ in 0..100_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = if seed & 1 == 0 {
            0x60 + (seed >> 8) as u16 % 8
        } else {
            0xcf8 + (seed >> 8) as u16 % 8
        };
        let size = [1, 2, 4, 3][(seed >> 20) as usize % 4];
        let value = (seed >> 32) as u32;
        if seed & 2 == 0 {
            let v = kbc.read(port, size) | chipset.read(port, size);
            assert!(v <= all_ones(size) || size == 3);
        } else {
            kbc.write(port, size, value);
            chipset.write(port, size, value);
        }
    }
}
