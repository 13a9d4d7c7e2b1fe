//! Guest ELF executables: a bounds-checked reader of the ELF header and the `PT_LOAD` program
//! headers of 32-bit (Multiboot kernels) and 64-bit x86 executables. Unlike `uelf` (which checks
//! what init can run in user space), guest kernels load at physical addresses, may have
//! writable-and-executable segments and live anywhere in guest memory, so the checks that matter
//! here are the file bounds; the loader checks addresses against guest RAM.

/// `PT_LOAD` segments a guest image may have.
pub const MAX_SEGMENTS: usize = 16;

const PT_LOAD: u32 = 1;

/// Why bytes that start with the ELF magic are not a loadable guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than its header.
    TooShort,
    /// Not little-endian ELF version 1 of class 32 or 64.
    BadClass,
    /// Not an x86 (`EM_386` for 32-bit, `EM_X86_64` for 64-bit) `ET_EXEC` executable.
    NotX86Executable,
    /// The program-header table lies outside the file or has an unexpected entry size.
    BadProgramHeaders,
    /// More than [`MAX_SEGMENTS`] loadable segments.
    TooManySegments,
    /// A segment with `filesz > memsz`, file bytes outside the file, or an address range that
    /// overflows.
    BadSegment,
    /// No loadable segment.
    NoSegments,
}

/// ELF class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Elf32,
    Elf64,
}

/// One `PT_LOAD` segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LoadSegment {
    pub paddr: u64,
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// A checked ELF executable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elf {
    pub class: Class,
    pub entry: u64,
    segments: [LoadSegment; MAX_SEGMENTS],
    count: usize,
}

/// Whether `bytes` start with the ELF magic.
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF")
}

