//! Where things live in guest-physical memory at boot (see `docs/guests.md`).
//!
//! ```text
//! 0x0000_0500  GDT (null, code 0x08, data 0x10, TSS 0x18)     } boot structures,
//! 0x0000_0580  TSS (104 bytes, no I/O bitmap)                  } written by the loader
//! 0x0000_0600  Multiboot information, module entry, loader name, command line (2.5 KiB)
//! 0x0000_1000  PML4, 0x2000 PDPT, 0x3000..0x7000 four PDs      } (page tables: ELF64 only)
//! 0x0000_7000  initial stack (3 KiB, grows down from 0x7c00)
//! 0x0000_7c00  flat binaries load here (up to 0x9_0000)
//! 0x0009_0000  the guest's secret page (reserved in the memory map)
//! 0x0009_fc00  reserved (EBDA, VGA, ROM area) up to 1 MiB
//! 0x0010_0000  RAM, up to its end
//! ```
//!
//! Images with headers (ELF, Multiboot) may load into the available ranges at or above
//! [`STACK_TOP`] only: everything below is the loader's. An initrd (boot module) goes to the
//! first page boundary above both the image and 1 MiB ([`initrd_base`]).

/// The GDT and its limit (five 8-byte slots: null, code, data, and a 16-byte TSS descriptor).
pub const GDT: u64 = 0x500;
pub const GDT_LIMIT: u16 = 5 * 8 - 1;
/// Selectors in that GDT.
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;
pub const TSS_SELECTOR: u16 = 0x18;
/// The TSS and its limit.
pub const TSS: u64 = 0x580;
pub const TSS_LIMIT: u32 = 0x67;
/// Long-mode page tables: PML4, PDPT, then four page directories (2 MiB pages, 0..4 GiB).
pub const PML4: u64 = 0x1000;
pub const PDPT: u64 = 0x2000;
pub const PD: u64 = 0x3000;
pub const PD_COUNT: u64 = 4;
/// Multiboot information structure, module entry, boot loader name and command line (room for
/// a [`CMDLINE_MAX`]-byte command line in either Multiboot version).
pub const INFO: u64 = 0x600;
pub const INFO_END: u64 = 0x1000;
/// Bottom of the initial stack (3 KiB below [`STACK_TOP`]; nothing is written there).
pub const STACK_BOTTOM: u64 = 0x7000;
/// Initial stack pointer in every mode (the stack has `STACK_TOP - STACK_BOTTOM` bytes).
pub const STACK_TOP: u64 = 0x7c00;
/// Where flat binaries load and start, and the end of their room.
pub const FLAT_LOAD: u64 = 0x7c00;
pub const FLAT_END: u64 = SECRET;
/// The page holding the guest's secret (written by the vmm-server after loading).
pub const SECRET: u64 = 0x9_0000;
pub const SECRET_END: u64 = 0x9_1000;
/// Start of the reserved area below 1 MiB (EBDA, VGA, option ROMs, BIOS on a PC).
pub const LOW_END: u64 = 0x9_fc00;
/// 1 MiB.
pub const HIGH: u64 = 0x10_0000;

/// The DMP window of guests with hypercalls (shadow mode): 16 guest-physical pages at the top of
/// the reserved area below 1 MiB (no guest allocates there: the memory map says reserved),
/// shown by the kernel at the top 1 MiB of the guest-linear space, which 4-level guests rarely
/// map. The first word holds the guest's current CR3 (`abi::vm::WINDOW_CR3`).
pub const DMP_WINDOW_PHYSICAL: u64 = 0xf_0000;
pub const DMP_WINDOW_LINEAR: u64 = 0xffff_ffff_fff0_0000;
pub const DMP_WINDOW_PAGES: u64 = 16;
/// Guest RAM needs at least this much (the manifest gives multiples of 2 MiB).
pub const MIN_RAM: u64 = 0x20_0000;
/// Longest command line passed to a guest, in bytes (without the terminating NUL); the
/// manifest's `GUEST_CMDLINE_MAX` is the same.
pub const CMDLINE_MAX: usize = 2048;
/// The Multiboot module string of an initrd.
pub const INITRD_NAME: &str = "initrd";
/// The boot loader name the Multiboot information carries.
pub const LOADER_NAME: &str = "dmp vmm-server";

