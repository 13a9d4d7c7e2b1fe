use super::*;
use crate::testing::{Mb2Builder, MmapEntry, MMAP_ACPI_RECLAIMABLE, MMAP_BAD, MMAP_NVS};
use crate::{MAX_CMDLINE, MAX_MODULES, MAX_NAME, MAX_REGIONS};

const RAM: MmapEntry = MmapEntry::usable(0x10_0000, 0x3ff0_0000);

fn basic_mmap() -> [MmapEntry; 6] {
    [
        MmapEntry::usable(0, 0x9_fc00),
        MmapEntry::reserved(0x9_fc00, 0x400),
        RAM,
        MmapEntry {
            base: 0x4000_0000,
            len: 0x1000,
            ty: MMAP_ACPI_RECLAIMABLE,
        },
        MmapEntry {
            base: 0x4000_1000,
            len: 0x1000,
            ty: MMAP_NVS,
        },
        MmapEntry {
            base: 0x4000_2000,
            len: 0x1000,
            ty: MMAP_BAD,
        },
    ]
}

/// A valid image with one of each tag the parser knows.
fn full_image() -> Vec<u8> {
    Mb2Builder::new()
        .add_cmdline("console=com1 log=debug")
        .add_bootloader_name("GRUB 2.12")
        .add_module(0x20_0000, 0x20_1234, "/boot/vmm-server arg")
        .add_module(0x30_0000, 0x30_0000, "")
        .add_tag(21, &0x20_0000u32.to_le_bytes())
        .add_mmap(&basic_mmap())
        .add_rsdp(false, &[0x11; 20])
        .add_rsdp(true, &[0x22; 36])
        .end()
}

fn minimal_image() -> Vec<u8> {
    Mb2Builder::new().add_mmap(&[RAM]).end()
}

fn set_u32(image: &mut [u8], at: usize, value: u32) {
    image[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// Offset of the first tag of type `ty` in a well-formed image.
fn tag_offset(image: &[u8], ty: u32) -> usize {
    let mut off = 8;
    loop {
        let t = u32::from_le_bytes(image[off..off + 4].try_into().unwrap());
        let size = u32::from_le_bytes(image[off + 4..off + 8].try_into().unwrap()) as usize;
        if t == ty {
            return off;
        }
        assert_ne!(t, 0, "tag {ty} not in image");
        off = (off + size).div_ceil(8) * 8;
    }
}

#[test]
fn magic() {
    assert_eq!(check_magic(BOOTLOADER_MAGIC), Ok(()));
    assert_eq!(
        check_magic(0x2bad_b002),
        Err(Mb2Error::BadMagic(0x2bad_b002))
    );
}

#[test]
fn total_size_checks_bounds() {
    assert_eq!(total_size(&[]), Err(Mb2Error::TooShort));
    assert_eq!(total_size(&[16, 0, 0, 0, 0, 0, 0]), Err(Mb2Error::TooShort));
    assert_eq!(total_size(&[16, 0, 0, 0, 0, 0, 0, 0]), Ok(16));
    assert_eq!(total_size(&[8, 0, 0, 0, 0, 0, 0, 0]), Ok(8));
    assert_eq!(
        total_size(&[7, 0, 0, 0, 0, 0, 0, 0]),
        Err(Mb2Error::BadTotalSize(7))
    );
    assert_eq!(total_size(&[0; 8]), Err(Mb2Error::BadTotalSize(0)));
    let max = MAX_INFO_SIZE as u32;
    let mut h = [0u8; 8];
    set_u32(&mut h, 0, max);
    assert_eq!(total_size(&h), Ok(MAX_INFO_SIZE));
    set_u32(&mut h, 0, max + 1);
    assert_eq!(total_size(&h), Err(Mb2Error::BadTotalSize(max + 1)));
    set_u32(&mut h, 0, u32::MAX);
    assert_eq!(total_size(&h), Err(Mb2Error::BadTotalSize(u32::MAX)));
}

#[test]
fn parses_every_known_tag() {
    let image = full_image();
    let info = parse(&image).unwrap();
    assert_eq!(info.protocol, BootProtocol::Multiboot2);
    assert_eq!(info.cmdline, "console=com1 log=debug");
    assert_eq!(info.bootloader, "GRUB 2.12");
    assert!(!info.truncated);
    assert_eq!(info.rsdp, None);

    assert_eq!(info.modules.len(), 2);
    assert_eq!(info.modules[0].start, 0x20_0000);
    assert_eq!(info.modules[0].len, 0x1234);
    assert_eq!(info.modules[0].name, "/boot/vmm-server arg");
    assert_eq!(info.modules[1].len, 0);
    assert_eq!(info.modules[1].name, "");

    let kinds: Vec<_> = info.memory_map.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            RegionKind::Usable,
            RegionKind::Reserved,
            RegionKind::Usable,
            RegionKind::AcpiReclaimable,
            RegionKind::AcpiNvs,
            RegionKind::BadMemory,
        ]
    );
    for (region, entry) in info.memory_map.iter().zip(basic_mmap()) {
        assert_eq!((region.start, region.len), (entry.base, entry.len));
    }
}

