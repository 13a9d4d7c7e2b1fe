//! The TSC's frequency, measured once at boot against the 8254 PIT's channel 2 (the gate and
//! output are bits 0 and 5 of port 0x61, as on every PC). VMMs convert the guest's TSC (which
//! runs unshifted) into device time with it (`abi::syscall::stats::TSC_HZ`).

use core::sync::atomic::{AtomicU64, Ordering};

use x86::io::{inb, outb};

use super::cpu::rdtsc;

const PIT_HZ: u64 = 1_193_182;
const PIT_CHANNEL2: u16 = 0x42;
const PIT_COMMAND: u16 = 0x43;
const PORT_B: u16 = 0x61;
const GATE2: u8 = 1 << 0;
const SPEAKER: u8 = 1 << 1;
const OUT2: u8 = 1 << 5;
/// Channel 2, low then high byte, mode 0 (interrupt on terminal count), binary.
const CHANNEL2_MODE0: u8 = 0b1011_0000;
/// 10 ms of PIT input clock.
const COUNT: u64 = PIT_HZ / 100;
/// Give up after this many polls of OUT2 (a machine without a PIT).
const MAX_POLLS: u32 = 50_000_000;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// Samples `sample` at the start and the end of 10 ms of PIT channel 2 (mode 0, polled);
/// None when the PIT never answered. Runs before interrupts are enabled; channel 2 belongs to
/// no one else.
pub fn over_10ms<T>(mut sample: impl FnMut() -> T) -> Option<(T, T)> {
    // SAFETY: ports 0x42, 0x43 and 0x61 are the PIT's channel 2 and the speaker gate, which the
    // kernel owns and no server is given; programming them has no effect beyond channel 2.
    unsafe {
        let b = inb(PORT_B);
        outb(PORT_B, (b & !SPEAKER) | GATE2);
        outb(PIT_COMMAND, CHANNEL2_MODE0);
        outb(PIT_CHANNEL2, COUNT as u8);
        outb(PIT_CHANNEL2, (COUNT >> 8) as u8);
        let start = sample();
        let mut polls = 0;
        while inb(PORT_B) & OUT2 == 0 && polls < MAX_POLLS {
            polls += 1;
        }
        let end = sample();
        outb(PORT_B, b & !(SPEAKER | GATE2));
        (polls < MAX_POLLS).then_some((start, end))
    }
}

/// Measures the TSC over 10 ms of PIT channel 2 and records it; 0 when the PIT never
/// answered.
pub fn calibrate() -> u64 {
    let hz = over_10ms(rdtsc).map_or(0, |(start, end)| (end - start) * PIT_HZ / COUNT);
    TSC_HZ.store(hz, Ordering::Relaxed);
    hz
}

/// The TSC frequency [`calibrate`] measured (0: unknown).
pub fn hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}
