//! QEMU's firmware configuration interface, I/O flavour: a 16-bit selector at [`SELECTOR_PORT`]
//! picks an item, [`DATA_PORT`] reads it a byte at a time. No DMA interface (the ID says so).
//!
//! Items: the signature "QEMU", the ID, RAM size, CPU counts and the file directory; the
//! vmm-server adds files (`etc/e820`, a command line, ...) with [`FwCfg::add_file`] and other
//! numbered items with [`FwCfg::set_item`]. As in QEMU: selecting an item rewinds it; reading
//! past its end or from an unknown item gives 0; the data port takes 1-byte reads only (a read
//! of the selector port reads data too, QEMU's combined port); the selector takes 1- or 2-byte
//! writes; data writes are ignored.

use alloc::vec::Vec;

use super::misc::all_ones;

pub const SELECTOR_PORT: u16 = 0x510;
pub const DATA_PORT: u16 = 0x511;

/// Item keys (QEMU's `FW_CFG_*`).
pub mod key {
    pub const SIGNATURE: u16 = 0x00;
    pub const ID: u16 = 0x01;
    pub const RAM_SIZE: u16 = 0x03;
    pub const NB_CPUS: u16 = 0x05;
    pub const MAX_CPUS: u16 = 0x0f;
    pub const FILE_DIR: u16 = 0x19;
    /// The first file's key; files are numbered from it in the order they were added.
    pub const FILE_FIRST: u16 = 0x20;
}

/// The ID item: bit 0, the traditional I/O interface; bit 1 (DMA) stays clear.
pub const ID_TRADITIONAL: u32 = 1 << 0;
/// Bytes of a file name, with its terminating NUL.
pub const FILE_NAME_BYTES: usize = 56;
/// Files the directory can hold.
pub const MAX_FILES: usize = 0x100;

/// Why a file or item was not added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwCfgError {
    /// The name is empty, has a NUL, or does not fit in 55 bytes.
    BadName,
    /// A file of that name exists.
    Duplicate,
    /// The directory is full.
    TooManyFiles,
    /// The key is one the model keeps (signature, ID, file directory, a file's).
    ReservedKey,
    /// Larger than the directory's 32-bit size field.
    TooLarge,
}

#[derive(Clone, Debug)]
struct File {
    name: Vec<u8>,
    key: u16,
}

/// The device.
#[derive(Clone, Debug)]
pub struct FwCfg {
    /// Items by key, kept sorted.
    items: Vec<(u16, Vec<u8>)>,
    files: Vec<File>,
    selected: u16,
    offset: usize,
}

impl FwCfg {
    /// The device for a machine of `ram_bytes` and `cpus` CPUs (also the maximum).
    pub fn new(ram_bytes: u64, cpus: u16) -> FwCfg {
        let mut cfg = FwCfg {
            items: Vec::new(),
            files: Vec::new(),
            selected: key::SIGNATURE,
            offset: 0,
        };
        cfg.put(key::SIGNATURE, b"QEMU".to_vec());
        cfg.put(key::ID, ID_TRADITIONAL.to_le_bytes().to_vec());
        cfg.put(key::RAM_SIZE, ram_bytes.to_le_bytes().to_vec());
        cfg.put(key::NB_CPUS, cpus.to_le_bytes().to_vec());
        cfg.put(key::MAX_CPUS, cpus.to_le_bytes().to_vec());
        cfg.rebuild_directory();
        cfg
    }

    /// Whether this model answers `port`.
    pub fn claims(port: u16) -> bool {
        matches!(port, SELECTOR_PORT | DATA_PORT)
    }

    fn put(&mut self, key: u16, data: Vec<u8>) {
        match self.items.binary_search_by_key(&key, |(k, _)| *k) {
            Ok(i) => self.items[i].1 = data,
            Err(i) => self.items.insert(i, (key, data)),
        }
    }

    fn item(&self, key: u16) -> &[u8] {
        match self.items.binary_search_by_key(&key, |(k, _)| *k) {
            Ok(i) => &self.items[i].1,
            Err(_) => &[],
        }
    }

    /// Sets numbered item `key` (e.g. QEMU's kernel command line keys), replacing it.
    pub fn set_item(&mut self, key: u16, data: Vec<u8>) -> Result<(), FwCfgError> {
        let file_keys = key::FILE_FIRST..key::FILE_FIRST + MAX_FILES as u16;
        if matches!(key, key::SIGNATURE | key::ID | key::FILE_DIR) || file_keys.contains(&key) {
            return Err(FwCfgError::ReservedKey);
        }
        self.put(key, data);
        Ok(())
    }

    /// Adds file `name` (e.g. `etc/e820`) holding `data`; returns its key.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        let name = name.as_bytes();
        if name.is_empty() || name.len() >= FILE_NAME_BYTES || name.contains(&0) {
            return Err(FwCfgError::BadName);
        }
        if u32::try_from(data.len()).is_err() {
            return Err(FwCfgError::TooLarge);
        }
        if self.files.iter().any(|f| f.name == name) {
            return Err(FwCfgError::Duplicate);
        }
        if self.files.len() >= MAX_FILES {
            return Err(FwCfgError::TooManyFiles);
        }
        let key = key::FILE_FIRST + self.files.len() as u16;
        self.files.push(File {
            name: name.to_vec(),
            key,
        });
        self.put(key, data);
        self.rebuild_directory();
        Ok(key)
    }

    /// The directory: a big-endian count, then per file (sorted by name, as QEMU does) its
    /// size, key, two reserved bytes and NUL-padded name, all big-endian.
    fn rebuild_directory(&mut self) {
        let mut order: Vec<&File> = self.files.iter().collect();
        order.sort_by(|a, b| a.name.cmp(&b.name));
        let mut dir = Vec::with_capacity(4 + order.len() * (8 + FILE_NAME_BYTES));
        dir.extend_from_slice(&(order.len() as u32).to_be_bytes());
        for file in order {
            let size = self.item(file.key).len() as u32;
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&file.key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut name = [0u8; FILE_NAME_BYTES];
            name[..file.name.len()].copy_from_slice(&file.name);
            dir.extend_from_slice(&name);
        }
        self.put(key::FILE_DIR, dir);
    }

    /// Selects item `key` and rewinds it.
    pub fn select(&mut self, key: u16) {
        self.selected = key;
        self.offset = 0;
    }

    /// The next byte of the selected item (0 past its end or for an unknown item).
    pub fn read_data(&mut self) -> u8 {
        let byte = self
            .item(self.selected)
            .get(self.offset)
            .copied()
            .unwrap_or(0);
        self.offset = self.offset.saturating_add(1);
        byte
    }

    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        match (port, size) {
            (SELECTOR_PORT | DATA_PORT, 1) => u32::from(self.read_data()),
            _ => all_ones(size),
        }
    }

    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        match (port, size) {
            (SELECTOR_PORT, 1) => self.select(value as u8 as u16),
            (SELECTOR_PORT, 2) => self.select(value as u16),
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "fw_cfg_tests.rs"]
mod tests;
