//! The vmm-server's views of guest memory: the guest's RAM (read/write) and its image (read),
//! both mapped into the server's own address space far above its program image, as
//! `rt::mem::Mapping`s (which make the slices safe).

use abi::{Rights, Sel, Status, PAGE_SIZE as PAGE};
use rt::mem::Mapping;
use rt::Error;
use vmm::dmp::{range, GuestMemory};

/// Where the guest's RAM appears in the server (64 GiB: far above the program at 0x40_0000 and
/// its heap, stack and UTCB, which init places low).
pub const RAM_VA: u64 = 0x10_0000_0000;
/// Where the guest's image appears in the server.
pub const IMAGE_VA: u64 = 0x20_0000_0000;
/// Where the guest's initrd appears in the server.
pub const INITRD_VA: u64 = 0x30_0000_0000;
/// The largest image or initrd the server maps (64 MiB).
pub const IMAGE_MAX_PAGES: u64 = 16 * 1024;

/// Maps `bytes` (a whole number of pages) of memory capability `mem` read/write at [`RAM_VA`].
pub fn map_ram(mem: Sel, bytes: u64) -> Result<GuestRam, Error> {
    let pages = bytes / PAGE;
    if pages == 0 || !bytes.is_multiple_of(PAGE) {
        return Err(Error::Protocol);
    }
    let rights = Rights::READ.union(Rights::WRITE);
    let mapping = Mapping::new(mem, RAM_VA, 0, pages, rights)?;
    Ok(GuestRam { mapping })
}

/// Maps the image capability `image` read-only at [`IMAGE_VA`] and returns its bytes: `len`
/// bytes from `offset` in the first page, as init reports them; with `len` = 0 (not reported)
/// every page the capability holds, found by mapping until the kernel refuses (a refused map
/// maps nothing), at most [`IMAGE_MAX_PAGES`].
pub fn map_image(image: Sel, len: u64, offset: u64) -> Result<&'static [u8], Error> {
    if len > 0 {
        return map_module(image, IMAGE_VA, len, offset);
    }
    let mut mapping: Option<Mapping> = None;
    let mut mapped = 0u64;
    let mut chunk = 256u64;
    while chunk > 0 && mapped < IMAGE_MAX_PAGES {
        let n = chunk.min(IMAGE_MAX_PAGES - mapped);
        let result = match mapping.as_mut() {
            None => Mapping::new(image, IMAGE_VA, mapped, n, Rights::READ).map(|m| {
                mapping = Some(m);
            }),
            Some(m) => m.extend(image, mapped, n),
        };
        match result {
            Ok(()) => mapped += n,
            Err(Error::Kernel(Status::BadArgument)) => chunk /= 2,
            Err(e) => return Err(e),
        }
    }
    mapping.map(Mapping::leak).ok_or(Error::Protocol)
}

/// Maps `len` bytes from `offset` in the first page of module capability `module` read-only at
/// `va` (at most [`IMAGE_MAX_PAGES`]) and returns them.
pub fn map_module(module: Sel, va: u64, len: u64, offset: u64) -> Result<&'static [u8], Error> {
    let end = offset.checked_add(len).ok_or(Error::Protocol)?;
    let pages = end.div_ceil(PAGE);
    if offset >= PAGE || pages > IMAGE_MAX_PAGES || pages == 0 {
        return Err(Error::Protocol);
    }
    let all = Mapping::new(module, va, 0, pages, Rights::READ)?.leak();
    all.get(offset as usize..end as usize)
        .ok_or(Error::Protocol)
}

/// The guest's RAM at [`RAM_VA`]: a slice of it while the guest does not run (loading), and,
/// for the monitor's reads and writes of the DMP window (`vmm::dmp`) while it does, volatile
/// byte copies, so that no Rust reference to memory the guest writes behind the compiler's back
/// is ever held.
pub struct GuestRam {
    mapping: Mapping,
}

impl GuestRam {
    /// The RAM as a slice, for loading the guest while its vCPU does not run.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.mapping.as_mut_slice().unwrap_or_default()
    }
}

impl GuestMemory for GuestRam {
    fn read(&mut self, gpa: u64, out: &mut [u8]) -> bool {
        match range(gpa, out.len(), self.mapping.len()) {
            Some(r) => self.mapping.read_volatile(r.start, out),
            None => false,
        }
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> bool {
        match range(gpa, data.len(), self.mapping.len()) {
            Some(r) => self.mapping.write_volatile(r.start, data),
            None => false,
        }
    }
}
