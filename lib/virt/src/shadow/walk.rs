//! The guest page-table walk as the CPU does it: 4-level long-mode paging (Intel SDM vol. 3
//! §4.5–4.8, AMD APM vol. 2 §5.3–5.6), and the legacy formats PAE paging (§4.4: four PDPTEs
//! the CPU loads at CR3 loads, then 64-bit directories and tables) and 32-bit paging (§4.3:
//! 4-byte entries, 4 MiB pages with CR4.PSE) in [`legacy`].
//!
//! **Accessed and dirty bits.** The SDM (§4.8) sets A in each entry the processor uses "as part
//! of linear-address translation" and D in the entry that maps the page "whenever there is a
//! write"; an entry that is not present or sets a reserved bit is used for nothing.
//! Whether a CPU sets A in the upper entries of a walk that later faults is left open (it may
//! have cached them, §4.10.3), and no guest can rely on it. This walker therefore chooses
//! all-or-nothing: a walk that faults (not present, reserved bit or access rights) changes
//! nothing; a walk that succeeds sets A in every entry it used, top-down, and D in the leaf on
//! a write. Each update is a compare-and-swap of the value the walk read, so a change the guest
//! makes meanwhile (another vCPU) is never overwritten: the walk starts again instead.

use super::bits::*;
use super::{AccessKind, PageSize};

/// Guest-physical memory as the walker reads and updates it. The kernel implements it over
/// the guest's memory; every address is 8-byte aligned.
pub trait GuestPhys {
    /// The word at `gpa`, or None when `gpa` is not guest RAM.
    fn read(&self, gpa: u64) -> Option<u64>;
    /// Atomically replaces the word at `gpa` by `new` if it still is `current`.
    fn compare_exchange(&self, gpa: u64, current: u64, new: u64) -> Result<(), CasError>;
}

/// Why [`GuestPhys::compare_exchange`] did not write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasError {
    /// `gpa` is not guest RAM.
    NotRam,
    /// The word no longer holds the value expected.
    Changed,
}

/// What the CPU offers beyond the registers: fixed for a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// Physical-address width (CPUID 0x8000_0008 EAX bits 7:0); entry bits from here to 51 are
    /// reserved.
    pub maxphyaddr: u8,
    /// 1 GiB pages (CPUID 0x8000_0001 EDX bit 26); without them PS in a PDPTE is reserved.
    pub gb_pages: bool,
    /// The CR4 bits this CPU accepts in a guest's hardware CR4: a MOV to CR4 that sets another
    /// is #GP (the vTLB passes the guest's CR4 on to the hardware).
    pub cr4: u64,
}

/// The guest's paging controls that affect a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paging {
    /// Guest CR3: the PML4 is at bits MAXPHYADDR-1..12 (the low 12 bits are PWT/PCD or a PCID).
    pub cr3: u64,
    /// CR0.WP: supervisor writes honour R/W.
    pub wp: bool,
    /// CR4.SMEP.
    pub smep: bool,
    /// CR4.SMAP.
    pub smap: bool,
    /// RFLAGS.AC: lifts SMAP for explicit supervisor accesses.
    pub ac: bool,
    /// EFER.NXE: XD is in use (else bit 63 is reserved). Always false for 32-bit paging,
    /// which has no XD bit.
    pub nxe: bool,
    pub features: Features,
    /// The table format.
    pub format: Format,
}

/// The guest's paging-structure format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// 4-level long-mode paging (CR4.PAE, EFER.LMA).
    Long,
    /// PAE paging (CR4.PAE without long mode): the four PDPTEs as the CPU loaded them at the
    /// last CR3 load ([`legacy::load_pdptes`]), then page directories and tables of 8-byte
    /// entries.
    Pae { pdptes: [u64; 4] },
    /// 32-bit paging (CR4.PAE clear): a page directory and tables of 4-byte entries; `pse`
    /// (CR4.PSE) allows 4 MiB pages.
    Bits32 { pse: bool },
}

