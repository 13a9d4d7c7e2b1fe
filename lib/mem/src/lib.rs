//! Physical and virtual memory bookkeeping, kept out of the kernel so that it can be tested on
//! the host.
//!
//! The kernel owns the hardware (CR3, the direct map, TLB flushes); this crate owns the
//! arithmetic that is easy to get subtly wrong:
//!
//! - [`map`] turns the loader's memory map into sorted, disjoint, page-aligned usable ranges,
//!   with reserved memory, the kernel image, modules and boot data cut out.
//! - [`frames`] hands out physical 4 KiB frames from those ranges (a buddy allocator).
//! - [`paging`] builds and walks x86-64 4-level page tables through a [`paging::TableMemory`]
//!   trait, so the same code runs over the kernel's direct map and over a `Vec` in tests.
//!
//! Inputs are checked and bad ones return typed errors; nothing here panics on bad input, and
//! there is no `unsafe` code.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod frames;
pub mod map;
pub mod paging;

pub use map::{PhysRange, PAGE_SIZE};