#[test]
fn parse_at_reports_the_newest_rsdp_copy() {
    let image = full_image();
    let base = 0x8_0000;
    let info = parse_at(&image, base).unwrap();
    let new = tag_offset(&image, 15) as u64 + 8;
    assert_eq!(info.rsdp, Some(base + new));

    let only_old = Mb2Builder::new()
        .add_rsdp(false, &[0; 20])
        .add_mmap(&[RAM])
        .end();
    let info = parse_at(&only_old, base).unwrap();
    assert_eq!(info.rsdp, Some(base + tag_offset(&only_old, 14) as u64 + 8));

    let info = parse_at(&minimal_image(), base).unwrap();
    assert_eq!(info.rsdp, None);
    // The address must not wrap.
    let info = parse_at(&only_old, u64::MAX - 4).unwrap();
    assert_eq!(info.rsdp, None);
}

#[test]
fn short_rsdp_tags_are_refused() {
    for (new, len) in [(false, 19), (true, 35), (true, 20)] {
        let image = Mb2Builder::new()
            .add_mmap(&[RAM])
            .add_rsdp(new, &vec![0; len])
            .end();
        let off = tag_offset(&image, if new { 15 } else { 14 });
        assert_eq!(
            parse(&image).unwrap_err(),
            Mb2Error::BadTagSize {
                offset: off,
                size: len as u32 + 8
            }
        );
    }
}

#[test]
fn bytes_past_total_size_are_ignored() {
    let mut image = minimal_image();
    let expected = parse(&image).unwrap().memory_map;
    image.extend_from_slice(&[0xff; 64]);
    assert_eq!(parse(&image).unwrap().memory_map, expected);
}

#[test]
fn every_truncation_is_refused() {
    let image = full_image();
    for len in 0..image.len() {
        // Shorter than the header, or than the total size the header claims.
        assert_eq!(
            parse(&image[..len]).unwrap_err(),
            Mb2Error::TooShort,
            "len {len}"
        );
    }
}

#[test]
fn every_consistent_truncation_is_refused() {
    // The structure is cut and its total size says so: the parser must notice on its own.
    let image = full_image();
    for len in 8..image.len() {
        let mut cut = image[..len].to_vec();
        set_u32(&mut cut, 0, len as u32);
        let err = parse(&cut).unwrap_err();
        if !len.is_multiple_of(8) {
            assert_eq!(err, Mb2Error::Misaligned, "len {len}");
        } else {
            assert!(
                matches!(err, Mb2Error::MissingEndTag | Mb2Error::TagOverrun { .. }),
                "len {len}: {err:?}"
            );
        }
    }
}

