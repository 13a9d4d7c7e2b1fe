//! The legacy paging formats a guest passes through on its way to long mode (or stays in):
//! PAE paging (SDM vol. 3 §4.4) and 32-bit paging (§4.3).
//!
//! - **PAE**: CR3 bits 31:5 locate four PDPTEs, which the CPU loads into registers when CR3 is
//!   loaded (and when CR0/CR4 changes enter PAE paging); a PDPTE with a reserved bit set makes
//!   that load #GP ([`load_pdptes`]). Walks then use the loaded PDPTEs, never memory, and set no
//!   A bit in them (PDPTEs have none). Below them, page directories and tables of 8-byte entries
//!   exactly as long mode's levels 2 and 1 (2 MiB pages, XD with EFER.NXE, bits above
//!   MAXPHYADDR reserved).
//! - **32-bit**: a page directory at CR3 bits 31:12 and page tables of 4-byte entries, no XD;
//!   with CR4.PSE a PDE with PS maps a 4 MiB page whose address bits 39:32 are PDE bits 20:13
//!   (PSE-36; bits above MAXPHYADDR, at most 40, and bit 21 are reserved). Without PSE, PS is
//!   ignored. A 4 MiB page is reported as the 2 MiB half holding the address
//!   ([`PageSize::Size2M`], `gpa` exact): the vTLB shadows large pages in 4 KiB pieces and keeps
//!   2 MiB regions, and it drops both halves on INVLPG.
//!
//! 4-byte entries are read and updated (A/D, by compare-and-swap) through the 8-byte word that
//! holds them; a change of the other half meanwhile restarts the walk, as any change does.

use super::{
    permitted, translate_levels, Access, CasError, Entry, ErrorCode, FaultCause, Features, Format,
    GuestPhys, PageFault, Paging, Translation, WalkError,
};
use crate::shadow::bits::*;
use crate::shadow::PageSize;

/// Why the PDPTEs could not be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PdpteError {
    /// The PDPT at `gpa` is not guest RAM: the VMM decides.
    NotBacked { gpa: u64 },
    /// PDPTE `index` is present and sets a reserved bit: the load is #GP(0).
    Reserved { index: usize },
}

/// PDPTE bits that are reserved whatever MAXPHYADDR says: 2:1 and 8:5 (SDM table 4-8).
pub const PDPTE_RESERVED_LOW: u64 = 0b1_1110_0110;

/// The reserved bits of a PAE PDPTE on a CPU with `features`: bits 2:1, 8:5 and 63:MAXPHYADDR.
pub fn pdpte_reserved(features: Features) -> u64 {
    let width = u32::from(features.maxphyaddr).clamp(32, 52);
    PDPTE_RESERVED_LOW | (u64::MAX << width)
}

/// The four PDPTEs the CPU loads for PAE paging with `cr3` (bits 31:5 locate them).
pub fn load_pdptes(
    mem: &impl GuestPhys,
    cr3: u64,
    features: Features,
) -> Result<[u64; 4], PdpteError> {
    let base = cr3 & 0xffff_ffe0;
    let reserved = pdpte_reserved(features);
    let mut pdptes = [0u64; 4];
    for (i, slot) in pdptes.iter_mut().enumerate() {
        let gpa = base + 8 * i as u64;
        let e = mem.read(gpa).ok_or(PdpteError::NotBacked { gpa })?;
        if e & PRESENT != 0 && e & reserved != 0 {
            return Err(PdpteError::Reserved { index: i });
        }
        *slot = e;
    }
    Ok(pdptes)
}

/// The PAE walk of `la` (32 bits wide) below the loaded `pdptes`.
pub(super) fn translate_pae(
    mem: &impl GuestPhys,
    paging: &Paging,
    pdptes: &[u64; 4],
    la: u64,
    access: Access,
) -> Result<Translation, WalkError> {
    if la >> 32 != 0 {
        return Err(WalkError::NonCanonical);
    }
    let pdpte = pdptes[((la >> 30) & 3) as usize];
    if pdpte & PRESENT == 0 {
        return Err(WalkError::Fault(PageFault {
            addr: la,
            code: ErrorCode::for_access(access, paging),
            cause: FaultCause::NotPresent { level: 3 },
        }));
    }
    let width = u32::from(paging.features.maxphyaddr).clamp(32, 52);
    let directory = pdpte & ADDR & ((1u64 << width) - 1);
    translate_levels(mem, paging, la, access, directory, 2)
}

