//! The vmm-server's views of guest memory: the guest's RAM (read/write) and its image (read),
//! both mapped into the server's own address space far above its program image. This module and
//! [`crate::cpu`] hold the server's only `unsafe` code: turning a fresh mapping into a slice.

use abi::{well_known, Rights, Sel, Status};
use rt::{syscall, Error};
use vmm::dmp::{range, GuestMemory};

/// Where the guest's RAM appears in the server (64 GiB: far above the program at 0x40_0000 and
/// its heap, stack and UTCB, which init places low).
pub const RAM_VA: u64 = 0x10_0000_0000;
/// Where the guest's image appears in the server.
pub const IMAGE_VA: u64 = 0x20_0000_0000;
/// The largest image the server maps (64 MiB), when init does not say how long it is.
pub const IMAGE_MAX_PAGES: u64 = 16 * 1024;
const PAGE: u64 = 4096;

/// Maps `bytes` (a whole number of pages) of memory capability `mem` read/write at [`RAM_VA`].
pub fn map_ram(mem: Sel, bytes: u64) -> Result<&'static mut [u8], Error> {
    let pages = bytes / PAGE;
    if pages == 0 || !bytes.is_multiple_of(PAGE) {
        return Err(Error::Protocol);
    }
    let rights = Rights::READ.union(Rights::WRITE);
    syscall::map(mem, well_known::SELF_PD, RAM_VA, 0, pages, rights)?;
    Ok(window_mut(RAM_VA, bytes as usize))
}

/// Maps the image capability `image` read-only at [`IMAGE_VA`] and returns its bytes: `len`
/// bytes from `offset` in the first page, as init reports them; with `len` = 0 (not reported)
/// every page the capability holds, found by mapping until the kernel refuses (a refused map
/// maps nothing), at most [`IMAGE_MAX_PAGES`].
pub fn map_image(image: Sel, len: u64, offset: u64) -> Result<&'static [u8], Error> {
    if len > 0 {
        let end = offset.checked_add(len).ok_or(Error::Protocol)?;
        let pages = end.div_ceil(PAGE);
        if offset >= PAGE || pages > IMAGE_MAX_PAGES {
            return Err(Error::Protocol);
        }
        syscall::map(image, well_known::SELF_PD, IMAGE_VA, 0, pages, Rights::READ)?;
        let all = window(IMAGE_VA, (pages * PAGE) as usize);
        return Ok(&all[offset as usize..end as usize]);
    }
    let mut mapped = 0u64;
    let mut chunk = 256u64;
    while chunk > 0 && mapped < IMAGE_MAX_PAGES {
        let n = chunk.min(IMAGE_MAX_PAGES - mapped);
        let at = IMAGE_VA + mapped * PAGE;
        match syscall::map(image, well_known::SELF_PD, at, mapped, n, Rights::READ) {
            Ok(()) => mapped += n,
            Err(Error::Kernel(Status::BadArgument)) => chunk /= 2,
            Err(e) => return Err(e),
        }
    }
    if mapped == 0 {
        return Err(Error::Protocol);
    }
    Ok(window(IMAGE_VA, (mapped * PAGE) as usize))
}

/// The guest's RAM at [`RAM_VA`] while the guest runs, for the monitor's reads and writes of the
/// DMP window (`vmm::dmp`): byte copies through raw pointers, volatile, so that no Rust
/// reference to memory the guest writes behind the compiler's back is ever held.
pub struct GuestRam {
    len: usize,
}

impl GuestRam {
    /// The RAM [`map_ram`] mapped, `bytes` long.
    pub fn new(bytes: u64) -> GuestRam {
        GuestRam {
            len: bytes as usize,
        }
    }
}

impl GuestMemory for GuestRam {
    #[allow(unsafe_code)]
    fn read(&mut self, gpa: u64, out: &mut [u8]) -> bool {
        let Some(r) = range(gpa, out.len(), self.len) else {
            return false;
        };
        for (i, byte) in out.iter_mut().enumerate() {
            // SAFETY: `RAM_VA + r.start + i` lies inside the guest's RAM, which `map_ram` mapped
            // readable and writable at `RAM_VA` for `len` bytes and which stays mapped while the
            // server runs; the vCPU does not run while the server handles its exit (one CPU), so
            // nothing writes the byte during the read.
            *byte =
                unsafe { core::ptr::read_volatile((RAM_VA as usize + r.start + i) as *const u8) };
        }
        true
    }

    #[allow(unsafe_code)]
    fn write(&mut self, gpa: u64, data: &[u8]) -> bool {
        let Some(r) = range(gpa, data.len(), self.len) else {
            return false;
        };
        for (i, &byte) in data.iter().enumerate() {
            // SAFETY: as for `read`: inside the mapped, writable RAM, and the vCPU waits.
            unsafe { core::ptr::write_volatile((RAM_VA as usize + r.start + i) as *mut u8, byte) };
        }
        true
    }
}

#[allow(unsafe_code)]
fn window_mut(addr: u64, len: usize) -> &'static mut [u8] {
    // SAFETY: `addr .. addr + len` was just mapped readable and writable into this domain at an
    // address nothing else uses (the server maps there once, and the range lies far from its
    // program, heap, stack and UTCB); the mapping is never removed while the server runs. The
    // server uses the slice only to load the guest, before the Vm exists, and drops it then, so
    // no Rust reference to guest RAM lives while the guest writes it.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) }
}

#[allow(unsafe_code)]
fn window(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: `addr .. addr + len` was just mapped readable into this domain at an address
    // nothing else uses; the mapping is never removed and nothing writes it (the capability is
    // read-only).
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}
