//! The isolation experiments (issue #3) run between two servers: `isolation-attacker` tries
//! things and `isolation-target` is what it talks to and its fault handler. This crate holds
//! what both sides must agree on ([`proto`]) and the pure logic of the syscall storm
//! ([`storm`]), so that it is tested on the host (`cargo test -p isolation`).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod proto;
pub mod storm;
