//! Loading a guest image into guest RAM the way QEMU's `-kernel` does, and the vCPU state it
//! starts in.
//!
//! Detection, in this order:
//! 1. a **Multiboot 2** header (8-aligned in the first 32 KiB): loaded by its address tag, or
//!    else as an ELF (32- or 64-bit) by its `PT_LOAD` segments; started at the entry-address
//!    tag's address, or else the ELF entry, in 32-bit protected mode;
//! 2. a **Multiboot 1** header (4-aligned in the first 8 KiB): loaded by its address fields
//!    (flag 16), or else as an ELF by its `PT_LOAD` segments; started in 32-bit protected mode;
//! 3. an **ELF64** x86-64 executable: `PT_LOAD` segments, started in long mode;
//! 4. a **Linux bzImage** (`HdrS` at 0x202) is refused with [`LoadError::LinuxBzImage`]: the
//!    Linux boot protocol is not supported yet (issue #15);
//! 5. anything else up to 556 KiB is a **flat binary**, loaded at 0x7c00 and started in real
//!    mode; a larger one matches no format ([`LoadError::Unrecognized`], which lists them).
//!
//! An initrd, when there is one, is copied to [`layout::initrd_base`] above the image and
//! handed over as the one Multiboot module (`initrd`) to Multiboot and ELF64 images (ELF64
//! images get Multiboot 2 information); a flat binary is not told where it is.
//!
//! Segments load at their physical addresses (`p_paddr`), file bytes copied and the rest of
//! `p_memsz` zeroed. Every segment must lie in RAM, in an available region of the memory map
//! and at or above 0x7c00 (see [`layout::loadable`]); the entry point must lie inside what was
//! loaded. Everything is checked before the first byte is written, so a refused image leaves
//! RAM untouched. The image may carry zero padding after its end (boot modules come in whole
//! pages): it is never needed, and trailing zeros of a flat binary do not count against its room.

use core::fmt;

use crate::boot;
use crate::elf::{self, Class, Elf, ElfError};
use crate::info;
use crate::layout;
use crate::multiboot::{self, MultibootError, Placement};
use crate::state::VcpuState;

/// The image format that was detected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Multiboot2,
    Multiboot1,
    Elf64,
    Flat,
}

impl Format {
    pub const fn name(self) -> &'static str {
        match self {
            Format::Multiboot2 => "multiboot2",
            Format::Multiboot1 => "multiboot1",
            Format::Elf64 => "elf64",
            Format::Flat => "flat",
        }
    }
}

/// Why an image cannot be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// Guest RAM is smaller than [`layout::MIN_RAM`].
    RamTooSmall(u64),
    /// The command line is longer than [`layout::CMDLINE_MAX`] or contains a NUL.
    BadCmdline,
    /// The image is empty (or all zeros).
    Empty,
    /// An ELF file that cannot be loaded.
    Elf(ElfError),
    /// A 32-bit ELF without a Multiboot header (no protocol to start it with).
    Elf32WithoutMultiboot,
    /// A Multiboot header that cannot be honoured.
    Multiboot(MultibootError),
    /// A Multiboot image that is neither ELF nor has load addresses.
    MultibootWithoutLayout,
    /// A Multiboot 2 image with an address tag but no entry-address tag and no ELF entry.
    NoEntry,
    /// Something would load into `[start, end)`, which is outside RAM or not available.
    NotLoadable { start: u64, end: u64 },
    /// The entry point is outside what was loaded.
    EntryOutsideImage(u64),
    /// A Linux bzImage (boot-protocol version in the field): its boot protocol is not
    /// supported yet (issue #15).
    LinuxBzImage(u16),
    /// No header of a supported format, and too long (the byte count) for a flat binary.
    Unrecognized(u64),
    /// The initrd of this many bytes does not fit in RAM above the image (at the address).
    InitrdTooLarge { len: u64, at: u64 },
}

/// What the vmm-server accepts, for [`LoadError::Unrecognized`].
pub const ACCEPTED_FORMATS: &str = "a Multiboot 2 image, a Multiboot 1 image, an x86-64 ELF64 \
executable, or a flat binary of at most 556 KiB (loaded at 0x7c00, started in real mode)";

