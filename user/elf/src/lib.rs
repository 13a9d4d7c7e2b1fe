//! The ELF executables init loads as servers: a bounds-checked parser that turns a module's bytes
//! into an entry point and a short list of loadable segments, or an [`Error`].
//!
//! A module is untrusted input as far as this parser is concerned: every offset, size and address
//! is checked before use, arithmetic is checked, and nothing panics. What it accepts is exactly
//! what `user/link.ld` produces and init can load:
//!
//! - 64-bit, little-endian, `ET_EXEC`, `EM_X86_64`, version 1;
//! - at most [`MAX_SEGMENTS`] `PT_LOAD` segments, each inside the user half, with
//!   `filesz <= memsz`, file bytes inside the module, never writable and executable at once;
//! - no two segments touching the same page (init maps whole pages with one segment's rights);
//! - no `PT_INTERP`, `PT_DYNAMIC` or `PT_TLS` (no dynamic linking, no thread-local storage);
//! - an entry point inside an executable segment.
//!
//! Segments with `memsz == 0` are ignored. The crate is `no_std` and tested on the host
//! (`cargo test -p uelf`).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

/// Size of a page (`abi::PAGE_SIZE`).
pub use abi::PAGE_SIZE;
/// First address above the user half (user addresses are below it).
pub const USER_END: u64 = 0x0000_8000_0000_0000;
/// Loadable segments an executable may have.
pub const MAX_SEGMENTS: usize = 8;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PT_TLS: u32 = 7;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;

/// Why a module is not a loadable executable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Shorter than an ELF header.
    TooShort,
    /// Does not start with `\x7fELF`.
    BadMagic,
    /// Not 64-bit little-endian ELF version 1.
    BadClass,
    /// Not an x86-64 executable (`ET_EXEC`, `EM_X86_64`).
    NotX86Executable,
    /// The program-header table lies outside the file or has an unexpected entry size.
    BadProgramHeaders,
    /// The executable needs an interpreter, dynamic linking or thread-local storage.
    Unsupported,
    /// More than [`MAX_SEGMENTS`] loadable segments.
    TooManySegments,
    /// A segment's sizes, file range or address range are inconsistent or overflow.
    BadSegment,
    /// A segment reaches outside the user half.
    NotUser,
    /// A segment is writable and executable.
    WritableAndExecutable,
    /// Two segments share a page.
    Overlap,
    /// No loadable segment, or the entry point is not in an executable one.
    BadEntry,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::TooShort => "shorter than an ELF header",
            Self::BadMagic => "no ELF magic",
            Self::BadClass => "not 64-bit little-endian ELF",
            Self::NotX86Executable => "not an x86-64 executable",
            Self::BadProgramHeaders => "program headers out of bounds",
            Self::Unsupported => "needs an interpreter, dynamic linking or TLS",
            Self::TooManySegments => "too many loadable segments",
            Self::BadSegment => "inconsistent segment",
            Self::NotUser => "segment outside the user half",
            Self::WritableAndExecutable => "writable and executable segment",
            Self::Overlap => "segments share a page",
            Self::BadEntry => "entry point not in an executable segment",
        })
    }
}

/// Access a segment asks for. Every loaded page is readable on x86-64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Perms {
    pub write: bool,
    pub exec: bool,
}

/// One loadable segment, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Segment {
    /// Virtual address of its first byte.
    pub vaddr: u64,
    /// Bytes in memory (file bytes followed by zeros).
    pub memsz: u64,
    /// Offset of its file bytes in the module.
    pub offset: u64,
    /// Bytes taken from the file.
    pub filesz: u64,
    pub perms: Perms,
}

impl Segment {
    /// Address of the first page the segment touches.
    pub const fn page_start(&self) -> u64 {
        self.vaddr & !(PAGE_SIZE - 1)
    }

    /// Offset of `vaddr` inside its first page.
    pub const fn offset_in_page(&self) -> u64 {
        self.vaddr & (PAGE_SIZE - 1)
    }

    /// Pages the segment touches (`parse` checked that its end does not overflow).
    pub const fn pages(&self) -> u64 {
        let end = self.vaddr.saturating_add(self.memsz);
        end.div_ceil(PAGE_SIZE) - self.vaddr / PAGE_SIZE
    }

    /// First address after its last page.
    pub const fn page_end(&self) -> u64 {
        self.page_start()
            .saturating_add(self.pages().saturating_mul(PAGE_SIZE))
    }
}

