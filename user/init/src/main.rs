//! Init, the root server: the first user program, and the only one the kernel starts.
//!
//! 1. Reads the boot page (`abi::boot`): magic, modules.
//! 2. Decodes the compiled manifest from the module named `manifest`
//!    (`manifest::SystemImage::decode`, which checks the build tool's rules again). A missing or
//!    bad manifest is reported on the console and the system powers off with failure.
//! 3. For each server, in manifest order: creates its domain, loads its ELF from the boot module
//!    of the same name, sets up its bootstrap portal and starts it (see [`servers`] for the order
//!    rule of fault handlers). Any failure here is fatal: the system is not what the manifest
//!    says.
//! 4. For each guest, in manifest order, the same for a domain named `vmm.<guest>` that runs
//!    the boot module `vmm-server`, with the resources `SystemImage::vmm_server` gives it
//!    ([`state`] calls these domains servers too). The pool must still hold every guest's
//!    memory, else the system powers off with failure before any guest starts.
//! 5. Leaves the bootstrap protocol to its handler threads ([`serve`], [`guests`]) and ends its
//!    first thread. With guests, the system ends when the last guest has ended ([`guests`]).
//!
//! Init prints its progress, the servers' faults and the guests' verdicts on the kernel
//! console.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

mod console;
mod guests;
mod load;
mod memory;
mod serve;
mod servers;
mod state;

use abi::boot::{BootPage, MANIFEST_MODULE};
use alloc::vec::Vec;
use manifest::SystemImage;
use rt::{boot, syscall, Start};

use state::{lock, GuestRun, State, MAX_SERVERS};

rt::entry!(main);

/// Size of a page.
pub use abi::PAGE_SIZE as PAGE;
/// The priority the kernel gives init's first thread (`kernel/src/kern/init.rs`; not part of the
/// ABI), used for init's other threads too: above the servers, so requests are served at once.
pub const INIT_PRIORITY: u8 = 30;

fn main(_start: Start) -> ! {
    rt::log::set_name("init");
    let page = match boot::boot_page() {
        Ok(page) => page,
        Err(e) => fatal(format_args!("no usable boot page ({e:?})")),
    };
    let Some(module) = boot::find(page, MANIFEST_MODULE) else {
        fatal(format_args!("no `{MANIFEST_MODULE}` boot module"))
    };
    let Some(bytes) = module.bytes() else {
        fatal(format_args!(
            "the manifest module lies outside the user half"
        ))
    };
    let image = match SystemImage::decode(bytes) {
        Ok(image) => image,
        Err(e) => fatal(format_args!("bad manifest: {e:?}")),
    };
    let domains = image.servers.len() + image.guests.len();
    if domains > MAX_SERVERS {
        fatal(format_args!(
            "{} servers and {} guests, at most {MAX_SERVERS} domains supported",
            image.servers.len(),
            image.guests.len()
        ))
    }
    let guests = match guest_images(page, &image) {
        Ok(guests) => guests,
        Err(name) => fatal(format_args!("no boot module `{name}` (a guest's image)")),
    };
    say!(
        "init: system {}: {} servers, {} guests, {} free pages, quota {} KiB",
        image.name,
        image.servers.len(),
        image.guests.len(),
        page.free_pages,
        page.quota / 1024
    );

    // Hold the lock through set-up: the handler threads serve nothing before it is complete.
    let mut guard = lock();
    let state = guard.insert(State::new(&image, guests, page.free_pages));
    for index in 0..state.image.servers.len() {
        if let Err(why) = servers::prepare(state, page, index) {
            let name = state.image.servers[index].name.clone();
            drop(guard);
            fatal(format_args!("cannot load {name}: {why}"))
        }
    }
    let guest_pages: u64 = state.image.guests.iter().map(|g| g.memory_pages()).sum();
    if guest_pages > state.memory.left() {
        let left = state.memory.left();
        drop(guard);
        fatal(format_args!(
            "the guests need {} MiB of memory, the pool has {} MiB left (give the machine more RAM: `[system] ram`)",
            (guest_pages * PAGE) >> 20,
            (left * PAGE) >> 20
        ))
    }
    if let Err(why) = servers::start_ready(state) {
        drop(guard);
        fatal(format_args!("{why}"))
    }
    for (index, server) in state.image.servers.iter().enumerate() {
        if state.progress[index] != state::Progress::Running {
            say!(
                "init: {} waits for its fault handler {}",
                server.name,
                server.fault_handler.as_deref().unwrap_or("?")
            );
        }
    }
    drop(guard);
    syscall::thread_exit()
}

/// Each guest's image module, or the name of the one that is missing.
fn guest_images(
    page: &'static BootPage,
    image: &SystemImage,
) -> Result<Vec<GuestRun>, alloc::string::String> {
    image
        .guests
        .iter()
        .map(|guest| {
            let module = boot::find(page, &guest.image).ok_or_else(|| guest.image.clone())?;
            let module = module.entry();
            let initrd = match guest.initrd_module() {
                Some(name) => {
                    let m = boot::find(page, &name).ok_or(name)?.entry();
                    Some((m.sel, m.len, m.addr % PAGE))
                }
                None => None,
            };
            Ok(GuestRun {
                image_sel: module.sel,
                image_len: module.len,
                image_offset: module.addr % PAGE,
                initrd,
                passed: None,
            })
        })
        .collect()
}

/// Reports why the system cannot run and powers off with failure.
fn fatal(why: core::fmt::Arguments<'_>) -> ! {
    say!("init: {why}");
    let _ = syscall::power_off(false);
    syscall::thread_exit()
}
