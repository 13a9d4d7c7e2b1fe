//! What the kernel hands the root server (init) at start.
//!
//! The kernel loads the boot module named [`INIT_MODULE`] as init's program, maps a [`BootPage`]
//! read-only at [`BOOT_PAGE_ADDR`] in init's address space, and maps every other boot module
//! read-only at the address its entry names. Init receives, at the selectors below, capabilities
//! for everything the kernel does not keep for itself.

use crate::Sel;

/// Name (command line) of the boot module that is init's program.
pub const INIT_MODULE: &str = "init";
/// Name of the boot module holding the compiled system manifest (`manifest::SystemImage`,
/// postcard-encoded).
pub const MANIFEST_MODULE: &str = "manifest";

/// User address of the boot page in init's address space.
pub const BOOT_PAGE_ADDR: u64 = 0x0000_0000_1000_0000;
/// User address where the kernel maps boot modules for init, one after another, page-aligned.
pub const MODULES_ADDR: u64 = 0x0000_0000_2000_0000;
/// Where init's UTCB is mapped.
pub const INIT_UTCB_ADDR: u64 = 0x0000_0000_0fff_f000;
/// Top of init's initial stack (the kernel maps [`INIT_STACK_PAGES`] below it).
pub const INIT_STACK_TOP: u64 = 0x0000_0000_0fff_0000;
pub const INIT_STACK_PAGES: u64 = 16;

/// Selectors in init's capability space (beyond `crate::well_known`).
pub mod sel {
    use crate::Sel;
    /// Memory capability over the pool of free RAM the kernel gives init (READ|WRITE|GRANT).
    pub const FREE_MEMORY: Sel = Sel::new(3);
    /// I/O-port capability over all 65536 ports (CALL|GRANT).
    pub const ALL_IO_PORTS: Sel = Sel::new(4);
    /// First of [`super::IRQ_COUNT`] IRQ capabilities, one per legacy IRQ line (CALL|GRANT).
    pub const FIRST_IRQ: Sel = Sel::new(5);
    /// First boot-module memory capability; module `i` is at `FIRST_MODULE + i`.
    pub const FIRST_MODULE: Sel = Sel::new(32);
}

/// Legacy IRQ lines offered as capabilities.
pub const IRQ_COUNT: u64 = 16;
/// Boot modules described at most.
pub const MAX_BOOT_MODULES: usize = 16;

/// One boot module as init sees it.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BootModule {
    /// NUL-padded name (the module's command line, truncated).
    pub name: [u8; 48],
    /// User address where it is mapped read-only in init's address space.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Selector of a memory capability covering its pages.
    pub sel: Sel,
}

impl BootModule {
    /// The name up to its first NUL, if it is UTF-8.
    pub fn name(&self) -> Option<&str> {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        core::str::from_utf8(&self.name[..end]).ok()
    }
}

/// The boot page.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BootPage {
    /// [`BOOT_PAGE_MAGIC`].
    pub magic: u64,
    /// Pages in the [`sel::FREE_MEMORY`] capability.
    pub free_pages: u64,
    /// Kernel-memory quota given to init, in bytes.
    pub quota: u64,
    /// Valid entries in `modules`.
    pub module_count: u64,
    pub modules: [BootModule; MAX_BOOT_MODULES],
    /// The kernel command line, NUL-padded.
    pub cmdline: [u8; 256],
}

pub const BOOT_PAGE_MAGIC: u64 = 0x646d_7068_7662_6f6f; // "dmphvboo"

const _: () = assert!(core::mem::size_of::<BootPage>() as u64 <= crate::PAGE_SIZE);
