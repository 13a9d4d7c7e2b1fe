//! Multiboot headers in guest images: finding them, checking them, and the load-address fields
//! (Multiboot 1's "a.out kludge", flag 16; Multiboot 2's address and entry-address tags).
//!
//! A header whose checksum does not match is not a header (the search goes on); a header that
//! matches but asks for something this loader cannot do is an error, as the specifications
//! require of a boot loader.

/// Multiboot 1: header magic, the magic in EAX at entry, where to look.
pub const MB1_MAGIC: u32 = 0x1BAD_B002;
pub const MB1_BOOT_MAGIC: u32 = 0x2BAD_B002;
pub const MB1_SEARCH: usize = 8192;
/// Multiboot 2: header magic, the magic in EAX at entry, where to look.
pub const MB2_MAGIC: u32 = 0xE852_50D6;
pub const MB2_BOOT_MAGIC: u32 = 0x36d7_6289;
pub const MB2_SEARCH: usize = 32768;

/// Multiboot 1 header flags this loader honours: 0 (page-align modules: there are none),
/// 1 (memory information: always given), 2 (video mode: not given, no framebuffer; the
/// information's flag 11 stays clear), 16 (address fields).
pub const MB1_FLAG_ADDRESSES: u32 = 1 << 16;
const MB1_KNOWN_FLAGS: u32 = 0b111 | MB1_FLAG_ADDRESSES;

/// Multiboot 2 information types this loader provides (answers to an information request).
pub const MB2_PROVIDED: [u32; 4] = [1, 2, 4, 6];

/// Why a Multiboot header cannot be honoured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MultibootError {
    /// Multiboot 1: required flag bits (0-15) this loader does not know.
    UnsupportedFlags(u32),
    /// Multiboot 2: not for i386 (architecture field).
    NotI386(u32),
    /// Multiboot 2: the tag list runs outside the header or the image, or lacks its end tag.
    BadTags,
    /// Multiboot 2: a tag that is not optional and that this loader does not support.
    UnsupportedTag(u16),
    /// Multiboot 2: a required information type this loader does not provide.
    UnsupportedRequest(u32),
    /// The address fields are inconsistent with each other or with the file.
    BadAddresses,
}

/// Load addresses from a header (Multiboot 1 flag 16, Multiboot 2 address tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    pub header_addr: u32,
    pub load_addr: u32,
    pub load_end_addr: u32,
    pub bss_end_addr: u32,
}

/// What to copy where, resolved from [`Addresses`] and the header's file offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// File offset of the first byte to load.
    pub file_offset: u64,
    /// Bytes to copy.
    pub file_len: u64,
    /// Where they go.
    pub load_addr: u64,
    /// End of the zeroed area after them (== `load_addr + file_len` without bss).
    pub end: u64,
}

impl Addresses {
    /// Resolves the fields for a header found at `header_offset` of an image of `image_len`
    /// bytes. `load_addr == u32::MAX` (Multiboot 2) means "from the start of the file".
    pub fn place(&self, header_offset: u64, image_len: u64) -> Result<Placement, MultibootError> {
        let bad = MultibootError::BadAddresses;
        let (load_addr, file_offset) = if self.load_addr == u32::MAX {
            let load = u64::from(self.header_addr)
                .checked_sub(header_offset)
                .ok_or(bad)?;
            (load, 0)
        } else {
            let before = self.header_addr.checked_sub(self.load_addr).ok_or(bad)?;
            let offset = header_offset.checked_sub(u64::from(before)).ok_or(bad)?;
            (u64::from(self.load_addr), offset)
        };
        let file_len = if self.load_end_addr == 0 {
            image_len.checked_sub(file_offset).ok_or(bad)?
        } else {
            u64::from(self.load_end_addr)
                .checked_sub(load_addr)
                .ok_or(bad)?
        };
        if file_offset.checked_add(file_len).ok_or(bad)? > image_len {
            return Err(bad);
        }
        let load_end = load_addr + file_len;
        let end = if self.bss_end_addr == 0 {
            load_end
        } else if u64::from(self.bss_end_addr) >= load_end {
            u64::from(self.bss_end_addr)
        } else {
            return Err(bad);
        };
        Ok(Placement {
            file_offset,
            file_len,
            load_addr,
            end,
        })
    }
}

