//! The microhypervisor kernel.
//!
//! Boot order: a boot path (`boot::limine` or `boot::multiboot2`) turns what its loader handed
//! over into one [`bootinfo::BootInfo`] and calls [`boot::start`]. From there the kernel does not
//! know how it was booted: it checks the CPU, takes over physical memory, builds its own page
//! tables, moves to a guarded stack, sets up traps and the local APIC timer, and runs.
//!
//! Policy lives in user space; this crate stays small and keeps its `unsafe` code in `arch` (CPU
//! and device access), `mem::direct` (physical memory through the direct map) and the boot entry
//! stubs.
#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod boot;
mod kern;
mod klog;
mod mem;
mod selftest;

use core::panic::PanicInfo;

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    arch::power::fail(format_args!("kernel panic: {info}"))
}
