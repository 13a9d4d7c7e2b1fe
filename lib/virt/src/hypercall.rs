//! The DMP hypercalls (`abi::vm::hypercall`): decoding a request from the guest's registers and
//! applying page-table updates to the guest's memory, with the checks that make a hostile
//! request harmless: every entry address must be 8-aligned guest RAM, and the shadow
//! translations an update could affect are named for the kernel to drop (one page when the
//! entry lies on the walk of the address the guest says it maps, everything otherwise, so a
//! guest that lies about the address only costs itself refills).

use abi::vm::hypercall::*;

use crate::shadow::walk::{CasError, GuestPhys};

/// One decoded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Invlpg { la: u64 },
    Update(Update),
    Queue { gpa: u64, count: u64 },
}

/// A page-table update: write `value` at guest-physical `entry`, which maps (the guest says)
/// guest-linear `la`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Update {
    pub la: u64,
    pub entry: u64,
    pub value: u64,
}

/// What the kernel must drop from its shadow tables after an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidate {
    Page(u64),
    All,
}

/// A refused request: the result code for RAX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused(pub u64);

/// The request in RAX, RBX, RCX, RDX.
pub fn decode(rax: u64, rbx: u64, rcx: u64, rdx: u64) -> Result<Request, Refused> {
    match rax {
        INVLPG => Ok(Request::Invlpg { la: rbx }),
        PTE_WRITE => Ok(Request::Update(Update {
            la: rbx,
            entry: rcx,
            value: rdx,
        })),
        QUEUE if rcx <= MAX_QUEUE && rbx.is_multiple_of(8) => Ok(Request::Queue {
            gpa: rbx,
            count: rcx,
        }),
        QUEUE => Err(Refused(BAD_REQUEST)),
        _ => Err(Refused(BAD_REQUEST)),
    }
}

/// Queue entry `i` at guest-physical `queue`.
pub fn queue_entry(guest: &impl GuestPhys, queue: u64, i: u64) -> Result<Update, Refused> {
    let word = |k: u64| {
        i.checked_mul(24)
            .and_then(|o| queue.checked_add(o + 8 * k))
            .and_then(|gpa| guest.read(gpa))
            .ok_or(Refused(BAD_ADDRESS))
    };
    Ok(Update {
        la: word(0)?,
        entry: word(1)?,
        value: word(2)?,
    })
}

/// Writes an update into the guest's memory (atomically against the guest's own writes) and
/// says what to drop. `cr3` is the guest's current CR3 (the walk that decides between one page
/// and everything).
pub fn apply(guest: &impl GuestPhys, cr3: u64, u: Update) -> Result<Invalidate, Refused> {
    if !u.entry.is_multiple_of(8) {
        return Err(Refused(BAD_ADDRESS));
    }
    let on_path = walk_path(guest, cr3, u.la).contains(&Some(u.entry));
    let mut current = guest.read(u.entry).ok_or(Refused(BAD_ADDRESS))?;
    loop {
        match guest.compare_exchange(u.entry, current, u.value) {
            Ok(()) => break,
            Err(CasError::Changed) => {
                current = guest.read(u.entry).ok_or(Refused(BAD_ADDRESS))?;
            }
            Err(CasError::NotRam) => return Err(Refused(BAD_ADDRESS)),
        }
    }
    Ok(if on_path {
        Invalidate::Page(u.la & !0xfff)
    } else {
        Invalidate::All
    })
}

/// The guest-physical addresses of the entries a 4-level walk of `la` reads, as far as they are
/// present (a large page ends the walk).
fn walk_path(guest: &impl GuestPhys, cr3: u64, la: u64) -> [Option<u64>; 4] {
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    let mut path = [None; 4];
    let mut table = cr3 & ADDR;
    for (n, level) in (1..=4u32).rev().enumerate() {
        let at = table + ((la >> (12 + 9 * (level - 1))) & 0x1ff) * 8;
        path[n] = Some(at);
        let Some(e) = guest.read(at) else { break };
        if e & 1 == 0 || (level > 1 && level < 4 && e & (1 << 7) != 0) {
            break;
        }
        table = e & ADDR;
    }
    path
}

