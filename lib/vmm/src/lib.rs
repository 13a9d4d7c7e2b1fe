//! The vmm-server's logic, kept apart from its syscalls so that it is tested on the host
//! (`cargo test -p vmm`). Everything here treats the guest image and the guest's exits as
//! hostile: bad input gets a typed error or a #GP/#UD for the guest, never a panic.
//!
//! - [`image`]: load a guest image into guest RAM the way QEMU's `-kernel` does (Multiboot 2,
//!   Multiboot 1, ELF64, flat binary), with [`elf`] and [`multiboot`] for the headers, [`boot`]
//!   for the initial vCPU state and boot structures, [`info`] for the Multiboot information and
//!   [`layout`] for where everything lives in guest-physical memory;
//! - [`monitor`]: one exit message in, the reply and what to log out, using
//!   [`cpuid`] (the filter), [`msr`] (the allow-list), [`ports`] (port I/O), [`mmio`] (device
//!   memory: the instruction decoded through the guest's tables), [`console`] (the guest's
//!   output lines) and [`platform`] (the PC: device models and the board that wires them,
//!   interrupts and device time);
//! - [`dmp`]: the VMM's half of patched UART output (the DMP window's UART words and output
//!   ring, `abi::dmp::uart`) and [`dmp::GuestMemory`], how the monitor reaches guest RAM;
//! - [`state`]: the vCPU state as `abi::vm::word` message words;
//! - [`timing`]: where each exit's time goes (kernel path, VMM handler), for the exit benchmark;
//! - [`fuzz`]: the seeded reply fuzzer of guests with `fuzz_replies` (issue #11), hostile
//!   replies for the kernel's reply and confinement checks.
//!
//! `docs/guests.md` describes what a guest sees.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod boot;
pub mod console;
pub mod cpuid;
pub mod dmp;
pub mod elf;
pub mod fuzz;
pub mod image;
pub mod info;
pub mod intercept;
pub mod layout;
pub mod mmio;
pub mod monitor;
pub mod msr;
pub mod multiboot;
pub mod platform;
pub mod ports;
pub mod state;
pub mod timing;
