//! External interrupts for guests that test interrupt controllers and timers: every vector
//! from 32 to 255 has an entry (`irq.s`) that counts the interrupt, records the TSC at its
//! arrival and signals the end of interrupt the way the test chose ([`set_eoi`]).

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::cpu;

/// How the handler ends an interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Eoi {
    /// Nothing (the test does it, or the source needs none).
    None = 0,
    /// The local APIC's EOI register (xAPIC at 0xfee000b0).
    Lapic = 1,
    /// The master 8259 (non-specific EOI), and the slave first for vectors of its range.
    Pic = 2,
}

static EOI: AtomicU8 = AtomicU8::new(0);
/// The first vector of the slave 8259 (its EOI goes to both chips).
static PIC_SLAVE_BASE: AtomicU8 = AtomicU8::new(0x28);
static COUNTS: [AtomicU32; 256] = [const { AtomicU32::new(0) }; 256];
static LAST_TSC: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];
/// Where the local APIC's EOI register is.
pub const LAPIC_EOI: u64 = 0xfee0_00b0;

/// Chooses how interrupts end from now on; `slave_base` is the slave 8259's first vector.
pub fn set_eoi(eoi: Eoi, slave_base: u8) {
    PIC_SLAVE_BASE.store(slave_base, Ordering::SeqCst);
    EOI.store(eoi as u8, Ordering::SeqCst);
}

/// Interrupts taken on `vector` so far.
pub fn count(vector: u8) -> u32 {
    COUNTS[usize::from(vector)].load(Ordering::SeqCst)
}

/// The TSC when `vector` arrived last (0: never).
pub fn last_tsc(vector: u8) -> u64 {
    LAST_TSC[usize::from(vector)].load(Ordering::SeqCst)
}

/// Forgets the counts.
pub fn reset() {
    for c in &COUNTS {
        c.store(0, Ordering::SeqCst);
    }
}

/// The Rust half of every external interrupt (called by irq.s).
#[no_mangle]
extern "C" fn grt_irq(vector: u64) {
    let v = (vector & 0xff) as usize;
    LAST_TSC[v].store(cpu::rdtsc(), Ordering::SeqCst);
    COUNTS[v].fetch_add(1, Ordering::SeqCst);
    match EOI.load(Ordering::SeqCst) {
        1 => cpu::mmio_write32(LAPIC_EOI, 0),
        2 => {
            let slave = PIC_SLAVE_BASE.load(Ordering::SeqCst) as usize;
            if (slave..slave + 8).contains(&v) {
                cpu::outb(0xa0, 0x20);
            }
            cpu::outb(0x20, 0x20);
        }
        _ => {}
    }
}