/// Register bits read by [`Paging::long_mode`].
pub mod reg {
    pub const CR0_WP: u64 = 1 << 16;
    pub const CR0_PG: u64 = 1 << 31;
    pub const CR4_PSE: u64 = 1 << 4;
    pub const CR4_PAE: u64 = 1 << 5;
    pub const CR4_LA57: u64 = 1 << 12;
    pub const CR4_SMEP: u64 = 1 << 20;
    pub const CR4_SMAP: u64 = 1 << 21;
    pub const EFER_LMA: u64 = 1 << 10;
    pub const EFER_NXE: u64 = 1 << 11;
    pub const RFLAGS_AC: u64 = 1 << 18;
}

impl Paging {
    /// The controls from raw guest registers; None unless the guest uses 4-level long-mode
    /// paging, the only mode shadowed.
    pub fn long_mode(
        cr0: u64,
        cr3: u64,
        cr4: u64,
        efer: u64,
        rflags: u64,
        features: Features,
    ) -> Option<Self> {
        let long = cr0 & reg::CR0_PG != 0
            && cr4 & reg::CR4_PAE != 0
            && cr4 & reg::CR4_LA57 == 0
            && efer & reg::EFER_LMA != 0;
        long.then_some(Self {
            cr3,
            wp: cr0 & reg::CR0_WP != 0,
            smep: cr4 & reg::CR4_SMEP != 0,
            smap: cr4 & reg::CR4_SMAP != 0,
            ac: rflags & reg::RFLAGS_AC != 0,
            nxe: efer & reg::EFER_NXE != 0,
            features,
            format: Format::Long,
        })
    }

    /// The controls of legacy paging (CR0.PG without EFER.LMA): PAE paging with the PDPTEs
    /// `pdptes` when CR4.PAE is set, else 32-bit paging. None in any other mode.
    pub fn legacy(
        cr0: u64,
        cr3: u64,
        cr4: u64,
        efer: u64,
        rflags: u64,
        features: Features,
        pdptes: [u64; 4],
    ) -> Option<Self> {
        if cr0 & reg::CR0_PG == 0 || efer & reg::EFER_LMA != 0 {
            return None;
        }
        let pae = cr4 & reg::CR4_PAE != 0;
        Some(Self {
            cr3,
            wp: cr0 & reg::CR0_WP != 0,
            smep: cr4 & reg::CR4_SMEP != 0,
            smap: cr4 & reg::CR4_SMAP != 0,
            ac: rflags & reg::RFLAGS_AC != 0,
            nxe: pae && efer & reg::EFER_NXE != 0,
            features,
            format: if pae {
                Format::Pae { pdptes }
            } else {
                Format::Bits32 {
                    pse: cr4 & reg::CR4_PSE != 0,
                }
            },
        })
    }

    fn maxphyaddr(&self) -> u32 {
        u32::from(self.features.maxphyaddr).clamp(12, 52)
    }

    /// Bits 51..MAXPHYADDR: reserved in every present entry.
    fn high_reserved(&self) -> u64 {
        ADDR & !((1u64 << self.maxphyaddr()) - 1)
    }

    fn pml4(&self) -> u64 {
        self.cr3 & ADDR & !self.high_reserved()
    }
}

/// Who makes an access (SDM §4.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    /// CPL 3, not an implicit supervisor access.
    User,
    /// CPL 0–2, explicit.
    Supervisor,
    /// An implicit supervisor access (descriptor tables, TSS, ...) at any CPL: RFLAGS.AC does
    /// not lift SMAP for it.
    Implicit,
}

/// One memory access to translate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub kind: AccessKind,
    pub privilege: Privilege,
}

impl Access {
    pub const fn user(kind: AccessKind) -> Self {
        Self {
            kind,
            privilege: Privilege::User,
        }
    }

    pub const fn supervisor(kind: AccessKind) -> Self {
        Self {
            kind,
            privilege: Privilege::Supervisor,
        }
    }

    pub const fn implicit(kind: AccessKind) -> Self {
        Self {
            kind,
            privilege: Privilege::Implicit,
        }
    }
}