/// Whether a DMP view of `size` bytes at guest-linear `base` (`abi::vm::dmp_op::VIEW`) may be
/// placed: 2 MiB-aligned, non-empty, wholly in the canonical upper half, and clear of the window
/// `[window.0, window.0 + window.1)` if there is one.
pub fn view_fits(base: u64, size: u64, window: Option<(u64, u64)>) -> bool {
    let Some(end) = base.checked_add(size) else {
        return false;
    };
    let upper = |x: u64| x >> 47 == 0x1_ffff;
    if size == 0 || !base.is_multiple_of(2 << 20) || !upper(base) || !upper(end - 1) {
        return false;
    }
    window.is_none_or(|(w, len)| end <= w || w.saturating_add(len) <= base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::fake::{Guest, OPEN, RAM};
    use crate::shadow::PageSize;

    #[test]
    fn decodes_requests_and_refuses_nonsense() {
        assert_eq!(
            decode(INVLPG, 0x1000, 0, 0),
            Ok(Request::Invlpg { la: 0x1000 })
        );
        assert_eq!(
            decode(QUEUE, 0x2000, MAX_QUEUE, 0),
            Ok(Request::Queue {
                gpa: 0x2000,
                count: MAX_QUEUE
            })
        );
        assert_eq!(
            decode(QUEUE, 0x2000, MAX_QUEUE + 1, 0),
            Err(Refused(BAD_REQUEST))
        );
        assert_eq!(decode(QUEUE, 0x2004, 1, 0), Err(Refused(BAD_REQUEST)));
        assert_eq!(decode(0, 0, 0, 0), Err(Refused(BAD_REQUEST)));
        assert_eq!(decode(u64::MAX, 0, 0, 0), Err(Refused(BAD_REQUEST)));
    }

    #[test]
    fn an_update_on_the_walk_drops_one_page() {
        let g = Guest::new();
        let la = 0x7000_1000;
        let leaf = g.map(la, 0x5000, PageSize::Size4K, [OPEN; 3], OPEN);
        let u = Update {
            la: la + 0x123,
            entry: leaf,
            value: 0x6000 | OPEN | 1,
        };
        assert_eq!(apply(&g, g.cr3, u), Ok(Invalidate::Page(la)));
        assert_eq!(g.get(leaf), 0x6000 | OPEN | 1);
        // An upper-level entry of the same walk also counts as on the path.
        let pde = g.entry(la, 2);
        let old = g.get(pde);
        let u = Update {
            la,
            entry: pde,
            value: old,
        };
        assert_eq!(apply(&g, g.cr3, u), Ok(Invalidate::Page(la)));
    }

    #[test]
    fn lies_and_hostile_entries_cost_only_the_guest() {
        let g = Guest::new();
        let la = 0x7000_1000;
        let leaf = g.map(la, 0x5000, PageSize::Size4K, [OPEN; 3], OPEN);
        // The entry is real guest RAM but not on the walk of the claimed address: everything.
        let u = Update {
            la: 0x1234_5000,
            entry: leaf,
            value: 0,
        };
        assert_eq!(apply(&g, g.cr3, u), Ok(Invalidate::All));
        // Outside RAM, unaligned: refused, nothing written.
        let before = g.snapshot();
        for entry in [RAM, RAM + 8, u64::MAX - 7, leaf + 4] {
            let u = Update {
                la,
                entry,
                value: 7,
            };
            assert_eq!(apply(&g, g.cr3, u), Err(Refused(BAD_ADDRESS)));
        }
        assert_eq!(g.snapshot(), before);
    }

    #[test]
    fn a_racing_guest_write_is_not_lost_silently() {
        let g = Guest::new();
        let la = 0x7000_1000;
        let leaf = g.map(la, 0x5000, PageSize::Size4K, [OPEN; 3], OPEN);
        g.race.set(Some(leaf));
        g.races_left.set(2);
        let u = Update {
            la,
            entry: leaf,
            value: 0x9000 | OPEN | 1,
        };
        assert_eq!(apply(&g, g.cr3, u), Ok(Invalidate::Page(la)));
        // The update is what the guest asked for last; the race retried, it did not write twice.
        assert_eq!(g.get(leaf), 0x9000 | OPEN | 1);
    }

    #[test]
    fn queue_entries_stay_inside_ram() {
        let g = Guest::new();
        g.set(0x3000, 0x1000);
        g.set(0x3008, 0x4000);
        g.set(0x3010, 0x77);
        assert_eq!(
            queue_entry(&g, 0x3000, 0),
            Ok(Update {
                la: 0x1000,
                entry: 0x4000,
                value: 0x77
            })
        );
        assert_eq!(queue_entry(&g, RAM - 16, 0), Err(Refused(BAD_ADDRESS)));
        assert_eq!(queue_entry(&g, 0x3000, u64::MAX), Err(Refused(BAD_ADDRESS)));
        assert_eq!(queue_entry(&g, u64::MAX - 7, 1), Err(Refused(BAD_ADDRESS)));
    }

    #[test]
    fn views_must_be_aligned_upper_half_and_clear_of_the_window() {
        const VIEW: u64 = 0xffff_ff80_0000_0000;
        const WINDOW: (u64, u64) = (0xffff_ffff_fff0_0000, 16 * 4096);
        assert!(view_fits(VIEW, 32 << 20, Some(WINDOW)));
        assert!(view_fits(VIEW, 32 << 20, None));
        assert!(!view_fits(VIEW, 0, None), "empty");
        assert!(!view_fits(VIEW + 4096, 32 << 20, None), "unaligned");
        assert!(!view_fits(0x4000_0000, 32 << 20, None), "lower half");
        assert!(
            !view_fits(0xffff_8000_0000_0000 - (2 << 20), 4 << 20, None),
            "non-canonical"
        );
        assert!(!view_fits(0xffff_ffff_ffe0_0000, 4 << 20, None), "wraps");
        let below_window = 0xffff_ffff_ffc0_0000;
        assert!(view_fits(below_window, 2 << 20, Some(WINDOW)));
        assert!(
            !view_fits(below_window, 2 << 20, Some((below_window + 4096, 4096))),
            "over the window"
        );
        assert!(
            !view_fits(below_window, 4 << 20, Some(WINDOW)),
            "into the window"
        );
        assert!(!view_fits(!0x1f_ffff_u64, u64::MAX, None), "overflow");
    }
}