/// Offset of the Linux boot protocol's `HdrS` signature (the setup header's `header` field).
pub const LINUX_HDRS_OFFSET: usize = 0x202;

/// The boot-protocol version of a Linux bzImage: `HdrS` at 0x202 and the boot sector's
/// 0xaa55 at 0x1fe; `None` for anything else.
pub fn linux_boot_protocol(image: &[u8]) -> Option<u16> {
    let at = |offset: usize, len: usize| image.get(offset..offset + len);
    if at(0x1fe, 2)? != [0x55, 0xaa] || at(LINUX_HDRS_OFFSET, 4)? != b"HdrS" {
        return None;
    }
    let version = at(0x206, 2)?;
    Some(u16::from_le_bytes([version[0], version[1]]))
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LoadError::RamTooSmall(n) => write!(f, "guest RAM of {n} bytes is too small"),
            LoadError::BadCmdline => f.write_str("command line too long or contains NUL"),
            LoadError::Empty => f.write_str("empty image"),
            LoadError::Elf(e) => write!(f, "bad ELF: {e:?}"),
            LoadError::Elf32WithoutMultiboot => f.write_str("32-bit ELF without Multiboot header"),
            LoadError::Multiboot(e) => write!(f, "bad Multiboot header: {e:?}"),
            LoadError::MultibootWithoutLayout => {
                f.write_str("Multiboot image neither ELF nor with load addresses")
            }
            LoadError::NoEntry => f.write_str("Multiboot 2 image without entry address"),
            LoadError::NotLoadable { start, end } => {
                write!(f, "cannot load into {start:#x}..{end:#x}")
            }
            LoadError::EntryOutsideImage(e) => write!(f, "entry {e:#x} outside the image"),
            LoadError::LinuxBzImage(v) => write!(
                f,
                "a Linux bzImage (boot protocol {}.{:02}): Linux's boot protocol is not supported yet (issue #15); accepted: {ACCEPTED_FORMATS}",
                v >> 8,
                v & 0xff
            ),
            LoadError::Unrecognized(n) => write!(
                f,
                "{n} bytes in no supported format: expected {ACCEPTED_FORMATS}"
            ),
            LoadError::InitrdTooLarge { len, at } => write!(
                f,
                "the initrd of {len} bytes does not fit in guest RAM at {at:#x} (above the image): give the guest more memory"
            ),
        }
    }
}

impl From<ElfError> for LoadError {
    fn from(e: ElfError) -> Self {
        LoadError::Elf(e)
    }
}

impl From<MultibootError> for LoadError {
    fn from(e: MultibootError) -> Self {
        LoadError::Multiboot(e)
    }
}

/// A loaded guest: its format, entry point and initial vCPU state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boot {
    pub format: Format,
    pub entry: u64,
    pub state: VcpuState,
}

/// One piece to load: `file` bytes of the image at `at`, then zeros up to `end`.
#[derive(Clone, Copy, Debug)]
struct Piece {
    at: u64,
    end: u64,
    file_offset: u64,
    file_len: u64,
}

/// What to load and where to start, decided before anything is written.
struct Plan {
    pieces: [Piece; elf::MAX_SEGMENTS],
    count: usize,
    entry: u64,
}

impl Plan {
    fn new(entry: u64) -> Plan {
        Plan {
            pieces: [Piece {
                at: 0,
                end: 0,
                file_offset: 0,
                file_len: 0,
            }; elf::MAX_SEGMENTS],
            count: 0,
            entry,
        }
    }

    fn from_placement(p: Placement, entry: u64) -> Plan {
        let mut plan = Plan::new(entry);
        plan.pieces[0] = Piece {
            at: p.load_addr,
            end: p.end,
            file_offset: p.file_offset,
            file_len: p.file_len,
        };
        plan.count = 1;
        plan
    }

    fn from_elf(elf: &Elf, entry: u64) -> Plan {
        let mut plan = Plan::new(entry);
        for (piece, s) in plan.pieces.iter_mut().zip(elf.segments()) {
            *piece = Piece {
                at: s.paddr,
                end: s.paddr + s.memsz, // checked by the ELF parser
                file_offset: s.offset,
                file_len: s.filesz,
            };
        }
        plan.count = elf.segments().len();
        plan
    }

