//! The `hello` test guest: a Multiboot 1 kernel that prints through the UART and exits 0.
//!
//! ```text
//! hello from a guest (cmdline: <cmdline>)
//! hello: booted by <loader> via multiboot1, <N> KiB upper memory
//! hello: fnv-1a over 0..100000 = 0x...
//! hello: done
//! ```
//!
//! `done` (and exit 0) only when the checksum is the known one and the loader reported upper
//! memory; otherwise `hello: FAILED: <why>` and exit 1.
#![no_std]
#![no_main]

use grt::println;

grt::multiboot1_entry!(main);

fn main(boot: &grt::Boot) -> u8 {
    println!("hello from a guest (cmdline: {})", boot.cmdline());
    let upper = match boot {
        grt::Boot::Multiboot1(info) => info.basic_memory().map_or(0, |(_, upper)| upper),
        grt::Boot::Multiboot2(info) => info.basic_memory().map_or(0, |(_, upper)| upper),
    };
    println!(
        "hello: booted by {} via {}, {} KiB upper memory",
        boot.loader_name().unwrap_or("an unnamed loader"),
        boot.protocol(),
        upper
    );
    let sum = checksum(100_000);
    println!("hello: fnv-1a over 0..100000 = {sum:#018x}");
    if sum != EXPECTED_CHECKSUM {
        println!("hello: FAILED: checksum {sum:#018x}, expected {EXPECTED_CHECKSUM:#018x}");
        return 1;
    }
    if upper == 0 {
        println!("hello: FAILED: the loader reported no upper memory");
        return 1;
    }
    println!("hello: done");
    grt::EXIT_SUCCESS
}

/// FNV-1a over 0..100000, computed once by hand (Python) for this check.
const EXPECTED_CHECKSUM: u64 = 0x1179_66cd_58fb_f8e5;

/// FNV-1a over the little-endian bytes of 0..n: some deterministic work with a known result.
fn checksum(n: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..n {
        for b in i.to_le_bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}
