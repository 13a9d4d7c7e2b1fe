//! What the kernel hands the root server (`abi::boot`): the boot page and the boot modules, for
//! init. Other domains get [`BootError::NotInit`].

use core::sync::atomic::{AtomicU64, Ordering};

use abi::boot::{BootModule, BootPage, BOOT_PAGE_ADDR, BOOT_PAGE_MAGIC, MAX_BOOT_MODULES};

/// The start argument of the domain's first thread, as the kernel passed it (set once by the
/// runtime's entry, before `main`).
static FIRST_ARG: AtomicU64 = AtomicU64::new(0);

pub(crate) fn set_first_arg(arg: u64) {
    FIRST_ARG.store(arg, Ordering::Release);
}

/// Why the boot page cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootError {
    /// This domain is not init: the kernel did not start it with the boot page.
    NotInit,
    /// The page does not start with `BOOT_PAGE_MAGIC`.
    BadMagic,
}

/// The boot page, in init (whose first thread the kernel started with RSI = the boot page's
/// address).
pub fn boot_page() -> Result<&'static BootPage, BootError> {
    // Only the kernel sets the first thread's start argument: `CreateThread` starts threads
    // with RSI = 0, and threads the runtime spawns do not go through `rt_start`.
    if FIRST_ARG.load(Ordering::Acquire) != BOOT_PAGE_ADDR {
        return Err(BootError::NotInit);
    }
    // SAFETY: the first thread's start argument is BOOT_PAGE_ADDR (checked above) only in init,
    // where the kernel maps the boot page read-only at that address for init's lifetime
    // (`abi::boot`); nothing can write it, `BootPage` is plain data valid for any bytes, and its
    // size and alignment fit the page (asserted in `abi::boot`).
    let page = unsafe { &*(BOOT_PAGE_ADDR as *const BootPage) };
    if page.magic != BOOT_PAGE_MAGIC {
        return Err(BootError::BadMagic);
    }
    Ok(page)
}

/// The modules the boot page describes (at most `MAX_BOOT_MODULES`, whatever the count
/// claims).
pub fn modules(page: &'static BootPage) -> impl Iterator<Item = Module> {
    let count = usize::try_from(page.module_count)
        .unwrap_or(MAX_BOOT_MODULES)
        .min(MAX_BOOT_MODULES);
    page.modules[..count].iter().map(|entry| Module { entry })
}

/// The module called `name`.
pub fn find(page: &'static BootPage, name: &str) -> Option<Module> {
    modules(page).find(|m| m.entry.name() == Some(name))
}

/// A boot module as the boot page describes it. Made only from the kernel's boot page, so its
/// address is where the kernel mapped the module.
#[derive(Clone, Copy)]
pub struct Module {
    entry: &'static BootModule,
}

impl Module {
    /// The boot page's entry (name, address, length, capability).
    pub fn entry(&self) -> &'static BootModule {
        self.entry
    }

    /// The module's bytes, if its address range lies in the user half above `MODULES_ADDR`.
    pub fn bytes(&self) -> Option<&'static [u8]> {
        let m = self.entry;
        let end = m.addr.checked_add(m.len)?;
        if m.addr < abi::boot::MODULES_ADDR || end > uelf::USER_END {
            return None;
        }
        let len = usize::try_from(m.len).ok()?;
        // SAFETY: `entry` is an entry of the kernel's boot page (a `Module` is made only from
        // one, by `modules`), and the kernel maps every boot module read-only at the address its
        // entry names, for init's lifetime (`abi::boot`); nothing can write it. The range was
        // checked to lie in the user half.
        Some(unsafe { core::slice::from_raw_parts(m.addr as *const u8, len) })
    }
}
