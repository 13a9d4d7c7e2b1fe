//! A 16550A UART: divisor latch, every register, the 16-byte receive FIFO with its trigger
//! levels and character timeout, the interrupt priorities of the datasheet, loopback and modem
//! status with delta bits. COM1 is at [`COM1_BASE`], IRQ [`COM1_IRQ`].
//!
//! Not `vm-superio`'s `Serial`: it needs `std` (`std::io::Write`) and does not model the FIFO
//! control register (trigger levels, FIFO off) or the character timeout.
//!
//! Transmission takes no time: a byte written to the transmit holding register joins the output
//! queue (see [`Serial::take_output`]) and the register is empty again at once. Only when the
//! vmm-server lets [`OUTPUT_BYTES`] gather does the transmitter stay busy (THRE and TEMT clear),
//! until it takes them. Received bytes come in through [`Serial::receive`]; the character
//! timeout (four character times at the programmed baud rate and frame) runs on guest time,
//! reported by [`Serial::next_deadline_ns`] and applied by [`Serial::advance`] or any access.
//! The interrupt output ([`Serial::irq_level`]) is not gated by MCR.OUT2, as in QEMU. Parity,
//! framing errors and breaks never happen; overrun does.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::misc::all_ones;

/// COM1's first port and interrupt line.
pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_IRQ: u8 = 4;
/// Ports a UART occupies.
pub const PORTS: u16 = 8;
/// Receive FIFO depth.
pub const FIFO_BYTES: usize = 16;
/// Output held for the vmm-server before the transmitter reports itself busy.
pub const OUTPUT_BYTES: usize = 4096;
/// The baud rate of divisor 1 (a 1.8432 MHz crystal over 16).
pub const BASE_BAUD: u64 = 115_200;

/// Register offsets.
pub mod reg {
    /// Receive buffer (read) / transmit holding (write); divisor latch low with DLAB.
    pub const DATA: u16 = 0;
    /// Interrupt enable; divisor latch high with DLAB.
    pub const IER: u16 = 1;
    /// Interrupt identification (read) / FIFO control (write).
    pub const IIR_FCR: u16 = 2;
    pub const LCR: u16 = 3;
    pub const MCR: u16 = 4;
    pub const LSR: u16 = 5;
    pub const MSR: u16 = 6;
    pub const SCR: u16 = 7;
}

/// Interrupt enable bits.
pub mod ier {
    pub const RECEIVED_DATA: u8 = 1 << 0;
    pub const THR_EMPTY: u8 = 1 << 1;
    pub const LINE_STATUS: u8 = 1 << 2;
    pub const MODEM_STATUS: u8 = 1 << 3;
}

/// Interrupt identification values (bits 3..0; bits 7..6 say the FIFOs are on).
pub mod iir {
    pub const NONE: u8 = 0x01;
    pub const LINE_STATUS: u8 = 0x06;
    pub const RECEIVED_DATA: u8 = 0x04;
    pub const CHARACTER_TIMEOUT: u8 = 0x0c;
    pub const THR_EMPTY: u8 = 0x02;
    pub const MODEM_STATUS: u8 = 0x00;
    pub const FIFOS_ENABLED: u8 = 0xc0;
}

/// FIFO control bits.
pub mod fcr {
    pub const ENABLE: u8 = 1 << 0;
    pub const CLEAR_RECEIVE: u8 = 1 << 1;
    pub const CLEAR_TRANSMIT: u8 = 1 << 2;
    pub const DMA_MODE: u8 = 1 << 3;
    pub const TRIGGER_SHIFT: u8 = 6;
}

pub mod lcr {
    pub const DLAB: u8 = 1 << 7;
}

/// Modem control bits.
pub mod mcr {
    pub const DTR: u8 = 1 << 0;
    pub const RTS: u8 = 1 << 1;
    pub const OUT1: u8 = 1 << 2;
    pub const OUT2: u8 = 1 << 3;
    pub const LOOPBACK: u8 = 1 << 4;
}

/// Line status bits.
pub mod lsr {
    pub const DATA_READY: u8 = 1 << 0;
    pub const OVERRUN: u8 = 1 << 1;
    pub const PARITY_ERROR: u8 = 1 << 2;
    pub const FRAMING_ERROR: u8 = 1 << 3;
    pub const BREAK: u8 = 1 << 4;
    pub const THR_EMPTY: u8 = 1 << 5;
    pub const TRANSMITTER_EMPTY: u8 = 1 << 6;
}

/// Modem status bits: deltas in 3..0, line states in 7..4.
pub mod msr {
    pub const DELTA_CTS: u8 = 1 << 0;
    pub const DELTA_DSR: u8 = 1 << 1;
    pub const TRAILING_EDGE_RI: u8 = 1 << 2;
    pub const DELTA_DCD: u8 = 1 << 3;
    pub const CTS: u8 = 1 << 4;
    pub const DSR: u8 = 1 << 5;
    pub const RI: u8 = 1 << 6;
    pub const DCD: u8 = 1 << 7;
}

