use super::*;

fn outb(pic: &mut Pic, port: u16, value: u8) {
    pic.write(port, 1, u32::from(value));
}

fn inb(pic: &mut Pic, port: u16) -> u8 {
    pic.read(port, 1) as u8
}

/// Linux's `init_8259A`: mask all, ICW1-ICW4 on both chips (vectors 0x30 and 0x38, cascade on
/// IR2, 8086 mode), then unmask.
fn linux_init(auto_eoi: bool) -> Pic {
    let mut pic = Pic::new();
    outb(&mut pic, MASTER_DATA, 0xff);
    outb(&mut pic, SLAVE_DATA, 0xff);
    outb(&mut pic, MASTER_COMMAND, 0x11);
    outb(&mut pic, MASTER_DATA, 0x30);
    outb(&mut pic, MASTER_DATA, 1 << 2);
    outb(&mut pic, MASTER_DATA, if auto_eoi { 0x03 } else { 0x01 });
    outb(&mut pic, SLAVE_COMMAND, 0x11);
    outb(&mut pic, SLAVE_DATA, 0x38);
    outb(&mut pic, SLAVE_DATA, 2);
    outb(&mut pic, SLAVE_DATA, 0x01);
    outb(&mut pic, MASTER_DATA, 0x00);
    outb(&mut pic, SLAVE_DATA, 0x00);
    pic
}

fn pulse(pic: &mut Pic, irq: u8) {
    pic.set_line(irq, true);
    pic.set_line(irq, false);
}

fn isr(pic: &mut Pic, command: u16) -> u8 {
    outb(pic, command, 0x0b);
    let value = inb(pic, command);
    outb(pic, command, 0x0a);
    value
}

fn irr(pic: &mut Pic, command: u16) -> u8 {
    outb(pic, command, 0x0a);
    inb(pic, command)
}

#[test]
fn linux_probe_reads_back_the_mask() {
    let mut pic = Pic::new();
    outb(&mut pic, MASTER_DATA, 0xfb);
    assert_eq!(inb(&mut pic, MASTER_DATA), 0xfb);
    outb(&mut pic, SLAVE_DATA, 0xa5);
    assert_eq!(inb(&mut pic, SLAVE_DATA), 0xa5);
}

#[test]
fn timer_edge_is_delivered_once_until_eoi() {
    let mut pic = linux_init(false);
    assert!(!pic.output_level());
    assert_eq!(pic.pending_vector(), None);
    pulse(&mut pic, 0);
    assert!(pic.output_level());
    assert_eq!(pic.pending_vector(), Some(0x30));
    assert_eq!(pic.acknowledge(), 0x30);
    assert_eq!(isr(&mut pic, MASTER_COMMAND), 0x01);
    assert_eq!(irr(&mut pic, MASTER_COMMAND), 0x00);
    // A second tick while the first is in service waits for the EOI.
    pulse(&mut pic, 0);
    assert!(!pic.output_level());
    assert_eq!(irr(&mut pic, MASTER_COMMAND), 0x01);
    // Linux's mask_and_ack: specific EOI.
    outb(&mut pic, MASTER_COMMAND, 0x60);
    assert_eq!(isr(&mut pic, MASTER_COMMAND), 0);
    assert_eq!(pic.acknowledge(), 0x30);
}

#[test]
fn a_held_edge_line_interrupts_once() {
    let mut pic = linux_init(false);
    pic.set_line(4, true);
    assert_eq!(pic.acknowledge(), 0x34);
    outb(&mut pic, MASTER_COMMAND, 0x20);
    pic.set_line(4, true);
    assert!(!pic.output_level(), "no new edge");
    pic.set_line(4, false);
    pic.set_line(4, true);
    assert_eq!(pic.pending_vector(), Some(0x34));
}

