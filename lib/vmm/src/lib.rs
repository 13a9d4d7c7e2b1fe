//! The vmm-server's host-tested logic (filled in by issue #4).
#![no_std]
extern crate alloc;
