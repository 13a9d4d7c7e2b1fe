//! Just enough ELF64 reading to size the kernel (the sum of its loadable segments) and to
//! flatten a guest image into the bytes a real-mode loader copies to memory.

use anyhow::{bail, Context, Result};

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

/// The largest flat image: a flat guest is started in real mode, far below this.
pub const FLAT_MAX: u64 = 16 << 20;

/// A flat image of an ELF64 file: its `PT_LOAD` segments' file bytes placed at their physical
/// addresses (`p_paddr`) relative to the lowest one, gaps zero-filled. Memory beyond the last
/// file byte (a trailing .bss) is left out; the loader's memory is zero already.
pub fn flatten(bytes: &[u8]) -> Result<Vec<u8>> {
    let segments = load_segments(bytes)?;
    let Some(base) = segments.iter().map(|s| s.paddr).min() else {
        bail!("the ELF has no loadable segment");
    };
    let mut end = base;
    for s in &segments {
        if s.memory < s.file {
            bail!(
                "a segment at {:#x} has more file than memory bytes",
                s.paddr
            );
        }
        let top = s
            .paddr
            .checked_add(s.file)
            .context("a segment wraps around")?;
        end = end.max(top);
    }
    if end - base > FLAT_MAX {
        bail!(
            "the segments span {:#x}..{end:#x}, more than {} MiB flat",
            base,
            FLAT_MAX >> 20
        );
    }
    let mut flat = vec![0u8; usize::try_from(end - base)?];
    for s in &segments {
        let from = usize::try_from(s.offset)?;
        let len = usize::try_from(s.file)?;
        let data = from
            .checked_add(len)
            .and_then(|to| bytes.get(from..to))
            .with_context(|| format!("the segment at {:#x} lies past the file's end", s.paddr))?;
        let at = usize::try_from(s.paddr - base)?;
        flat[at..at + len].copy_from_slice(data);
    }
    Ok(flat)
}

/// A `PT_LOAD` program header.
struct Segment {
    offset: u64,
    paddr: u64,
    file: u64,
    memory: u64,
}

fn load_segments(bytes: &[u8]) -> Result<Vec<Segment>> {
    if bytes.get(..4) != Some(b"\x7fELF") || bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        bail!("not a little-endian ELF64 file");
    }
    let phoff = usize::try_from(u64_at(bytes, 0x20)?)?;
    let entry_size = usize::from(u16_at(bytes, 0x36)?);
    let count = usize::from(u16_at(bytes, 0x38)?);
    if entry_size < 0x38 {
        bail!("program header entries of {entry_size} bytes are too small");
    }
    let mut segments = Vec::new();
    for i in 0..count {
        let header = phoff + i * entry_size;
        if u32_at(bytes, header)? == PT_LOAD && u64_at(bytes, header + 0x28)? > 0 {
            segments.push(Segment {
                offset: u64_at(bytes, header + 0x08)?,
                paddr: u64_at(bytes, header + 0x18)?,
                file: u64_at(bytes, header + 0x20)?,
                memory: u64_at(bytes, header + 0x28)?,
            });
        }
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF whose segments are `(paddr, data, memory size)`, data placed after the headers.
    fn loadable(segments: &[(u64, &[u8], u64)]) -> Vec<u8> {
        let mut bytes = elf(&segments
            .iter()
            .map(|&(_, data, memory)| (1, data.len() as u64, memory))
            .collect::<Vec<_>>());
        for (i, &(paddr, data, _)) in segments.iter().enumerate() {
            let header = 64 + i * 56;
            let offset = bytes.len() as u64;
            bytes[header + 0x08..header + 0x10].copy_from_slice(&offset.to_le_bytes());
            bytes[header + 0x18..header + 0x20].copy_from_slice(&paddr.to_le_bytes());
            bytes.extend_from_slice(data);
        }
        bytes
    }

    #[test]
    fn flattens_from_the_lowest_physical_address() {
        let bytes = loadable(&[(0x7e00, b"BB", 0x10), (0x7c00, b"AAAA", 4)]);
        let flat = flatten(&bytes).unwrap();
        assert_eq!(flat.len(), 0x202);
        assert_eq!(&flat[..4], b"AAAA");
        assert!(flat[4..0x200].iter().all(|&b| b == 0));
        assert_eq!(&flat[0x200..], b"BB");
        // A trailing .bss adds nothing; one segment alone is its bytes.
        assert_eq!(
            flatten(&loadable(&[(0x1000, b"xy", 0x1000)])).unwrap(),
            b"xy"
        );
    }

    #[test]
    fn refuses_what_cannot_be_flat() {
        assert!(flatten(&elf(&[])).is_err(), "no segment");
        assert!(flatten(&loadable(&[(0, b"a", 1), (FLAT_MAX, b"b", 1)])).is_err());
        let mut cut = loadable(&[(0, b"abcd", 4)]);
        cut.truncate(cut.len() - 1);
        assert!(flatten(&cut).is_err(), "data past the end");
        assert!(
            flatten(&loadable(&[(0, b"abcd", 2)])).is_err(),
            "file > memory"
        );
        assert!(flatten(b"MZ").is_err());
    }

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

/// A symbol of an ELF64 image: its address, size (0 for assembly labels) and mangled name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub addr: u64,
    pub size: u64,
    pub name: String,
}