fn read<const N: usize>(bytes: &[u8], at: u64) -> Option<[u8; N]> {
    let at = usize::try_from(at).ok()?;
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn u16_at(bytes: &[u8], at: u64) -> Option<u16> {
    read(bytes, at).map(u16::from_le_bytes)
}

fn u32_at(bytes: &[u8], at: u64) -> Option<u32> {
    read(bytes, at).map(u32::from_le_bytes)
}

fn u64_at(bytes: &[u8], at: u64) -> Option<u64> {
    read(bytes, at).map(u64::from_le_bytes)
}

impl Elf {
    /// Parses the header and program headers of `bytes` (which start with the ELF magic).
    pub fn parse(bytes: &[u8]) -> Result<Elf, ElfError> {
        if bytes.len() < 52 || !is_elf(bytes) {
            return Err(ElfError::TooShort);
        }
        let class = match (bytes[4], bytes[5], bytes[6]) {
            (1, 1, 1) => Class::Elf32,
            (2, 1, 1) => Class::Elf64,
            _ => return Err(ElfError::BadClass),
        };
        if class == Class::Elf64 && bytes.len() < 64 {
            return Err(ElfError::TooShort);
        }
        let short = ElfError::TooShort;
        let e_type = u16_at(bytes, 16).ok_or(short)?;
        let machine = u16_at(bytes, 18).ok_or(short)?;
        let expected_machine = match class {
            Class::Elf32 => 3,
            Class::Elf64 => 62,
        };
        if e_type != 2 || machine != expected_machine {
            return Err(ElfError::NotX86Executable);
        }
        let (entry, phoff, phentsize, phnum, entry_size) = match class {
            Class::Elf32 => (
                u64::from(u32_at(bytes, 24).ok_or(short)?),
                u64::from(u32_at(bytes, 28).ok_or(short)?),
                u16_at(bytes, 42).ok_or(short)?,
                u16_at(bytes, 44).ok_or(short)?,
                32,
            ),
            Class::Elf64 => (
                u64_at(bytes, 24).ok_or(short)?,
                u64_at(bytes, 32).ok_or(short)?,
                u16_at(bytes, 54).ok_or(short)?,
                u16_at(bytes, 56).ok_or(short)?,
                56,
            ),
        };
        if phentsize != entry_size {
            return Err(ElfError::BadProgramHeaders);
        }
        let table_end = u64::from(phnum)
            .checked_mul(u64::from(entry_size))
            .and_then(|len| phoff.checked_add(len))
            .ok_or(ElfError::BadProgramHeaders)?;
        if table_end > bytes.len() as u64 {
            return Err(ElfError::BadProgramHeaders);
        }
        let mut elf = Elf {
            class,
            entry,
            segments: [LoadSegment::default(); MAX_SEGMENTS],
            count: 0,
        };
        for i in 0..u64::from(phnum) {
            let at = phoff + i * u64::from(entry_size);
            let bad = ElfError::BadProgramHeaders;
            if u32_at(bytes, at).ok_or(bad)? != PT_LOAD {
                continue;
            }
            let segment = match class {
                Class::Elf32 => {
                    let f = |o| u32_at(bytes, at + o).map(u64::from).ok_or(bad);
                    LoadSegment {
                        offset: f(4)?,
                        vaddr: f(8)?,
                        paddr: f(12)?,
                        filesz: f(16)?,
                        memsz: f(20)?,
                    }
                }
                Class::Elf64 => {
                    let f = |o| u64_at(bytes, at + o).ok_or(bad);
                    LoadSegment {
                        offset: f(8)?,
                        vaddr: f(16)?,
                        paddr: f(24)?,
                        filesz: f(32)?,
                        memsz: f(40)?,
                    }
                }
            };
            if segment.memsz == 0 {
                continue;
            }
            check(bytes, &segment)?;
            if elf.count == MAX_SEGMENTS {
                return Err(ElfError::TooManySegments);
            }
            elf.segments[elf.count] = segment;
            elf.count += 1;
        }
        if elf.count == 0 {
            return Err(ElfError::NoSegments);
        }
        Ok(elf)
    }

    /// The loadable segments (those with `memsz > 0`), in file order.
    pub fn segments(&self) -> &[LoadSegment] {
        &self.segments[..self.count]
    }

    /// The entry point as a physical address: `entry` itself if a segment's physical range holds
    /// it, else translated through the segment whose virtual range holds it (a kernel linked at
    /// virtual addresses other than its load addresses), else `entry` unchanged.
    pub fn physical_entry(&self) -> u64 {
        let inside = |base: u64, s: &LoadSegment| self.entry >= base && self.entry - base < s.memsz;
        if self.segments().iter().any(|s| inside(s.paddr, s)) {
            return self.entry;
        }
        self.segments()
            .iter()
            .find(|s| inside(s.vaddr, s))
            .map_or(self.entry, |s| s.paddr + (self.entry - s.vaddr))
    }
}

fn check(bytes: &[u8], s: &LoadSegment) -> Result<(), ElfError> {
    let file_end = s.offset.checked_add(s.filesz).ok_or(ElfError::BadSegment)?;
    if s.filesz > s.memsz
        || file_end > bytes.len() as u64
        || s.paddr.checked_add(s.memsz).is_none()
        || s.vaddr.checked_add(s.memsz).is_none()
    {
        return Err(ElfError::BadSegment);
    }
    Ok(())
}

/// Builders of small ELF files for tests (also used by the loader's tests).
#[cfg(test)]
pub mod build {
    use alloc::vec::Vec;

    /// (paddr, vaddr, file bytes, memsz)
    pub type Seg<'a> = (u64, u64, &'a [u8], u64);

    /// A 64-bit x86-64 executable with `segs`, program headers right after the header and
    /// segment data after them.
    pub fn elf64(entry: u64, segs: &[Seg<'_>]) -> Vec<u8> {
        let mut out = alloc::vec![0u8; 64 + 56 * segs.len()];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4..7].copy_from_slice(&[2, 1, 1]);
        out[16..18].copy_from_slice(&2u16.to_le_bytes());
        out[18..20].copy_from_slice(&62u16.to_le_bytes());
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&64u64.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, &(paddr, vaddr, data, memsz)) in segs.iter().enumerate() {
            let offset = out.len() as u64;
            out.extend_from_slice(data);
            let ph = 64 + 56 * i;
            out[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
            out[ph + 4..ph + 8].copy_from_slice(&7u32.to_le_bytes());
            out[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
            out[ph + 16..ph + 24].copy_from_slice(&vaddr.to_le_bytes());
            out[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            out[ph + 32..ph + 40].copy_from_slice(&(data.len() as u64).to_le_bytes());
            out[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        }
        out
    }

    /// A 32-bit x86 executable, laid out like [`elf64`]; `prefix` bytes (a Multiboot header)
    /// are placed first in the file data region, at file offset `52 + 32 * segs.len()`.
    pub fn elf32(entry: u32, segs: &[Seg<'_>], prefix: &[u8]) -> Vec<u8> {
        let mut out = alloc::vec![0u8; 52 + 32 * segs.len()];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4..7].copy_from_slice(&[1, 1, 1]);
        out[16..18].copy_from_slice(&2u16.to_le_bytes());
        out[18..20].copy_from_slice(&3u16.to_le_bytes());
        out[24..28].copy_from_slice(&entry.to_le_bytes());
        out[28..32].copy_from_slice(&52u32.to_le_bytes());
        out[42..44].copy_from_slice(&32u16.to_le_bytes());
        out[44..46].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        out.extend_from_slice(prefix);
        for (i, &(paddr, vaddr, data, memsz)) in segs.iter().enumerate() {
            let offset = out.len() as u32;
            out.extend_from_slice(data);
            let ph = 52 + 32 * i;
            let mut put =
                |o: usize, v: u32| out[ph + o..ph + o + 4].copy_from_slice(&v.to_le_bytes());
            put(0, 1);
            put(4, offset);
            put(8, vaddr as u32);
            put(12, paddr as u32);
            put(16, data.len() as u32);
            put(20, memsz as u32);
            put(24, 7);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    #[test]
    fn parses_both_classes() {
        let e = Elf::parse(&elf64(0x10_0000, &[(0x10_0000, 0x10_0000, b"abc", 0x10)])).unwrap();
        assert_eq!(e.class, Class::Elf64);
        assert_eq!(e.segments().len(), 1);
        assert_eq!(e.segments()[0].filesz, 3);
        let e = Elf::parse(&elf32(0x10_0000, &[(0x10_0000, 0x10_0000, b"abc", 3)], &[])).unwrap();
        assert_eq!(e.class, Class::Elf32);
        assert_eq!(e.segments()[0].paddr, 0x10_0000);
    }

    #[test]
    fn entry_translation() {
        let high = 0xffff_ffff_8010_0000;
        let e = Elf::parse(&elf64(high + 4, &[(0x10_0000, high, b"abcdefgh", 8)])).unwrap();
        assert_eq!(e.physical_entry(), 0x10_0004);
        let e = Elf::parse(&elf64(0x5000, &[(0x10_0000, 0x10_0000, b"a", 8)])).unwrap();
        assert_eq!(e.physical_entry(), 0x5000);
    }

    #[test]
    fn hostile_headers() {
        let good = elf64(0x10_0000, &[(0x10_0000, 0x10_0000, b"abc", 3)]);
        assert_eq!(Elf::parse(&good[..40]), Err(ElfError::TooShort));
        let mut bad = good.clone();
        bad[4] = 3;
        assert_eq!(Elf::parse(&bad), Err(ElfError::BadClass));
        let mut bad = good.clone();
        bad[18] = 3;
        assert_eq!(Elf::parse(&bad), Err(ElfError::NotX86Executable));
        let mut bad = good.clone();
        bad[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
        assert_eq!(Elf::parse(&bad), Err(ElfError::BadProgramHeaders));
        let mut bad = good.clone();
        bad[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(Elf::parse(&bad), Err(ElfError::BadProgramHeaders));
        let mut bad = good.clone();
        bad[54] = 55;
        assert_eq!(Elf::parse(&bad), Err(ElfError::BadProgramHeaders));
        // filesz > memsz, file range beyond the end, address overflow.
        let bad = elf64(0, &[(0x10_0000, 0x10_0000, b"abc", 2)]);
        assert_eq!(Elf::parse(&bad), Err(ElfError::BadSegment));
        let mut bad = good.clone();
        bad[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(Elf::parse(&bad), Err(ElfError::BadSegment));
        let bad = elf64(0, &[(u64::MAX - 1, 0, b"abc", 3)]);
        assert_eq!(Elf::parse(&bad), Err(ElfError::BadSegment));
        let none = elf64(0, &[(0x10_0000, 0, b"", 0)]);
        assert_eq!(Elf::parse(&none), Err(ElfError::NoSegments));
        let segs = [(0x10_0000u64, 0u64, &b"a"[..], 1u64); MAX_SEGMENTS + 1];
        assert_eq!(Elf::parse(&elf64(0, &segs)), Err(ElfError::TooManySegments));
    }

    #[test]
    fn truncations_never_panic() {
        let good = elf64(0x10_0000, &[(0x10_0000, 0x10_0000, b"abcdef", 6)]);
        for len in 0..good.len() {
            let _ = Elf::parse(&good[..len]);
        }
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] = 0xff;
            let _ = Elf::parse(&b);
        }
    }
}