/// A #PF error code (SDM §4.7; PK, SS, HLAT and SGX are never set here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// P: a valid translation existed (0: some entry was not present).
    pub const PRESENT: u32 = 1 << 0;
    /// W/R: the access was a write.
    pub const WRITE: u32 = 1 << 1;
    /// U/S: the access was a user-mode access.
    pub const USER: u32 = 1 << 2;
    /// RSVD: an entry set a reserved bit.
    pub const RESERVED: u32 = 1 << 3;
    /// I/D: an instruction fetch, reported only with SMEP or NXE on.
    pub const FETCH: u32 = 1 << 4;

    /// The W/R, U/S and I/D bits for `access`, which describe the access, not the page.
    pub fn for_access(access: Access, paging: &Paging) -> Self {
        let mut code = 0;
        match access.kind {
            AccessKind::Write => code |= Self::WRITE,
            AccessKind::Execute if paging.nxe || paging.smep => code |= Self::FETCH,
            _ => {}
        }
        if access.privilege == Privilege::User {
            code |= Self::USER;
        }
        Self(code)
    }

    pub const fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
}

/// Why a walk faulted; for logs and tests (the error code is what the guest sees).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultCause {
    /// The entry at `level` (4 = PML4E .. 1 = PTE) was not present.
    NotPresent { level: u8 },
    /// The entry at `level` set a reserved bit.
    Reserved { level: u8 },
    /// The translation exists but does not allow the access.
    Protection,
}

/// A page fault the CPU would raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    /// The faulting linear address (CR2).
    pub addr: u64,
    pub code: ErrorCode,
    pub cause: FaultCause,
}

/// One entry used by a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Entry {
    /// Guest-physical address of the entry.
    pub gpa: u64,
    /// Its value (after the walk's own A/D update, if any).
    pub value: u64,
}

/// A successful walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Guest-physical address of the translated byte.
    pub gpa: u64,
    pub size: PageSize,
    /// R/W set at every level.
    pub writable: bool,
    /// U/S set at every level (a user-mode address).
    pub user: bool,
    /// XD clear at every level (always true when EFER.NXE = 0).
    pub executable: bool,
    /// The entries used, PML4E first; `levels` of them are valid, the last maps the page.
    pub entries: [Entry; 4],
    pub levels: usize,
}

impl Translation {
    /// The entries used, PML4E first.
    pub fn walked(&self) -> &[Entry] {
        &self.entries[..self.levels.min(4)]
    }

    /// The entry that maps the page.
    pub fn leaf(&self) -> u64 {
        self.walked().last().map_or(0, |e| e.value)
    }
}

/// Why a walk gave no translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// The guest sees this #PF.
    Fault(PageFault),
    /// A paging-structure entry at `gpa` is outside guest RAM: the VMM decides.
    NotBacked { gpa: u64 },
    /// Bits 63..47 of the address are not a sign extension: the CPU raises #GP (or #SS), not
    /// #PF.
    NonCanonical,
    /// The guest kept changing the entries under the walk; resume it and let it fault again.
    Contended,
}

/// How many times [`walk`] restarts after a lost compare-and-swap before giving up.
const TRIES: usize = 4;

fn index(la: u64, level: u8) -> u64 {
    (la >> (12 + 9 * (u32::from(level) - 1))) & 0x1ff
}

fn is_canonical(la: u64) -> bool {
    let top = la >> 47;
    top == 0 || top == 0x1_ffff
}

/// Whether `e`, present at `level`, sets a reserved bit (SDM §4.5.4 tables 4-14..4-19).
fn reserved(e: u64, level: u8, paging: &Paging) -> bool {
    let mut mask = paging.high_reserved();
    if !paging.nxe {
        mask |= NO_EXECUTE;
    }
    let large = e & PAGE_SIZE != 0;
    match level {
        4 => mask |= PAGE_SIZE,
        3 if large && !paging.features.gb_pages => return true,
        3 if large => mask |= 0x3fff_e000, // bits 29:13
        2 if large => mask |= 0x001f_e000, // bits 20:13
        _ => {}
    }
    e & mask != 0
}

/// Whether a translation with these effective rights allows `access` (SDM §4.6.1).
pub fn permitted(
    access: Access,
    paging: &Paging,
    writable: bool,
    user: bool,
    executable: bool,
) -> bool {
    match access.privilege {
        Privilege::User => {
            user && match access.kind {
                AccessKind::Read => true,
                AccessKind::Write => writable,
                AccessKind::Execute => executable,
            }
        }
        Privilege::Supervisor | Privilege::Implicit => match access.kind {
            AccessKind::Execute => executable && !(user && paging.smep),
            AccessKind::Read | AccessKind::Write => {
                let explicit_ac = access.privilege == Privilege::Supervisor && paging.ac;
                if user && paging.smap && !explicit_ac {
                    return false;
                }
                access.kind == AccessKind::Read || writable || !paging.wp
            }
        },
    }
}

