//! The Multiboot information structures handed to a guest, written into guest RAM at
//! [`layout::INFO`]: Multiboot 1 (flags: memory, command line, modules, memory map, boot loader
//! name) and Multiboot 2 (tags: command line, boot loader name, module, basic memory
//! information, memory map, end). The one module there may be is the guest's initrd.

use alloc::vec::Vec;

use crate::layout::{self, Region};

/// Writes `bytes` at guest-physical `gpa`; false if they do not fit in `ram`.
pub(crate) fn put(ram: &mut [u8], gpa: u64, bytes: &[u8]) -> bool {
    let Ok(start) = usize::try_from(gpa) else {
        return false;
    };
    match start
        .checked_add(bytes.len())
        .and_then(|end| ram.get_mut(start..end))
    {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

/// `mem_lower` and `mem_upper` in KiB: conventional memory below the reserved area, and
/// contiguous memory from 1 MiB (capped at 4 GiB, as the fields are 32-bit).
fn mem_lower_upper(ram: u64) -> (u32, u32) {
    let upper = ram.min(1 << 32).saturating_sub(layout::HIGH) / 1024;
    ((layout::LOW_END / 1024) as u32, upper as u32)
}

fn push32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn push64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn pad8(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
}

/// A boot module in guest RAM (the initrd): `[start, end)`, named [`layout::INITRD_NAME`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module {
    pub start: u32,
    pub end: u32,
}

/// Offsets in the Multiboot 1 information area.
const MB1_MMAP: u64 = layout::INFO + 0x80;
const MB1_NAME: u64 = layout::INFO + 0x100;
const MB1_MODULE: u64 = layout::INFO + 0x110;
const MB1_MODULE_NAME: u64 = layout::INFO + 0x120;
const MB1_CMDLINE: u64 = layout::INFO + 0x140;
/// Multiboot 1 information flags.
const MB1_MEM: u32 = 1 << 0;
const MB1_CMDLINE_FLAG: u32 = 1 << 2;
const MB1_MODS_FLAG: u32 = 1 << 3;
const MB1_MMAP_FLAG: u32 = 1 << 6;
const MB1_LOADER_NAME: u32 = 1 << 9;

/// Writes the Multiboot 1 information for `ram` bytes of RAM, `cmdline` (checked by the
/// caller: at most `CMDLINE_MAX` bytes, no NUL) and the initrd `module`, if any; returns its
/// address (EBX at entry).
pub fn write_mb1(ram: &mut [u8], cmdline: &str, module: Option<Module>) -> Option<u64> {
    let total = ram.len() as u64;
    let map = layout::memory_map(total);
    let mut mmap = Vec::new();
    for Region { base, len, kind } in map {
        push32(&mut mmap, 20); // size of the entry after this field
        push64(&mut mmap, base);
        push64(&mut mmap, len);
        push32(&mut mmap, kind);
    }
    let (lower, upper) = mem_lower_upper(total);
    let mut info = [0u32; 29]; // 116 bytes, up to and including the framebuffer fields
    info[0] = MB1_MEM | MB1_CMDLINE_FLAG | MB1_MMAP_FLAG | MB1_LOADER_NAME;
    info[1] = lower;
    info[2] = upper;
    info[3] = 0xffff_ffff; // boot_device: none
    info[4] = MB1_CMDLINE as u32;
    let mut entry = Vec::new();
    if let Some(m) = module {
        info[0] |= MB1_MODS_FLAG;
        info[5] = 1;
        info[6] = MB1_MODULE as u32;
        for w in [m.start, m.end, MB1_MODULE_NAME as u32, 0] {
            push32(&mut entry, w);
        }
    }
    info[11] = mmap.len() as u32;
    info[12] = MB1_MMAP as u32;
    info[16] = MB1_NAME as u32;
    let mut bytes = Vec::with_capacity(info.len() * 4);
    for w in info {
        push32(&mut bytes, w);
    }
    let mut cmd = Vec::from(cmdline.as_bytes());
    cmd.push(0);
    let mut name = Vec::from(layout::LOADER_NAME.as_bytes());
    name.push(0);
    let fits = MB1_CMDLINE + cmd.len() as u64 <= layout::INFO_END;
    (fits
        && put(ram, layout::INFO, &bytes)
        && put(ram, MB1_MMAP, &mmap)
        && put(ram, MB1_NAME, &name)
        && put(ram, MB1_MODULE, &entry)
        && put(ram, MB1_MODULE_NAME, layout::INITRD_NAME.as_bytes())
        && put(ram, MB1_CMDLINE, &cmd))
    .then_some(layout::INFO)
}

/// The Multiboot 2 information for `ram` bytes of RAM, `cmdline` and the initrd `module`, if
/// any, placed at [`layout::INFO`].
pub fn mb2_bytes(ram: u64, cmdline: &str, module: Option<Module>) -> Vec<u8> {
    let mut out = Vec::new();
    push32(&mut out, 0); // total size, patched below
    push32(&mut out, 0);
    for (kind, text) in [(1u32, cmdline), (2, layout::LOADER_NAME)] {
        push32(&mut out, kind);
        push32(&mut out, 8 + text.len() as u32 + 1);
        out.extend_from_slice(text.as_bytes());
        out.push(0);
        pad8(&mut out);
    }
    if let Some(m) = module {
        push32(&mut out, 3);
        push32(&mut out, 16 + layout::INITRD_NAME.len() as u32 + 1);
        push32(&mut out, m.start);
        push32(&mut out, m.end);
        out.extend_from_slice(layout::INITRD_NAME.as_bytes());
        out.push(0);
        pad8(&mut out);
    }
    let (lower, upper) = mem_lower_upper(ram);
    for w in [4, 16, lower, upper] {
        push32(&mut out, w);
    }
    let map = layout::memory_map(ram);
    push32(&mut out, 6);
    push32(&mut out, 16 + 24 * map.len() as u32);
    push32(&mut out, 24); // entry size
    push32(&mut out, 0); // entry version
    for Region { base, len, kind } in map {
        push64(&mut out, base);
        push64(&mut out, len);
        push32(&mut out, kind);
        push32(&mut out, 0);
    }
    push32(&mut out, 0); // end tag
    push32(&mut out, 8);
    let total = out.len() as u32;
    out[..4].copy_from_slice(&total.to_le_bytes());
    out
}

/// Writes the Multiboot 2 information; returns its address (EBX/RBX at entry).
pub fn write_mb2(ram: &mut [u8], cmdline: &str, module: Option<Module>) -> Option<u64> {
    let bytes = mb2_bytes(ram.len() as u64, cmdline, module);
    (layout::INFO + bytes.len() as u64 <= layout::INFO_END && put(ram, layout::INFO, &bytes))
        .then_some(layout::INFO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn u32_at(b: &[u8], at: u64) -> u32 {
        let at = at as usize;
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: u64) -> u64 {
        let at = at as usize;
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    fn cstr(b: &[u8], at: u64) -> &str {
        let at = at as usize;
        let len = b[at..].iter().position(|&c| c == 0).unwrap();
        core::str::from_utf8(&b[at..at + len]).unwrap()
    }

    #[test]
    fn mb1_information() {
        let mut ram = vec![0u8; 8 << 20];
        let at = write_mb1(&mut ram, "console=ttyS0", None).unwrap();
        assert_eq!(u32_at(&ram, at), 0x245);
        assert_eq!(u32_at(&ram, at + 4), 639);
        assert_eq!(u32_at(&ram, at + 8), 7 * 1024);
        assert_eq!(cstr(&ram, u32_at(&ram, at + 16).into()), "console=ttyS0");
        assert_eq!(cstr(&ram, u32_at(&ram, at + 64).into()), "dmp vmm-server");
        let (len, addr) = (u32_at(&ram, at + 44), u64::from(u32_at(&ram, at + 48)));
        assert_eq!(len, 5 * 24);
        // Entries: size, base, length, type.
        let entry = |i: u64| {
            let e = addr + 24 * i;
            (
                u32_at(&ram, e),
                u64_at(&ram, e + 4),
                u64_at(&ram, e + 12),
                u32_at(&ram, e + 20),
            )
        };
        assert_eq!(entry(0), (20, 0, 0x9_0000, 1));
        assert_eq!(entry(1), (20, 0x9_0000, 0x1000, 2));
        assert_eq!(entry(3), (20, 0x9_fc00, 0x6_0400, 2));
        assert_eq!(entry(4), (20, 0x10_0000, (8 << 20) - 0x10_0000, 1));
    }

    #[test]
    fn mb2_information() {
        let mut ram = vec![0u8; 4 << 20];
        let at = write_mb2(&mut ram, "x=1", None).unwrap();
        let total = u32_at(&ram, at) as u64;
        let mut seen = Vec::new();
        let mut tag = at + 8;
        while tag < at + total {
            let (kind, size) = (u32_at(&ram, tag), u32_at(&ram, tag + 4) as u64);
            seen.push(kind);
            match kind {
                1 => assert_eq!(cstr(&ram, tag + 8), "x=1"),
                2 => assert_eq!(cstr(&ram, tag + 8), "dmp vmm-server"),
                4 => assert_eq!((u32_at(&ram, tag + 8), u32_at(&ram, tag + 12)), (639, 3072)),
                6 => {
                    assert_eq!(size, 16 + 5 * 24);
                    assert_eq!(u64_at(&ram, tag + 16 + 24 + 8), 0x1000);
                    assert_eq!(u32_at(&ram, tag + 16 + 24 + 16), 2);
                }
                0 => assert_eq!(size, 8),
                _ => panic!("tag {kind}"),
            }
            tag += (size + 7) & !7;
        }
        assert_eq!(seen, [1, 2, 4, 6, 0]);
        assert_eq!(tag, at + total);
    }

    #[test]
    fn longest_command_line_fits() {
        let long = "a".repeat(layout::CMDLINE_MAX);
        let mut ram = vec![0u8; 2 << 20];
        let m = Some(Module {
            start: 0x10_0000,
            end: 0x10_1000,
        });
        assert!(write_mb1(&mut ram, &long, m).is_some());
        assert!(write_mb2(&mut ram, &long, m).is_some());
        assert!(write_mb1(&mut ram, &"a".repeat(4096), None).is_none());
        assert!(write_mb2(&mut ram, &"a".repeat(4096), None).is_none());
        let mut tiny = vec![0u8; 0x100];
        assert!(write_mb1(&mut tiny, "", None).is_none());
    }

    #[test]
    fn initrd_module() {
        let m = Module {
            start: 0x20_0000,
            end: 0x20_0123,
        };
        let mut ram = vec![0u8; 4 << 20];
        let at = write_mb1(&mut ram, "a", Some(m)).unwrap();
        assert_eq!(u32_at(&ram, at), 0x24d);
        assert_eq!(u32_at(&ram, at + 20), 1);
        let entry = u64::from(u32_at(&ram, at + 24));
        assert_eq!(u32_at(&ram, entry), 0x20_0000);
        assert_eq!(u32_at(&ram, entry + 4), 0x20_0123);
        assert_eq!(cstr(&ram, u32_at(&ram, entry + 8).into()), "initrd");
        assert_eq!(cstr(&ram, u32_at(&ram, at + 16).into()), "a");
        let bytes = mb2_bytes(4 << 20, "a", Some(m));
        // Header, command line tag (16), loader name tag (24), then the module tag.
        let tag = 8 + 16 + 24;
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!((word(tag), word(tag + 4)), (3, 16 + 7));
        assert_eq!((word(tag + 8), word(tag + 12)), (0x20_0000, 0x20_0123));
        assert_eq!(&bytes[tag + 16..tag + 23], b"initrd\0");
    }
}
