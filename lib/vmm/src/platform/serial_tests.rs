use super::*;

const B: u16 = COM1_BASE;

fn rd(s: &mut Serial, offset: u16) -> u8 {
    s.read(0, B + offset, 1) as u8
}

fn wr(s: &mut Serial, offset: u16, value: u8) {
    s.write(0, B + offset, 1, u32::from(value));
}

#[test]
fn linux_autoconfig_finds_a_16550a() {
    let mut s = Serial::com1();
    // Existence test: IER holds its low nibble.
    let scratch = rd(&mut s, reg::IER);
    wr(&mut s, reg::IER, 0);
    assert_eq!(rd(&mut s, reg::IER) & 0x0f, 0);
    wr(&mut s, reg::IER, 0x0f);
    assert_eq!(rd(&mut s, reg::IER) & 0x0f, 0x0f);
    wr(&mut s, reg::IER, scratch);
    // Loopback: RTS and OUT2 come back as CTS and DCD.
    let save_mcr = rd(&mut s, reg::MCR);
    wr(&mut s, reg::MCR, mcr::LOOPBACK | 0x0a);
    assert_eq!(rd(&mut s, reg::MSR) & 0xf0, 0x90);
    wr(&mut s, reg::MCR, save_mcr);
    // EFR probe (LCR 0xbf): offset 2 is still the IIR, not 0.
    wr(&mut s, reg::LCR, 0xbf);
    wr(&mut s, reg::IIR_FCR, 0);
    wr(&mut s, reg::LCR, 0);
    wr(&mut s, reg::IIR_FCR, fcr::ENABLE);
    assert_eq!(rd(&mut s, reg::IIR_FCR) >> 6, 3, "16550A");
    wr(&mut s, reg::LCR, 0xbf);
    assert_ne!(rd(&mut s, reg::IIR_FCR), 0, "no EFR");
    // TI16750 probe: IIR bit 5 never follows FCR bit 5.
    wr(&mut s, reg::LCR, 0);
    wr(&mut s, reg::IIR_FCR, fcr::ENABLE | 0x20);
    assert_eq!(rd(&mut s, reg::IIR_FCR) & 0xe0, 0xc0);
    wr(&mut s, reg::LCR, lcr::DLAB);
    wr(&mut s, reg::IIR_FCR, fcr::ENABLE | 0x20);
    assert_eq!(rd(&mut s, reg::IIR_FCR) & 0xe0, 0xc0);
    // Scratch register.
    wr(&mut s, reg::LCR, 0x03);
    wr(&mut s, reg::SCR, 0xa5);
    assert_eq!(rd(&mut s, reg::SCR), 0xa5);
}

#[test]
fn divisor_latch_and_line_control() {
    let mut s = Serial::com1();
    wr(&mut s, reg::LCR, lcr::DLAB | 0x03);
    wr(&mut s, reg::DATA, 0x0c);
    wr(&mut s, reg::IER, 0x01);
    assert_eq!(s.divisor(), 0x10c);
    assert_eq!(rd(&mut s, reg::DATA), 0x0c);
    assert_eq!(rd(&mut s, reg::IER), 0x01);
    wr(&mut s, reg::LCR, 0x03);
    assert_eq!(rd(&mut s, reg::IER), 0, "IER untouched by the latch");
    assert_eq!(rd(&mut s, reg::LCR), 0x03);
    assert!(s.take_output().is_empty());
    // 8N1 is 10 bits; at 9600 baud (divisor 12) a character takes 1.0417 ms.
    wr(&mut s, reg::LCR, lcr::DLAB);
    s.write(0, B, 2, 12);
    wr(&mut s, reg::LCR, 0x03);
    assert_eq!(s.character_time_ns(), 1_041_666);
    wr(&mut s, reg::LCR, 0x0f); // 8 data bits, 2 stop bits, parity: 12 bits
    assert_eq!(s.character_time_ns(), 1_250_000);
    wr(&mut s, reg::LCR, 0x04); // 5 data bits, 1.5 stop bits: 7.5 bits
    assert_eq!(s.character_time_ns(), 781_250);
}

