//! The kernel/user contract, shared by the kernel, the user-level servers and the build tool.
//!
//! Everything here is `no_std`, has a stable representation, and is the single definition of its
//! item: the kernel and its clients never restate these numbers.
#![no_std]

pub mod exit;