/// The 4-byte entry at `gpa` (4-aligned), read through the word that holds it.
fn read32(mem: &impl GuestPhys, gpa: u64) -> Result<u64, WalkError> {
    let word = mem.read(gpa & !7).ok_or(WalkError::NotBacked { gpa })?;
    Ok((word >> ((gpa & 4) * 8)) & 0xffff_ffff)
}

/// The reserved bits of a 4 MiB PDE on a CPU with `features`: bit 21, and the PSE-36 address
/// bits 20:13 above MAXPHYADDR (at most 40 bits are addressable).
pub fn pde_4m_reserved(features: Features) -> u64 {
    let width = u32::from(features.maxphyaddr).clamp(32, 40);
    // Bits 13..(13 + width - 32) hold address bits 32..width; the rest up to 20 are reserved.
    let usable = (1u64 << (13 + width - 32)) - (1 << 13);
    (1 << 21) | (0x1f_e000 & !usable)
}

/// The 32-bit walk of `la` (32 bits wide); `pse`: CR4.PSE.
pub(super) fn translate_32(
    mem: &impl GuestPhys,
    paging: &Paging,
    pse: bool,
    la: u64,
    access: Access,
) -> Result<Translation, WalkError> {
    if la >> 32 != 0 {
        return Err(WalkError::NonCanonical);
    }
    let base = ErrorCode::for_access(access, paging);
    let fault = |code: u32, cause| {
        WalkError::Fault(PageFault {
            addr: la,
            code: ErrorCode(base.0 | code),
            cause,
        })
    };
    let mut entries = [Entry::default(); 4];
    let pde_gpa = (paging.cr3 & 0xffff_f000) + ((la >> 22) & 0x3ff) * 4;
    let pde = read32(mem, pde_gpa)?;
    if pde & PRESENT == 0 {
        return Err(fault(0, FaultCause::NotPresent { level: 2 }));
    }
    entries[0] = Entry {
        gpa: pde_gpa,
        value: pde,
    };
    let mut writable = pde & WRITABLE != 0;
    let mut user = pde & USER != 0;
    if pse && pde & PAGE_SIZE != 0 {
        if pde & pde_4m_reserved(paging.features) != 0 {
            return Err(fault(
                ErrorCode::PRESENT | ErrorCode::RESERVED,
                FaultCause::Reserved { level: 2 },
            ));
        }
        if !permitted(access, paging, writable, user, true) {
            return Err(fault(ErrorCode::PRESENT, FaultCause::Protection));
        }
        let page = (pde & 0xffc0_0000) | (((pde >> 13) & 0xff) << 32);
        return Ok(Translation {
            gpa: page | (la & 0x3f_ffff),
            size: PageSize::Size2M,
            writable,
            user,
            executable: true,
            entries,
            levels: 1,
        });
    }
    let pte_gpa = (pde & 0xffff_f000) + ((la >> 12) & 0x3ff) * 4;
    let pte = read32(mem, pte_gpa)?;
    if pte & PRESENT == 0 {
        return Err(fault(0, FaultCause::NotPresent { level: 1 }));
    }
    writable &= pte & WRITABLE != 0;
    user &= pte & USER != 0;
    if !permitted(access, paging, writable, user, true) {
        return Err(fault(ErrorCode::PRESENT, FaultCause::Protection));
    }
    entries[1] = Entry {
        gpa: pte_gpa,
        value: pte,
    };
    Ok(Translation {
        gpa: (pte & 0xffff_f000) | (la & 0xfff),
        size: PageSize::Size4K,
        writable,
        user,
        executable: true,
        entries,
        levels: 2,
    })
}

/// Replaces the entry the walk read (`entry.value` at `entry.gpa`) by `want`, if it still holds
/// that value: 8-byte entries directly, 4-byte ones (32-bit paging) through their word.
pub(super) fn update_entry(
    mem: &impl GuestPhys,
    paging: &Paging,
    entry: &Entry,
    want: u64,
) -> Result<(), CasError> {
    if !matches!(paging.format, Format::Bits32 { .. }) {
        return mem.compare_exchange(entry.gpa, entry.value, want);
    }
    let at = entry.gpa & !7;
    let shift = (entry.gpa & 4) * 8;
    let word = mem.read(at).ok_or(CasError::NotRam)?;
    if (word >> shift) & 0xffff_ffff != entry.value {
        return Err(CasError::Changed);
    }
    let new = (word & !(0xffff_ffff << shift)) | ((want & 0xffff_ffff) << shift);
    mem.compare_exchange(at, word, new)
}

#[cfg(test)]
mod tests;
