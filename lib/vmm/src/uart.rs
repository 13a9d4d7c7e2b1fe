//! A 16550 UART at COM1 (ports `0x3f8..=0x3ff`), enough for a guest's console output.
//!
//! The model never receives input and never raises an interrupt (there is no interrupt
//! controller yet): the line status always says "transmitter empty" and never "data ready",
//! except in loopback mode, where a written byte comes back as received data as on the real
//! part (drivers use that to probe for a UART). Registers that only configure the line (divisor
//! latch, line control, FIFO control, scratch) are stored and read back.
//!
//! Output is collected per line: a line ends at `\n` (which is not part of it; a `\r` before it
//! is dropped too) or when [`LINE_BYTES`] bytes have gathered, so the vmm-server sends one log
//! message per line. [`Uart::flush`] hands out a partial line at the guest's end.

use alloc::string::String;

/// COM1's first port.
pub const COM1: u16 = 0x3f8;
/// Ports the UART occupies.
pub const PORTS: u16 = 8;
/// Bytes of output gathered before a line is handed out without its `\n`.
pub const LINE_BYTES: usize = 256;

/// Register offsets from [`COM1`].
pub mod reg {
    /// Transmit holding (write) / receive buffer (read); divisor latch low with DLAB.
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

/// Line status bits.
pub mod lsr {
    pub const DATA_READY: u8 = 1 << 0;
    pub const THR_EMPTY: u8 = 1 << 5;
    pub const TRANSMITTER_EMPTY: u8 = 1 << 6;
}

const LCR_DLAB: u8 = 1 << 7;
const MCR_LOOPBACK: u8 = 1 << 4;
const IER_THRE: u8 = 1 << 1;
const FCR_ENABLE: u8 = 1 << 0;

/// The UART's registers and the line being gathered.
#[derive(Clone, Debug)]
pub struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    fcr: u8,
    scr: u8,
    divisor: u16,
    /// Loopback: the byte written last, waiting to be read back.
    received: Option<u8>,
    pending: [u8; LINE_BYTES],
    pending_len: usize,
    line: [u8; LINE_BYTES],
    line_len: usize,
    /// Bytes output so far (THR writes that were output, not divisor or loopback data).
    output: u64,
    /// FNV-1a of those bytes: what came out, byte for byte, whatever path it took (port
    /// writes or the DMP ring), to compare across memory modes.
    digest: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

impl Default for Uart {
    fn default() -> Self {
        Uart::new()
    }
}

impl Uart {
    /// A UART in its reset state (8N1 at 115200 baud, interrupts and FIFOs off).
    pub const fn new() -> Uart {
        Uart {
            ier: 0,
            lcr: 0x03,
            mcr: 0,
            fcr: 0,
            scr: 0,
            divisor: 1,
            received: None,
            pending: [0; LINE_BYTES],
            pending_len: 0,
            line: [0; LINE_BYTES],
            line_len: 0,
            output: 0,
            digest: FNV_OFFSET,
        }
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOPBACK != 0
    }

    /// Reads register `offset` (taken modulo 8).
    pub fn read(&mut self, offset: u16) -> u8 {
        match offset % PORTS {
            reg::DATA if self.dlab() => self.divisor as u8,
            reg::DATA => self.received.take().unwrap_or(0),
            reg::IER if self.dlab() => (self.divisor >> 8) as u8,
            reg::IER => self.ier,
            reg::IIR_FCR => {
                let fifo = if self.fcr & FCR_ENABLE != 0 { 0xc0 } else { 0 };
                // The transmitter is always empty: with its interrupt enabled that is the
                // pending source (0x2), otherwise none is (0x1).
                let id = if self.ier & IER_THRE != 0 { 0x02 } else { 0x01 };
                fifo | id
            }
            reg::LCR => self.lcr,
            reg::MCR => self.mcr,
            reg::LSR => self.line_status(),
            reg::MSR => {
                if self.loopback() {
                    // DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
                    let m = self.mcr;
                    (m & 0x1) << 5 | (m & 0x2) << 3 | (m & 0x4) << 4 | (m & 0x8) << 4
                } else {
                    // Carrier, data set ready and clear to send: a terminal is attached.
                    0xb0
                }
            }
            _ => self.scr,
        }
    }