/// A checked Multiboot 1 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mb1Header {
    pub offset: u64,
    pub flags: u32,
    /// With flag 16: the load addresses and the entry address.
    pub addresses: Option<(Addresses, u32)>,
}

/// A checked Multiboot 2 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mb2Header {
    pub offset: u64,
    pub addresses: Option<Addresses>,
    pub entry: Option<u32>,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

/// Finds a Multiboot 1 header: 4-aligned in the first 8 KiB, magic + flags + checksum == 0.
pub fn find_mb1(image: &[u8]) -> Result<Option<Mb1Header>, MultibootError> {
    let window = &image[..image.len().min(MB1_SEARCH)];
    for at in (0..window.len()).step_by(4) {
        let (Some(magic), Some(flags), Some(sum)) = (
            u32_at(window, at),
            u32_at(window, at + 4),
            u32_at(window, at + 8),
        ) else {
            break;
        };
        if magic != MB1_MAGIC || magic.wrapping_add(flags).wrapping_add(sum) != 0 {
            continue;
        }
        let required_unknown = flags & 0xffff & !MB1_KNOWN_FLAGS;
        if required_unknown != 0 {
            return Err(MultibootError::UnsupportedFlags(required_unknown));
        }
        let addresses = if flags & MB1_FLAG_ADDRESSES != 0 {
            let field =
                |i: usize| u32_at(image, at + 12 + 4 * i).ok_or(MultibootError::BadAddresses);
            Some((
                Addresses {
                    header_addr: field(0)?,
                    load_addr: field(1)?,
                    load_end_addr: field(2)?,
                    bss_end_addr: field(3)?,
                },
                field(4)?,
            ))
        } else {
            None
        };
        return Ok(Some(Mb1Header {
            offset: at as u64,
            flags,
            addresses,
        }));
    }
    Ok(None)
}

/// Finds a Multiboot 2 header: 8-aligned in the first 32 KiB, magic + architecture + length +
/// checksum == 0, completely inside the first 32 KiB; then checks its tags.
pub fn find_mb2(image: &[u8]) -> Result<Option<Mb2Header>, MultibootError> {
    let window = &image[..image.len().min(MB2_SEARCH)];
    for at in (0..window.len()).step_by(8) {
        let fields = [0, 4, 8, 12].map(|o| u32_at(window, at + o));
        let [Some(magic), Some(arch), Some(len), Some(sum)] = fields else {
            break;
        };
        if magic != MB2_MAGIC || magic.wrapping_add(arch).wrapping_add(len).wrapping_add(sum) != 0 {
            continue;
        }
        if arch != 0 {
            return Err(MultibootError::NotI386(arch));
        }
        let end = at
            .checked_add(len as usize)
            .filter(|&end| len >= 16 && end <= window.len())
            .ok_or(MultibootError::BadTags)?;
        let mut header = Mb2Header {
            offset: at as u64,
            addresses: None,
            entry: None,
        };
        parse_tags(&window[at + 16..end], &mut header)?;
        return Ok(Some(header));
    }
    Ok(None)
}

const TAG_END: u16 = 0;
const TAG_INFO_REQUEST: u16 = 1;
const TAG_ADDRESS: u16 = 2;
const TAG_ENTRY: u16 = 3;
const TAG_CONSOLE: u16 = 4;
const TAG_FRAMEBUFFER: u16 = 5;
const TAG_MODULE_ALIGN: u16 = 6;
const TAG_RELOCATABLE: u16 = 10;
const TAG_OPTIONAL: u16 = 1;

