//! The shadow leaves for a successful guest walk.
//!
//! Shadow tables map 4 KiB pages only, so a 2 MiB or 1 GiB guest page is shadowed in 4 KiB
//! pieces: [`fill`] makes the piece holding the faulting address, [`fill_region`] all 512
//! pieces of the 2 MiB-aligned part of the page holding it (for `Vtlb::install_region`). A leaf
//! gives the hardware the rights the guest's tables give, with two deliberate differences that
//! make the next fault tell the vTLB something:
//!
//! - **Dirty tracking.** While the guest leaf's D bit is clear, the shadow leaf is read-only,
//!   so the guest's first write faults and the vTLB sets D (the walk for a write does) before
//!   mapping the page writable.
//! - **CR0.WP = 0.** The guest kernel may then write to pages its tables make read-only, but
//!   the hardware runs with WP = 1 (dirty tracking and read-only backing need it). For a
//!   supervisor write to such a page the leaf is made writable and supervisor-only, so guest
//!   user code still cannot write it; a later user access faults and refills the leaf with the
//!   guest's own rights, and the leaf flips between the two forms as needed. The supervisor
//!   form also sets NX when SMEP would have forbidden a supervisor fetch from the (user) page.
//!   Known imprecision: while in the supervisor form, SMAP does not stop supervisor data
//!   accesses to the page (they would have faulted with AC = 0), and with EFER.NXE = 0 a
//!   supervisor fetch SMEP forbids is not stopped either.
//!
//! PWT, PCD and PAT are copied (PAT moves from bit 12 of a large-page entry to bit 7), so the
//! memory type is the one the guest's PAT index selects in the PAT the hardware uses while the
//! guest runs. G is copied: the kernel flushes the guest's whole TLB tag on a vTLB flush.

use super::bits::*;
use super::walk::{Access, Paging, Privilege, Translation};
use super::{AccessKind, PageSize};

/// The host side of one guest page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backing {
    /// Host-physical address of the 4 KiB frame.
    pub hpa: u64,
    /// The guest may write the frame (false for pages the VMM lent read-only).
    pub writable: bool,
    /// The guest may execute from the frame (false for pages mapped without EXEC).
    pub executable: bool,
}

/// Where guest-physical pages live on the host; the kernel implements it over the Vm's memory
/// capabilities.
pub trait HostMemory {
    /// The backing of the 4 KiB guest page at `gpa` (4 KiB-aligned), None when no memory backs
    /// it (MMIO, holes): a memory-fault exit for the VMM.
    fn backing(&self, gpa: u64) -> Option<Backing>;

    /// The backings of the 512 guest pages of the 2 MiB region at `gpa_2m` (2 MiB-aligned),
    /// `out[i]` for `gpa_2m + i * 4096`, for [`fill_region`]. Override it with something faster
    /// than 512 lookups (one nested leaf table, say).
    fn backing_region(&self, gpa_2m: u64, out: &mut [Option<Backing>; 512]) {
        for (i, b) in (0u64..).zip(out.iter_mut()) {
            *b = self.backing(gpa_2m.wrapping_add(i << 12));
        }
    }
}

/// A shadow leaf ready to install.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fill {
    /// The 4 KiB-aligned linear address the leaf maps.
    pub la: u64,
    /// The 4 KiB guest-physical page it maps.
    pub gpa: u64,
    /// The entry.
    pub pte: u64,
    /// The size of the guest page the leaf is a piece of (the `origin` to install it with, so
    /// that an INVLPG drops every piece of a large page).
    pub size: PageSize,
}

/// The 512 shadow leaves of a 2 MiB linear region, ready for `Vtlb::install_region`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionFill {
    /// The 2 MiB-aligned linear address of the region; `ptes[i]` maps `la + i * 4096`.
    pub la: u64,
    /// The 4 KiB guest-physical page of the faulting piece (as [`Fill::gpa`]).
    pub gpa: u64,
    /// The size of the guest page the region is part of (the `origin` to install it with).
    pub size: PageSize,
    /// The leaves; 0 for pieces without backing.
    pub ptes: [u64; 512],
}