/// Walks the guest's tables for `la` without changing them: what the CPU would decide.
pub fn translate(
    mem: &impl GuestPhys,
    paging: &Paging,
    la: u64,
    access: Access,
) -> Result<Translation, WalkError> {
    match paging.format {
        Format::Long => {}
        Format::Pae { pdptes } => return legacy::translate_pae(mem, paging, &pdptes, la, access),
        Format::Bits32 { pse } => return legacy::translate_32(mem, paging, pse, la, access),
    }
    if !is_canonical(la) {
        return Err(WalkError::NonCanonical);
    }
    translate_levels(mem, paging, la, access, paging.pml4(), 4)
}

/// The 8-byte-entry walk from `table` at level `top` (4: PML4, 2: a PAE page directory) down.
fn translate_levels(
    mem: &impl GuestPhys,
    paging: &Paging,
    la: u64,
    access: Access,
    table: u64,
    top: u8,
) -> Result<Translation, WalkError> {
    let base = ErrorCode::for_access(access, paging);
    let fault = |code: u32, cause| {
        WalkError::Fault(PageFault {
            addr: la,
            code: ErrorCode(base.0 | code),
            cause,
        })
    };
    let mut entries = [Entry::default(); 4];
    let (mut writable, mut user, mut executable) = (true, true, true);
    let mut table = table;
    for (n, level) in (1..=top).rev().enumerate() {
        let gpa = table + index(la, level) * 8;
        let e = mem.read(gpa).ok_or(WalkError::NotBacked { gpa })?;
        if e & PRESENT == 0 {
            return Err(fault(0, FaultCause::NotPresent { level }));
        }
        if reserved(e, level, paging) {
            return Err(fault(
                ErrorCode::PRESENT | ErrorCode::RESERVED,
                FaultCause::Reserved { level },
            ));
        }
        entries[n] = Entry { gpa, value: e };
        writable &= e & WRITABLE != 0;
        user &= e & USER != 0;
        executable &= !paging.nxe || e & NO_EXECUTE == 0;
        let size = match level {
            1 => PageSize::Size4K,
            2 if e & PAGE_SIZE != 0 => PageSize::Size2M,
            3 if e & PAGE_SIZE != 0 => PageSize::Size1G,
            _ => {
                table = e & ADDR;
                continue;
            }
        };
        if !permitted(access, paging, writable, user, executable) {
            return Err(fault(ErrorCode::PRESENT, FaultCause::Protection));
        }
        let mask = size.bytes() - 1;
        return Ok(Translation {
            gpa: (e & ADDR & !mask) | (la & mask),
            size,
            writable,
            user,
            executable,
            entries,
            levels: n + 1,
        });
    }
    // Level 1 always maps a page; not reached.
    Err(fault(0, FaultCause::NotPresent { level: 1 }))
}

/// Walks the guest's tables for `la` as the CPU does on an access: on success, A is set in
/// every entry used and D in the leaf when `access` is a write (see the module documentation).
pub fn walk(
    mem: &impl GuestPhys,
    paging: &Paging,
    la: u64,
    access: Access,
) -> Result<Translation, WalkError> {
    'again: for _ in 0..TRIES {
        let mut t = translate(mem, paging, la, access)?;
        let levels = t.levels;
        for (n, entry) in t.entries[..levels].iter_mut().enumerate() {
            let mut want = entry.value | ACCESSED;
            if n + 1 == levels && access.kind == AccessKind::Write {
                want |= DIRTY;
            }
            if want == entry.value {
                continue;
            }
            match legacy::update_entry(mem, paging, entry, want) {
                Ok(()) => entry.value = want,
                Err(CasError::Changed) => continue 'again,
                Err(CasError::NotRam) => return Err(WalkError::NotBacked { gpa: entry.gpa }),
            }
        }
        return Ok(t);
    }
    Err(WalkError::Contended)
}

pub mod legacy;

#[cfg(test)]
mod tests;
