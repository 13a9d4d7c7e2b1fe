//! The 16550 UART, polled for output; its transmitter-empty interrupt is used once at start to
//! check that IRQ delivery works, through `rt::io::Port` on the ports the driver was granted.

use rt::io::Port;

/// COM1's base port.
pub const COM1: u16 = 0x3f8;

const DATA: u16 = 0;
const INT_ENABLE: u16 = 1;
const FIFO_CTRL: u16 = 2;
const LINE_CTRL: u16 = 3;
const MODEM_CTRL: u16 = 4;
const LINE_STATUS: u16 = 5;
const DIVISOR_LOW: u16 = 0;
const DIVISOR_HIGH: u16 = 1;

const LCR_DLAB: u8 = 0x80;
/// DTR, RTS, and OUT2, which connects the UART's interrupt output to the ISA IRQ line.
const MCR_DTR_RTS_OUT2: u8 = 0x0b;
/// Interrupt enable: transmitter holding register empty.
const IER_THR_EMPTY: u8 = 0x02;
const LCR_8N1: u8 = 0x03;
const LSR_THR_EMPTY: u8 = 0x20;
/// Polls of the line status before a byte is sent anyway (a missing UART must not hang us).
const SPIN_LIMIT: u32 = 100_000;

pub struct Uart {
    base: Port,
}

impl Uart {
    /// The UART at `base`, whose eight ports this domain holds.
    pub fn new(base: u16) -> Uart {
        Uart {
            base: Port::new(base),
        }
    }

    fn out(&mut self, reg: u16, value: u8) {
        self.base.offset(reg).write_u8(value);
    }

    fn read(&mut self, reg: u16) -> u8 {
        self.base.offset(reg).read_u8()
    }

    /// 115200 baud, 8N1, FIFOs on, interrupts off (but routed to the IRQ line).
    pub fn init(&mut self) {
        self.out(INT_ENABLE, 0);
        self.out(LINE_CTRL, LCR_DLAB);
        self.out(DIVISOR_LOW, 1);
        self.out(DIVISOR_HIGH, 0);
        self.out(LINE_CTRL, LCR_8N1);
        self.out(FIFO_CTRL, 0xc7);
        self.out(MODEM_CTRL, MCR_DTR_RTS_OUT2);
    }

    /// Asks for an interrupt when the transmitter is empty (at once, if it is).
    pub fn enable_tx_interrupt(&mut self) {
        self.out(INT_ENABLE, IER_THR_EMPTY);
    }

    /// Back to polling: no interrupts.
    pub fn disable_interrupts(&mut self) {
        self.out(INT_ENABLE, 0);
    }

    fn put(&mut self, byte: u8) {
        for _ in 0..SPIN_LIMIT {
            if self.read(LINE_STATUS) & LSR_THR_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        self.out(DATA, byte);
    }

    /// Writes `text`, `\n` as `\r\n`.
    pub fn write_str(&mut self, text: &str) {
        self.write_bytes(text.as_bytes());
    }

    /// Writes `bytes`, `\n` as `\r\n`.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                self.put(b'\r');
            }
            self.put(byte);
        }
    }
}
