//! What the kernel handed init: the boot page and the boot modules (`abi::boot`). The only
//! place init turns kernel-given addresses into references.
#![allow(unsafe_code)]

use abi::boot::{BootModule, BootPage, BOOT_PAGE_ADDR, BOOT_PAGE_MAGIC, MAX_BOOT_MODULES};

/// Why the boot page cannot be used.
#[derive(Clone, Copy, Debug)]
pub enum BootError {
    /// The start argument is not the boot page's address.
    NotInit,
    /// The page does not start with `BOOT_PAGE_MAGIC`.
    BadMagic,
}

/// The boot page, if `arg` (the start argument) says there is one and its magic is right.
pub fn boot_page(arg: u64) -> Result<&'static BootPage, BootError> {
    if arg != BOOT_PAGE_ADDR {
        return Err(BootError::NotInit);
    }
    // SAFETY: the kernel maps the boot page read-only at BOOT_PAGE_ADDR in init's address space
    // for init's lifetime and passes that address as the start argument (checked above);
    // `BootPage` is plain data valid for any bytes, and size/alignment fit one page.
    let page = unsafe { &*(BOOT_PAGE_ADDR as *const BootPage) };
    if page.magic != BOOT_PAGE_MAGIC {
        return Err(BootError::BadMagic);
    }
    Ok(page)
}

/// The described modules (at most `MAX_BOOT_MODULES`, whatever the count claims).
pub fn modules(page: &BootPage) -> &[BootModule] {
    let count = usize::try_from(page.module_count)
        .unwrap_or(MAX_BOOT_MODULES)
        .min(MAX_BOOT_MODULES);
    &page.modules[..count]
}

/// The module called `name`.
pub fn find<'a>(page: &'a BootPage, name: &str) -> Option<&'a BootModule> {
    modules(page).iter().find(|m| m.name() == Some(name))
}

/// A module's bytes, if its address range lies in the user half above `MODULES_ADDR`.
pub fn bytes(module: &BootModule) -> Option<&'static [u8]> {
    let end = module.addr.checked_add(module.len)?;
    if module.addr < abi::boot::MODULES_ADDR || end > uelf::USER_END {
        return None;
    }
    let len = usize::try_from(module.len).ok()?;
    // SAFETY: the kernel maps every boot module read-only at the address its entry names, for
    // init's lifetime (`abi::boot`); the range was checked to be in the user half.
    Some(unsafe { core::slice::from_raw_parts(module.addr as *const u8, len) })
}
