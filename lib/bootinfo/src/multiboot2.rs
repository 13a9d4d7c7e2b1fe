//! A checked parser for the Multiboot2 boot information structure.
//!
//! The structure is `u32 total_size, u32 reserved`, then tags `{u32 type, u32 size, payload}`,
//! each starting 8-byte aligned, ended by a tag of type 0 and size 8. All integers are
//! little-endian. The parser reads from a byte slice only: it never assumes the slice itself is
//! aligned, and checks every size and offset against the slice before using it.
//!
//! Decisions:
//! - Strings must be NUL-terminated inside their tag, else [`Mb2Error::BadString`]. Invalid UTF-8
//!   inside them is replaced by U+FFFD (it is text for people and for the command-line parser,
//!   not a reason to refuse to boot).
//! - A memory map payload must hold a whole number of entries, else [`Mb2Error::BadTagSize`].
//! - The RSDP copies (tags 14 and 15) live inside the structure, so their physical address is
//!   only known to a caller that knows where the structure is: [`parse`] leaves
//!   [`BootInfo::rsdp`] `None`, [`parse_at`] fills it in.

use core::fmt;

use crate::{push_truncating, BootInfo, BootProtocol, MemoryRegion, RegionKind};

/// The value in EAX when a Multiboot2 loader jumps to the kernel.
pub const BOOTLOADER_MAGIC: u32 = 0x36d7_6289;
/// Larger boot information structures are refused.
pub const MAX_INFO_SIZE: usize = 64 * 1024;

/// Tag types this parser understands.
mod tag {
    pub const END: u32 = 0;
    pub const CMDLINE: u32 = 1;
    pub const BOOTLOADER_NAME: u32 = 2;
    pub const MODULE: u32 = 3;
    pub const MEMORY_MAP: u32 = 6;
    pub const ACPI_OLD: u32 = 14;
    pub const ACPI_NEW: u32 = 15;
}

/// Size of a tag header (`type`, `size`) and of the structure's own header.
const HEADER: usize = 8;
/// Tags start at multiples of this.
const TAG_ALIGN: usize = 8;
/// Smallest memory map entry: `base_addr u64, length u64, type u32, reserved u32`.
const MIN_MMAP_ENTRY: u32 = 24;
/// Length of an ACPI 1.0 RSDP.
const RSDP_V1_LEN: usize = 20;
/// Length of an ACPI 2.0+ RSDP (XSDP).
const RSDP_V2_LEN: usize = 36;

/// Why a boot information structure was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mb2Error {
    /// EAX at entry was not [`BOOTLOADER_MAGIC`].
    BadMagic(u32),
    /// The slice is shorter than the structure claims (or shorter than its 8-byte header).
    TooShort,
    /// `total_size` is below 8 or above [`MAX_INFO_SIZE`].
    BadTotalSize(u32),
    /// `total_size` is not a multiple of 8.
    Misaligned,
    /// The tag at `offset` runs past `total_size`.
    TagOverrun { offset: usize },
    /// The tag at `offset` has a size that is too small for its type.
    BadTagSize { offset: usize, size: u32 },
    /// The tags ran out before an end tag.
    MissingEndTag,
    /// The memory map's `entry_size` is below 24 or not a multiple of 8.
    BadMemoryMapEntrySize(u32),
    /// There is no memory map tag; the kernel cannot run without one.
    MissingMemoryMap,
    /// The string in the tag at `offset` has no NUL terminator.
    BadString { offset: usize },
    /// The module tag at `offset` ends before it starts.
    BadModule { offset: usize },
}

impl fmt::Display for Mb2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadMagic(eax) => write!(
                f,
                "not booted by Multiboot2: magic {eax:#010x}, expected {BOOTLOADER_MAGIC:#010x}"
            ),
            Self::TooShort => f.write_str("boot information is shorter than its total size"),
            Self::BadTotalSize(size) => write!(
                f,
                "boot information total size {size} is outside 8..={MAX_INFO_SIZE}"
            ),
            Self::Misaligned => f.write_str("boot information total size is not a multiple of 8"),
            Self::TagOverrun { offset } => {
                write!(f, "tag at offset {offset} runs past the end")
            }
            Self::BadTagSize { offset, size } => {
                write!(f, "tag at offset {offset} has bad size {size}")
            }
            Self::MissingEndTag => f.write_str("boot information has no end tag"),
            Self::BadMemoryMapEntrySize(size) => {
                write!(
                    f,
                    "memory map entry size {size} is not a multiple of 8 >= 24"
                )
            }
            Self::MissingMemoryMap => f.write_str("boot information has no memory map"),
            Self::BadString { offset } => {
                write!(f, "string in tag at offset {offset} is not NUL-terminated")
            }
            Self::BadModule { offset } => {
                write!(f, "module in tag at offset {offset} ends before it starts")
            }
        }
    }
}