#[test]
fn fixed_priority_and_nesting() {
    let mut pic = linux_init(false);
    pulse(&mut pic, 3);
    pulse(&mut pic, 1);
    assert_eq!(pic.acknowledge(), 0x31);
    // IRQ 3 is lower than IRQ 1 in service.
    assert!(!pic.output_level());
    // IRQ 0 preempts IRQ 1.
    pulse(&mut pic, 0);
    assert_eq!(pic.acknowledge(), 0x30);
    assert_eq!(isr(&mut pic, MASTER_COMMAND), 0x03);
    // Non-specific EOI ends the highest in service (IRQ 0), then IRQ 1; then IRQ 3 comes.
    outb(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(isr(&mut pic, MASTER_COMMAND), 0x02);
    assert!(!pic.output_level());
    outb(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(pic.acknowledge(), 0x33);
}

#[test]
fn masked_requests_wait_in_irr() {
    let mut pic = linux_init(false);
    outb(&mut pic, MASTER_DATA, 0x10);
    pulse(&mut pic, 4);
    assert!(!pic.output_level());
    assert_eq!(irr(&mut pic, MASTER_COMMAND), 0x10);
    outb(&mut pic, MASTER_DATA, 0x00);
    assert_eq!(pic.acknowledge(), 0x34);
}

#[test]
fn slave_requests_cascade_through_ir2() {
    let mut pic = linux_init(false);
    pulse(&mut pic, 8);
    assert!(pic.output_level());
    assert_eq!(pic.pending_vector(), Some(0x38));
    assert_eq!(pic.acknowledge(), 0x38);
    assert_eq!(isr(&mut pic, MASTER_COMMAND), 0x04);
    assert_eq!(isr(&mut pic, SLAVE_COMMAND), 0x01);
    // IRQ 12 waits behind IRQ 8 on the slave; the master's IR2 is in service too.
    pulse(&mut pic, 12);
    assert!(!pic.output_level());
    // Linux: EOI to the slave, then to the master's cascade input.
    outb(&mut pic, SLAVE_COMMAND, 0x60);
    outb(&mut pic, MASTER_COMMAND, 0x62);
    assert_eq!(pic.acknowledge(), 0x3c);
    // Masking the cascade input on the master holds every slave request.
    outb(&mut pic, SLAVE_COMMAND, 0x64);
    outb(&mut pic, MASTER_COMMAND, 0x62);
    outb(&mut pic, MASTER_DATA, 0x04);
    pulse(&mut pic, 14);
    assert!(!pic.output_level());
    outb(&mut pic, MASTER_DATA, 0x00);
    assert_eq!(pic.acknowledge(), 0x3e);
}

#[test]
fn master_inputs_above_the_cascade_wait_for_the_slave() {
    let mut pic = linux_init(false);
    pulse(&mut pic, 9);
    pulse(&mut pic, 3);
    assert_eq!(pic.acknowledge(), 0x39);
    assert!(!pic.output_level(), "IR3 ranks below IR2 in service");
    pulse(&mut pic, 1);
    assert_eq!(pic.acknowledge(), 0x31);
}

#[test]
fn level_lines_per_elcr_stay_requested_while_driven() {
    let mut pic = linux_init(false);
    outb(&mut pic, ELCR_SLAVE, 0x08); // IRQ 11 level-triggered.
    assert_eq!(inb(&mut pic, ELCR_SLAVE), 0x08);
    pic.set_line(11, true);
    assert_eq!(pic.acknowledge(), 0x3b);
    outb(&mut pic, SLAVE_COMMAND, 0x20);
    outb(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(pic.pending_vector(), Some(0x3b), "still driven");
    // A driver quiets the device before its EOI: then nothing is requested any more.
    assert_eq!(pic.acknowledge(), 0x3b);
    pic.set_line(11, false);
    outb(&mut pic, SLAVE_COMMAND, 0x20);
    outb(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(pic.pending_vector(), None);
}

#[test]
fn elcr_bits_of_system_lines_are_fixed_edge() {
    let mut pic = Pic::new();
    pic.write(ELCR_MASTER, 2, 0xffff);
    assert_eq!(pic.read(ELCR_MASTER, 2), 0xdef8);
}

#[test]
fn ltim_makes_every_line_level_triggered() {
    let mut pic = Pic::new();
    outb(&mut pic, MASTER_COMMAND, 0x19);
    outb(&mut pic, MASTER_DATA, 0x20);
    outb(&mut pic, MASTER_DATA, 0x04);
    outb(&mut pic, MASTER_DATA, 0x01);
    pic.set_line(5, true);
    assert_eq!(pic.acknowledge(), 0x25);
    outb(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(pic.pending_vector(), Some(0x25));
}

#[test]
fn a_vanished_request_is_spurious_irq7() {
    let mut pic = linux_init(false);
    outb(&mut pic, ELCR_MASTER, 0x20);
    pic.set_line(5, true);
    assert!(pic.output_level());
    pic.set_line(5, false);
    assert!(!pic.output_level());
    assert_eq!(pic.acknowledge(), 0x37);
    assert_eq!(isr(&mut pic, MASTER_COMMAND), 0, "spurious: no ISR bit");
}

#[test]
fn a_vanished_slave_request_is_spurious_irq15() {
    let mut pic = linux_init(false);
    outb(&mut pic, ELCR_SLAVE, 0x04); // IRQ 10.
    pic.set_line(10, true);
    pic.set_line(10, false);
    // The master latched the cascade edge; the slave has nothing.
    assert_eq!(pic.pending_vector(), Some(0x3f));
    assert_eq!(pic.acknowledge(), 0x3f);
    assert_eq!(isr(&mut pic, SLAVE_COMMAND), 0);
    assert_eq!(isr(&mut pic, MASTER_COMMAND), 0x04, "the master took IR2");
}

#[test]
fn auto_eoi_leaves_nothing_in_service() {
    let mut pic = linux_init(true);
    pulse(&mut pic, 0);
    assert_eq!(pic.acknowledge(), 0x30);
    assert_eq!(isr(&mut pic, MASTER_COMMAND), 0);
    pulse(&mut pic, 0);
    assert_eq!(pic.acknowledge(), 0x30, "no EOI needed");
}

#[test]
fn rotate_on_non_specific_eoi_makes_the_served_line_lowest() {
    let mut pic = linux_init(false);
    pulse(&mut pic, 0);
    assert_eq!(pic.acknowledge(), 0x30);
    outb(&mut pic, MASTER_COMMAND, 0xa0);
    pulse(&mut pic, 0);
    pulse(&mut pic, 1);
    assert_eq!(pic.acknowledge(), 0x31, "IRQ 0 now ranks lowest");
}

#[test]
fn set_priority_and_rotate_on_specific_eoi() {
    let mut pic = linux_init(false);
    outb(&mut pic, MASTER_COMMAND, 0xc3); // IR3 lowest, IR4 highest.
    pulse(&mut pic, 0);
    pulse(&mut pic, 4);
    assert_eq!(pic.acknowledge(), 0x34);
    outb(&mut pic, MASTER_COMMAND, 0xe4); // Rotate on specific EOI of IR4: IR5 highest.
    assert_eq!(isr(&mut pic, MASTER_COMMAND), 0);
    pulse(&mut pic, 6);
    assert_eq!(pic.acknowledge(), 0x36);
}

#[test]
fn rotate_in_auto_eoi_mode() {
    let mut pic = linux_init(true);
    outb(&mut pic, MASTER_COMMAND, 0x80);
    pulse(&mut pic, 0);
    assert_eq!(pic.acknowledge(), 0x30);
    pulse(&mut pic, 0);
    pulse(&mut pic, 1);
    assert_eq!(pic.acknowledge(), 0x31);
}

#[test]
fn special_mask_mode_lets_lower_priorities_in() {
    let mut pic = linux_init(false);
    pulse(&mut pic, 1);
    assert_eq!(pic.acknowledge(), 0x31);
    pulse(&mut pic, 5);
    assert!(!pic.output_level());
    outb(&mut pic, MASTER_DATA, 0x02);
    outb(&mut pic, MASTER_COMMAND, 0x68);
    assert_eq!(pic.acknowledge(), 0x35);
    outb(&mut pic, MASTER_COMMAND, 0x48);
    outb(&mut pic, MASTER_COMMAND, 0x65);
    outb(&mut pic, MASTER_DATA, 0x00);
    pulse(&mut pic, 6);
    assert!(!pic.output_level(), "IR1 in service blocks again");
}

#[test]
fn special_fully_nested_lets_the_slave_interrupt_itself() {
    let mut pic = Pic::new();
    for (port, value) in [(0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x11)] {
        outb(&mut pic, port, value);
    }
    for (port, value) in [(0xa0, 0x11), (0xa1, 0x38), (0xa1, 0x02), (0xa1, 0x01)] {
        outb(&mut pic, port, value);
    }
    pulse(&mut pic, 12);
    assert_eq!(pic.acknowledge(), 0x3c);
    pulse(&mut pic, 9);
    assert_eq!(pic.acknowledge(), 0x39);
}

#[test]
fn poll_command_acknowledges() {
    let mut pic = linux_init(false);
    outb(&mut pic, MASTER_COMMAND, 0x0c);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0, "nothing requested");
    pulse(&mut pic, 3);
    outb(&mut pic, MASTER_COMMAND, 0x0c);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x83);
    assert_eq!(isr(&mut pic, MASTER_COMMAND), 0x08);
    pulse(&mut pic, 13);
    outb(&mut pic, SLAVE_COMMAND, 0x0c);
    assert_eq!(inb(&mut pic, SLAVE_COMMAND), 0x85);
    assert!(!pic.output_level(), "the master no longer asks for IR2");
}

#[test]
fn icw1_resets_mask_service_and_edges() {
    let mut pic = linux_init(false);
    pulse(&mut pic, 0);
    pic.acknowledge();
    pulse(&mut pic, 3);
    outb(&mut pic, MASTER_DATA, 0x55);
    outb(&mut pic, MASTER_COMMAND, 0x11);
    outb(&mut pic, MASTER_DATA, 0x40);
    outb(&mut pic, MASTER_DATA, 0x04);
    outb(&mut pic, MASTER_DATA, 0x01);
    assert_eq!(inb(&mut pic, MASTER_DATA), 0);
    assert_eq!(isr(&mut pic, MASTER_COMMAND), 0);
    assert_eq!(irr(&mut pic, MASTER_COMMAND), 0);
    pulse(&mut pic, 3);
    assert_eq!(pic.acknowledge(), 0x43);
}

#[test]
fn single_mode_skips_icw3_and_has_no_cascade() {
    let mut pic = Pic::new();
    outb(&mut pic, MASTER_COMMAND, 0x13);
    outb(&mut pic, MASTER_DATA, 0x50);
    outb(&mut pic, MASTER_DATA, 0x01); // ICW4, not ICW3.
    assert_eq!(inb(&mut pic, MASTER_DATA), 0, "initialisation done");
    pulse(&mut pic, 9);
    assert!(!pic.output_level());
}

#[test]
fn line_2_and_lines_past_15_are_ignored() {
    let mut pic = linux_init(false);
    pic.set_line(2, true);
    pic.set_line(16, true);
    pic.set_line(255, true);
    assert!(!pic.output_level());
}

#[test]
fn any_access_is_safe() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let ports = [
        0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1, 0x1f, 0x4cf, 0x4d2, 0xffff,
    ];
    for _ in 0..4 {
        let mut pic = linux_init(false);
        for _ in 0..50_000 {
            let r = next();
            let port = ports[(r % ports.len() as u64) as usize];
            let size = [1, 2, 4, 0, 3, 8][((r >> 8) % 6) as usize];
            match (r >> 16) % 5 {
                0 => pic.write(port, size, (r >> 32) as u32),
                1 => {
                    pic.read(port, size);
                }
                2 => pic.set_line((r >> 24) as u8 % 20, r & (1 << 40) != 0),
                3 => {
                    let pending = pic.pending_vector();
                    assert_eq!(pending.is_some(), pic.output_level());
                    let vector = pic.acknowledge();
                    if let Some(pending) = pending {
                        assert_eq!(vector, pending);
                    }
                }
                _ => {
                    pic.read(port, size);
                }
            }
        }
    }
    let mut pic = Pic::new();
    assert_eq!(pic.read(0x22, 1), 0xff);
    assert_eq!(pic.read(0x4d1, 4), 0xffff_ff00);
}
