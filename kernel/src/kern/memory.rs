//! User memory and I/O ports: mapping memory capabilities into domains, carving sub-ranges of
//! resource capabilities, and the per-domain I/O permission bitmap.

use alloc::boxed::Box;
use alloc::vec::Vec;

use abi::PAGE_SIZE;
use abi::{Rights, Status};
use cap::{Quota, SpaceId};
use mem::paging::{Flags, PageSize, TableMemory};

use super::cost;
use super::ids::{PdId, ThreadId};
use super::obj::Obj;
use super::obj::{MemoryRange, PortRange};
use super::records::MapRecord;
use super::state::Kernel;
use crate::arch::gdt::IO_BITMAP_BYTES;
use crate::mem::{direct, frames};
use abi::syscall::args;
use abi::Sel;

/// Highest user address + 1 (the lower canonical half).
pub const USER_END: u64 = 0x0000_8000_0000_0000;

/// Page-table frames for a domain, charged to its quota.
pub struct QuotaTables<'a> {
    pub quota: &'a mut Quota,
    pub frames: &'a mut Vec<u64>,
}

impl TableMemory for QuotaTables<'_> {
    fn alloc_table(&mut self) -> Option<u64> {
        self.quota.charge(cost::PAGE_TABLE).ok()?;
        let Some(frame) = frames::alloc(1) else {
            self.quota.release(cost::PAGE_TABLE);
            return None;
        };
        direct::zero_frame(frame);
        self.frames.push(frame);
        Some(frame)
    }

    fn read(&self, table: u64, index: usize) -> u64 {
        direct::read_word(table, index)
    }

    fn write(&mut self, table: u64, index: usize, value: u64) {
        direct::write_word(table, index, value)
    }

    fn free_table(&mut self, table: u64) {
        self.frames.retain(|&f| f != table);
        frames::free(table, 1);
        self.quota.release(cost::PAGE_TABLE);
    }
}

/// Maps `pages` pages of `phys` at user address `virt` of `pd`.
pub fn map_pages(
    k: &mut Kernel,
    pd: PdId,
    virt: u64,
    phys: u64,
    pages: u64,
    rights: Rights,
) -> Result<(), Status> {
    let len = pages.checked_mul(PAGE_SIZE).ok_or(Status::BadArgument)?;
    let end = virt.checked_add(len).ok_or(Status::BadAddress)?;
    if !virt.is_multiple_of(PAGE_SIZE) || end > USER_END || pages == 0 {
        return Err(Status::BadAddress);
    }
    if rights.contains(Rights::WRITE) && rights.contains(Rights::EXEC) {
        return Err(Status::BadArgument);
    }
    let flags = Flags {
        writable: rights.contains(Rights::WRITE),
        executable: rights.contains(Rights::EXEC),
        user: true,
        ..Flags::default()
    };
    let domain = k.pds.get_mut(pd).ok_or(Status::BadSelector)?;
    let mut tables = QuotaTables {
        quota: &mut domain.quota,
        frames: &mut domain.table_frames,
    };
    domain
        .aspace
        .map_range_up_to(&mut tables, virt, phys, len, flags, PageSize::Size4K)
        .map_err(|e| match e {
            mem::paging::MapError::OutOfTableMemory => Status::QuotaExceeded,
            mem::paging::MapError::AlreadyMapped { .. } => Status::BadAddress,
            _ => Status::BadArgument,
        })
}

/// `map(mem, pd, virt, first_page, pages, rights)`.
pub fn map(k: &mut Kernel, space: SpaceId, a: args::Map) -> Result<(), Status> {
    let args::Map {
        mem: mem_sel,
        pd: pd_sel,
        virt,
        first_page: first,
        pages,
        rights,
    } = a;
    let rights = rights.get()?;
    let mappable = Rights::READ | Rights::WRITE | Rights::EXEC;
    if !mappable.contains(rights) || !rights.contains(Rights::READ) {
        return Err(Status::BadArgument);
    }
    let MemoryRange { base, pages: total } = k.lookup(space, mem_sel, rights)?;
    let pd: PdId = k.lookup(space, pd_sel, Rights::CONTROL)?;
    let last = first.checked_add(pages).ok_or(Status::BadArgument)?;
    if pages == 0 || last > total {
        return Err(Status::BadArgument);
    }
    // The record lives in the kernel heap: the domain mapped into pays for it first.
    k.mappings.try_reserve(1).map_err(|_| Status::OutOfMemory)?;
    k.pds
        .get_mut(pd)
        .ok_or(Status::BadSelector)?
        .quota
        .charge(cost::MAP_RECORD)
        .map_err(Status::from)?;
    if let Err(e) = map_pages(k, pd, virt, base + first * PAGE_SIZE, pages, rights) {
        if let Some(d) = k.pds.get_mut(pd) {
            d.quota.release(cost::MAP_RECORD);
        }
        return Err(e);
    }
    k.mappings.push(MapRecord {
        pd,
        virt,
        pages,
        space,
        sel: mem_sel.raw(),
    });
    Ok(())
}