fn parse_tags(tags: &[u8], header: &mut Mb2Header) -> Result<(), MultibootError> {
    let bad = MultibootError::BadTags;
    let mut at = 0usize;
    loop {
        let kind = u16_at(tags, at).ok_or(bad)?;
        let flags = u16_at(tags, at + 2).ok_or(bad)?;
        let size = u32_at(tags, at + 4).ok_or(bad)? as usize;
        if size < 8 {
            return Err(bad);
        }
        let body = tags
            .get(at + 8..at.checked_add(size).ok_or(bad)?)
            .ok_or(bad)?;
        let field = |i: usize| u32_at(body, 4 * i).ok_or(bad);
        let optional = flags & TAG_OPTIONAL != 0;
        match kind {
            TAG_END => return Ok(()),
            TAG_INFO_REQUEST => {
                for chunk in body.chunks_exact(4) {
                    let t = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                    if !optional && !MB2_PROVIDED.contains(&t) {
                        return Err(MultibootError::UnsupportedRequest(t));
                    }
                }
            }
            TAG_ADDRESS => {
                header.addresses = Some(Addresses {
                    header_addr: field(0)?,
                    load_addr: field(1)?,
                    load_end_addr: field(2)?,
                    bss_end_addr: field(3)?,
                })
            }
            TAG_ENTRY => header.entry = Some(field(0)?),
            // Console and framebuffer preferences, module alignment (no modules), and
            // relocatability (the image loads where it says) need nothing from this loader.
            TAG_CONSOLE | TAG_FRAMEBUFFER | TAG_MODULE_ALIGN | TAG_RELOCATABLE => {}
            _ if optional => {}
            _ => return Err(MultibootError::UnsupportedTag(kind)),
        }
        // The next tag starts 8-aligned.
        at = at
            .checked_add(size.checked_add(7).ok_or(bad)? & !7)
            .ok_or(bad)?;
    }
}

/// Builders of Multiboot headers for tests.
#[cfg(test)]
pub mod build {
    use super::*;
    use alloc::vec::Vec;