/// A checked executable.
#[derive(Clone, Copy, Debug)]
pub struct Image<'a> {
    bytes: &'a [u8],
    entry: u64,
    segments: [Segment; MAX_SEGMENTS],
    count: usize,
}

impl<'a> Image<'a> {
    /// The entry point.
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// The loadable segments, in program-header order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.count]
    }

    /// The file bytes of `segment` (one of [`Image::segments`]; others give an empty slice).
    pub fn file_bytes(&self, segment: &Segment) -> &'a [u8] {
        let (Ok(start), Ok(len)) = (
            usize::try_from(segment.offset),
            usize::try_from(segment.filesz),
        ) else {
            return &[];
        };
        start
            .checked_add(len)
            .and_then(|end| self.bytes.get(start..end))
            .unwrap_or(&[])
    }

    /// Pages all segments touch together.
    pub fn pages(&self) -> u64 {
        self.segments().iter().map(Segment::pages).sum()
    }

    /// Whether any segment touches a page of `[start, end)`.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.segments()
            .iter()
            .any(|s| s.page_start() < end && start < s.page_end())
    }
}

fn read<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    read(bytes, at).map(u16::from_le_bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    read(bytes, at).map(u32::from_le_bytes)
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    read(bytes, at).map(u64::from_le_bytes)
}

/// Parses and checks `bytes` as an executable init can load.
pub fn parse(bytes: &[u8]) -> Result<Image<'_>, Error> {
    if bytes.len() < EHDR_SIZE {
        return Err(Error::TooShort);
    }
    if bytes[..4] != *b"\x7fELF" {
        return Err(Error::BadMagic);
    }
    // EI_CLASS = ELFCLASS64, EI_DATA = ELFDATA2LSB, EI_VERSION = 1.
    if bytes[4] != 2 || bytes[5] != 1 || bytes[6] != 1 {
        return Err(Error::BadClass);
    }
    let header = |at| u16_at(bytes, at).ok_or(Error::TooShort);
    let (e_type, e_machine) = (header(16)?, header(18)?);
    if e_type != 2 || e_machine != 62 {
        return Err(Error::NotX86Executable);
    }
    let entry = u64_at(bytes, 24).ok_or(Error::TooShort)?;
    let phoff = u64_at(bytes, 32).ok_or(Error::TooShort)?;
    let phentsize = usize::from(header(54)?);
    let phnum = usize::from(header(56)?);
    if phentsize != PHDR_SIZE {
        return Err(Error::BadProgramHeaders);
    }
    let table = usize::try_from(phoff)
        .ok()
        .and_then(|start| Some((start, start.checked_add(phnum.checked_mul(PHDR_SIZE)?)?)))
        .and_then(|(start, end)| bytes.get(start..end))
        .ok_or(Error::BadProgramHeaders)?;

    let mut segments = [Segment::default(); MAX_SEGMENTS];
    let mut count = 0;
    for phdr in table.chunks_exact(PHDR_SIZE) {
        let field = |at| u64_at(phdr, at).ok_or(Error::BadProgramHeaders);
        let p_type = u32_at(phdr, 0).ok_or(Error::BadProgramHeaders)?;
        let flags = u32_at(phdr, 4).ok_or(Error::BadProgramHeaders)?;
        match p_type {
            PT_LOAD => {}
            PT_DYNAMIC | PT_INTERP | PT_TLS => return Err(Error::Unsupported),
            _ => continue,
        }
        let segment = Segment {
            offset: field(8)?,
            vaddr: field(16)?,
            filesz: field(32)?,
            memsz: field(40)?,
            perms: Perms {
                write: flags & PF_W != 0,
                exec: flags & PF_X != 0,
            },
        };
        let _readable = flags & PF_R != 0; // every mapped page is readable on x86-64
        if segment.memsz == 0 {
            continue;
        }
        check_segment(bytes, &segment)?;
        if count == MAX_SEGMENTS {
            return Err(Error::TooManySegments);
        }
        if segments[..count].iter().any(|other| {
            other.page_start() < segment.page_end() && segment.page_start() < other.page_end()
        }) {
            return Err(Error::Overlap);
        }
        segments[count] = segment;
        count += 1;
    }
    let in_text = segments[..count]
        .iter()
        .any(|s| s.perms.exec && s.vaddr <= entry && entry - s.vaddr < s.memsz);
    if !in_text {
        return Err(Error::BadEntry);
    }
    Ok(Image {
        bytes,
        entry,
        segments,
        count,
    })
}