    fn pieces(&self) -> &[Piece] {
        &self.pieces[..self.count]
    }

    fn check(&self, image: &[u8], ram: u64) -> Result<(), LoadError> {
        for p in self.pieces() {
            if !layout::loadable(p.at, p.end, ram) {
                return Err(LoadError::NotLoadable {
                    start: p.at,
                    end: p.end,
                });
            }
            let file_end = p.file_offset.checked_add(p.file_len);
            if file_end.is_none_or(|end| end > image.len() as u64) || p.file_len > p.end - p.at {
                return Err(LoadError::NotLoadable {
                    start: p.at,
                    end: p.end,
                });
            }
        }
        if !self
            .pieces()
            .iter()
            .any(|p| self.entry >= p.at && self.entry < p.end)
        {
            return Err(LoadError::EntryOutsideImage(self.entry));
        }
        Ok(())
    }

    /// Copies the pieces; [`Plan::check`] passed, so every range is inside `image` and `ram`.
    fn apply(&self, image: &[u8], ram: &mut [u8]) {
        for p in self.pieces() {
            let (at, end) = (p.at as usize, p.end as usize);
            let (off, len) = (p.file_offset as usize, p.file_len as usize);
            if let (Some(dst), Some(src)) = (ram.get_mut(at..end), image.get(off..off + len)) {
                dst[..len].copy_from_slice(src);
                dst[len..].fill(0);
            }
        }
    }
}

/// Loads `image` into `ram` (guest-physical 0..len), writes the boot structures for its format
/// and returns the state to start the vCPU in. `cmdline` goes into the Multiboot information.
pub fn load(image: &[u8], ram: &mut [u8], cmdline: &str) -> Result<Boot, LoadError> {
    load_with(image, ram, cmdline, None)
}