/// Receive FIFO trigger levels by FCR bits 7..6.
const TRIGGER_LEVELS: [usize; 4] = [1, 4, 8, 14];

/// One 16550A.
#[derive(Clone, Debug)]
pub struct Serial {
    base: u16,
    divisor: u16,
    ier: u8,
    lcr: u8,
    mcr: u8,
    fcr: u8,
    scr: u8,
    /// Overrun (and the other error bits) until the LSR is read.
    line_errors: u8,
    received: VecDeque<u8>,
    output: VecDeque<u8>,
    /// The transmit holding register emptied and neither an IIR read nor a THR write has
    /// taken that interrupt since.
    thr_interrupt: bool,
    timeout_interrupt: bool,
    timeout_deadline_ns: Option<u64>,
    /// CTS, DSR, RI and DCD from the attached terminal, in their MSR positions.
    modem_inputs: u8,
    modem_deltas: u8,
    dropped: u64,
}

impl Serial {
    /// A UART at `base` after firmware set it up: 115200 baud (divisor 1), 8N1, interrupts and
    /// FIFOs off, a terminal attached (DCD, DSR and CTS up).
    pub fn new(base: u16) -> Serial {
        Serial {
            base,
            divisor: 1,
            ier: 0,
            lcr: 0x03,
            mcr: 0,
            fcr: 0,
            scr: 0,
            line_errors: 0,
            received: VecDeque::with_capacity(FIFO_BYTES),
            output: VecDeque::new(),
            thr_interrupt: false,
            timeout_interrupt: false,
            timeout_deadline_ns: None,
            modem_inputs: msr::DCD | msr::DSR | msr::CTS,
            modem_deltas: 0,
            dropped: 0,
        }
    }

    /// COM1.
    pub fn com1() -> Serial {
        Serial::new(COM1_BASE)
    }

    /// Whether `port` is one of this UART's.
    pub fn claims(&self, port: u16) -> bool {
        port.wrapping_sub(self.base) < PORTS
    }

    /// The divisor latch (baud rate = [`BASE_BAUD`] / divisor).
    pub fn divisor(&self) -> u16 {
        self.divisor
    }