/// Memory-map entry types (Multiboot numbering).
pub const AVAILABLE: u32 = 1;
pub const RESERVED: u32 = 2;

/// One memory-map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub base: u64,
    pub len: u64,
    pub kind: u32,
}

/// The guest's memory map for `ram` bytes of RAM (at least [`MIN_RAM`]), in address order.
pub fn memory_map(ram: u64) -> [Region; 5] {
    let region = |base: u64, end: u64, kind| Region {
        base,
        len: end - base,
        kind,
    };
    [
        region(0, SECRET, AVAILABLE),
        region(SECRET, SECRET_END, RESERVED),
        region(SECRET_END, LOW_END, AVAILABLE),
        region(LOW_END, HIGH, RESERVED),
        region(HIGH, ram.max(HIGH), AVAILABLE),
    ]
}

/// Whether an image may load into `[start, end)` of a guest with `ram` bytes: inside RAM, at or
/// above [`STACK_TOP`], and inside one available region.
pub fn loadable(start: u64, end: u64, ram: u64) -> bool {
    start <= end
        && end <= ram
        && start >= STACK_TOP
        && memory_map(ram)
            .iter()
            .filter(|r| r.kind == AVAILABLE)
            .any(|r| start >= r.base && end <= r.base + r.len)
}

/// Where an initrd goes when the image's loaded ranges end at `image_end`: the first 4 KiB
/// boundary at or above both `image_end` and 1 MiB ([`HIGH`]), as QEMU places a Multiboot
/// kernel's modules after the kernel. `None` on overflow.
pub fn initrd_base(image_end: u64) -> Option<u64> {
    Some(image_end.max(HIGH).checked_add(0xfff)? & !0xfff)
}

/// The secret a guest named `name` carries at [`SECRET`]: `SECRET:<name>:<16 hex digits>`,
/// the digits derived from `seed` (the vmm-server gives a time-stamp counter reading).
pub fn secret(name: &str, seed: u64) -> alloc::string::String {
    // splitmix64 over the seed and the name, so guests started at the same time still differ.
    let mut x = seed;
    for b in name.bytes() {
        x = x.rotate_left(5) ^ u64::from(b);
    }
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    alloc::format!("SECRET:{name}:{x:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_is_contiguous() {
        let map = memory_map(4 << 20);
        let mut at = 0;
        for r in map {
            assert_eq!(r.base, at);
            at += r.len;
        }
        assert_eq!(at, 4 << 20);
    }

    #[test]
    fn loadable_ranges() {
        let ram = 4 << 20;
        assert!(loadable(HIGH, HIGH + 0x1000, ram));
        assert!(loadable(0x8000, 0x9000, ram));
        assert!(loadable(STACK_TOP, SECRET, ram));
        assert!(!loadable(0x7000, 0x8000, ram));
        assert!(!loadable(0x8f000, 0x90001, ram));
        assert!(!loadable(0x9f000, 0xa0000, ram));
        assert!(!loadable(HIGH, ram + 1, ram));
        assert!(!loadable(0x9_0000 - 1, HIGH + 1, ram));
        assert!(!loadable(HIGH + 2, HIGH + 1, ram));
    }

    #[test]
    fn secrets() {
        let a = secret("hello", 1);
        assert!(a.starts_with("SECRET:hello:"));
        assert_eq!(a.len(), "SECRET:hello:".len() + 16);
        assert_ne!(a, secret("hello", 2));
        assert_ne!(secret("a", 1)[9..], secret("b", 1)[9..]);
    }
}