#[test]
fn corrupted_tag_sizes() {
    let image = full_image();
    let off = tag_offset(&image, 6);
    for (size, expected) in [
        (
            0,
            Mb2Error::BadTagSize {
                offset: off,
                size: 0,
            },
        ),
        (
            7,
            Mb2Error::BadTagSize {
                offset: off,
                size: 7,
            },
        ),
        (u32::MAX, Mb2Error::TagOverrun { offset: off }),
        (
            (image.len() - off + 1) as u32,
            Mb2Error::TagOverrun { offset: off },
        ),
    ] {
        let mut bad = image.clone();
        set_u32(&mut bad, off + 4, size);
        assert_eq!(parse(&bad).unwrap_err(), expected, "size {size}");
    }
    // A module tag too short for its two addresses.
    let off = tag_offset(&image, 3);
    let mut bad = image.clone();
    set_u32(&mut bad, off + 4, 12);
    assert_eq!(
        parse(&bad).unwrap_err(),
        Mb2Error::BadTagSize {
            offset: off,
            size: 12
        }
    );
    // An end tag must be exactly 8 bytes.
    let mut bad = Mb2Builder::new()
        .add_mmap(&[RAM])
        .add_tag(0, &[0; 8])
        .finish_without_end();
    let off = tag_offset(&bad, 0);
    assert_eq!(
        parse(&bad).unwrap_err(),
        Mb2Error::BadTagSize {
            offset: off,
            size: 16
        }
    );
    set_u32(&mut bad, off + 4, 8);
    assert!(parse(&bad).is_ok());
}

#[test]
fn misaligned_total_size() {
    let mut image = minimal_image();
    image.extend_from_slice(&[0; 4]);
    let len = image.len() as u32;
    set_u32(&mut image, 0, len);
    assert_eq!(parse(&image).unwrap_err(), Mb2Error::Misaligned);
}

#[test]
fn claimed_size_larger_than_slice() {
    let mut image = minimal_image();
    let len = image.len() as u32;
    set_u32(&mut image, 0, len + 8);
    assert_eq!(parse(&image).unwrap_err(), Mb2Error::TooShort);
}

#[test]
fn header_only_and_missing_end_tag() {
    let mut header = [0u8; 8];
    set_u32(&mut header, 0, 8);
    assert_eq!(parse(&header).unwrap_err(), Mb2Error::MissingEndTag);
    let image = Mb2Builder::new().add_mmap(&[RAM]).finish_without_end();
    assert_eq!(parse(&image).unwrap_err(), Mb2Error::MissingEndTag);
}

#[test]
fn missing_memory_map() {
    let image = Mb2Builder::new().add_cmdline("x").end();
    assert_eq!(parse(&image).unwrap_err(), Mb2Error::MissingMemoryMap);
    // A memory map after the end tag does not count.
    let mut image = Mb2Builder::new().end();
    image.extend_from_slice(&minimal_image()[8..]);
    let len = image.len() as u32;
    set_u32(&mut image, 0, len);
    assert_eq!(parse(&image).unwrap_err(), Mb2Error::MissingMemoryMap);
}

#[test]
fn bad_memory_map_entry_sizes() {
    for size in [0, 8, 16, 20, 28, 33, u32::MAX] {
        let image = Mb2Builder::new().add_mmap_with_entry_size(size, &[]).end();
        assert_eq!(
            parse(&image).unwrap_err(),
            Mb2Error::BadMemoryMapEntrySize(size),
            "entry size {size}"
        );
    }
    // Larger entries (newer versions) are fine; the extra bytes are skipped.
    let image = Mb2Builder::new()
        .add_mmap_with_entry_size(32, &basic_mmap())
        .end();
    let info = parse(&image).unwrap();
    assert_eq!(info.memory_map.len(), basic_mmap().len());
    assert_eq!(info.memory_map[2].start, RAM.base);
    // A memory map tag too short for its own header.
    let image = Mb2Builder::new().add_tag(6, &24u32.to_le_bytes()).end();
    assert!(matches!(
        parse(&image).unwrap_err(),
        Mb2Error::BadTagSize { size: 12, .. }
    ));
}

