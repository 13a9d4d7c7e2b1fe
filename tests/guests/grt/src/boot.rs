//! From the loader to the guest's `main`: the entry macros, the Rust entry, and [`Boot`], what
//! the loader said about the machine.

use core::arch::global_asm;

use crate::{mb1, mb2};

global_asm!(include_str!("boot.s"));

/// The magic a Multiboot 1 loader leaves in EAX.
pub const MB1_BOOT_MAGIC: u32 = 0x2bad_b002;
/// The magic a Multiboot 2 loader (and the hypervisor, for a plain ELF64) leaves in EAX.
pub const MB2_BOOT_MAGIC: u32 = 0x36d7_6289;

/// How the guest was booted, with the loader's information.
#[derive(Clone, Copy, Debug)]
pub enum Boot {
    Multiboot1(mb1::Info),
    Multiboot2(mb2::Info),
}

/// One memory-map entry (Multiboot type numbers: 1 available, 2 reserved, 3 ACPI reclaimable,
/// 4 ACPI NVS, 5 bad).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub base: u64,
    pub len: u64,
    pub kind: u32,
}

impl Region {
    pub const AVAILABLE: u32 = 1;

    /// The end address, saturated at `u64::MAX`.
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.len)
    }
}

impl Boot {
    /// The protocol's name, for messages.
    pub fn protocol(&self) -> &'static str {
        match self {
            Boot::Multiboot1(_) => "multiboot1",
            Boot::Multiboot2(_) => "multiboot2",
        }
    }

    /// The kernel command line ("" when the loader gave none).
    pub fn cmdline(&self) -> &'static str {
        match self {
            Boot::Multiboot1(i) => i.cmdline(),
            Boot::Multiboot2(i) => i.cmdline(),
        }
        .unwrap_or("")
    }

    /// The boot loader's name, if it gave one.
    pub fn loader_name(&self) -> Option<&'static str> {
        match self {
            Boot::Multiboot1(i) => i.loader_name(),
            Boot::Multiboot2(i) => i.loader_name(),
        }
    }

    /// Calls `f` for every memory-map entry; `false` when there is no memory map.
    pub fn for_each_region(&self, f: impl FnMut(Region)) -> bool {
        match self {
            Boot::Multiboot1(i) => i.for_each_region(f),
            Boot::Multiboot2(i) => i.for_each_region(f),
        }
    }

    /// The end of the highest available region of the memory map: the RAM size of a machine
    /// whose RAM starts at 0. `None` without a memory map.
    pub fn ram_top(&self) -> Option<u64> {
        let mut top = 0;
        let present = self.for_each_region(|r| {
            if r.kind == Region::AVAILABLE {
                top = top.max(r.end());
            }
        });
        present.then_some(top)
    }

    /// The sum of the available regions' lengths. `None` without a memory map.
    pub fn ram_available(&self) -> Option<u64> {
        let mut sum: u64 = 0;
        let present = self.for_each_region(|r| {
            if r.kind == Region::AVAILABLE {
                sum = sum.saturating_add(r.len);
            }
        });
        present.then_some(sum)
    }
}

/// The value of `key=value` in a command line (words separated by spaces).
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split(' ')
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// Parses a size such as `32M`, `1G`, `4096K` or `65536` (bytes).
pub fn parse_size(text: &str) -> Option<u64> {
    let (digits, unit) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 1 << 10),
        b'M' | b'm' => (&text[..text.len() - 1], 1 << 20),
        b'G' | b'g' => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

// The guest's half of an entry macro: its `main`. Defined by `multiboot1_entry!`,
// `multiboot2_entry!` or `elf64_entry!`.
extern "Rust" {
    fn __grt_main(boot: &Boot) -> u8;
}

/// Called by `grt_start64` in boot.s: installs the exception handlers, identifies the boot
/// protocol from the magic, runs the guest's `main` and exits with its status.
#[no_mangle]
extern "C" fn grt_rust_entry(magic: u32, info: u32) -> ! {
    crate::trap::init();
    let boot = match magic {
        MB1_BOOT_MAGIC => Boot::Multiboot1(mb1::Info::new(u64::from(info))),
        MB2_BOOT_MAGIC => Boot::Multiboot2(mb2::Info::new(u64::from(info))),
        other => {
            crate::println!("grt: unknown boot magic {:#x} (info {:#x})", other, info);
            crate::exit(crate::EXIT_BOOT)
        }
    };
    // SAFETY: `__grt_main` is defined by the entry macro the guest invoked, with this signature.
    let status = unsafe { __grt_main(&boot) };
    crate::exit(status)
}

