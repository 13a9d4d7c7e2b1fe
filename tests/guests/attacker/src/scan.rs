//! Attempt 1: look through all of the guest's RAM for secrets. The hypervisor puts this guest's
//! own at 0x90000; any other secret (another guest's name, or anywhere else) is a breach.
//!
//! The guest's own image (code, data, stack) is skipped: it holds what the scan itself
//! produces. Secrets are parsed in place and printed from memory, never copied.

use grt::println;
use grt::secret::{self, Secret};

use crate::Report;

/// Only the first 4 GiB are mapped.
const MAPPED: u64 = 1 << 32;
const SECRET_START: u8 = secret::PREFIX[0];

extern "C" {
    static __guest_start: u8;
    static __guest_end: u8;
}

/// The least RAM the scan must cover to count (the guest has at least 2 MiB, its image is far
/// smaller): a scan that read nothing blocks nothing.
const MIN_SCANNED: u64 = 1 << 20;

pub fn run(report: &mut Report, boot: &grt::Boot) {
    // The hypervisor names the secret after the guest; the manifest tells the guest its name
    // (`name=` on the command line), so a secret planted under another name does not pass.
    let me = grt::boot::cmdline_value(boot.cmdline(), "name");
    // Taking the addresses of link.ld's symbols reads nothing.
    let image = (
        &raw const __guest_start as u64,
        &raw const __guest_end as u64,
    );
    let mut own: Option<Secret<'static>> = None;
    let mut foreign = 0u32;
    let mut scanned = 0u64;
    // Every byte below the top of RAM, whatever the memory map calls it (reserved pages
    // included: that is where the hypervisor keeps this guest's secret).
    let Some(top) = boot.ram_top() else {
        report.attempt(
            "scan memory for secrets",
            false,
            format_args!("no memory map: nothing scanned"),
        );
        return;
    };
    let end = top.min(MAPPED);
    for (start, stop) in [(0, end.min(image.0)), (image.1, end)] {
        if start < stop {
            scanned += stop - start;
            scan_range(start, stop, |addr, found| {
                if addr == secret::ADDR && own.is_none() && Some(found.name) == me {
                    println!(
                        "attacker: own secret at {:#x} (name \"{}\")",
                        addr, found.name
                    );
                    own = Some(found);
                } else {
                    println!(
                        "attacker: found secret of \"{}\" at {:#x}: {}:{}",
                        found.name, addr, found.name, found.value
                    );
                    foreign += 1;
                }
            });
        }
    }
    let own_name = own.map_or("(none of its own at 0x90000)", |s| s.name);
    report.attempt(
        "scan memory for secrets",
        // Finding its own secret, under its own name, shows the scan really reads this
        // guest's memory; so does the amount read.
        foreign == 0 && own.is_some() && me.is_some() && scanned >= MIN_SCANNED,
        format_args!(
            "{} MiB scanned, own secret {}, {} other secrets",
            scanned >> 20,
            own_name,
            foreign
        ),
    );
}

/// Calls `found` for every secret starting in `start..stop` (identity-mapped available RAM).
fn scan_range(start: u64, stop: u64, mut found: impl FnMut(u64, Secret<'static>)) {
    // Rust may not read through a null pointer, so the scan starts at address 1 at the
    // earliest: a secret starting exactly at address 0 would go unnoticed.
    let mut addr = start.max(1);
    // Byte steps up to alignment, then words: a word is looked at more closely only when one
    // of its bytes is the secret's first byte.
    while addr < stop {
        if addr.is_multiple_of(8) && addr + 8 <= stop {
            // SAFETY: `addr..addr + 8` is available RAM of this guest, outside its image.
            let word = unsafe { core::ptr::read_volatile(addr as *const u64) };
            if !has_byte(word, SECRET_START) {
                addr += 8;
                continue;
            }
        }
        // SAFETY: as above, one byte.
        if unsafe { core::ptr::read_volatile(addr as *const u8) } == SECRET_START {
            let len = (stop - addr).min(secret::MAX_LEN as u64) as usize;
            // SAFETY: `addr..addr + len` lies within the range; nothing here writes it.
            if let Some(s) = secret::parse(unsafe { secret::phys_bytes(addr, len) }) {
                found(addr, s);
            }
        }
        addr += 1;
    }
}

/// Whether any byte of `word` equals `byte` (the classic zero-byte test on `word ^ pattern`).
fn has_byte(word: u64, byte: u8) -> bool {
    let x = word ^ (u64::from(byte) * 0x0101_0101_0101_0101);
    x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080 != 0
}
