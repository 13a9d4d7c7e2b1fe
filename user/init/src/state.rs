//! What init knows at run time, shared by its threads behind one lock: the system image, the
//! memory pool, its selector allocation, the servers' progress, the registered portals, the
//! resource capabilities it has carved and how each guest ended.
//!
//! **Domains.** `image.servers` holds every protection domain init starts: the manifest's
//! servers first, then one vmm-server per guest (`SystemImage::with_vmm_servers`), so server
//! `servers + i` runs guest `i`. Everything that works per server (bootstrap portal, grants,
//! scratch memory, fault reports) works for them alike.

use alloc::string::String;
use alloc::vec::Vec;

use abi::Sel;
use manifest::SystemImage;
use spin::{Mutex, MutexGuard};

use crate::memory::Memory;

/// Domains (servers and vmm-servers) a system can have: boot modules less init and the
/// manifest.
pub const MAX_SERVERS: usize = abi::boot::MAX_BOOT_MODULES - 2;

/// First of the eight selectors each server's objects take in init's space.
const PER_SERVER_BASE: Sel = Sel::new(64);
/// First selector handed out dynamically (registered portals, carved resources, landing slots).
const DYNAMIC_BASE: Sel = PER_SERVER_BASE.offset(8 * MAX_SERVERS as u64);

/// Init's selectors for server `index`'s objects.
#[derive(Clone, Copy)]
pub struct ServerSels {
    /// Its protection domain (the original capability).
    pub pd: Sel,
    /// The memory carved for its image, stack and UTCB.
    pub mem: Sel,
    /// Its bootstrap portal (badge = index), also its fault portal when it has no handler.
    pub portal: Sel,
    /// Init's thread that serves the bootstrap portal.
    pub handler: Sel,
    /// Its first thread.
    pub thread: Sel,
}

impl ServerSels {
    pub const fn of(index: usize) -> ServerSels {
        let base = PER_SERVER_BASE.offset(8 * index as u64);
        ServerSels {
            pd: base,
            mem: base.offset(1),
            portal: base.offset(2),
            handler: base.offset(3),
            thread: base.offset(4),
        }
    }
}

/// Selectors from [`DYNAMIC_BASE`] up, with reuse of returned ones.
pub struct Sels {
    next: Sel,
    free: Vec<Sel>,
}

impl Sels {
    fn new() -> Sels {
        Sels {
            next: DYNAMIC_BASE,
            free: Vec::new(),
        }
    }

    /// A free selector, `None` when the space is full.
    pub fn alloc(&mut self) -> Option<Sel> {
        if let Some(sel) = self.free.pop() {
            return Some(sel);
        }
        if self.next.raw() >= abi::CAP_SPACE_SLOTS {
            return None;
        }
        let sel = self.next;
        self.next = sel.offset(1);
        Some(sel)
    }

    /// Returns a selector whose slot is empty again.
    pub fn release(&mut self, sel: Sel) {
        self.free.push(sel);
    }
}

/// How far a server got.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Not loaded yet.
    Waiting,
    /// Loaded; starts once its fault handler's portal is registered.
    Loaded {
        entry: u64,
        /// Its domain, which init created.
        pd: rt::syscall::ChildPd,
    },
    Running,
}

/// A portal a server registered.
pub struct Registered {
    pub server: usize,
    pub portal: String,
    pub sel: Sel,
}

/// A guest's image module and how the guest ended.
pub struct GuestRun {
    /// Init's memory capability over the image module's pages (READ|GRANT).
    pub image_sel: Sel,
    /// Length of the image in bytes.
    pub image_len: u64,
    /// Where the image starts in its first page.
    pub image_offset: u64,
    /// The initrd module, if the guest has one: capability, length, offset in its first page.
    pub initrd: Option<(Sel, u64, u64)>,
    /// `None` while it runs; then whether it ended as the manifest expects.
    pub passed: Option<bool>,
}

/// A resource capability init carved (or picked) for a server, kept to answer a repeated ask.
pub struct Resource {
    pub server: usize,
    pub name: String,
    pub sel: Sel,
}

pub struct State {
    /// The manifest with the implied vmm-servers appended to its servers (see above).
    pub image: SystemImage,
    /// How many of `image.servers` the manifest lists itself.
    pub servers: usize,
    /// One per guest, in manifest order.
    pub guests: Vec<GuestRun>,
    pub memory: Memory,
    pub sels: Sels,
    pub progress: Vec<Progress>,
    pub registry: Vec<Registered>,
    pub resources: Vec<Resource>,
    /// A server allowed to power off asked to, with this success, while guests still ran: the
    /// system ends when the last guest does (see `guests::end`).
    pub power_off_request: Option<bool>,
}

impl State {
    /// The state for `manifest`, whose guests' images are `guests`.
    pub fn new(manifest: &SystemImage, guests: Vec<GuestRun>, free_pages: u64) -> State {
        let image = manifest.with_vmm_servers();
        let domains = image.servers.len();
        State {
            image,
            servers: manifest.servers.len(),
            guests,
            memory: Memory::new(free_pages),
            sels: Sels::new(),
            progress: alloc::vec![Progress::Waiting; domains],
            registry: Vec::new(),
            resources: Vec::new(),
            power_off_request: None,
        }
    }

    /// Whether a server of the manifest may power off: then the system ends only when it asks
    /// (and every guest has ended), not when the last guest ends.
    pub fn has_power_off_server(&self) -> bool {
        self.image.servers[..self.servers]
            .iter()
            .any(|s| s.power_off)
    }

    /// Whether every guest has ended (true without guests), and whether all passed.
    pub fn guests_ended(&self) -> Option<bool> {
        let mut all = true;
        for g in &self.guests {
            all &= g.passed?;
        }
        Some(all)
    }

    /// The capability of `server.portal`, if that server registered it.
    pub fn registered(&self, server: &str, portal: &str) -> Option<Sel> {
        let index = self.index(server)?;
        self.registry
            .iter()
            .find(|r| r.server == index && r.portal == portal)
            .map(|r| r.sel)
    }

    /// The guest that domain `index` runs, if it is a vmm-server.
    pub fn guest_of(&self, index: usize) -> Option<usize> {
        index
            .checked_sub(self.servers)
            .filter(|&g| g < self.image.guests.len())
    }

    /// The boot module that domain `index` runs.
    pub fn module_of(&self, index: usize) -> &str {
        match self.guest_of(index) {
            Some(_) => manifest::VMM_MODULE,
            None => &self.image.servers[index].name,
        }
    }

    /// The index of the server called `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.image.servers.iter().position(|s| s.name == name)
    }
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Takes the lock, yielding while another of init's threads holds it (they share a priority,
/// so spinning would only burn the holder's time).
pub fn lock() -> MutexGuard<'static, Option<State>> {
    loop {
        if let Some(guard) = STATE.try_lock() {
            return guard;
        }
        rt::syscall::yield_now();
    }
}
