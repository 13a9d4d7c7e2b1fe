//! The legacy 8259 interrupt controllers, remapped above the exception vectors. Legacy device
//! interrupts (ISA IRQs 0-15) arrive on [`IRQ_BASE`]`+ n`; a line stays masked until a driver
//! binds it to a semaphore. Lines that fire are recorded in [`PENDING`] by the trap handler and
//! turned into semaphore signals by the kernel on its next pass (`kern`).

use core::sync::atomic::{AtomicU16, Ordering};

use x86::io::{inb, outb};

/// Vector of IRQ 0; IRQ n arrives on `IRQ_BASE + n`.
pub const IRQ_BASE: u8 = 0x30;
pub const IRQ_LINES: u8 = 16;

const MASTER_CMD: u16 = 0x20;
const MASTER_DATA: u16 = 0x21;
const SLAVE_CMD: u16 = 0xa0;
const SLAVE_DATA: u16 = 0xa1;
const EOI: u8 = 0x20;
const READ_ISR: u8 = 0x0b;
const CASCADE_LINE: u8 = 2;

/// IRQ lines that fired and were not yet handed to their semaphores.
static PENDING: AtomicU16 = AtomicU16::new(0);
/// Lines unmasked (bound by a driver).
static ENABLED: AtomicU16 = AtomicU16::new(0);

fn write(port: u16, value: u8) {
    // SAFETY: the PIC ports belong to the kernel; programming them affects only which
    // interrupts arrive, and every vector they can raise has a handler.
    unsafe { outb(port, value) }
}

fn read(port: u16) -> u8 {
    // SAFETY: as in `write`.
    unsafe { inb(port) }
}

/// Remaps both controllers to [`IRQ_BASE`] and masks every line.
pub fn init() {
    write(MASTER_CMD, 0x11); // ICW1: initialise, ICW4 follows
    write(SLAVE_CMD, 0x11);
    write(MASTER_DATA, IRQ_BASE); // ICW2: vector base
    write(SLAVE_DATA, IRQ_BASE + 8);
    write(MASTER_DATA, 1 << CASCADE_LINE); // ICW3: slave on line 2
    write(SLAVE_DATA, CASCADE_LINE);
    write(MASTER_DATA, 0x01); // ICW4: 8086 mode
    write(SLAVE_DATA, 0x01);
    apply_mask(0);
}

fn apply_mask(enabled: u16) {
    let mut enabled = enabled;
    if enabled & 0xff00 != 0 {
        enabled |= 1 << CASCADE_LINE;
    }
    write(MASTER_DATA, !(enabled as u8));
    write(SLAVE_DATA, !((enabled >> 8) as u8));
}

/// Lets `irq` through.
pub fn unmask(irq: u8) {
    if irq < IRQ_LINES {
        let enabled = ENABLED.fetch_or(1 << irq, Ordering::AcqRel) | (1 << irq);
        apply_mask(enabled);
    }
}

/// Called by the trap handler for vector `IRQ_BASE + irq`: records the line and acknowledges it.
/// A spurious IRQ 7 or 15 (its in-service bit clear) is dropped as the 8259 requires.
pub fn interrupt(irq: u8) {
    let (cmd, bit) = if irq >= 8 {
        (SLAVE_CMD, irq - 8)
    } else {
        (MASTER_CMD, irq)
    };
    if bit == 7 {
        write(cmd, READ_ISR);
        if read(cmd) & 0x80 == 0 {
            if irq >= 8 {
                write(MASTER_CMD, EOI); // the master did see the cascade line
            }
            return;
        }
    }
    PENDING.fetch_or(1 << irq, Ordering::AcqRel);
    if irq >= 8 {
        write(SLAVE_CMD, EOI);
    }
    write(MASTER_CMD, EOI);
}

/// Takes the set of lines that fired since the last call.
pub fn take_pending() -> u16 {
    PENDING.swap(0, Ordering::AcqRel)
}