/// Checks the value EAX held at kernel entry.
pub fn check_magic(eax: u32) -> Result<(), Mb2Error> {
    if eax == BOOTLOADER_MAGIC {
        Ok(())
    } else {
        Err(Mb2Error::BadMagic(eax))
    }
}

/// Reads the total_size field from the first 8 bytes and validates 8 <= size <= MAX_INFO_SIZE.
///
/// Lets the caller find out how many bytes to hand to [`parse`] before it trusts any more of
/// the structure.
pub fn total_size(header: &[u8]) -> Result<usize, Mb2Error> {
    if header.len() < HEADER {
        return Err(Mb2Error::TooShort);
    }
    let raw = read_u32(header, 0).ok_or(Mb2Error::TooShort)?;
    match usize::try_from(raw) {
        Ok(size) if (HEADER..=MAX_INFO_SIZE).contains(&size) => Ok(size),
        _ => Err(Mb2Error::BadTotalSize(raw)),
    }
}

/// Parses a complete Multiboot2 boot information structure given as bytes (the caller obtained
/// `total_size` bytes). Every tag size and offset is checked against the slice; tags are 8-byte aligned.
///
/// Bytes past `total_size` are ignored. The RSDP is not reported (see [`parse_at`]).
pub fn parse(info: &[u8]) -> Result<BootInfo, Mb2Error> {
    parse_inner(info, None)
}

/// Like [`parse`], for a structure that lies at physical address `info_phys`: also reports the
/// physical address of the RSDP copy in tag 15 (preferred) or 14 as [`BootInfo::rsdp`].
///
/// That copy lives inside the boot information, which must therefore stay reserved for as long
/// as the RSDP address is used.
pub fn parse_at(info: &[u8], info_phys: u64) -> Result<BootInfo, Mb2Error> {
    parse_inner(info, Some(info_phys))
}

/// Where in the structure an RSDP copy was found.
#[derive(Clone, Copy, Default)]
struct RsdpOffsets {
    old: Option<usize>,
    new: Option<usize>,
}

fn parse_inner(info: &[u8], info_phys: Option<u64>) -> Result<BootInfo, Mb2Error> {
    let total = total_size(info)?;
    if !total.is_multiple_of(TAG_ALIGN) {
        return Err(Mb2Error::Misaligned);
    }
    let info = info.get(..total).ok_or(Mb2Error::TooShort)?;

    let mut out = BootInfo::new(BootProtocol::Multiboot2);
    let mut rsdp = RsdpOffsets::default();
    let mut have_mmap = false;
    let mut offset = HEADER;
    loop {
        let (ty, size) = match (read_u32(info, offset), read_u32(info, offset + 4)) {
            (Some(ty), Some(size)) => (ty, size),
            _ => return Err(Mb2Error::MissingEndTag),
        };
        let size_usize = usize::try_from(size).map_err(|_| Mb2Error::TagOverrun { offset })?;
        if size_usize < HEADER {
            return Err(Mb2Error::BadTagSize { offset, size });
        }
        let end = offset
            .checked_add(size_usize)
            .filter(|&end| end <= total)
            .ok_or(Mb2Error::TagOverrun { offset })?;
        let payload = info
            .get(offset + HEADER..end)
            .ok_or(Mb2Error::TagOverrun { offset })?;
        let bad_size = Mb2Error::BadTagSize { offset, size };

        match ty {
            tag::END => {
                if size_usize != HEADER {
                    return Err(bad_size);
                }
                break;
            }
            tag::CMDLINE => {
                let s = c_string(payload).ok_or(Mb2Error::BadString { offset })?;
                out.cmdline.clear();
                if !push_lossy(&mut out.cmdline, s) {
                    out.truncated = true;
                }
            }
            tag::BOOTLOADER_NAME => {
                let s = c_string(payload).ok_or(Mb2Error::BadString { offset })?;
                out.bootloader.clear();
                if !push_lossy(&mut out.bootloader, s) {
                    out.truncated = true;
                }
            }
            tag::MODULE => parse_module(&mut out, payload, offset, bad_size)?,
            tag::MEMORY_MAP => {
                parse_memory_map(&mut out, payload, bad_size)?;
                have_mmap = true;
            }
            tag::ACPI_OLD | tag::ACPI_NEW => {
                let (min, slot) = if ty == tag::ACPI_NEW {
                    (RSDP_V2_LEN, &mut rsdp.new)
                } else {
                    (RSDP_V1_LEN, &mut rsdp.old)
                };
                if payload.len() < min {
                    return Err(bad_size);
                }
                *slot = Some(offset + HEADER);
            }
            // Unknown or uninteresting tags are skipped.
            _ => {}
        }
        // `end <= total <= MAX_INFO_SIZE`, so this cannot overflow; a next offset past the end
        // is caught by the header read above.
        offset = end.div_ceil(TAG_ALIGN) * TAG_ALIGN;
    }

    if !have_mmap {
        return Err(Mb2Error::MissingMemoryMap);
    }
    if let Some(base) = info_phys {
        out.rsdp = rsdp
            .new
            .or(rsdp.old)
            .and_then(|off| u64::try_from(off).ok())
            .and_then(|off| base.checked_add(off));
    }
    Ok(out)
}