const SHT_SYMTAB: u32 = 2;
const STT_NOTYPE: u8 = 0;
const STT_FUNC: u8 = 2;

/// The code symbols (functions, and untyped labels such as assembly entry points) of the
/// `.symtab` of a little-endian ELF64 image, sorted by address.
pub fn code_symbols(bytes: &[u8]) -> Result<Vec<Symbol>> {
    if bytes.get(..4) != Some(b"\x7fELF") || bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        bail!("not a little-endian ELF64 file");
    }
    let shoff = usize::try_from(u64_at(bytes, 0x28)?)?;
    let entry_size = usize::from(u16_at(bytes, 0x3a)?);
    let count = usize::from(u16_at(bytes, 0x3c)?);
    let section = |i: usize| shoff + i * entry_size;
    let mut symbols = Vec::new();
    for i in 0..count {
        let header = section(i);
        if u32_at(bytes, header + 4)? != SHT_SYMTAB {
            continue;
        }
        let offset = usize::try_from(u64_at(bytes, header + 0x18)?)?;
        let size = usize::try_from(u64_at(bytes, header + 0x20)?)?;
        let strings = section(usize::try_from(u32_at(bytes, header + 0x28)?)?);
        let str_offset = usize::try_from(u64_at(bytes, strings + 0x18)?)?;
        for entry in (offset..offset + size).step_by(24) {
            let kind = read::<1>(bytes, entry + 4)?[0] & 0xf;
            let addr = u64_at(bytes, entry + 8)?;
            if !(kind == STT_FUNC || kind == STT_NOTYPE) || addr == 0 {
                continue;
            }
            let name_at = str_offset + usize::try_from(u32_at(bytes, entry)?)?;
            let name = bytes
                .get(name_at..)
                .and_then(|rest| rest.split(|&b| b == 0).next())
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default();
            if name.is_empty() || name.starts_with(".L") {
                continue;
            }
            symbols.push(Symbol {
                addr,
                size: u64_at(bytes, entry + 16)?,
                name,
            });
        }
    }
    symbols.sort_by_key(|s| (s.addr, std::cmp::Reverse(s.size)));
    Ok(symbols)
}

/// The file bytes at virtual address `addr` to the end of its `PT_LOAD` segment.
pub fn bytes_at(bytes: &[u8], addr: u64) -> Option<&[u8]> {
    let phoff = usize::try_from(u64_at(bytes, 0x20).ok()?).ok()?;
    let entry_size = usize::from(u16_at(bytes, 0x36).ok()?);
    let count = usize::from(u16_at(bytes, 0x38).ok()?);
    (0..count).find_map(|i| {
        let header = phoff + i * entry_size;
        if u32_at(bytes, header).ok()? != PT_LOAD {
            return None;
        }
        let offset = u64_at(bytes, header + 0x08).ok()?;
        let vaddr = u64_at(bytes, header + 0x10).ok()?;
        let filesz = u64_at(bytes, header + 0x20).ok()?;
        let within = addr.checked_sub(vaddr).filter(|&d| d < filesz)?;
        let start = usize::try_from(offset + within).ok()?;
        let end = usize::try_from(offset + filesz).ok()?;
        bytes.get(start..end)
    })
}