    pub fn mb1(flags: u32, fields: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for w in [
            MB1_MAGIC,
            flags,
            0u32.wrapping_sub(MB1_MAGIC.wrapping_add(flags)),
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        for w in fields {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// A tag: (type, flags, body words).
    pub fn mb2(tags: &[(u16, u16, &[u32])]) -> Vec<u8> {
        let mut body = Vec::new();
        for &(kind, flags, words) in tags.iter().chain([(0, 0, &[][..])].iter()) {
            body.extend_from_slice(&kind.to_le_bytes());
            body.extend_from_slice(&flags.to_le_bytes());
            body.extend_from_slice(&(8 + 4 * words.len() as u32).to_le_bytes());
            for w in words {
                body.extend_from_slice(&w.to_le_bytes());
            }
            while !body.len().is_multiple_of(8) {
                body.push(0);
            }
        }
        let len = 16 + body.len() as u32;
        let sum = 0u32.wrapping_sub(MB2_MAGIC.wrapping_add(len));
        let mut out = Vec::new();
        for w in [MB2_MAGIC, 0, len, sum] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use alloc::vec;

    #[test]
    fn finds_mb1_anywhere_aligned() {
        let mut image = vec![0u8; 4096];
        let h = mb1(0b11, &[]);
        image[64..64 + h.len()].copy_from_slice(&h);
        let found = find_mb1(&image).unwrap().unwrap();
        assert_eq!((found.offset, found.flags, found.addresses), (64, 3, None));
        // Not 4-aligned: not found.
        let mut image = vec![0u8; 4096];
        image[66..66 + h.len()].copy_from_slice(&h);
        assert_eq!(find_mb1(&image), Ok(None));
        // Beyond 8 KiB: not found.
        let mut image = vec![0u8; 16384];
        image[8192..8192 + h.len()].copy_from_slice(&h);
        assert_eq!(find_mb1(&image), Ok(None));
    }

    #[test]
    fn mb1_checksum_and_flags() {
        let mut h = mb1(0, &[]);
        h[8] ^= 1;
        assert_eq!(find_mb1(&h), Ok(None));
        assert_eq!(
            find_mb1(&mb1(1 << 3, &[])),
            Err(MultibootError::UnsupportedFlags(1 << 3))
        );
        // Optional flags (16-31) other than 16 are fine.
        assert!(find_mb1(&mb1(1 << 20, &[])).unwrap().is_some());
        // Address fields missing from a truncated image.
        assert_eq!(
            find_mb1(&mb1(MB1_FLAG_ADDRESSES, &[1, 2])),
            Err(MultibootError::BadAddresses)
        );
        let h = find_mb1(&mb1(
            MB1_FLAG_ADDRESSES,
            &[0x10_0000, 0x10_0000, 0, 0, 0x10_0020],
        ))
        .unwrap()
        .unwrap();
        assert_eq!(h.addresses.unwrap().1, 0x10_0020);
    }

    #[test]
    fn mb2_tags() {
        let h = mb2(&[
            (1, 0, &[1, 6]),
            (2, 0, &[0x10_0000, 0x10_0000, 0, 0]),
            (3, 0, &[0x10_0040]),
            (5, 1, &[0, 0, 0]),
            (42, 1, &[]),
        ]);
        let found = find_mb2(&h).unwrap().unwrap();
        assert_eq!(found.entry, Some(0x10_0040));
        assert_eq!(found.addresses.unwrap().load_addr, 0x10_0000);
        assert_eq!(
            find_mb2(&mb2(&[(42, 0, &[])])),
            Err(MultibootError::UnsupportedTag(42))
        );
        assert_eq!(
            find_mb2(&mb2(&[(1, 0, &[8])])),
            Err(MultibootError::UnsupportedRequest(8))
        );
        assert!(find_mb2(&mb2(&[(1, 1, &[8])])).unwrap().is_some());
    }

    #[test]
    fn mb2_hostile() {
        let mut h = mb2(&[(3, 0, &[5])]);
        h[4] = 4; // MIPS, checksum now wrong: no header
        assert_eq!(find_mb2(&h), Ok(None));
        // Architecture 4 with a matching checksum.
        let len = 24u32;
        let sum = 0u32.wrapping_sub(MB2_MAGIC.wrapping_add(4).wrapping_add(len));
        let mut h = vec![];
        for w in [MB2_MAGIC, 4, len, sum, 0, 8] {
            h.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(find_mb2(&h), Err(MultibootError::NotI386(4)));
        // Length beyond the image, or too small.
        for len in [0u32, 8, 4096, u32::MAX] {
            let sum = 0u32.wrapping_sub(MB2_MAGIC.wrapping_add(len));
            let mut h = vec![];
            for w in [MB2_MAGIC, 0, len, sum, 0, 8] {
                h.extend_from_slice(&w.to_le_bytes());
            }
            assert_eq!(find_mb2(&h), Err(MultibootError::BadTags), "len {len}");
        }
        // A tag with size < 8, or running past the header; no end tag.
        for tag in [[5u32, 4], [5, 64], [5, u32::MAX]] {
            let len = 24u32;
            let sum = 0u32.wrapping_sub(MB2_MAGIC.wrapping_add(len));
            let mut h = vec![];
            for w in [MB2_MAGIC, 0, len, sum, tag[0], tag[1]] {
                h.extend_from_slice(&w.to_le_bytes());
            }
            assert_eq!(find_mb2(&h), Err(MultibootError::BadTags));
        }
    }

    #[test]
    fn placement() {
        let a = Addresses {
            header_addr: 0x10_0010,
            load_addr: 0x10_0000,
            load_end_addr: 0x10_0100,
            bss_end_addr: 0x10_0200,
        };
        let p = a.place(0x10, 0x1000).unwrap();
        assert_eq!(
            p,
            Placement {
                file_offset: 0,
                file_len: 0x100,
                load_addr: 0x10_0000,
                end: 0x10_0200
            }
        );
        // Load to the end of the file.
        let p = Addresses {
            load_end_addr: 0,
            bss_end_addr: 0,
            ..a
        }
        .place(0x10, 0x1000)
        .unwrap();
        assert_eq!((p.file_len, p.end), (0x1000, 0x10_1000));
        // load_addr -1: from the file's start.
        let p = Addresses {
            load_addr: u32::MAX,
            load_end_addr: 0,
            bss_end_addr: 0,
            ..a
        }
        .place(0x10, 0x1000)
        .unwrap();
        assert_eq!((p.file_offset, p.load_addr), (0, 0x10_0000));
        let bad = MultibootError::BadAddresses;
        // Header before the load address; header offset too small; past the file; bss < end.
        assert_eq!(
            Addresses {
                header_addr: 0,
                ..a
            }
            .place(0x10, 0x1000),
            Err(bad)
        );
        assert_eq!(a.place(0x8, 0x1000), Err(bad));
        assert_eq!(a.place(0x10, 0x80), Err(bad));
        assert_eq!(
            Addresses {
                bss_end_addr: 0x10_0050,
                ..a
            }
            .place(0x10, 0x1000),
            Err(bad)
        );
        assert_eq!(
            Addresses {
                load_end_addr: 0x1,
                ..a
            }
            .place(0x10, 0x1000),
            Err(bad)
        );
    }
}