#[test]
fn transmit_and_thre_interrupt() {
    let mut s = Serial::com1();
    assert_eq!(
        rd(&mut s, reg::LSR),
        lsr::THR_EMPTY | lsr::TRANSMITTER_EMPTY
    );
    assert_eq!(rd(&mut s, reg::IIR_FCR), iir::NONE);
    // Linux's TXEN test: enabling THRI with an empty THR raises it at once.
    wr(&mut s, reg::IER, ier::THR_EMPTY);
    assert!(s.irq_level());
    assert_eq!(rd(&mut s, reg::IIR_FCR), iir::THR_EMPTY);
    // Reading IIR took it.
    assert!(!s.irq_level());
    assert_eq!(rd(&mut s, reg::IIR_FCR), iir::NONE);
    // Toggling IER raises it again.
    wr(&mut s, reg::IER, 0);
    wr(&mut s, reg::IER, ier::THR_EMPTY);
    assert_eq!(rd(&mut s, reg::IIR_FCR), iir::THR_EMPTY);
    // Each write empties the register again: the interrupt comes back.
    for &b in b"hi\n" {
        wr(&mut s, reg::DATA, b);
        assert!(s.irq_level());
    }
    assert_eq!(s.take_output(), b"hi\n");
    // Disabling THRI drops the line.
    wr(&mut s, reg::IER, 0);
    assert!(!s.irq_level());
}

#[test]
fn output_backpressure_keeps_the_transmitter_busy() {
    let mut s = Serial::com1();
    for i in 0..OUTPUT_BYTES {
        wr(&mut s, reg::DATA, i as u8);
    }
    assert_eq!(
        rd(&mut s, reg::LSR) & (lsr::THR_EMPTY | lsr::TRANSMITTER_EMPTY),
        0
    );
    wr(&mut s, reg::IER, ier::THR_EMPTY);
    assert!(!s.irq_level());
    wr(&mut s, reg::DATA, b'x');
    assert_eq!(s.dropped(), 1);
    assert_eq!(s.take_output().len(), OUTPUT_BYTES);
    assert!(s.irq_level(), "THR emptied");
    assert_eq!(rd(&mut s, reg::IIR_FCR), iir::THR_EMPTY);
}

#[test]
fn receive_without_fifo() {
    let mut s = Serial::com1();
    wr(&mut s, reg::IER, ier::RECEIVED_DATA | ier::LINE_STATUS);
    assert_eq!(s.receive_room(), 1);
    assert!(s.receive(0, b'a'));
    assert!(s.irq_level());
    assert_eq!(rd(&mut s, reg::IIR_FCR), iir::RECEIVED_DATA);
    // A second byte overruns and replaces the first.
    assert!(!s.receive(0, b'b'));
    assert_eq!(rd(&mut s, reg::IIR_FCR), iir::LINE_STATUS);
    let status = rd(&mut s, reg::LSR);
    assert_eq!(
        status & (lsr::OVERRUN | lsr::DATA_READY),
        lsr::OVERRUN | lsr::DATA_READY
    );
    assert_eq!(
        rd(&mut s, reg::LSR) & lsr::OVERRUN,
        0,
        "reading LSR clears OE"
    );
    assert_eq!(rd(&mut s, reg::IIR_FCR), iir::RECEIVED_DATA);
    assert_eq!(rd(&mut s, reg::DATA), b'b');
    assert_eq!(rd(&mut s, reg::LSR) & lsr::DATA_READY, 0);
    assert!(!s.irq_level());
    assert_eq!(s.next_deadline_ns(), None, "no timeout without FIFOs");
}

#[test]
fn fifo_trigger_levels_and_character_timeout() {
    for (bits, level) in [(0u8, 1usize), (1, 4), (2, 8), (3, 14)] {
        let mut s = Serial::com1();
        wr(
            &mut s,
            reg::IIR_FCR,
            fcr::ENABLE | fcr::CLEAR_RECEIVE | bits << 6,
        );
        wr(&mut s, reg::IER, ier::RECEIVED_DATA);
        let char_ns = s.character_time_ns();
        for i in 0..level - 1 {
            assert!(s.receive(1000, i as u8));
        }
        if level > 1 {
            // Below the trigger: only the timeout, four characters after the last byte.
            assert!(!s.irq_level(), "level {level}");
            assert_eq!(s.next_deadline_ns(), Some(1000 + 4 * char_ns));
            s.advance(1000 + 4 * char_ns - 1);
            assert!(!s.irq_level());
            s.advance(1000 + 4 * char_ns);
            assert!(s.irq_level());
            assert_eq!(s.next_deadline_ns(), None);
            assert_eq!(
                rd(&mut s, reg::IIR_FCR),
                iir::FIFOS_ENABLED | iir::CHARACTER_TIMEOUT
            );
        }
        // Reaching the trigger level raises received data, which outranks the timeout.
        assert!(s.receive(2_000_000_000, 0xee));
        assert_eq!(
            rd(&mut s, reg::IIR_FCR),
            iir::FIFOS_ENABLED | iir::RECEIVED_DATA
        );
        // Draining below the trigger clears it; reading a byte restarts the timeout.
        let now = 3_000_000_000;
        let first = if level > 1 { 0 } else { 0xee };
        assert_eq!(s.read(now, B, 1), first);
        if level > 1 {
            assert!(!s.irq_level());
            assert_eq!(s.next_deadline_ns(), Some(now + 4 * char_ns));
        }
        while s.read(now, B + reg::LSR, 1) as u8 & lsr::DATA_READY != 0 {
            s.read(now, B, 1);
        }
        assert!(!s.irq_level());
        assert_eq!(s.next_deadline_ns(), None);
    }
}