    /// Writes register `offset` (taken modulo 8). Returns true when a line is complete; take it
    /// with [`Uart::line`] before the next write.
    pub fn write(&mut self, offset: u16, value: u8) -> bool {
        match offset % PORTS {
            reg::DATA if self.dlab() => self.divisor = (self.divisor & 0xff00) | u16::from(value),
            reg::DATA if self.loopback() => self.received = Some(value),
            reg::DATA => return self.output(value),
            reg::IER if self.dlab() => {
                self.divisor = (self.divisor & 0x00ff) | u16::from(value) << 8
            }
            reg::IER => self.ier = value & 0x0f,
            reg::IIR_FCR => self.fcr = value & 0xc9,
            reg::LCR => self.lcr = value,
            reg::MCR => self.mcr = value & 0x1f,
            reg::LSR | reg::MSR => {} // read-only
            _ => self.scr = value,
        }
        false
    }

    /// The line status register (reading it has no side effect).
    pub fn line_status(&self) -> u8 {
        let ready = if self.received.is_some() {
            lsr::DATA_READY
        } else {
            0
        };
        lsr::THR_EMPTY | lsr::TRANSMITTER_EMPTY | ready
    }

    /// The line control register as the DMP window shows it (`abi::dmp::uart::WINDOW_UART_LCR`):
    /// with bit 7 (DLAB) also set while the UART loops back, where a THR write is no output.
    pub fn window_lcr(&self) -> u8 {
        if self.loopback() {
            self.lcr | LCR_DLAB
        } else {
            self.lcr
        }
    }

    /// Bytes output so far.
    pub fn output_bytes(&self) -> u64 {
        self.output
    }

    /// FNV-1a over every byte output so far.
    pub fn output_digest(&self) -> u64 {
        self.digest
    }

    fn output(&mut self, byte: u8) -> bool {
        self.output += 1;
        self.digest = (self.digest ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
        if byte == b'\n' {
            if self.pending_len > 0 && self.pending[self.pending_len - 1] == b'\r' {
                self.pending_len -= 1;
            }
            self.complete();
            return true;
        }
        self.pending[self.pending_len] = byte;
        self.pending_len += 1;
        if self.pending_len == LINE_BYTES {
            self.complete();
            return true;
        }
        false
    }

    fn complete(&mut self) {
        self.line[..self.pending_len].copy_from_slice(&self.pending[..self.pending_len]);
        self.line_len = self.pending_len;
        self.pending_len = 0;
    }

    /// The line completed last (bytes as the guest wrote them, without the `\n`).
    pub fn line(&self) -> &[u8] {
        &self.line[..self.line_len]
    }

    /// Completes the partial line, if any; returns whether there was one.
    pub fn flush(&mut self) -> bool {
        if self.pending_len == 0 {
            return false;
        }
        self.complete();
        true
    }

    /// The divisor latch (baud rate = 115200 / divisor).
    pub fn divisor(&self) -> u16 {
        self.divisor
    }
}

/// `line` as printable text: bytes outside printable ASCII (escape sequences, invalid UTF-8,
/// control characters other than tab) become `?`, so a guest cannot drive the console.
pub fn printable(line: &[u8]) -> String {
    line.iter()
        .map(|&b| match b {
            b'\t' | 0x20..=0x7e => char::from(b),
            _ => '?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn put(uart: &mut Uart, text: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for &b in text {
            if uart.write(reg::DATA, b) {
                lines.push(uart.line().to_vec());
            }
        }
        lines
    }

    #[test]
    fn lines_end_at_newline() {
        let mut u = Uart::new();
        let lines = put(&mut u, b"hello\r\nworld\n\npartial");
        assert_eq!(lines, [b"hello".to_vec(), b"world".to_vec(), Vec::new()]);
        assert!(u.flush());
        assert_eq!(u.line(), b"partial");
        assert!(!u.flush());
    }

    #[test]
    fn long_lines_are_cut() {
        let mut u = Uart::new();
        let text = [b'x'; LINE_BYTES * 2 + 3];
        let lines = put(&mut u, &text);
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.len() == LINE_BYTES));
        assert!(u.flush());
        assert_eq!(u.line().len(), 3);
    }

