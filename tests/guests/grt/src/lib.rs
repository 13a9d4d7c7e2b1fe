//! grt, the guest runtime: what the test guests in `tests/guests/` share.
//!
//! The guests are ordinary bare-metal x86-64 kernels that know nothing about the hypervisor; grt
//! gives them just enough to run and to report:
//!
//! - entry trampolines, one macro per boot format, each naming the guest's
//!   `fn main(boot: &Boot) -> u8` (its return value is the exit status):
//!   [`multiboot1_entry!`] and [`multiboot2_entry!`] put a Multiboot header first in the image
//!   and enter through a 32-bit stub that builds 4 GiB of identity-mapped page tables and enables
//!   long mode; [`elf64_entry!`] is for a plain ELF64 started in long mode by the loader;
//! - [`print!`] / [`println!`] on the COM1 16550 UART;
//! - [`exit`] through the exit port 0xf4 (QEMU's `isa-debug-exit` protocol);
//! - exception handlers for all 32 vectors: an unexpected exception prints its vector, error code
//!   and RIP and exits with [`EXIT_EXCEPTION`]; an expected one (see [`trap::guarded_asm!`] and
//!   the `try_*` functions in [`trap`]) is recorded and skipped;
//! - external interrupts on vectors 32-255, counted, with the end of interrupt the test chose
//!   ([`irq`]);
//! - port I/O, MMIO, CPUID, MSR, TSC and control-register helpers ([`cpu`]);
//! - readers for the Multiboot 1 and 2 boot information ([`Boot`]);
//! - the format of the secret the hypervisor plants in every guest ([`secret`]).
//!
//! `unsafe` lives in `cpu`, `trap`, the boot-information readers and the entry glue; each use
//! says why it is sound.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod boot;
pub mod cpu;
pub mod irq;
pub mod mb1;
pub mod mb2;
pub mod secret;
pub mod serial;
pub mod trap;

pub use boot::{Boot, Region};

/// Exit status of a guest whose checks passed.
pub const EXIT_SUCCESS: u8 = 0;
/// Exit status of a guest whose checks failed.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status when the boot itself failed (no long mode, unknown boot magic).
pub const EXIT_BOOT: u8 = 2;
/// Exit status after an unexpected CPU exception.
pub const EXIT_EXCEPTION: u8 = 3;
/// Exit status after a panic.
pub const EXIT_PANIC: u8 = 4;

/// The exit port: writing a byte `v` ends the guest with status `v`.
pub const EXIT_PORT: u16 = 0xf4;

/// Ends the guest with `status` through the exit port; if the write does not end it, halts
/// forever with interrupts off.
pub fn exit(status: u8) -> ! {
    cpu::outb(EXIT_PORT, status);
    halt_forever()
}

/// Halts forever with interrupts off.
pub fn halt_forever() -> ! {
    loop {
        cpu::cli_hlt();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("grt: panic: {}", info);
    exit(EXIT_PANIC)
}