fn check_segment(bytes: &[u8], segment: &Segment) -> Result<(), Error> {
    if segment.filesz > segment.memsz {
        return Err(Error::BadSegment);
    }
    let file_end = segment
        .offset
        .checked_add(segment.filesz)
        .ok_or(Error::BadSegment)?;
    if file_end > bytes.len() as u64 {
        return Err(Error::BadSegment);
    }
    let end = segment
        .vaddr
        .checked_add(segment.memsz)
        .ok_or(Error::BadSegment)?;
    // The page-rounded end must also stay in the user half (and so cannot overflow).
    if end > USER_END {
        return Err(Error::NotUser);
    }
    if segment.perms.write && segment.perms.exec {
        return Err(Error::WritableAndExecutable);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Phdr {
        p_type: u32,
        flags: u32,
        offset: u64,
        vaddr: u64,
        filesz: u64,
        memsz: u64,
    }

    fn load(flags: u32, offset: u64, vaddr: u64, filesz: u64, memsz: u64) -> Phdr {
        Phdr {
            p_type: PT_LOAD,
            flags,
            offset,
            vaddr,
            filesz,
            memsz,
        }
    }

    /// An ELF file with the given program headers right after the header, padded to `len`.
    fn elf(entry: u64, phdrs: &[Phdr], len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len.max(EHDR_SIZE + phdrs.len() * PHDR_SIZE)];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&entry.to_le_bytes());
        b[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
        b[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
        b[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        b[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for (i, p) in phdrs.iter().enumerate() {
            let at = EHDR_SIZE + i * PHDR_SIZE;
            b[at..at + 4].copy_from_slice(&p.p_type.to_le_bytes());
            b[at + 4..at + 8].copy_from_slice(&p.flags.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&p.offset.to_le_bytes());
            b[at + 16..at + 24].copy_from_slice(&p.vaddr.to_le_bytes());
            b[at + 32..at + 40].copy_from_slice(&p.filesz.to_le_bytes());
            b[at + 40..at + 48].copy_from_slice(&p.memsz.to_le_bytes());
        }
        b
    }

    /// What user/link.ld produces: text, rodata, data+bss.
    fn typical() -> Vec<u8> {
        let mut b = elf(
            0x400010,
            &[
                load(PF_R | PF_X, 0x1000, 0x400000, 0x1800, 0x1800),
                load(PF_R, 0x3000, 0x402000, 0x100, 0x100),
                load(PF_R | PF_W, 0x4000, 0x403000, 0x20, 0x5000),
            ],
            0x4020,
        );
        b[0x1000] = 0xcc;
        b[0x4000..0x4020].fill(0x5a);
        b
    }

    #[test]
    fn accepts_the_layout_of_link_ld() {
        let bytes = typical();
        let image = parse(&bytes).unwrap();
        assert_eq!(image.entry(), 0x400010);
        let segs = image.segments();
        assert_eq!(segs.len(), 3);
        assert_eq!(
            segs[0].perms,
            Perms {
                write: false,
                exec: true
            }
        );
        assert_eq!(segs[0].pages(), 2);
        assert_eq!(segs[2].pages(), 5);
        assert_eq!(image.pages(), 8);
        assert_eq!(image.file_bytes(&segs[0])[0], 0xcc);
        assert_eq!(image.file_bytes(&segs[2]), &[0x5a; 0x20]);
        assert!(image.overlaps(0x407000, 0x409000));
        assert!(!image.overlaps(0x408000, 0x409000));
        assert!(!image.overlaps(0x0fff_0000 - 0x10000, 0x1000_0000));
    }

    #[test]
    fn unaligned_segments_count_every_page_they_touch() {
        let s = Segment {
            vaddr: 0x400ff0,
            memsz: 0x20,
            ..Segment::default()
        };
        assert_eq!(s.page_start(), 0x400000);
        assert_eq!(s.offset_in_page(), 0xff0);
        assert_eq!(s.pages(), 2);
        assert_eq!(s.page_end(), 0x402000);
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(parse(&[0x7f, b'E']).unwrap_err(), Error::TooShort);
        let mut b = typical();
        b[0] = 0;
        assert_eq!(parse(&b).unwrap_err(), Error::BadMagic);
        let mut b = typical();
        b[4] = 1;
        assert_eq!(parse(&b).unwrap_err(), Error::BadClass);
        let mut b = typical();
        b[16] = 3; // ET_DYN
        assert_eq!(parse(&b).unwrap_err(), Error::NotX86Executable);
        let mut b = typical();
        b[18] = 3; // EM_386
        assert_eq!(parse(&b).unwrap_err(), Error::NotX86Executable);
        let mut b = typical();
        b[54] = 32;
        assert_eq!(parse(&b).unwrap_err(), Error::BadProgramHeaders);
        let mut b = typical();
        b[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(parse(&b).unwrap_err(), Error::BadProgramHeaders);
        let mut b = typical();
        b[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
        assert_eq!(parse(&b).unwrap_err(), Error::BadProgramHeaders);
    }

    #[test]
    fn rejects_bad_segments() {
        let text = |offset, vaddr, filesz, memsz| load(PF_R | PF_X, offset, vaddr, filesz, memsz);
        let cases = [
            (text(0x40, 0x400000, 0x20, 0x10), Error::BadSegment),
            (text(0x40, 0x400000, 0x2000, 0x2000), Error::BadSegment),
            (text(u64::MAX, 0x400000, 2, 2), Error::BadSegment),
            (text(0x40, u64::MAX - 1, 0, 0x10), Error::BadSegment),
            (text(0x40, USER_END - 0x10, 0, 0x20), Error::NotUser),
            (
                load(PF_R | PF_W | PF_X, 0x40, 0x400000, 0x10, 0x10),
                Error::WritableAndExecutable,
            ),
        ];
        for (phdr, error) in cases {
            let b = elf(0x400000, &[phdr], 0x200);
            assert_eq!(parse(&b).unwrap_err(), error);
        }
    }

    #[test]
    fn rejects_shared_pages_and_too_many_segments() {
        let b = elf(
            0x400000,
            &[
                load(PF_R | PF_X, 0, 0x400000, 0x10, 0x10),
                load(PF_R | PF_W, 0, 0x400800, 0x10, 0x10),
            ],
            0x200,
        );
        assert_eq!(parse(&b).unwrap_err(), Error::Overlap);
        let many: Vec<Phdr> = (0..=MAX_SEGMENTS as u64)
            .map(|i| load(PF_R | PF_X, 0, 0x400000 + i * 0x1000, 0x10, 0x10))
            .collect();
        let b = elf(0x400000, &many, 0x400);
        assert_eq!(parse(&b).unwrap_err(), Error::TooManySegments);
    }

    #[test]
    fn rejects_dynamic_executables_and_bad_entries() {
        let mut interp = load(PF_R, 0, 0, 0, 0);
        interp.p_type = PT_INTERP;
        let b = elf(
            0x400000,
            &[interp, load(PF_R | PF_X, 0, 0x400000, 0x10, 0x10)],
            0x200,
        );
        assert_eq!(parse(&b).unwrap_err(), Error::Unsupported);
        let b = elf(
            0x500000,
            &[load(PF_R | PF_X, 0, 0x400000, 0x10, 0x10)],
            0x200,
        );
        assert_eq!(parse(&b).unwrap_err(), Error::BadEntry);
        // Entry in a data segment.
        let b = elf(
            0x401000,
            &[
                load(PF_R | PF_X, 0, 0x400000, 0x10, 0x10),
                load(PF_R | PF_W, 0, 0x401000, 0x10, 0x10),
            ],
            0x200,
        );
        assert_eq!(parse(&b).unwrap_err(), Error::BadEntry);
        assert_eq!(
            parse(&elf(0x400000, &[], 0x100)).unwrap_err(),
            Error::BadEntry
        );
    }

    #[test]
    fn ignores_empty_and_other_segments() {
        let mut note = load(PF_R, 0, 0, 0, 0);
        note.p_type = 4; // PT_NOTE
        let b = elf(
            0x400000,
            &[
                note,
                load(PF_R, 0, 0x900000, 0, 0),
                load(PF_R | PF_X, 0, 0x400000, 0x10, 0x10),
            ],
            0x200,
        );
        assert_eq!(parse(&b).unwrap().segments().len(), 1);
    }

    #[test]
    fn truncated_files_never_panic() {
        let b = typical();
        for len in 0..b.len() {
            let _ = parse(&b[..len]);
        }
    }
}