    #[test]
    fn line_status_is_always_ready_to_send() {
        let mut u = Uart::new();
        assert_eq!(u.read(reg::LSR), lsr::THR_EMPTY | lsr::TRANSMITTER_EMPTY);
        assert_eq!(u.read(reg::DATA), 0);
        u.write(reg::LSR, 0xff);
        assert_eq!(u.read(reg::LSR) & lsr::DATA_READY, 0);
    }

    #[test]
    fn divisor_latch() {
        let mut u = Uart::new();
        u.write(reg::LCR, 0x80);
        u.write(reg::DATA, 0x0c);
        u.write(reg::IER, 0x00);
        assert_eq!(u.divisor(), 12);
        assert_eq!(u.read(reg::DATA), 0x0c);
        u.write(reg::LCR, 0x03);
        assert_eq!(u.read(reg::LCR), 0x03);
        // With DLAB clear, data goes out and IER is the interrupt enable.
        assert!(!u.write(reg::DATA, b'a'));
        u.write(reg::IER, 0xff);
        assert_eq!(u.read(reg::IER), 0x0f);
        assert_eq!(u.divisor(), 12);
        assert!(u.flush());
        assert_eq!(u.line(), b"a");
    }

    #[test]
    fn interrupt_identification() {
        let mut u = Uart::new();
        assert_eq!(u.read(reg::IIR_FCR), 0x01);
        u.write(reg::IER, IER_THRE);
        assert_eq!(u.read(reg::IIR_FCR), 0x02);
        u.write(reg::IIR_FCR, 0xc7);
        assert_eq!(u.read(reg::IIR_FCR), 0xc2);
    }

    #[test]
    fn scratch_and_modem() {
        let mut u = Uart::new();
        u.write(reg::SCR, 0x5a);
        assert_eq!(u.read(reg::SCR), 0x5a);
        assert_eq!(u.read(reg::MSR), 0xb0);
        u.write(reg::MCR, 0xff);
        assert_eq!(u.read(reg::MCR), 0x1f);
    }

    #[test]
    fn loopback_returns_written_bytes() {
        let mut u = Uart::new();
        u.write(reg::MCR, MCR_LOOPBACK | 0x0f);
        assert_eq!(u.read(reg::MSR), 0xf0);
        assert!(!u.write(reg::DATA, 0xae));
        assert_ne!(u.read(reg::LSR) & lsr::DATA_READY, 0);
        assert_eq!(u.read(reg::DATA), 0xae);
        assert_eq!(u.read(reg::LSR) & lsr::DATA_READY, 0);
        // Loopback output never reaches the console, and the window's LCR says so.
        assert!(!u.flush());
        assert_eq!(u.output_bytes(), 0);
        assert_eq!(u.output_digest(), FNV_OFFSET);
        assert_eq!(u.window_lcr(), 0x83);
        u.write(reg::MCR, 0);
        assert_eq!(u.window_lcr(), 0x03);
    }

    #[test]
    fn offsets_wrap() {
        let mut u = Uart::new();
        u.write(0xffff, 9); // offset 7: scratch
        assert_eq!(u.read(7), 9);
    }

    #[test]
    fn printable_text() {
        assert_eq!(printable(b"ok\tfine"), "ok\tfine");
        assert_eq!(printable(b"\x1b[2J\xff"), "?[2J?");
    }
}