/// Reads a little-endian u32 at a physical address.
///
/// # Safety
/// `addr..addr + 4` must be readable (the boot information the loader placed in RAM).
pub(crate) unsafe fn read_u32(addr: u64) -> u32 {
    // SAFETY: per the caller.
    unsafe { core::ptr::read_unaligned(addr as *const u32) }
}

/// Reads a little-endian u64 at a physical address.
///
/// # Safety
/// As for [`read_u32`], 8 bytes.
pub(crate) unsafe fn read_u64(addr: u64) -> u64 {
    // SAFETY: per the caller.
    unsafe { core::ptr::read_unaligned(addr as *const u64) }
}

/// The NUL-terminated string at `addr`, at most `max` bytes; `None` if it is not terminated
/// within `max` bytes or not UTF-8.
///
/// # Safety
/// `addr..addr + max` (or up to the NUL) must be readable and stay unchanged while the guest
/// runs (the loader's information is never written).
pub(crate) unsafe fn c_str(addr: u64, max: usize) -> Option<&'static str> {
    if addr == 0 {
        return None;
    }
    let mut len = 0;
    // SAFETY: per the caller, every byte up to the NUL or `max` is readable.
    while len < max && unsafe { *((addr + len as u64) as *const u8) } != 0 {
        len += 1;
    }
    if len == max {
        return None;
    }
    // SAFETY: the `len` bytes were just read; they are never written.
    let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, len) };
    core::str::from_utf8(bytes).ok()
}

/// The guest's entry for Multiboot **1**: a Multiboot 1 header (page-aligned modules, memory
/// information) first in the image, and `_start`, the 32-bit entry, which continues in grt.
/// `$main` is the guest's `fn(&grt::Boot) -> u8`; its result is the exit status.
#[macro_export]
macro_rules! multiboot1_entry {
    ($main:path) => {
        core::arch::global_asm!(
            ".section .multiboot_header, \"a\"",
            ".balign 4",
            ".long 0x1badb002",
            ".long 0x3",
            ".long 0x100000000 - (0x1badb002 + 0x3)",
            ".section .text.entry, \"ax\"",
            ".code32",
            ".global _start",
            "_start:",
            "    jmp grt_start32",
            ".code64",
        );
        $crate::__main_glue!($main);
    };
}

/// The guest's entry for Multiboot **2**: a Multiboot 2 header (i386 architecture, an optional
/// entry-address tag naming `_start`) first in the image, and `_start`, the 32-bit entry, which
/// continues in grt. `$main` as for [`multiboot1_entry!`].
#[macro_export]
macro_rules! multiboot2_entry {
    ($main:path) => {
        core::arch::global_asm!(
            ".section .multiboot_header, \"a\"",
            ".balign 8",
            "grt_mb2_header:",
            ".long 0xe85250d6",
            ".long 0",
            ".long grt_mb2_header_end - grt_mb2_header",
            ".long 0x100000000 - (0xe85250d6 + (grt_mb2_header_end - grt_mb2_header))",
            ".balign 8",
            ".short 3, 1",
            ".long 12",
            ".long _start",
            ".balign 8",
            ".short 0, 0",
            ".long 8",
            "grt_mb2_header_end:",
            ".section .text.entry, \"ax\"",
            ".code32",
            ".global _start",
            "_start:",
            "    jmp grt_start32",
            ".code64",
        );
        $crate::__main_glue!($main);
    };
}

/// The guest's entry for a plain **ELF64** without a Multiboot header: `_start` (the ELF entry)
/// expects 64-bit mode with the first 4 GiB identity-mapped, RAX = the Multiboot 2 magic and
/// RBX = a Multiboot 2 information structure, as the hypervisor starts such a guest. `$main` as
/// for [`multiboot1_entry!`].
#[macro_export]
macro_rules! elf64_entry {
    ($main:path) => {
        core::arch::global_asm!(
            ".section .text.entry, \"ax\"",
            ".code64",
            ".global _start",
            "_start:",
            "    mov edi, eax",
            "    mov esi, ebx",
            "    jmp grt_start64",
        );
        $crate::__main_glue!($main);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __main_glue {
    ($main:path) => {
        #[no_mangle]
        fn __grt_main(boot: &$crate::Boot) -> u8 {
            let main: fn(&$crate::Boot) -> u8 = $main;
            main(boot)
        }
    };
}