/// [`load`] with an optional `initrd`, copied to [`layout::initrd_base`] above the image and
/// described as the Multiboot module `initrd` (see the module documentation).
pub fn load_with(
    image: &[u8],
    ram: &mut [u8],
    cmdline: &str,
    initrd: Option<&[u8]>,
) -> Result<Boot, LoadError> {
    let ram_len = ram.len() as u64;
    if ram_len < layout::MIN_RAM {
        return Err(LoadError::RamTooSmall(ram_len));
    }
    if cmdline.len() > layout::CMDLINE_MAX || cmdline.contains('\0') {
        return Err(LoadError::BadCmdline);
    }
    let used = image.len() - image.iter().rev().take_while(|&&b| b == 0).count();
    if used == 0 {
        return Err(LoadError::Empty);
    }
    let image_len = image.len() as u64;

    let (format, plan) = if let Some(h) = multiboot::find_mb2(image)? {
        let plan = match h.addresses {
            Some(a) => {
                let entry = match (h.entry, Elf::parse(image)) {
                    (Some(e), _) => u64::from(e),
                    (None, Ok(elf)) => elf.physical_entry(),
                    (None, Err(_)) => return Err(LoadError::NoEntry),
                };
                Plan::from_placement(a.place(h.offset, image_len)?, entry)
            }
            None => {
                if !elf::is_elf(image) {
                    return Err(LoadError::MultibootWithoutLayout);
                }
                let elf = Elf::parse(image)?;
                let entry = h.entry.map_or(elf.physical_entry(), u64::from);
                Plan::from_elf(&elf, entry)
            }
        };
        (Format::Multiboot2, plan)
    } else if let Some(h) = multiboot::find_mb1(image)? {
        let plan = match h.addresses {
            Some((a, entry)) => Plan::from_placement(a.place(h.offset, image_len)?, entry.into()),
            None => {
                if !elf::is_elf(image) {
                    return Err(LoadError::MultibootWithoutLayout);
                }
                let elf = Elf::parse(image)?;
                Plan::from_elf(&elf, elf.physical_entry())
            }
        };
        (Format::Multiboot1, plan)
    } else if elf::is_elf(image) {
        let elf = Elf::parse(image)?;
        if elf.class != Class::Elf64 {
            return Err(LoadError::Elf32WithoutMultiboot);
        }
        (Format::Elf64, Plan::from_elf(&elf, elf.physical_entry()))
    } else if let Some(version) = linux_boot_protocol(image) {
        return Err(LoadError::LinuxBzImage(version));
    } else {
        let room = layout::FLAT_END - layout::FLAT_LOAD;
        if used as u64 > room {
            return Err(LoadError::Unrecognized(used as u64));
        }
        let mut plan = Plan::new(layout::FLAT_LOAD);
        plan.pieces[0] = Piece {
            at: layout::FLAT_LOAD,
            end: layout::FLAT_LOAD + used as u64,
            file_offset: 0,
            file_len: used as u64,
        };
        plan.count = 1;
        (Format::Flat, plan)
    };
    plan.check(image, ram_len)?;
    let module = match initrd {
        None => None,
        Some(bytes) => Some(plan_initrd(&plan, bytes, ram_len)?),
    };

    // Boot structures first (they lie below every loadable range), then the image.
    let state = match format {
        Format::Flat => boot::real_mode(),
        Format::Multiboot1 | Format::Multiboot2 | Format::Elf64 => {
            let low = ram.get_mut(..layout::STACK_TOP as usize);
            low.ok_or(LoadError::RamTooSmall(ram_len))?.fill(0);
            let long = format == Format::Elf64;
            let written = boot::write_gdt(ram, long) && (!long || boot::write_page_tables(ram));
            let info = match format {
                Format::Multiboot1 => info::write_mb1(ram, cmdline, module),
                _ => info::write_mb2(ram, cmdline, module),
            };
            // Both fit by construction (RAM >= MIN_RAM, command line checked above).
            let info = info
                .filter(|_| written)
                .ok_or(LoadError::RamTooSmall(ram_len))?;
            match format {
                Format::Multiboot1 => {
                    boot::protected_mode(plan.entry, multiboot::MB1_BOOT_MAGIC, info)
                }
                Format::Multiboot2 => {
                    boot::protected_mode(plan.entry, multiboot::MB2_BOOT_MAGIC, info)
                }
                _ => boot::long_mode(plan.entry, multiboot::MB2_BOOT_MAGIC, info),
            }
        }
    };
    plan.apply(image, ram);
    if let (Some(m), Some(bytes)) = (module, initrd) {
        if let Some(dst) = ram.get_mut(m.start as usize..m.end as usize) {
            dst.copy_from_slice(bytes);
        }
    }
    Ok(Boot {
        format,
        entry: plan.entry,
        state,
    })
}

/// Where `initrd` goes for an image loaded by `plan`: [`layout::initrd_base`] above its highest
/// piece, inside RAM, an available region and the 32-bit range Multiboot can describe.
fn plan_initrd(plan: &Plan, initrd: &[u8], ram: u64) -> Result<info::Module, LoadError> {
    let image_end = plan.pieces().iter().map(|p| p.end).max().unwrap_or(0);
    let len = initrd.len() as u64;
    let at = layout::initrd_base(image_end).unwrap_or(u64::MAX);
    let too_large = LoadError::InitrdTooLarge { len, at };
    let end = at.checked_add(len).ok_or(too_large)?;
    if !layout::loadable(at, end, ram) {
        return Err(too_large);
    }
    match (u32::try_from(at), u32::try_from(end)) {
        (Ok(start), Ok(end)) => Ok(info::Module { start, end }),
        _ => Err(too_large),
    }
}

/// Writes the guest's secret text at [`layout::SECRET`] (NUL-terminated, at most one page);
/// false if it does not fit.
pub fn write_secret(ram: &mut [u8], secret: &str) -> bool {
    let page = (layout::SECRET_END - layout::SECRET) as usize;
    if secret.len() >= page {
        return false;
    }
    info::put(ram, layout::SECRET, secret.as_bytes())
        && info::put(ram, layout::SECRET + secret.len() as u64, &[0])
}

#[cfg(test)]
#[path = "image_tests.rs"]
mod tests;