#[test]
fn partial_memory_map_entry_is_refused() {
    let image = Mb2Builder::new().add_mmap(&[RAM]).end();
    let off = tag_offset(&image, 6);
    let mut bad = image.clone();
    // Claim 8 bytes fewer: the entry is cut.
    set_u32(&mut bad, off + 4, 16 + 24 - 8);
    assert_eq!(
        parse(&bad).unwrap_err(),
        Mb2Error::BadTagSize {
            offset: off,
            size: 32
        }
    );
}

#[test]
fn empty_memory_map_is_accepted() {
    // An empty map is well-formed; `mem` reports that there is no usable memory.
    let image = Mb2Builder::new().add_mmap(&[]).end();
    assert!(parse(&image).unwrap().memory_map.is_empty());
}

#[test]
fn unknown_tags_are_skipped() {
    let image = Mb2Builder::new()
        .add_tag(4, &[1, 2, 3, 4, 5, 6, 7, 8])
        .add_tag(99, &[0xff; 13])
        .add_tag(u32::MAX, &[])
        .add_mmap(&[RAM])
        .add_tag(0x1234_5678, &[0; 3])
        .end();
    let info = parse(&image).unwrap();
    assert_eq!(info.memory_map.len(), 1);
    assert!(!info.truncated);
}

#[test]
fn too_many_regions_sets_truncated() {
    let entries: Vec<_> = (0..MAX_REGIONS as u64 + 5)
        .map(|i| MmapEntry::usable(i * 0x1000, 0x1000))
        .collect();
    let image = Mb2Builder::new().add_mmap(&entries).end();
    let info = parse(&image).unwrap();
    assert!(info.truncated);
    assert_eq!(info.memory_map.len(), MAX_REGIONS);
    assert_eq!(
        info.memory_map[MAX_REGIONS - 1].start,
        (MAX_REGIONS as u64 - 1) * 0x1000
    );

    let image = Mb2Builder::new().add_mmap(&entries[..MAX_REGIONS]).end();
    assert!(!parse(&image).unwrap().truncated);
}

#[test]
fn too_many_modules_sets_truncated() {
    let mut b = Mb2Builder::new().add_mmap(&[RAM]);
    for i in 0..MAX_MODULES as u32 + 1 {
        b = b.add_module(i * 0x1000, i * 0x1000 + 1, "m");
    }
    let info = parse(&b.end()).unwrap();
    assert!(info.truncated);
    assert_eq!(info.modules.len(), MAX_MODULES);
}

#[test]
fn long_strings_are_cut_at_char_boundaries() {
    // 'a' then two-byte chars: the limit falls in the middle of one.
    let cmdline = format!("a{}", "é".repeat(MAX_CMDLINE));
    let name = format!("a{}", "ü".repeat(MAX_NAME));
    let loader = "€".repeat(40);
    let image = Mb2Builder::new()
        .add_cmdline(&cmdline)
        .add_bootloader_name(&loader)
        .add_module(0, 0x1000, &name)
        .add_mmap(&[RAM])
        .end();
    let info = parse(&image).unwrap();
    assert!(info.truncated);
    assert_eq!(info.cmdline.len(), MAX_CMDLINE - 1);
    assert!(cmdline.starts_with(info.cmdline.as_str()));
    assert_eq!(info.modules[0].name.len(), MAX_NAME - 1);
    assert!(name.starts_with(info.modules[0].name.as_str()));
    // 64 bytes hold 21 three-byte chars.
    assert_eq!(info.bootloader.len(), 63);
    assert!(loader.starts_with(info.bootloader.as_str()));
}

#[test]
fn exact_length_strings_are_not_truncated() {
    let cmdline = "c".repeat(MAX_CMDLINE);
    let image = Mb2Builder::new()
        .add_cmdline(&cmdline)
        .add_mmap(&[RAM])
        .end();
    let info = parse(&image).unwrap();
    assert!(!info.truncated);
    assert_eq!(info.cmdline, cmdline.as_str());
}