#[test]
fn fifo_overrun_keeps_the_fifo() {
    let mut s = Serial::com1();
    wr(&mut s, reg::IIR_FCR, fcr::ENABLE);
    for i in 0..FIFO_BYTES {
        assert!(s.receive(0, i as u8));
    }
    assert_eq!(s.receive_room(), 0);
    assert!(!s.receive(0, 0xff));
    assert_ne!(rd(&mut s, reg::LSR) & lsr::OVERRUN, 0);
    for i in 0..FIFO_BYTES {
        assert_eq!(rd(&mut s, reg::DATA), i as u8);
    }
    assert_eq!(rd(&mut s, reg::LSR) & lsr::DATA_READY, 0);
    // Clearing the receive FIFO, and turning the FIFOs off, drop what waits.
    s.receive(0, 1);
    wr(&mut s, reg::IIR_FCR, fcr::ENABLE | fcr::CLEAR_RECEIVE);
    assert_eq!(rd(&mut s, reg::LSR) & lsr::DATA_READY, 0);
    s.receive(0, 1);
    wr(&mut s, reg::IIR_FCR, 0);
    assert_eq!(rd(&mut s, reg::LSR) & lsr::DATA_READY, 0);
    assert_eq!(rd(&mut s, reg::IIR_FCR) & iir::FIFOS_ENABLED, 0);
    assert_eq!(s.receive_room(), 1);
}

#[test]
fn interrupt_priorities() {
    let mut s = Serial::com1();
    wr(&mut s, reg::IIR_FCR, fcr::ENABLE | 3 << 6); // trigger 14
    wr(&mut s, reg::IER, 0x0f);
    // THRE (raised by enabling) and a modem change: THRE first.
    s.set_modem_inputs(msr::DSR);
    assert_eq!(rd(&mut s, reg::IIR_FCR) & 0x0f, iir::THR_EMPTY);
    assert_eq!(rd(&mut s, reg::IIR_FCR) & 0x0f, iir::MODEM_STATUS);
    // A timeout outranks THRE.
    wr(&mut s, reg::DATA, b'x');
    s.receive(0, 1);
    s.advance(u64::MAX);
    assert_eq!(rd(&mut s, reg::IIR_FCR) & 0x0f, iir::CHARACTER_TIMEOUT);
    // Received data at the trigger outranks the timeout; line status outranks everything.
    for i in 0..FIFO_BYTES {
        s.receive(0, i as u8);
    }
    assert_eq!(rd(&mut s, reg::IIR_FCR) & 0x0f, iir::LINE_STATUS);
    rd(&mut s, reg::LSR);
    assert_eq!(rd(&mut s, reg::IIR_FCR) & 0x0f, iir::RECEIVED_DATA);
    while rd(&mut s, reg::LSR) & lsr::DATA_READY != 0 {
        rd(&mut s, reg::DATA);
    }
    assert_eq!(rd(&mut s, reg::IIR_FCR) & 0x0f, iir::THR_EMPTY);
    assert_eq!(rd(&mut s, reg::IIR_FCR) & 0x0f, iir::MODEM_STATUS);
    // Reading MSR clears the deltas and the interrupt.
    assert_eq!(
        rd(&mut s, reg::MSR),
        msr::DSR | msr::DELTA_CTS | msr::DELTA_DCD
    );
    assert_eq!(rd(&mut s, reg::IIR_FCR) & 0x0f, iir::NONE);
    assert!(!s.irq_level());
}

