use super::*;

/// What a guest driver does: select with a 16-bit write, read bytes one at a time.
fn read_item(cfg: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
    cfg.write(SELECTOR_PORT, 2, u32::from(key));
    (0..len).map(|_| cfg.read(DATA_PORT, 1) as u8).collect()
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// The directory as a guest parses it: (name, key, size).
fn directory(cfg: &mut FwCfg) -> Vec<(String, u16, u32)> {
    let count = be32(&read_item(cfg, key::FILE_DIR, 4)) as usize;
    let all = read_item(cfg, key::FILE_DIR, 4 + count * 64);
    all[4..]
        .chunks(64)
        .map(|e| {
            assert_eq!(&e[6..8], &[0, 0]);
            let name = &e[8..];
            let end = name.iter().position(|&b| b == 0).unwrap();
            (
                String::from_utf8(name[..end].to_vec()).unwrap(),
                u16::from_be_bytes([e[4], e[5]]),
                be32(e),
            )
        })
        .collect()
}

#[test]
fn signature_id_and_machine_items() {
    let mut cfg = FwCfg::new(256 << 20, 1);
    assert_eq!(read_item(&mut cfg, key::SIGNATURE, 4), b"QEMU");
    let id = read_item(&mut cfg, key::ID, 4);
    assert_eq!(u32::from_le_bytes(id.try_into().unwrap()), 1, "no DMA bit");
    let ram = read_item(&mut cfg, key::RAM_SIZE, 8);
    assert_eq!(u64::from_le_bytes(ram.try_into().unwrap()), 256 << 20);
    assert_eq!(read_item(&mut cfg, key::NB_CPUS, 2), [1, 0]);
    assert_eq!(read_item(&mut cfg, key::MAX_CPUS, 2), [1, 0]);
    assert_eq!(read_item(&mut cfg, key::FILE_DIR, 4), [0, 0, 0, 0]);
}

#[test]
fn selecting_rewinds_and_the_end_reads_zero() {
    let mut cfg = FwCfg::new(1 << 30, 2);
    assert_eq!(read_item(&mut cfg, key::SIGNATURE, 6), b"QEMU\0\0");
    assert_eq!(read_item(&mut cfg, key::SIGNATURE, 2), b"QE");
    // A byte write to the selector selects too; the selector port reads data (QEMU).
    cfg.write(SELECTOR_PORT, 1, 0x105);
    assert_eq!(cfg.read(SELECTOR_PORT, 1), 2);
    // Unknown items, arch-local ones included, read 0.
    assert_eq!(read_item(&mut cfg, 0x1234, 3), [0, 0, 0]);
    assert_eq!(read_item(&mut cfg, 0x8003, 3), [0, 0, 0]);
}

#[test]
fn other_accesses_do_nothing() {
    let mut cfg = FwCfg::new(1 << 30, 1);
    cfg.write(SELECTOR_PORT, 2, 0);
    assert_eq!(cfg.read(DATA_PORT, 2), 0xffff);
    assert_eq!(cfg.read(DATA_PORT, 4), 0xffff_ffff);
    assert_eq!(cfg.read(0x512, 1), 0xff);
    cfg.write(DATA_PORT, 1, 0x55);
    cfg.write(SELECTOR_PORT, 4, u32::from(key::ID));
    cfg.write(0x514, 4, 0x1000); // where the DMA port would be
    assert_eq!(cfg.read(DATA_PORT, 1), u32::from(b'Q'), "nothing moved");
}

#[test]
fn files_and_directory() {
    let mut cfg = FwCfg::new(1 << 30, 1);
    let e820: Vec<u8> = (0..40).collect();
    let e820_key = cfg.add_file("etc/e820", e820.clone()).unwrap();
    let boot_key = cfg.add_file("bootorder", b"/rom\0".to_vec()).unwrap();
    assert_eq!(e820_key, key::FILE_FIRST);
    assert_eq!(boot_key, key::FILE_FIRST + 1);
    // Sorted by name, as QEMU lists them.
    assert_eq!(
        directory(&mut cfg),
        [
            ("bootorder".into(), boot_key, 5),
            ("etc/e820".into(), e820_key, 40)
        ]
    );
    assert_eq!(read_item(&mut cfg, e820_key, 42)[..40], e820[..]);
    assert_eq!(read_item(&mut cfg, e820_key, 42)[40..], [0, 0]);
    // A 55-byte name fits with its NUL; 56 does not.
    let long = "x".repeat(FILE_NAME_BYTES - 1);
    assert!(cfg.add_file(&long, Vec::new()).is_ok());
    assert_eq!(directory(&mut cfg)[2].0, long);
    let longer = "y".repeat(FILE_NAME_BYTES);
    assert_eq!(cfg.add_file(&longer, Vec::new()), Err(FwCfgError::BadName));
    assert_eq!(cfg.add_file("", Vec::new()), Err(FwCfgError::BadName));
    assert_eq!(cfg.add_file("a\0b", Vec::new()), Err(FwCfgError::BadName));
    assert_eq!(
        cfg.add_file("etc/e820", Vec::new()),
        Err(FwCfgError::Duplicate)
    );
    assert_eq!(directory(&mut cfg).len(), 3);
}

#[test]
fn directory_fills_up() {
    let mut cfg = FwCfg::new(1 << 30, 1);
    for i in 0..MAX_FILES {
        cfg.add_file(&format!("f{i}"), alloc::vec![i as u8])
            .unwrap();
    }
    assert_eq!(
        cfg.add_file("one-more", Vec::new()),
        Err(FwCfgError::TooManyFiles)
    );
    let dir = directory(&mut cfg);
    assert_eq!(dir.len(), MAX_FILES);
    let (_, k, size) = dir.iter().find(|(n, _, _)| n == "f7").unwrap().clone();
    assert_eq!(size, 1);
    assert_eq!(read_item(&mut cfg, k, 1), [7]);
}

#[test]
fn numbered_items() {
    let mut cfg = FwCfg::new(1 << 30, 1);
    cfg.set_item(0x14, 9u32.to_le_bytes().to_vec()).unwrap();
    assert_eq!(read_item(&mut cfg, 0x14, 4), [9, 0, 0, 0]);
    cfg.set_item(key::NB_CPUS, 4u16.to_le_bytes().to_vec())
        .unwrap();
    assert_eq!(read_item(&mut cfg, key::NB_CPUS, 2), [4, 0]);
    for reserved in [key::SIGNATURE, key::ID, key::FILE_DIR, key::FILE_FIRST] {
        assert_eq!(
            cfg.set_item(reserved, Vec::new()),
            Err(FwCfgError::ReservedKey)
        );
    }
    assert_eq!(read_item(&mut cfg, key::SIGNATURE, 4), b"QEMU");
}

#[test]
fn any_access_is_safe() {
    let mut cfg = FwCfg::new(1 << 30, 1);
    cfg.add_file("etc/e820", alloc::vec![1; 20]).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..100_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = 0x50f + (seed >> 8) as u16 % 4;
        let size = [1, 2, 4, 3][(seed >> 20) as usize % 4];
        if seed & 1 == 0 {
            assert!(cfg.read(port, size) <= all_ones(size));
        } else {
            cfg.write(port, size, (seed >> 32) as u32);
        }
    }
}