#[test]
fn strings_need_a_nul() {
    let image = Mb2Builder::new()
        .add_tag(1, b"no terminator")
        .add_mmap(&[RAM])
        .end();
    assert_eq!(
        parse(&image).unwrap_err(),
        Mb2Error::BadString { offset: 8 }
    );
    let mut payload = Vec::new();
    payload.extend_from_slice(&0u32.to_le_bytes());
    payload.extend_from_slice(&16u32.to_le_bytes());
    payload.extend_from_slice(b"name");
    let image = Mb2Builder::new()
        .add_tag(3, &payload)
        .add_mmap(&[RAM])
        .end();
    assert_eq!(
        parse(&image).unwrap_err(),
        Mb2Error::BadString { offset: 8 }
    );
    // Bytes after the NUL are ignored.
    let image = Mb2Builder::new()
        .add_tag(2, b"GRUB\0junk")
        .add_mmap(&[RAM])
        .end();
    assert_eq!(parse(&image).unwrap().bootloader, "GRUB");
}

#[test]
fn invalid_utf8_is_replaced() {
    let image = Mb2Builder::new()
        .add_tag(1, b"a\xffb\xc3\0")
        .add_mmap(&[RAM])
        .end();
    let info = parse(&image).unwrap();
    assert_eq!(info.cmdline, "a\u{fffd}b\u{fffd}");
    assert!(!info.truncated);
}

#[test]
fn module_ending_before_start_is_refused() {
    let image = Mb2Builder::new()
        .add_mmap(&[RAM])
        .add_module(0x2000, 0x1000, "backwards")
        .end();
    let off = tag_offset(&image, 3);
    assert_eq!(
        parse(&image).unwrap_err(),
        Mb2Error::BadModule { offset: off }
    );
}

#[test]
fn errors_display_on_one_line() {
    let all = [
        Mb2Error::BadMagic(1),
        Mb2Error::TooShort,
        Mb2Error::BadTotalSize(3),
        Mb2Error::Misaligned,
        Mb2Error::TagOverrun { offset: 8 },
        Mb2Error::BadTagSize { offset: 8, size: 7 },
        Mb2Error::MissingEndTag,
        Mb2Error::BadMemoryMapEntrySize(20),
        Mb2Error::MissingMemoryMap,
        Mb2Error::BadString { offset: 16 },
        Mb2Error::BadModule { offset: 16 },
    ];
    for e in all {
        let text = e.to_string();
        assert!(!text.is_empty() && !text.contains('\n'), "{e:?}: {text:?}");
    }
    assert!(Mb2Error::BadMagic(0x2bad_b002)
        .to_string()
        .contains("0x2badb002"));
}

/// xorshift64: a fixed-seed source of mutations, so failures reproduce.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_mutations_never_panic() {
    let image = full_image();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let interesting = [0, 1, 7, 8, 9, 16, 23, 24, 0x7fff_ffff, u32::MAX];
    let (mut ok, mut err) = (0, 0);
    for _ in 0..10_000 {
        let mut m = image.clone();
        let edits = 1 + rng.below(4);
        for _ in 0..edits {
            match rng.below(4) {
                // Flip a random bit.
                0 => {
                    let at = rng.below(m.len());
                    m[at] ^= 1 << rng.below(8);
                }
                // An interesting or random u32 at an aligned offset (hits type and size fields).
                2 if m.len() >= 4 => {
                    let at = rng.below(m.len() / 4) * 4;
                    let v = if rng.below(2) == 0 {
                        interesting[rng.below(interesting.len())]
                    } else {
                        rng.next() as u32
                    };
                    set_u32(&mut m, at, v);
                }
                // Random byte.
                1 | 2 => {
                    let at = rng.below(m.len());
                    m[at] = rng.next() as u8;
                }
                // Cut the image.
                _ => {
                    let len = rng.below(m.len() + 1);
                    m.truncate(len);
                    if m.is_empty() {
                        m.push(0);
                    }
                }
            }
        }
        match parse(&m) {
            Ok(info) => {
                ok += 1;
                assert!(info.memory_map.len() <= MAX_REGIONS);
                assert!(info.cmdline.len() <= MAX_CMDLINE);
            }
            Err(_) => err += 1,
        }
        let _ = parse_at(&m, u64::MAX - 16);
    }
    // Both outcomes occur, so the mutations reach past the first check.
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
}
