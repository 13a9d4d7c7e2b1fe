//! Just enough ELF64 reading to size the kernel: the sum of its loadable segments.

use anyhow::{bail, Result};

const PT_LOAD: u32 = 1;

/// Sizes of an ELF's loadable segments.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct LoadSizes {
    /// Bytes the segments occupy in memory (`p_memsz`, including .bss).
    pub memory: u64,
    /// Bytes the segments take from the file (`p_filesz`).
    pub file: u64,
    pub segments: u32,
}

fn read<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N]> {
    match bytes.get(at..at + N) {
        Some(slice) => Ok(slice.try_into().expect("slice has N bytes")),
        None => bail!("ELF truncated at byte {at}"),
    }
}

fn u16_at(bytes: &[u8], at: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(read(bytes, at)?))
}
fn u32_at(bytes: &[u8], at: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(read(bytes, at)?))
}
fn u64_at(bytes: &[u8], at: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(read(bytes, at)?))
}

/// Sums the `PT_LOAD` program headers of a little-endian ELF64 image.
pub fn load_sizes(bytes: &[u8]) -> Result<LoadSizes> {
    if bytes.get(..4) != Some(b"\x7fELF") || bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        bail!("not a little-endian ELF64 file");
    }
    let phoff = usize::try_from(u64_at(bytes, 0x20)?)?;
    let entry_size = usize::from(u16_at(bytes, 0x36)?);
    let count = usize::from(u16_at(bytes, 0x38)?);
    if entry_size < 0x38 {
        bail!("program header entries of {entry_size} bytes are too small");
    }
    let mut sizes = LoadSizes::default();
    for i in 0..count {
        let header = phoff + i * entry_size;
        if u32_at(bytes, header)? == PT_LOAD {
            sizes.file += u64_at(bytes, header + 0x20)?;
            sizes.memory += u64_at(bytes, header + 0x28)?;
            sizes.segments += 1;
        }
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(segments: &[(u32, u64, u64)]) -> Vec<u8> {
        let mut bytes = vec![0u8; 64];
        bytes[..6].copy_from_slice(b"\x7fELF\x02\x01");
        bytes[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        for &(kind, file, memory) in segments {
            let mut header = vec![0u8; 56];
            header[..4].copy_from_slice(&kind.to_le_bytes());
            header[0x20..0x28].copy_from_slice(&file.to_le_bytes());
            header[0x28..0x30].copy_from_slice(&memory.to_le_bytes());
            bytes.extend(header);
        }
        bytes
    }

    #[test]
    fn sums_loadable_segments_only() {
        let bytes = elf(&[(1, 100, 100), (4, 50, 50), (1, 10, 4096)]);
        assert_eq!(
            load_sizes(&bytes).unwrap(),
            LoadSizes {
                memory: 4196,
                file: 110,
                segments: 2
            }
        );
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(load_sizes(b"MZ").is_err());
        let mut bytes = elf(&[(1, 1, 1)]);
        bytes.truncate(100);
        assert!(load_sizes(&bytes).is_err());
    }
}