    /// Output bytes dropped because the vmm-server did not take them in time.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn dlab(&self) -> bool {
        self.lcr & lcr::DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & mcr::LOOPBACK != 0
    }

    fn fifo_enabled(&self) -> bool {
        self.fcr & fcr::ENABLE != 0
    }

    fn receive_capacity(&self) -> usize {
        if self.fifo_enabled() {
            FIFO_BYTES
        } else {
            1
        }
    }

    fn trigger_level(&self) -> usize {
        TRIGGER_LEVELS[usize::from(self.fcr >> fcr::TRIGGER_SHIFT)]
    }

    fn thr_empty(&self) -> bool {
        self.output.len() < OUTPUT_BYTES
    }

    /// The time one character takes on the line as programmed (start, data, parity, stop bits).
    pub fn character_time_ns(&self) -> u64 {
        let data_bits = 5 + u64::from(self.lcr & 0x3);
        let parity = u64::from(self.lcr >> 3 & 1);
        // Two stop bits, or 1.5 with 5 data bits: counted in half bits.
        let stop_half_bits = match (self.lcr & 0x4 != 0, data_bits) {
            (false, _) => 2,
            (true, 5) => 3,
            (true, _) => 4,
        };
        let half_bits = 2 * (1 + data_bits + parity) + stop_half_bits;
        let divisor = u64::from(self.divisor.max(1));
        half_bits * 1_000_000_000 * divisor / (2 * BASE_BAUD)
    }

    /// The MSR's line states: the terminal's, or in loopback the modem control outputs
    /// (DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD).
    fn modem_status_lines(&self) -> u8 {
        if self.loopback() {
            let m = self.mcr;
            let bit = |set: bool, b: u8| if set { b } else { 0 };
            bit(m & mcr::DTR != 0, msr::DSR)
                | bit(m & mcr::RTS != 0, msr::CTS)
                | bit(m & mcr::OUT1 != 0, msr::RI)
                | bit(m & mcr::OUT2 != 0, msr::DCD)
        } else {
            self.modem_inputs
        }
    }

    /// Records the delta bits for a change of the MSR's line states from `before`.
    fn note_modem_change(&mut self, before: u8) {
        let after = self.modem_status_lines();
        let changed = before ^ after;
        if changed & msr::CTS != 0 {
            self.modem_deltas |= msr::DELTA_CTS;
        }
        if changed & msr::DSR != 0 {
            self.modem_deltas |= msr::DELTA_DSR;
        }
        if before & msr::RI != 0 && after & msr::RI == 0 {
            self.modem_deltas |= msr::TRAILING_EDGE_RI;
        }
        if changed & msr::DCD != 0 {
            self.modem_deltas |= msr::DELTA_DCD;
        }
    }

    /// Sets the terminal's CTS, DSR, RI and DCD lines (MSR bits 7..4 of `lines`).
    pub fn set_modem_inputs(&mut self, lines: u8) {
        let before = self.modem_status_lines();
        self.modem_inputs = lines & 0xf0;
        self.note_modem_change(before);
    }

    /// The pending interrupt of highest priority, as IIR bits 3..0.
    fn interrupt_id(&self) -> u8 {
        let enabled = |bit: u8| self.ier & bit != 0;
        let data_ready = if self.fifo_enabled() {
            self.received.len() >= self.trigger_level()
        } else {
            !self.received.is_empty()
        };
        if enabled(ier::LINE_STATUS) && self.line_errors != 0 {
            iir::LINE_STATUS
        } else if enabled(ier::RECEIVED_DATA) && data_ready {
            iir::RECEIVED_DATA
        } else if enabled(ier::RECEIVED_DATA) && self.timeout_interrupt {
            iir::CHARACTER_TIMEOUT
        } else if enabled(ier::THR_EMPTY) && self.thr_interrupt {
            iir::THR_EMPTY
        } else if enabled(ier::MODEM_STATUS) && self.modem_deltas != 0 {
            iir::MODEM_STATUS
        } else {
            iir::NONE
        }
    }

    /// The interrupt output: an enabled interrupt is pending.
    pub fn irq_level(&self) -> bool {
        self.interrupt_id() != iir::NONE
    }

    /// When the character timeout fires, if it is running.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.timeout_deadline_ns
    }

    /// Applies what guest time `now_ns` brings (the character timeout).
    pub fn advance(&mut self, now_ns: u64) {
        if let Some(deadline) = self.timeout_deadline_ns {
            if now_ns >= deadline {
                self.timeout_deadline_ns = None;
                self.timeout_interrupt = self.fifo_enabled() && !self.received.is_empty();
            }
        }
    }

    fn restart_timeout(&mut self, now_ns: u64) {
        self.timeout_deadline_ns = if self.fifo_enabled() && !self.received.is_empty() {
            Some(now_ns.saturating_add(4 * self.character_time_ns()))
        } else {
            None
        };
    }

    /// Free room in the receiver (FIFO, or the one-byte holding register with FIFOs off).
    pub fn receive_room(&self) -> usize {
        if self.loopback() {
            return 0;
        }
        self.receive_capacity().saturating_sub(self.received.len())
    }

    /// A byte arrives from the terminal. Returns false if it overran the receiver (the FIFO
    /// keeps its bytes and loses this one; with FIFOs off it replaces the unread byte) or the
    /// UART loops back, which disconnects its input.
    pub fn receive(&mut self, now_ns: u64, byte: u8) -> bool {
        self.advance(now_ns);
        if self.loopback() {
            return false;
        }
        self.receive_byte(now_ns, byte)
    }

    fn receive_byte(&mut self, now_ns: u64, byte: u8) -> bool {
        if self.received.len() >= self.receive_capacity() {
            self.line_errors |= lsr::OVERRUN;
            if !self.fifo_enabled() {
                self.received.clear();
                self.received.push_back(byte);
            }
            return false;
        }
        self.received.push_back(byte);
        self.timeout_interrupt = false;
        self.restart_timeout(now_ns);
        true
    }

    /// The bytes the guest sent since the last call.
    pub fn take_output(&mut self) -> Vec<u8> {
        let was_full = !self.thr_empty();
        let bytes = self.output.drain(..).collect();
        if was_full {
            self.thr_interrupt = true;
        }
        bytes
    }

    /// The line control register as the DMP window shows it (`abi::dmp::uart::WINDOW_UART_LCR`):
    /// with bit 7 (DLAB) also set while the UART loops back, where a THR write is no output.
    pub fn window_lcr(&self) -> u8 {
        if self.loopback() {
            self.lcr | lcr::DLAB
        } else {
            self.lcr
        }
    }

    /// The line status register (reading it through the port also clears the error bits).
    pub fn line_status(&self) -> u8 {
        let mut status = self.line_errors;
        if !self.received.is_empty() {
            status |= lsr::DATA_READY;
        }
        if self.thr_empty() {
            status |= lsr::THR_EMPTY | lsr::TRANSMITTER_EMPTY;
        }
        status
    }

    /// Reads `size` bytes from `port` on (each byte from its register, lowest port first);
    /// ports beyond the UART read all-ones.
    pub fn read(&mut self, now_ns: u64, port: u16, size: u8) -> u32 {
        if !matches!(size, 1 | 2 | 4) {
            return all_ones(size);
        }
        self.advance(now_ns);
        let mut value = 0;
        for i in 0..u16::from(size) {
            let offset = port.wrapping_add(i).wrapping_sub(self.base);
            let byte = if offset < PORTS {
                self.read_register(now_ns, offset)
            } else {
                0xff
            };
            value |= u32::from(byte) << (8 * i);
        }
        value
    }

    /// Writes `size` bytes of `value` to `port` on, lowest port first; bytes beyond the UART
    /// are dropped.
    pub fn write(&mut self, now_ns: u64, port: u16, size: u8, value: u32) {
        if !matches!(size, 1 | 2 | 4) {
            return;
        }
        self.advance(now_ns);
        for i in 0..u16::from(size) {
            let offset = port.wrapping_add(i).wrapping_sub(self.base);
            if offset < PORTS {
                self.write_register(now_ns, offset, (value >> (8 * i)) as u8);
            }
        }
    }

    fn read_register(&mut self, now_ns: u64, offset: u16) -> u8 {
        match offset {
            reg::DATA if self.dlab() => self.divisor as u8,
            reg::DATA => {
                let byte = self.received.pop_front().unwrap_or(0);
                self.timeout_interrupt = false;
                self.restart_timeout(now_ns);
                byte
            }
            reg::IER if self.dlab() => (self.divisor >> 8) as u8,
            reg::IER => self.ier,
            reg::IIR_FCR => {
                let id = self.interrupt_id();
                if id == iir::THR_EMPTY {
                    self.thr_interrupt = false;
                }
                let fifos = if self.fifo_enabled() {
                    iir::FIFOS_ENABLED
                } else {
                    0
                };
                fifos | id
            }
            reg::LCR => self.lcr,
            reg::MCR => self.mcr,
            reg::LSR => {
                let status = self.line_status();
                self.line_errors = 0;
                status
            }
            reg::MSR => {
                let status = self.modem_status_lines() | self.modem_deltas;
                self.modem_deltas = 0;
                status
            }
            _ => self.scr,
        }
    }

    fn write_register(&mut self, now_ns: u64, offset: u16, value: u8) {
        match offset {
            reg::DATA if self.dlab() => self.divisor = (self.divisor & 0xff00) | u16::from(value),
            reg::DATA => self.transmit(now_ns, value),
            reg::IER if self.dlab() => {
                self.divisor = (self.divisor & 0x00ff) | u16::from(value) << 8
            }
            reg::IER => {
                let changed = (self.ier ^ value) & ier::THR_EMPTY;
                self.ier = value & 0x0f;
                // Enabling the THRE interrupt while the register is empty raises it (drivers
                // test for that: Linux's UART_BUG_TXEN probe, Windows).
                if changed != 0 {
                    self.thr_interrupt = self.ier & ier::THR_EMPTY != 0 && self.thr_empty();
                }
            }
            reg::IIR_FCR => self.write_fifo_control(value),
            reg::LCR => self.lcr = value,
            reg::MCR => {
                let before = self.modem_status_lines();
                self.mcr = value & 0x1f;
                self.note_modem_change(before);
            }
            reg::LSR | reg::MSR => {} // factory test only
            _ => self.scr = value,
        }
    }

    fn transmit(&mut self, now_ns: u64, byte: u8) {
        self.thr_interrupt = false;
        if self.loopback() {
            self.receive_byte(now_ns, byte);
        } else if self.thr_empty() {
            self.output.push_back(byte);
        } else {
            // The guest wrote a busy holding register: the byte it replaced is lost.
            self.dropped += 1;
        }
        if self.thr_empty() {
            self.thr_interrupt = true;
        }
    }

    fn write_fifo_control(&mut self, value: u8) {
        // Turning the FIFOs on or off empties them; the other bits take only with bit 0 set.
        if (value ^ self.fcr) & fcr::ENABLE != 0 {
            self.clear_receiver();
        }
        if value & fcr::ENABLE == 0 {
            self.fcr = 0;
            return;
        }
        self.fcr = value & (fcr::ENABLE | fcr::DMA_MODE | 0xc0);
        if value & fcr::CLEAR_RECEIVE != 0 {
            self.clear_receiver();
        }
        // Clearing the transmit FIFO has nothing to do: bytes leave it at once.
    }

    fn clear_receiver(&mut self) {
        self.received.clear();
        self.timeout_interrupt = false;
        self.timeout_deadline_ns = None;
    }
}

#[cfg(test)]
#[path = "serial_tests.rs"]
mod tests;