/// Removes every mapping made through the memory capability at (`space`, `sel`), which is
/// being removed, and flushes the TLB of the domains that lose pages.
pub fn unmap_through(k: &mut Kernel, space: SpaceId, sel: u64) {
    let mut gone = Vec::new();
    k.mappings.retain(|m| {
        let through = m.space == space && m.sel == sel;
        if through {
            gone.push(*m);
        }
        !through
    });
    shrink(&mut k.mappings);
    for m in gone {
        end_threads_on_unmapped_utcbs(k, m.pd, m.virt, m.pages);
        let Some(domain) = k.pds.get_mut(m.pd) else {
            continue;
        };
        domain.quota.release(cost::MAP_RECORD);
        let mut tables = QuotaTables {
            quota: &mut domain.quota,
            frames: &mut domain.table_frames,
        };
        for page in 0..m.pages {
            // A page can only be missing if the domain is being torn down; nothing to undo then.
            let _ = domain
                .aspace
                .unmap(&mut tables, m.virt + page * PAGE_SIZE, PageSize::Size4K);
        }
        k.forget_loaded(m.pd);
    }
}

/// Gives a record vector's spare room back to the heap once it is mostly empty, so that a
/// domain that made many records and revoked them does not leave the heap full of capacity
/// nobody pays for.
pub fn shrink<T>(records: &mut Vec<T>) {
    if records.capacity() > 64 && records.len() < records.capacity() / 4 {
        records.shrink_to(records.len() * 2);
    }
}

/// The kernel keeps the frame of every thread's UTCB: a thread of `pd` whose UTCB page lies in
/// the `pages` unmapped from `virt` ends, so the kernel never reads or writes memory its domain
/// lost (the page may already belong to someone else).
fn end_threads_on_unmapped_utcbs(k: &mut Kernel, pd: PdId, virt: u64, pages: u64) {
    let Some(domain) = k.pds.get(pd) else { return };
    let orphans: Vec<ThreadId> = domain
        .threads
        .iter()
        .copied()
        .filter(|t| {
            k.threads
                .get(*t)
                .and_then(|t| t.utcb_page)
                .is_some_and(|page| page.wrapping_sub(virt) < pages * PAGE_SIZE)
        })
        .collect();
    for t in orphans {
        crate::println!("kernel: thread {t:?}: its UTCB page was unmapped; thread ended");
        k.kill(t);
    }
}

/// `carve(src, dest, first, count)`: a capability over a sub-range, derived from `src`.
pub fn carve(
    k: &mut Kernel,
    space: SpaceId,
    owner: ThreadId,
    a: args::Carve,
) -> Result<(), Status> {
    let args::Carve {
        src,
        dest,
        first,
        count,
    } = a;
    let (object, rights) = k.caps.get(space, src.raw()).map_err(Status::from)?;
    if !rights.contains(Rights::GRANT) {
        return Err(Status::NoRights);
    }
    let end = first.checked_add(count).ok_or(Status::BadArgument)?;
    let carved = match *object {
        Obj::Memory { base, pages } if count > 0 && end <= pages => Obj::Memory {
            base: base + first * PAGE_SIZE,
            pages: count,
        },
        Obj::IoPorts { base, count: n } if count > 0 && end <= u64::from(n) => Obj::IoPorts {
            base: base + first as u32,
            count: count as u32,
        },
        Obj::Memory { .. } | Obj::IoPorts { .. } => return Err(Status::BadArgument),
        _ => return Err(Status::WrongKind),
    };
    k.caps
        .derive(space, src.raw(), space, dest.raw(), carved, rights)
        .map_err(Status::from)?;
    after_cap_insert(k, owner, dest.raw());
    Ok(())
}

/// Called after a capability lands at `sel` in the domain of thread `t`: an IoPorts capability
/// opens its ports in the domain's I/O bitmap.
pub fn after_cap_insert(k: &mut Kernel, t: ThreadId, sel: u64) {
    let Some(pd) = k.threads.get(t).map(|x| x.pd) else {
        return;
    };
    after_cap_insert_pd(k, pd, sel);
}

pub fn after_cap_insert_pd(k: &mut Kernel, pd: PdId, sel: u64) {
    let Some(space) = k.pds.get(pd).map(|d| d.space) else {
        return;
    };
    if k.lookup::<PortRange>(space, Sel::new(sel), Rights::NONE)
        .is_ok()
    {
        rebuild_io_bitmap(k, pd);
    }
}

/// Recomputes a domain's I/O bitmap from the IoPorts capabilities with CALL it holds.
pub fn rebuild_io_bitmap(k: &mut Kernel, pd: PdId) {
    k.forget_loaded(pd);
    let Some(space) = k.pds.get(pd).map(|d| d.space) else {
        return;
    };
    let mut ranges = Vec::new();
    for (_, object, rights) in k.caps.iter_space(space) {
        if let Obj::IoPorts { base, count } = *object {
            if rights.contains(Rights::CALL) {
                ranges.push((base, count));
            }
        }
    }
    let Some(domain) = k.pds.get_mut(pd) else {
        return;
    };
    if ranges.is_empty() {
        if domain.io_bitmap.take().is_some() {
            domain.quota.release(cost::IO_BITMAP);
        }
        return;
    }
    if domain.io_bitmap.is_none() {
        if domain.quota.charge(cost::IO_BITMAP).is_err() {
            return; // no room for a bitmap: the ports stay closed
        }
        domain.io_bitmap = Some(Box::new([0xff; IO_BITMAP_BYTES]));
    }
    if let Some(bitmap) = domain.io_bitmap.as_deref_mut() {
        bitmap.fill(0xff);
        for (base, count) in ranges {
            for port in base..(base + count).min(65536) {
                bitmap[(port / 8) as usize] &= !(1 << (port % 8));
            }
        }
    }
}
