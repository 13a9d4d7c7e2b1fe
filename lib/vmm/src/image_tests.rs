use super::*;
use crate::elf::build::{elf32, elf64};
use crate::multiboot::build::{mb1, mb2};
use crate::state::Gpr;
use abi::vm::{word, Segment};
use alloc::vec;
use alloc::vec::Vec;

const RAM: usize = 4 << 20;

fn ram() -> Vec<u8> {
    vec![0u8; RAM]
}

fn u32_at(b: &[u8], at: u64) -> u32 {
    let at = at as usize;
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn elf64_starts_in_long_mode() {
    let code = b"\xf4\xeb\xfd";
    let image = elf64(
        0x10_0000,
        &[
            (0x10_0000, 0x10_0000, code, 0x2000),
            (0x20_0000, 0x20_0000, b"dd", 2),
        ],
    );
    let mut ram = ram();
    ram[0x10_1000] = 0xaa; // bss must be zeroed
    let boot = load(&image, &mut ram, "hello").unwrap();
    assert_eq!(boot.format, Format::Elf64);
    assert_eq!(boot.entry, 0x10_0000);
    assert_eq!(&ram[0x10_0000..0x10_0003], code);
    assert_eq!(ram[0x10_1000], 0);
    assert_eq!(&ram[0x20_0000..0x20_0002], b"dd");
    let s = &boot.state;
    assert_eq!(s.rip(), 0x10_0000);
    assert_eq!(s.get(word::EFER), 0x500);
    assert_eq!(s.gpr(Gpr::Rax), 0x36d7_6289);
    assert_eq!(s.gpr(Gpr::Rbx), layout::INFO);
    // The MB2 information carries the command line.
    assert_eq!(u32_at(&ram, layout::INFO + 8), 1);
    assert_eq!(&ram[layout::INFO as usize + 16..][..6], b"hello\0");
    // Page tables and GDT are in place.
    assert_eq!(u32_at(&ram, layout::PML4), 0x2003);
    assert_eq!(s.segment(Segment::Cs).attributes, 0xa9b);
}

#[test]
fn multiboot1_elf32() {
    let header = mb1(0b11, &[]);
    let image = elf32(
        0x10_0000,
        &[(0x10_0000, 0x10_0000, b"\x90\xf4", 0x100)],
        &header,
    );
    let mut ram = ram();
    let boot = load(&image, &mut ram, "").unwrap();
    assert_eq!(boot.format, Format::Multiboot1);
    assert_eq!(boot.state.gpr(Gpr::Rax), 0x2bad_b002);
    assert_eq!(boot.state.gpr(Gpr::Rbx), layout::INFO);
    assert_eq!(boot.state.get(word::CR0), 0x11);
    assert_eq!(boot.state.segment(Segment::Cs).attributes, 0xc9b);
    assert_eq!(u32_at(&ram, layout::INFO), 0x245);
    assert_eq!(&ram[0x10_0000..0x10_0002], b"\x90\xf4");
}

#[test]
fn multiboot1_higher_half_entry_is_translated() {
    let header = mb1(0, &[]);
    let image = elf32(
        0xc010_0004,
        &[(0x10_0000, 0xc010_0000, b"\x90\x90\x90\x90\xf4", 5)],
        &header,
    );
    let boot = load(&image, &mut ram(), "").unwrap();
    assert_eq!(boot.entry, 0x10_0004);
}

#[test]
fn multiboot1_aout_kludge() {
    // A raw binary linked at 1 MiB whose header (at file offset 0) says so.
    let mut image = mb1(
        multiboot::MB1_FLAG_ADDRESSES,
        &[0x10_0000, 0x10_0000, 0x10_0040, 0x10_1000, 0x10_0030],
    );
    image.resize(0x30, 0);
    image.extend_from_slice(b"\xf4\xeb\xfd");
    image.resize(0x40, 0x77);
    image.resize(4096, 0); // page padding
    let mut ram = ram();
    ram[0x10_0800] = 1;
    let boot = load(&image, &mut ram, "").unwrap();
    assert_eq!(boot.format, Format::Multiboot1);
    assert_eq!(boot.entry, 0x10_0030);
    assert_eq!(&ram[0x10_0030..0x10_0033], b"\xf4\xeb\xfd");
    assert_eq!(ram[0x10_003f], 0x77);
    assert_eq!(ram[0x10_0800], 0);
}

#[test]
fn multiboot2_elf64_starts_in_protected_mode() {
    // An ELF64 whose first segment holds an MB2 header with an entry tag.
    let header = mb2(&[(3, 0, &[0x10_0010])]);
    let mut data = header.clone();
    data.resize(0x40, 0xf4);
    let image = elf64(0x10_0000, &[(0x10_0000, 0x10_0000, &data, 0x40)]);
    let mut ram = ram();
    let boot = load(&image, &mut ram, "").unwrap();
    assert_eq!(boot.format, Format::Multiboot2);
    assert_eq!(boot.entry, 0x10_0010);
    assert_eq!(boot.state.gpr(Gpr::Rax), 0x36d7_6289);
    assert_eq!(boot.state.get(word::EFER), 0);
    assert_eq!(boot.state.get(word::CR0), 0x11);
}

#[test]
fn multiboot2_address_tag() {
    let mut image = mb2(&[
        (2, 0, &[0x20_0000, 0x20_0000, 0, 0x20_2000]),
        (3, 0, &[0x20_0100]),
    ]);
    image.resize(0x100, 0);
    image.extend_from_slice(b"\xf4");
    let mut ram = ram();
    let boot = load(&image, &mut ram, "").unwrap();
    assert_eq!(boot.entry, 0x20_0100);
    assert_eq!(ram[0x20_0100], 0xf4);
    // No entry tag, not an ELF: refused.
    let image = mb2(&[(2, 0, &[0x20_0000, 0x20_0000, 0, 0])]);
    assert_eq!(load(&image, &mut ram, ""), Err(LoadError::NoEntry));
}

#[test]
fn flat_binaries() {
    let mut image = vec![0xf4u8, 0xeb, 0xfd];
    image.resize(8192, 0);
    let mut ram = ram();
    let boot = load(&image, &mut ram, "").unwrap();
    assert_eq!(boot.format, Format::Flat);
    assert_eq!(boot.state.rip(), 0x7c00);
    assert_eq!(boot.state.gpr(Gpr::Rdx), 0x80);
    assert_eq!(&ram[0x7c00..0x7c03], &[0xf4, 0xeb, 0xfd]);
    // The largest flat binary fits, one byte more does not (padding does not count).
    let mut big = vec![1u8; (layout::FLAT_END - layout::FLAT_LOAD) as usize];
    assert!(load(&big, &mut ram, "").is_ok());
    big.extend_from_slice(&[0u8; 4096]);
    assert!(load(&big, &mut ram, "").is_ok());
    big.push(1);
    assert!(matches!(
        load(&big, &mut ram, ""),
        Err(LoadError::Unrecognized(_))
    ));
}

#[test]
fn refusals_leave_ram_untouched() {
    let cases: Vec<(Vec<u8>, LoadError)> = vec![
        (vec![], LoadError::Empty),
        (vec![0; 4096], LoadError::Empty),
        (
            elf64(0x1000, &[(0x1000, 0x1000, b"x", 1)]),
            LoadError::NotLoadable {
                start: 0x1000,
                end: 0x1001,
            },
        ),
        (
            elf64(0x9_0000, &[(0x8_f000, 0x8_f000, b"x", 0x2000)]),
            LoadError::NotLoadable {
                start: 0x8_f000,
                end: 0x9_1000,
            },
        ),
        (
            elf64(0x3f_f000, &[(0x3f_f000, 0x3f_f000, b"x", 0x2000)]),
            LoadError::NotLoadable {
                start: 0x3f_f000,
                end: 0x40_1000,
            },
        ),
        (
            elf64(0x30_0000, &[(0x10_0000, 0x10_0000, b"x", 1)]),
            LoadError::EntryOutsideImage(0x30_0000),
        ),
        (
            elf32(0x10_0000, &[(0x10_0000, 0x10_0000, b"x", 1)], &[]),
            LoadError::Elf32WithoutMultiboot,
        ),
        (mb1(0, &[]), LoadError::MultibootWithoutLayout),
        (
            mb1(1 << 4, &[]),
            LoadError::Multiboot(MultibootError::UnsupportedFlags(1 << 4)),
        ),
        (
            mb1(
                multiboot::MB1_FLAG_ADDRESSES,
                &[0x10_0000, 0x10_0000, 0x10_0000 + 4096, 0, 0x10_0000],
            ),
            LoadError::Multiboot(MultibootError::BadAddresses),
        ),
    ];
    for (image, error) in cases {
        let mut ram = ram();
        assert_eq!(load(&image, &mut ram, ""), Err(error));
        assert!(ram.iter().all(|&b| b == 0), "{error:?} wrote RAM");
    }
    let image = elf64(0x10_0000, &[(0x10_0000, 0x10_0000, b"x", 1)]);
    assert_eq!(
        load(&image, &mut vec![0u8; 1 << 20], ""),
        Err(LoadError::RamTooSmall(1 << 20))
    );
    let long = "x".repeat(layout::CMDLINE_MAX + 1);
    assert_eq!(load(&image, &mut ram(), &long), Err(LoadError::BadCmdline));
    assert_eq!(load(&image, &mut ram(), "a\0b"), Err(LoadError::BadCmdline));
    assert!(load(&image, &mut ram(), &long[1..]).is_ok());
}

#[test]
fn mangled_images_never_panic() {
    let header = mb1(0, &[]);
    let seeds = [
        elf64(0x10_0000, &[(0x10_0000, 0x10_0000, b"abcdef", 0x100)]),
        elf32(
            0x10_0000,
            &[(0x10_0000, 0x10_0000, b"abcdef", 0x100)],
            &header,
        ),
        mb2(&[
            (2, 0, &[0x20_0000, 0x20_0000, 0, 0x20_2000]),
            (3, 0, &[0x20_0000]),
        ]),
        mb1(
            multiboot::MB1_FLAG_ADDRESSES,
            &[0x10_0000, 0x10_0000, 0, 0, 0x10_0000],
        ),
    ];
    let mut ram = ram();
    for seed in seeds {
        for len in 0..seed.len() {
            let _ = load(&seed[..len], &mut ram, "");
        }
        for i in 0..seed.len() {
            for v in [0u8, 0xff, 0x80, 1] {
                let mut b = seed.clone();
                b[i] = v;
                let _ = load(&b, &mut ram, "");
            }
        }
    }
}

#[test]
fn secret_page() {
    let mut ram = ram();
    assert!(write_secret(&mut ram, "SECRET:a:0123456789abcdef"));
    assert_eq!(&ram[0x9_0000..0x9_0000 + 8], b"SECRET:a");
    assert_eq!(ram[0x9_0000 + 25], 0);
    assert!(!write_secret(&mut ram, &"x".repeat(4096)));
}

/// The first sectors of a Linux bzImage as the boot protocol lays them out
/// (Documentation/arch/x86/boot.rst): `setup_sects` at 0x1f1, the boot flag 0xaa55 at 0x1fe,
/// the jump at 0x200, `HdrS` at 0x202, the protocol version at 0x206, `loadflags` at 0x211
/// (LOADED_HIGH), then the protected-mode kernel after the setup sectors; `len` bytes in all.
fn bzimage(len: usize) -> Vec<u8> {
    let mut image = vec![0u8; len];
    image[0x1f1] = 27; // setup_sects
    image[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    image[0x200..0x202].copy_from_slice(&[0xeb, 0x66]); // jmp over the header
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // protocol 2.15
    image[0x211] = 1; // loadflags: LOADED_HIGH
    image[0x236..0x238].copy_from_slice(&0x7fu16.to_le_bytes()); // xloadflags
    for (i, b) in image[28 * 512..].iter_mut().enumerate() {
        *b = (i % 251) as u8 | 1; // the kernel proper: not zeros
    }
    image
}

#[test]
fn linux_bzimage_is_named_not_taken_for_flat() {
    // 14 MB, like Debian's cloud kernel: once reported as a "flat binary too large".
    let image = bzimage(14 << 20);
    let mut big = vec![0u8; 16 << 20];
    let err = load(&image, &mut big, "").unwrap_err();
    assert_eq!(err, LoadError::LinuxBzImage(0x020f));
    let text = alloc::format!("{err}");
    assert!(
        text.contains("Linux bzImage (boot protocol 2.15)"),
        "{text}"
    );
    assert!(text.contains("issue #15"), "{text}");
    // A small one is not a flat binary either.
    assert_eq!(
        load(&bzimage(64 << 10), &mut ram(), ""),
        Err(LoadError::LinuxBzImage(0x020f))
    );
    assert!(big.iter().all(|&b| b == 0));
}

#[test]
fn mutated_bzimage_headers_are_not_linux() {
    let good = bzimage(1 << 20);
    assert_eq!(linux_boot_protocol(&good), Some(0x020f));
    let mutations: [(usize, u8); 6] = [
        (0x202, b'h'), // hdrS
        (0x205, b'X'),
        (0x1fe, 0x54), // no boot flag
        (0x1ff, 0),
        (0x203, 0),
        (0x204, b'S'),
    ];
    for (at, byte) in mutations {
        let mut image = good.clone();
        image[at] = byte;
        assert_eq!(linux_boot_protocol(&image), None, "mutation at {at:#x}");
        // Then it is an unknown file of 1 MiB: the error lists the formats.
        let err = load(&image, &mut ram(), "").unwrap_err();
        assert_eq!(err, LoadError::Unrecognized(1 << 20));
        let text = alloc::format!("{err}");
        assert!(
            text.contains("Multiboot 2") && text.contains("ELF64"),
            "{text}"
        );
        assert!(text.contains("flat binary of at most 556 KiB"), "{text}");
    }
    // The signature one byte off, and files too short to hold it.
    let mut shifted = good.clone();
    shifted.copy_within(0x202..0x206, 0x203);
    shifted[0x202] = 0;
    assert_eq!(linux_boot_protocol(&shifted), None);
    for len in [0, 0x200, 0x205, 0x207] {
        assert_eq!(linux_boot_protocol(&good[..len]), None, "{len} bytes");
    }
    assert_eq!(linux_boot_protocol(&good[..0x208]), Some(0x020f));
}

#[test]
fn initrd_is_a_multiboot_module_above_the_image() {
    let header = mb1(0b11, &[]);
    let image = elf32(
        0x10_0000,
        &[(0x10_0000, 0x10_0000, b"\x90\xf4", 0x1800)],
        &header,
    );
    let initrd: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    let mut ram = ram();
    let boot = load_with(&image, &mut ram, "root=x", Some(&initrd)).unwrap();
    assert_eq!(boot.format, Format::Multiboot1);
    assert_eq!(u32_at(&ram, layout::INFO), 0x24d);
    assert_eq!(u32_at(&ram, layout::INFO + 20), 1);
    let entry = u64::from(u32_at(&ram, layout::INFO + 24));
    assert_eq!(u32_at(&ram, entry), 0x10_2000);
    assert_eq!(u32_at(&ram, entry + 4), 0x10_2000 + 5000);
    assert_eq!(&ram[0x10_2000..0x10_2000 + 5000], &initrd[..]);
    // ELF64 images get it in their Multiboot 2 information.
    let elf = elf64(0x10_0000, &[(0x10_0000, 0x10_0000, b"\xf4", 1)]);
    let mut ram2 = ram.clone();
    load_with(&elf, &mut ram2, "", Some(&initrd)).unwrap();
    assert_eq!(&ram2[0x10_1000..0x10_1000 + 5000], &initrd[..]);
    // Too large for RAM: refused, RAM untouched.
    let huge = vec![1u8; RAM];
    let mut fresh = self::ram();
    assert_eq!(
        load_with(&image, &mut fresh, "", Some(&huge)),
        Err(LoadError::InitrdTooLarge {
            len: RAM as u64,
            at: 0x10_2000
        })
    );
    assert!(fresh.iter().all(|&b| b == 0));
}

#[test]
fn longest_command_line_reaches_the_guest() {
    let header = mb1(0b11, &[]);
    let image = elf32(0x10_0000, &[(0x10_0000, 0x10_0000, b"\xf4", 1)], &header);
    let line = "k".repeat(layout::CMDLINE_MAX);
    let mut ram = ram();
    load(&image, &mut ram, &line).unwrap();
    let at = u32_at(&ram, layout::INFO + 16) as usize;
    assert_eq!(&ram[at..at + line.len()], line.as_bytes());
    assert_eq!(ram[at + line.len()], 0);
    assert!(at + line.len() < layout::INFO_END as usize);
}