/// Why no leaf could be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillError {
    /// No host memory backs the guest page at `gpa`.
    NotBacked { gpa: u64 },
    /// The access is a write and the backing is read-only.
    ReadOnly { gpa: u64 },
    /// The access is an instruction fetch and the backing is not executable.
    NotExecutable { gpa: u64 },
}

/// The shadow leaf for the 4 KiB piece of the page holding `t.gpa`, given the walk `t` that
/// `access` made and the backing of that piece.
pub fn shadow_leaf(t: &Translation, access: Access, paging: &Paging, backing: Backing) -> u64 {
    let leaf = t.leaf();
    let mut pte = (backing.hpa & ADDR) | PRESENT | ACCESSED | DIRTY;
    pte |= leaf & (WRITE_THROUGH | CACHE_DISABLE | GLOBAL);
    let pat = match t.size {
        PageSize::Size4K => leaf & PAT_4K != 0,
        _ => leaf & PAT_LARGE != 0,
    };
    if pat {
        pte |= PAT_4K;
    }
    let mut writable = t.writable;
    let mut user = t.user;
    let mut executable = t.executable;
    let supervisor_write = access.kind == AccessKind::Write && access.privilege != Privilege::User;
    if !t.writable && !paging.wp && supervisor_write {
        writable = true;
        user = false;
        if t.user && paging.smep {
            executable = false;
        }
    }
    if writable && leaf & DIRTY != 0 && backing.writable {
        pte |= WRITABLE;
    }
    if user {
        pte |= USER;
    }
    // The backing's EXEC right as EPT/NPT would enforce it; expressible only with EFER.NXE
    // (without it `fill` still refuses the fetch that would fill the leaf).
    if (!executable || !backing.executable) && paging.nxe {
        pte |= NO_EXECUTE;
    }
    pte
}

/// The refusal of `access` to `backing` of guest page `gpa`, if the backing forbids it.
fn refused(access: Access, backing: Backing, gpa: u64) -> Option<FillError> {
    match access.kind {
        AccessKind::Write if !backing.writable => Some(FillError::ReadOnly { gpa }),
        AccessKind::Execute if !backing.executable => Some(FillError::NotExecutable { gpa }),
        _ => None,
    }
}

/// The fill for `la` after the walk `t` that `access` made: looks up the backing of the 4 KiB
/// guest page and builds the leaf.
pub fn fill(
    host: &impl HostMemory,
    t: &Translation,
    la: u64,
    access: Access,
    paging: &Paging,
) -> Result<Fill, FillError> {
    let gpa = t.gpa & !0xfff;
    // The exact address, for the VMM's MMIO emulation.
    let backing = host
        .backing(gpa)
        .ok_or(FillError::NotBacked { gpa: t.gpa })?;
    if let Some(e) = refused(access, backing, gpa) {
        return Err(e);
    }
    Ok(Fill {
        la: la & !0xfff,
        gpa,
        pte: shadow_leaf(t, access, paging, backing),
        size: t.size,
    })
}