#[test]
fn modem_status_deltas() {
    let mut s = Serial::com1();
    assert_eq!(rd(&mut s, reg::MSR), msr::DCD | msr::DSR | msr::CTS);
    s.set_modem_inputs(msr::DCD | msr::DSR | msr::CTS | msr::RI);
    assert_eq!(rd(&mut s, reg::MSR) & 0x0f, 0, "RI rising is no delta");
    s.set_modem_inputs(msr::DCD | msr::DSR | msr::CTS);
    assert_eq!(rd(&mut s, reg::MSR) & 0x0f, msr::TRAILING_EDGE_RI);
    s.set_modem_inputs(msr::DSR);
    assert_eq!(
        rd(&mut s, reg::MSR),
        msr::DSR | msr::DELTA_CTS | msr::DELTA_DCD
    );
    assert_eq!(rd(&mut s, reg::MSR), msr::DSR);
}

#[test]
fn loopback() {
    let mut s = Serial::com1();
    wr(&mut s, reg::IIR_FCR, fcr::ENABLE);
    wr(&mut s, reg::IER, ier::RECEIVED_DATA | ier::MODEM_STATUS);
    wr(&mut s, reg::MCR, mcr::LOOPBACK);
    // The terminal's lines are gone: DCD, DSR and CTS fell.
    assert_eq!(
        rd(&mut s, reg::MSR),
        msr::DELTA_CTS | msr::DELTA_DSR | msr::DELTA_DCD
    );
    wr(
        &mut s,
        reg::MCR,
        mcr::LOOPBACK | mcr::DTR | mcr::RTS | mcr::OUT1 | mcr::OUT2,
    );
    assert_eq!(
        rd(&mut s, reg::MSR),
        0xf0 | msr::DELTA_CTS | msr::DELTA_DSR | msr::DELTA_DCD
    );
    wr(
        &mut s,
        reg::MCR,
        mcr::LOOPBACK | mcr::DTR | mcr::RTS | mcr::OUT2,
    );
    assert_eq!(rd(&mut s, reg::MSR), 0xb0 | msr::TRAILING_EDGE_RI);
    // Written bytes come back as received data, with its interrupt; none goes out.
    wr(&mut s, reg::DATA, 0x55);
    wr(&mut s, reg::DATA, 0xaa);
    assert!(s.irq_level());
    assert_eq!(rd(&mut s, reg::IIR_FCR) & 0x0f, iir::RECEIVED_DATA);
    assert_eq!(rd(&mut s, reg::DATA), 0x55);
    assert_eq!(rd(&mut s, reg::DATA), 0xaa);
    assert!(s.take_output().is_empty());
    // The input is disconnected.
    assert_eq!(s.receive_room(), 0);
    assert!(!s.receive(0, 1));
    wr(&mut s, reg::MCR, 0);
    assert!(s.receive(0, 1));
}

#[test]
fn wide_accesses_split_into_bytes() {
    let mut s = Serial::com1();
    // A 2-byte write to LCR..MCR, a 4-byte read from 0x3fc (MCR, LSR, MSR, SCR).
    s.write(0, B + reg::LCR, 2, 0x0b03);
    assert_eq!(rd(&mut s, reg::LCR), 0x03);
    assert_eq!(rd(&mut s, reg::MCR), 0x0b);
    wr(&mut s, reg::SCR, 0x77);
    assert_eq!(s.read(0, B + reg::MCR, 4), 0x77b0_600b);
    // Beyond the UART: all-ones, and writes there are dropped.
    assert_eq!(s.read(0, B + reg::SCR, 2), 0xff77);
    assert_eq!(s.read(0, B, 3), 0xffff_ffff);
    assert!(s.claims(0x3ff) && !s.claims(0x400) && !s.claims(0x3f7));
}

#[test]
fn any_access_is_safe() {
    let mut s = Serial::com1();
    let mut seed = 0x0ddb_1a5e_5bad_5eed_u64;
    let mut now = 0u64;
    for _ in 0..200_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        now = now.wrapping_add(seed >> 44);
        let port = B.wrapping_add((seed >> 8) as u16 % 10).wrapping_sub(1);
        let size = [1, 2, 4, 3, 0, 8][(seed >> 20) as usize % 6];
        match seed % 5 {
            0 => {
                s.read(now, port, size);
            }
            1 | 2 => s.write(now, port, size, (seed >> 32) as u32),
            3 => {
                s.receive(now, seed as u8);
            }
            _ => {
                s.advance(now);
                if seed & 0x100 != 0 {
                    s.take_output();
                }
            }
        }
        assert!(s.received.len() <= FIFO_BYTES);
        assert!(s.output.len() <= OUTPUT_BYTES);
    }
}
