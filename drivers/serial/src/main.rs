//! The serial driver: owns COM1 and prints what other servers send it.
//!
//! It obtains its ports from init (`GET_RESOURCE "io_ports"`, which the manifest grants; the
//! kernel opens the ports of an I/O-port capability in the holder's I/O bitmap), initialises
//! the 16550 UART at [`uart::COM1`], creates its `log` portal, registers it, and then serves
//! `abi::log::WRITE` requests forever: the payload is a postcard `&str`, written as it is (the
//! clients put their own names in front), with `\n` sent as `\r\n`. The reply's word 0 is the
//! status: `Ok`, or `BadArgument` for an unknown label or a payload that is not a string.
//!
//! At start it binds its IRQ line (`GET_RESOURCE "irq:4"`, which the manifest grants) to a
//! semaphore and checks, with the UART's transmitter-empty interrupt, that the interrupt arrives;
//! it prints the result (`serial: IRQ 4 delivered` or why not). Output stays polled: a line of
//! log text is short, and polling keeps the driver simple. Nothing in the system reads input.
//!
//! Client text is written a line at a time ([`Lines`]): a line that would read as the kernel's
//! power-off line (`abi::exit::imitates_poweroff`) gets `serial: forged ` in front, so only the
//! kernel can end a run's transcript with `poweroff: success`.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

mod uart;

use abi::{well_known, Status};
use rt::ipc::Next;
use rt::{bootstrap, log, syscall, Start, Utcb};

rt::entry!(main, heap = 16 * 1024);

/// The I/O-port capability over COM1.
const PORTS: abi::Sel = well_known::FIRST_FREE;
/// The `log` portal.
const LOG: abi::Sel = well_known::FIRST_FREE.offset(1);
/// Where a capability sent to `log` would land (clients send none; it is dropped).
const RECV: abi::Sel = well_known::FIRST_FREE.offset(2);
/// Badge of the `log` portal.
const LOG_BADGE: u64 = 1;
/// The IRQ capability and the semaphore it signals.
const IRQ: abi::Sel = well_known::FIRST_FREE.offset(3);
const IRQ_SEM: abi::Sel = well_known::FIRST_FREE.offset(4);
/// COM1's legacy IRQ line.
const COM1_IRQ: u8 = 4;
/// Timer ticks to wait for the interrupt before reporting that it did not come.
const IRQ_WAIT_TICKS: u64 = 20;

fn main(start: Start) -> ! {
    let mut utcb = start.utcb;
    log::set_name("serial");
    let ports = bootstrap::get_resource(&mut utcb, "io_ports", PORTS);
    // Without the ports nothing can be printed. Touching the UART anyway makes the kernel send
    // a #GP fault to init, which prints it: the failure shows on the console.
    let mut com1 = uart::Uart::new(uart::COM1);
    com1.init();
    if let Err(e) = ports {
        fail(&mut utcb, "no I/O ports", e)
    }
    com1.write_str("serial: COM1 ready\n");
    check_irq(&mut utcb, &mut com1);
    if let Err(e) = syscall::create_portal(LOG, well_known::SELF_THREAD, LOG_BADGE) {
        com1.write_str("serial: cannot create the log portal\n");
        fail(&mut utcb, "create portal", e)
    }
    if let Err(e) = bootstrap::register(&mut utcb, "log", LOG) {
        com1.write_str("serial: cannot register the log portal\n");
        fail(&mut utcb, "register", e)
    }
    let mut lines = Lines::new();
    let result = rt::ipc::serve(&mut utcb, LOG, RECV, |utcb, _badge| {
        handle(utcb, &mut com1, &mut lines);
        Next::Reply
    });
    com1.write_str("serial: log portal gone; stopping\n");
    if let Err(e) = result {
        fail(&mut utcb, "serve", e)
    }
    syscall::thread_exit()
}

/// Binds the IRQ line to a semaphore and waits for one transmitter-empty interrupt.
fn check_irq(utcb: &mut Utcb, com1: &mut uart::Uart) {
    let bound = bootstrap::get_resource(utcb, "irq:4", IRQ)
        .and_then(|()| syscall::create_semaphore(IRQ_SEM, 0))
        .and_then(|()| syscall::irq_bind(IRQ, IRQ_SEM));
    let report = match bound {
        Err(e) => {
            rt::println!(utcb, "serial: IRQ {COM1_IRQ} not bound: {e}");
            return;
        }
        Ok(()) => {
            com1.enable_tx_interrupt();
            let waited = syscall::sem_down(IRQ_SEM, IRQ_WAIT_TICKS);
            com1.disable_interrupts();
            waited
        }
    };
    match report {
        Ok(()) => com1.write_str("serial: IRQ 4 delivered (transmitter empty)\n"),
        Err(e) => rt::println!(utcb, "serial: IRQ {COM1_IRQ} not delivered: {e}"),
    }
}

/// Handles one request on `log`, leaving the reply in the UTCB.
fn handle(utcb: &mut Utcb, com1: &mut uart::Uart, lines: &mut Lines) {
    if utcb.cap_received() {
        let _ = syscall::revoke(RECV, true);
    }
    let status = if utcb.label() == abi::log::WRITE {
        let mut buf: rt::wire::Buf = [0; rt::wire::MAX_BYTES];
        match utcb.payload::<&str>(&mut buf) {
            Ok(text) => {
                lines.write(text, com1);
                Status::Ok
            }
            Err(_) => Status::BadArgument,
        }
    } else {
        Status::BadArgument
    };
    utcb.set_status(status);
}

/// Client output, collected into whole lines before it reaches the UART (clients may send a
/// line in pieces).
struct Lines {
    buf: [u8; LINE_MAX],
    len: usize,
}

/// A longer line is written in pieces of this size (each judged as a line start).
const LINE_MAX: usize = 512;

impl Lines {
    const fn new() -> Lines {
        Lines {
            buf: [0; LINE_MAX],
            len: 0,
        }
    }

    fn write(&mut self, text: &str, com1: &mut uart::Uart) {
        for &byte in text.as_bytes() {
            self.buf[self.len] = byte;
            self.len += 1;
            if byte == b'\n' || self.len == LINE_MAX {
                self.flush(com1);
            }
        }
    }

    fn flush(&mut self, com1: &mut uart::Uart) {
        let line = &self.buf[..self.len];
        if abi::exit::imitates_poweroff(line) {
            com1.write_bytes(b"serial: forged ");
        }
        com1.write_bytes(line);
        self.len = 0;
    }
}

fn fail(utcb: &mut Utcb, what: &str, error: rt::Error) -> ! {
    rt::println!(utcb, "serial: {what}: {error}");
    syscall::thread_exit()
}