/// The 512 leaves of the 2 MiB part holding `la` of the large page found by the walk `t` that
/// `access` made, so that one fault maps them all: piece `i` maps guest page
/// `(t.gpa & !0x1f_ffff) + i * 4096` with the rights [`shadow_leaf`] gives it, or is 0 without
/// backing. Fails as [`fill`] does when the faulting piece itself cannot be mapped. For a
/// 4 KiB page (use [`fill`]) only the faulting piece is set.
pub fn fill_region(
    host: &impl HostMemory,
    t: &Translation,
    la: u64,
    access: Access,
    paging: &Paging,
) -> Result<RegionFill, FillError> {
    const REGION: u64 = 0x1f_ffff;
    let gpa = t.gpa & !0xfff;
    let fault = ((la >> 12) & 0x1ff) as usize;
    let mut backings = [None; 512];
    if t.size == PageSize::Size4K {
        backings[fault] = host.backing(gpa);
    } else {
        host.backing_region(t.gpa & !REGION, &mut backings);
    }
    let own = backings[fault].ok_or(FillError::NotBacked { gpa: t.gpa })?;
    if let Some(e) = refused(access, own, gpa) {
        return Err(e);
    }
    // Every piece has the same rights but for the backing's address, writability and EXEC
    // right: four templates instead of 512 leaf computations (this runs on every region fault).
    let template = |writable, executable| {
        let b = Backing {
            hpa: 0,
            writable,
            executable,
        };
        shadow_leaf(t, access, paging, b)
    };
    let templates = [
        [template(false, false), template(false, true)],
        [template(true, false), template(true, true)],
    ];
    let mut ptes = [0; 512];
    for (pte, b) in ptes.iter_mut().zip(backings) {
        if let Some(b) = b {
            *pte = (b.hpa & ADDR) | templates[usize::from(b.writable)][usize::from(b.executable)];
        }
    }
    Ok(RegionFill {
        la: la & !REGION,
        gpa,
        size: t.size,
        ptes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::fake::{Guest, Host, HOST_OFFSET, OPEN, RAM};
    use crate::shadow::walk::walk;

    const LA: u64 = 0x7f12_3456_7000;

    fn leaf_for(g: &Guest, paging: &Paging, la: u64, access: Access) -> Result<Fill, FillError> {
        let t = walk(g, paging, la, access).unwrap();
        fill(&Host::all(), &t, la, access, paging)
    }

    #[test]
    fn clean_page_is_read_only_until_written() {
        let g = Guest::new();
        g.map(LA, 0x5000, PageSize::Size4K, [OPEN; 3], WRITABLE | USER);
        let p = g.paging();
        let read = leaf_for(&g, &p, LA, Access::user(AccessKind::Read)).unwrap();
        assert_eq!(read.la, LA);
        assert_eq!(read.gpa, 0x5000);
        assert_eq!(read.pte & ADDR, 0x5000 + HOST_OFFSET);
        assert_eq!(read.pte & (PRESENT | WRITABLE | USER), PRESENT | USER);
        let write = leaf_for(&g, &p, LA, Access::user(AccessKind::Write)).unwrap();
        assert_eq!(
            write.pte & (PRESENT | WRITABLE | USER),
            PRESENT | WRITABLE | USER
        );
        // Dirty now: a read fills writable at once.
        let read = leaf_for(&g, &p, LA, Access::user(AccessKind::Read)).unwrap();
        assert_ne!(read.pte & WRITABLE, 0);
    }

    #[test]
    fn rights_combine_every_level() {
        let p = Guest::new().paging();
        // (table flags at levels 4..2, leaf flags) -> (W, U, NX) of the shadow leaf, dirty page.
        let cases = [
            ([OPEN; 3], WRITABLE | USER, (true, true, false)),
            (
                [OPEN, PRESENT | USER, OPEN],
                WRITABLE | USER,
                (false, true, false),
            ),
            (
                [OPEN, OPEN, PRESENT | WRITABLE],
                WRITABLE | USER,
                (true, false, false),
            ),
            (
                [OPEN | NO_EXECUTE, OPEN, OPEN],
                WRITABLE | USER,
                (true, true, true),
            ),
            ([OPEN; 3], WRITABLE | NO_EXECUTE, (true, false, true)),
            ([OPEN; 3], 0, (false, false, false)),
        ];
        for (tables, leaf, (w, u, nx)) in cases {
            let g = Guest::new();
            g.map(LA, 0x5000, PageSize::Size4K, tables, leaf | DIRTY);
            let f = leaf_for(&g, &p, LA, Access::supervisor(AccessKind::Read)).unwrap();
            assert_eq!(f.pte & WRITABLE != 0, w, "{tables:x?} {leaf:x}");
            assert_eq!(f.pte & USER != 0, u, "{tables:x?} {leaf:x}");
            assert_eq!(f.pte & NO_EXECUTE != 0, nx, "{tables:x?} {leaf:x}");
        }
    }

    #[test]
    fn no_nx_bit_without_nxe() {
        let g = Guest::new();
        g.map(LA, 0x5000, PageSize::Size4K, [OPEN; 3], USER);
        let mut p = g.paging();
        p.nxe = false;
        let f = leaf_for(&g, &p, LA, Access::user(AccessKind::Read)).unwrap();
        assert_eq!(f.pte & NO_EXECUTE, 0);
    }

    #[test]
    fn large_pages_are_split_into_the_faulting_4k_piece() {
        let g = Guest::new();
        let la2m = 0x4000_0000_0000 + 0x20_0000;
        g.map(
            la2m,
            0x60_0000,
            PageSize::Size2M,
            [OPEN; 3],
            WRITABLE | DIRTY | PAT_LARGE,
        );
        let f = leaf_for(
            &g,
            &g.paging(),
            la2m + 0x3_4567,
            Access::supervisor(AccessKind::Read),
        )
        .unwrap();
        assert_eq!(f.la, la2m + 0x3_4000);
        assert_eq!(f.gpa, 0x63_4000);
        assert_eq!(f.pte & ADDR, 0x63_4000 + HOST_OFFSET);
        assert_ne!(f.pte & PAT_4K, 0, "PAT moves from bit 12 to bit 7");
        assert_eq!(f.pte & PAT_LARGE, 0);

        let la1g = 0x40_0000_0000;
        g.map(la1g, 0x0, PageSize::Size1G, [OPEN; 3], WRITABLE | DIRTY);
        let f = leaf_for(
            &g,
            &g.paging(),
            la1g + 0x1234_5678,
            Access::supervisor(AccessKind::Read),
        )
        .unwrap();
        assert_eq!((f.la, f.gpa), (la1g + 0x1234_5000, 0x1234_5000));
        assert_eq!(f.pte & PAT_4K, 0);
    }

    #[test]
    fn memory_type_and_global_bits_are_copied() {
        let g = Guest::new();
        g.map(
            LA,
            0x5000,
            PageSize::Size4K,
            [OPEN; 3],
            WRITE_THROUGH | CACHE_DISABLE | PAT_4K | GLOBAL,
        );
        let f = leaf_for(&g, &g.paging(), LA, Access::supervisor(AccessKind::Read)).unwrap();
        let copied = WRITE_THROUGH | CACHE_DISABLE | PAT_4K | GLOBAL;
        assert_eq!(f.pte & copied, copied);
        // Nothing else of the guest's entry leaks in: only the bits chosen here are set.
        assert_eq!(
            f.pte & !(ADDR | copied | PRESENT | ACCESSED | DIRTY | NO_EXECUTE),
            0
        );
    }

    #[test]
    fn wp0_supervisor_write_makes_a_writable_supervisor_leaf() {
        let g = Guest::new();
        g.map(LA, 0x5000, PageSize::Size4K, [OPEN; 3], USER);
        let mut p = g.paging();
        p.wp = false;
        p.smep = true;
        let f = leaf_for(&g, &p, LA, Access::supervisor(AccessKind::Write)).unwrap();
        assert_eq!(f.pte & (WRITABLE | USER), WRITABLE);
        assert_ne!(
            f.pte & NO_EXECUTE,
            0,
            "SMEP forbade supervisor fetches from the page"
        );
        // A user read then gets the guest's own rights back.
        let f = leaf_for(&g, &p, LA, Access::user(AccessKind::Read)).unwrap();
        assert_eq!(f.pte & (WRITABLE | USER), USER);
        assert_eq!(f.pte & NO_EXECUTE, 0);
        // With WP = 1 the same write is a guest fault (checked in the walk); a supervisor read
        // of a read-only page never gets the trick.
        let f = leaf_for(&g, &p, LA, Access::supervisor(AccessKind::Read)).unwrap();
        assert_eq!(f.pte & WRITABLE, 0);
    }

    #[test]
    fn wp0_trick_on_a_supervisor_page_keeps_it_executable() {
        let g = Guest::new();
        g.map(LA, 0x5000, PageSize::Size4K, [OPEN; 3], 0);
        let mut p = g.paging();
        p.wp = false;
        p.smep = true;
        let f = leaf_for(&g, &p, LA, Access::supervisor(AccessKind::Write)).unwrap();
        assert_eq!(f.pte & (WRITABLE | USER | NO_EXECUTE), WRITABLE);
    }

    #[test]
    fn backing_decides_too() {
        let g = Guest::new();
        g.map(
            LA,
            0x5000,
            PageSize::Size4K,
            [OPEN; 3],
            WRITABLE | USER | DIRTY,
        );
        let p = g.paging();
        let t = walk(&g, &p, LA, Access::user(AccessKind::Read)).unwrap();
        let ro = Host {
            limit: 0x4000_0000,
            no_exec: Vec::new(),
            read_only: vec![0x5000],
        };
        let f = fill(&ro, &t, LA, Access::user(AccessKind::Read), &p).unwrap();
        assert_eq!(f.pte & WRITABLE, 0, "read-only backing");
        assert_eq!(
            fill(&ro, &t, LA, Access::user(AccessKind::Write), &p),
            Err(FillError::ReadOnly { gpa: 0x5000 })
        );
        let none = Host {
            limit: 0x5000,
            no_exec: Vec::new(),
            read_only: Vec::new(),
        };
        assert_eq!(
            fill(&none, &t, LA, Access::user(AccessKind::Read), &p),
            Err(FillError::NotBacked { gpa: 0x5000 })
        );
    }

    const LA2M: u64 = 0x7f00_0060_0000;
    const GPA2M: u64 = 0x80_0000;

    /// A 2 MiB guest page at `LA2M` with `leaf` flags, and the walk `access` makes at `la`.
    fn large(leaf: u64, la: u64, access: Access) -> (Guest, Translation) {
        let g = Guest::new();
        g.map(LA2M, GPA2M, PageSize::Size2M, [OPEN; 3], leaf);
        let t = walk(&g, &g.paging(), la, access).unwrap();
        (g, t)
    }

    #[test]
    fn a_region_maps_every_piece_of_a_2m_page() {
        let read = Access::user(AccessKind::Read);
        let la = LA2M + 0x1_2345;
        let (g, t) = large(WRITABLE | USER | DIRTY | PAT_LARGE, la, read);
        let r = fill_region(&Host::all(), &t, la, read, &g.paging()).unwrap();
        assert_eq!(
            (r.la, r.gpa, r.size),
            (LA2M, GPA2M + 0x1_2000, PageSize::Size2M)
        );
        let one = fill(&Host::all(), &t, la, read, &g.paging()).unwrap();
        assert_eq!(
            r.ptes[0x12], one.pte,
            "the faulting piece is the one fill makes"
        );
        for (i, &pte) in (0u64..).zip(r.ptes.iter()) {
            assert_eq!(pte & ADDR, GPA2M + (i << 12) + HOST_OFFSET, "piece {i}");
            assert_eq!(pte & !ADDR, one.pte & !ADDR, "same rights and memory type");
        }
        assert_ne!(one.pte & PAT_4K, 0);
        assert_eq!(
            one.pte & (PRESENT | WRITABLE | USER),
            PRESENT | WRITABLE | USER
        );
    }

    #[test]
    fn region_pieces_are_read_only_while_the_guest_pde_is_clean() {
        let read = Access::user(AccessKind::Read);
        let (g, t) = large(WRITABLE | USER, LA2M, read);
        let p = g.paging();
        let r = fill_region(&Host::all(), &t, LA2M, read, &p).unwrap();
        assert!(r.ptes.iter().all(|&e| e & (PRESENT | WRITABLE) == PRESENT));
        // The write walk sets D in the PDE: every piece writable, but for read-only backing.
        let write = Access::user(AccessKind::Write);
        let t = walk(&g, &p, LA2M + 0x5000, write).unwrap();
        assert_ne!(g.get(g.entry(LA2M, 2)) & DIRTY, 0);
        let host = Host {
            limit: RAM,
            no_exec: Vec::new(),
            read_only: vec![GPA2M + 0x7000],
        };
        let r = fill_region(&host, &t, LA2M + 0x5000, write, &p).unwrap();
        for (i, &pte) in r.ptes.iter().enumerate() {
            assert_eq!(pte & WRITABLE != 0, i != 7, "piece {i}");
            assert_ne!(pte & PRESENT, 0);
        }
    }

    #[test]
    fn region_pieces_without_backing_are_zero() {
        let read = Access::supervisor(AccessKind::Read);
        let la = LA2M + 0x3000;
        let (g, t) = large(WRITABLE | DIRTY, la, read);
        // Backed below GPA2M + 0x10_0000 only.
        let host = Host {
            limit: GPA2M + 0x10_0000,
            no_exec: Vec::new(),
            read_only: Vec::new(),
        };
        let r = fill_region(&host, &t, la, read, &g.paging()).unwrap();
        for (i, &pte) in r.ptes.iter().enumerate() {
            assert_eq!(pte == 0, i >= 0x100, "piece {i}");
        }
    }

    #[test]
    fn region_fails_only_for_the_faulting_piece() {
        let write = Access::supervisor(AccessKind::Write);
        let la = LA2M + 0x4_0000;
        let (g, t) = large(WRITABLE | DIRTY, la, write);
        let p = g.paging();
        let host = Host {
            limit: GPA2M + 0x4_0000,
            no_exec: Vec::new(),
            read_only: vec![GPA2M + 0x3_f000],
        };
        assert_eq!(
            fill_region(&host, &t, la, write, &p),
            Err(FillError::NotBacked {
                gpa: GPA2M + 0x4_0000
            })
        );
        let below = la - 0x1000;
        let t = walk(&g, &p, below, write).unwrap();
        assert_eq!(
            fill_region(&host, &t, below, write, &p),
            Err(FillError::ReadOnly {
                gpa: GPA2M + 0x3_f000
            })
        );
        // A read of the read-only piece is fine, and the unbacked pieces are left out.
        let read = Access::supervisor(AccessKind::Read);
        let t = walk(&g, &p, below, read).unwrap();
        let r = fill_region(&host, &t, below, read, &p).unwrap();
        assert_eq!(r.ptes[0x3f] & (PRESENT | WRITABLE), PRESENT);
        assert_eq!(r.ptes[0x3e] & (PRESENT | WRITABLE), PRESENT | WRITABLE);
        assert_eq!(r.ptes[0x40], 0);
    }

    #[test]
    fn region_of_a_1g_page_is_its_2m_part_holding_the_address() {
        let g = Guest::new();
        let la1g = 0x40_0000_0000;
        let gpa1g = 0;
        g.map(la1g, gpa1g, PageSize::Size1G, [OPEN; 3], WRITABLE | DIRTY);
        let read = Access::supervisor(AccessKind::Read);
        let la = la1g + 0x1234_5678;
        let t = walk(&g, &g.paging(), la, read).unwrap();
        let r = fill_region(&Host::all(), &t, la, read, &g.paging()).unwrap();
        assert_eq!(
            (r.la, r.gpa, r.size),
            (la1g + 0x1220_0000, 0x1234_5000, PageSize::Size1G)
        );
        for (i, &pte) in (0u64..).zip(r.ptes.iter()) {
            assert_eq!(pte & ADDR, 0x1220_0000 + (i << 12) + HOST_OFFSET);
        }
    }

    #[test]
    fn exec_right_of_the_backing_is_kept() {
        let g = Guest::new();
        g.map(LA, 0x5000, PageSize::Size4K, [OPEN; 3], WRITABLE | USER);
        let host = Host {
            no_exec: vec![0x5000],
            ..Host::all()
        };
        let fetch = Access::user(AccessKind::Execute);
        let t = walk(&g, &g.paging(), LA, fetch).unwrap();
        assert_eq!(
            fill(&host, &t, LA, fetch, &g.paging()),
            Err(FillError::NotExecutable { gpa: 0x5000 })
        );
        assert_eq!(
            fill_region(&host, &t, LA, fetch, &g.paging()).map(|r| r.la),
            Err(FillError::NotExecutable { gpa: 0x5000 })
        );
        let read = Access::user(AccessKind::Read);
        let t = walk(&g, &g.paging(), LA, read).unwrap();
        let leaf = fill(&host, &t, LA, read, &g.paging()).unwrap().pte;
        assert_eq!(leaf & NO_EXECUTE != 0, g.paging().nxe);
    }

    #[test]
    fn region_of_a_4k_page_holds_only_the_faulting_piece() {
        let g = Guest::new();
        g.map(LA, 0x5000, PageSize::Size4K, [OPEN; 3], WRITABLE | USER);
        let read = Access::user(AccessKind::Read);
        let t = walk(&g, &g.paging(), LA, read).unwrap();
        let r = fill_region(&Host::all(), &t, LA, read, &g.paging()).unwrap();
        let one = fill(&Host::all(), &t, LA, read, &g.paging()).unwrap();
        let k = ((LA >> 12) & 0x1ff) as usize;
        assert_eq!(
            (r.la, r.gpa, r.size),
            (LA & !0x1f_ffff, 0x5000, PageSize::Size4K)
        );
        assert_eq!(r.ptes[k], one.pte);
        assert_eq!(r.ptes.iter().filter(|&&e| e != 0).count(), 1);
    }

    /// Backing from a whole-region lookup only, to see that the override is what is used.
    struct RegionOnly;

    impl HostMemory for RegionOnly {
        fn backing(&self, _: u64) -> Option<Backing> {
            None
        }

        fn backing_region(&self, gpa_2m: u64, out: &mut [Option<Backing>; 512]) {
            for (i, b) in (0u64..).zip(out.iter_mut()) {
                *b = Some(Backing {
                    hpa: 0x9_0000_0000 + gpa_2m + (i << 12),
                    writable: i % 2 == 0,
                    executable: i % 3 != 0,
                });
            }
        }
    }

    #[test]
    fn region_backing_comes_from_backing_region() {
        let read = Access::supervisor(AccessKind::Read);
        let (g, t) = large(WRITABLE | DIRTY, LA2M, read);
        let r = fill_region(&RegionOnly, &t, LA2M, read, &g.paging()).unwrap();
        assert_eq!(
            r.ptes[1] & (ADDR | WRITABLE),
            0x9_0000_0000 + GPA2M + 0x1000
        );
        assert_eq!(
            r.ptes[2] & (ADDR | WRITABLE),
            (0x9_0000_0000 + GPA2M + 0x2000) | WRITABLE
        );
        // The EXEC right per piece: pieces 0 and 3 were lent without it.
        if g.paging().nxe {
            assert_ne!(r.ptes[0] & NO_EXECUTE, 0);
            assert_eq!(r.ptes[1] & NO_EXECUTE, 0);
            assert_ne!(r.ptes[3] & NO_EXECUTE, 0);
        }
        // The provided method asks backing for each page in order.
        let mut out = [None; 512];
        Host::all().backing_region(GPA2M, &mut out);
        for (i, b) in (0u64..).zip(out) {
            assert_eq!(b, Host::all().backing(GPA2M + (i << 12)));
        }
    }
}