/// Tag 3: `mod_start u32, mod_end u32, string`.
fn parse_module(
    out: &mut BootInfo,
    payload: &[u8],
    offset: usize,
    bad_size: Mb2Error,
) -> Result<(), Mb2Error> {
    let (start, end) = match (read_u32(payload, 0), read_u32(payload, 4)) {
        (Some(start), Some(end)) => (start, end),
        _ => return Err(bad_size),
    };
    let len = end
        .checked_sub(start)
        .ok_or(Mb2Error::BadModule { offset })?;
    let raw_name = payload.get(8..).unwrap_or(&[]);
    let name = c_string(raw_name).ok_or(Mb2Error::BadString { offset })?;
    let mut clean: heapless::String<{ crate::MAX_NAME }> = heapless::String::new();
    let fits = push_lossy(&mut clean, name);
    out.push_module(u64::from(start), u64::from(len), &clean);
    if !fits {
        out.truncated = true;
    }
    Ok(())
}

/// Tag 6: `entry_size u32, entry_version u32`, then entries of
/// `base_addr u64, length u64, type u32, reserved u32` (possibly followed by more fields).
fn parse_memory_map(
    out: &mut BootInfo,
    payload: &[u8],
    bad_size: Mb2Error,
) -> Result<(), Mb2Error> {
    let entry_size = read_u32(payload, 0).ok_or(bad_size)?;
    if entry_size < MIN_MMAP_ENTRY || !entry_size.is_multiple_of(8) {
        return Err(Mb2Error::BadMemoryMapEntrySize(entry_size));
    }
    let entry_size = usize::try_from(entry_size).map_err(|_| bad_size)?;
    let entries = payload.get(8..).ok_or(bad_size)?;
    if !entries.len().is_multiple_of(entry_size) {
        return Err(bad_size);
    }
    for entry in entries.chunks_exact(entry_size) {
        let (start, len, ty) = match (read_u64(entry, 0), read_u64(entry, 8), read_u32(entry, 16)) {
            (Some(start), Some(len), Some(ty)) => (start, len, ty),
            _ => return Err(bad_size),
        };
        let kind = match ty {
            1 => RegionKind::Usable,
            3 => RegionKind::AcpiReclaimable,
            4 => RegionKind::AcpiNvs,
            5 => RegionKind::BadMemory,
            _ => RegionKind::Reserved,
        };
        out.push_region(MemoryRegion { start, len, kind });
    }
    Ok(())
}

/// The bytes before the first NUL, or `None` if there is no NUL.
fn c_string(bytes: &[u8]) -> Option<&[u8]> {
    let nul = bytes.iter().position(|&b| b == 0)?;
    bytes.get(..nul)
}

/// Appends `bytes` as text, replacing invalid UTF-8 with U+FFFD, cutting at a char boundary when
/// full. Returns `false` if anything was cut.
fn push_lossy<const N: usize>(dst: &mut heapless::String<N>, bytes: &[u8]) -> bool {
    for chunk in bytes.utf8_chunks() {
        if !push_truncating(dst, chunk.valid()) {
            return false;
        }
        if !chunk.invalid().is_empty()
            && !push_truncating(dst, char::REPLACEMENT_CHARACTER.encode_utf8(&mut [0; 4]))
        {
            return false;
        }
    }
    true
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(raw.try_into().ok()?))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let raw = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(raw.try_into().ok()?))
}

#[cfg(test)]
mod tests;
