//! The DMP service (issue #6): the policy half of Dynamic Memory Paravirtualization.
//!
//! It creates and registers its `attach` portal and serves two kinds of calls on its thread:
//!
//! - **attach** (`abi::dmp::ATTACH`, from a vmm-server whose guest has `dmp = true`): the call
//!   brings the guest's Vm capability (READ and PATCH only) and its DMP window; the service
//!   creates a profile portal for the guest and returns it, which the vmm-server installs as the
//!   vCPU's profile portal;
//! - **profiles** (exit messages `abi::vm::Exit::Profile` on those portals, from the kernel every
//!   `PROFILE_PERIOD` exits): the batch goes to the guest's `dmp::policy::GuestPolicy`, which
//!   reads hot sites with `VmRead`, patches them with `VmPatch` (stubs in the window first), and
//!   rolls back patches that did not cool their site; when page faults are hot it points the
//!   guest's #PF gate at a fault stub and has the kernel forward page faults (`VmDmp`, see
//!   `dmp::policy`). Every decision is logged as `dmp: vm<N>: ...`. The reply has mask 0: the
//!   guest's registers are untouched.
//!
//! The service holds nothing else of any guest: no memory mapping, no vCPU, no way to change
//! anything but guest bytes through the kernel's compare-and-swap and the DMP controls of its
//! Vm. A system without it runs as before (its guests' vmm-servers keep their own profile
//! portal).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;

use abi::profile::{unpack_words, ProfileBatch, MAX_ENCODED_LEN};
use abi::vm::{word, Backend, Exit, HypercallInsn, EXIT_LABEL, PROFILE_WORDS};
use abi::{well_known, Rights, Sel, Status};
use dmp::policy::{Config, Failure, GuestAccess, GuestPolicy};
use rt::{bootstrap, log, syscall, Error, Start, Utcb};

rt::entry!(main, heap = 4 * 1024 * 1024);

/// The `attach` portal.
const ATTACH: Sel = well_known::FIRST_FREE;
/// Guests' Vm capabilities: `VM_BASE + guest`.
const VM_BASE: Sel = Sel::new(64);
/// Guests' profile portals: `PROFILE_BASE + guest`.
const PROFILE_BASE: Sel = Sel::new(128);
/// Most guests the service takes.
const MAX_GUESTS: usize = 32;
/// Badges: the attach portal's, and `PROFILE_BADGE + guest` for profile portals.
const ATTACH_BADGE: u64 = 1;
const PROFILE_BADGE: u64 = 0x100;
/// Exits a site needs before the service patches it (an eighth of a profile period: a site that
/// hot is worth a stub at once), and the exits a patched site may still take before the patch
/// counts as useless.
const THRESHOLD: u64 = abi::vm::PROFILE_PERIOD / 8;
const SLACK: u64 = 256;
/// Guest-linear base of the view of guest RAM the fault stub reads the guest's tables through:
/// the start of the last PML4 slot, in a hole the guests this system runs leave unused (Linux:
/// unused between its %esp fixup stacks and its EFI region).
const VIEW_BASE: u64 = 0xffff_ff80_0000_0000;

struct Guest {
    vm: Sel,
    policy: GuestPolicy,
}

fn main(start: Start) -> ! {
    let mut utcb = start.utcb;
    log::set_name("dmp-service");
    if bootstrap::get(&mut utcb, "serial.log", well_known::FIRST_FREE.offset(1)).is_ok() {
        log::set_portal(well_known::FIRST_FREE.offset(1));
    }
    let ready = syscall::create_portal(ATTACH, well_known::SELF_THREAD, ATTACH_BADGE)
        .and_then(|()| bootstrap::register(&mut utcb, "attach", ATTACH));
    if let Err(e) = ready {
        rt::println!(
            &mut utcb,
            "dmp-service: cannot offer the attach portal: {e}"
        );
        syscall::thread_exit()
    }
    let mut guests: Vec<Guest> = Vec::new();
    utcb.set_msg(0, &[]);
    loop {
        utcb.set_cap_recv(VM_BASE.offset(guests.len() as u64));
        let badge = match utcb.reply_wait(ATTACH) {
            Ok(b) => b,
            Err(e) => {
                // Never send the refused reply again: an empty one (mask 0 for an exit) changes
                // nothing and is always accepted, so the loop cannot spin on one caller.
                rt::println!(
                    &mut utcb,
                    "dmp-service: reply refused ({e}); answering empty"
                );
                utcb.set_msg(0, &[]);
                continue;
            }
        };
        if badge == ATTACH_BADGE && utcb.label() == abi::dmp::ATTACH {
            attach(&mut utcb, &mut guests);
        } else if utcb.label() == EXIT_LABEL
            && utcb.word(word::REASON) == Exit::Profile as u64
            && badge >= PROFILE_BADGE
        {
            profile(&mut utcb, &mut guests, (badge - PROFILE_BADGE) as usize);
        } else {
            utcb.set_status(Status::BadArgument);
        }
    }
}

/// An attach call: keeps the Vm, answers with a profile portal.
fn attach(utcb: &mut Utcb, guests: &mut Vec<Guest>) {
    let n = guests.len();
    if !utcb.cap_received() || n >= MAX_GUESTS {
        utcb.set_status(Status::BadArgument);
        return;
    }
    let Some(call) = hypercall_insn() else {
        rt::println!(
            utcb,
            "dmp-service: the kernel runs no guests; vm{n} not attached"
        );
        utcb.set_status(Status::BadArgument);
        return;
    };
    use abi::dmp::attach::*;
    let config = Config {
        threshold: THRESHOLD,
        slack: SLACK,
        window_linear: utcb.word(WINDOW_LINEAR),
        window_physical: utcb.word(WINDOW_PHYSICAL),
        window_pages: utcb.word(WINDOW_PAGES),
        view_base: VIEW_BASE,
        call,
    };
    let portal = PROFILE_BASE.offset(n as u64);
    if let Err(e) =
        syscall::create_portal(portal, well_known::SELF_THREAD, PROFILE_BADGE + n as u64)
    {
        rt::println!(utcb, "dmp-service: no profile portal for vm{n}: {e}");
        utcb.set_status(Status::OutOfMemory);
        return;
    }
    // Hidden faults on the guest's large pages fill 2 MiB at once: a guest kernel's direct map
    // then costs one exit per 2 MiB instead of one per page it touches.
    // The window's last page is the stubs' scratch (the fault stub's last-fault word).
    let vm = VM_BASE.offset(n as u64);
    let regions = match rt::vm::vm_dmp(vm, abi::vm::dmp_op::REGION_FILLS, 1)
        .and_then(|()| rt::vm::vm_dmp(vm, abi::vm::dmp_op::SCRATCH, abi::dmp::WINDOW_SCRATCH_PAGES))
    {
        Ok(()) => "on",
        Err(_) => "refused",
    };
    guests.push(Guest {
        vm: VM_BASE.offset(n as u64),
        policy: GuestPolicy::new(config),
    });
    rt::println!(
        utcb,
        "dmp: vm{n}: attached (window {:#x}, {} pages; region fills {regions})",
        config.window_linear,
        config.window_pages
    );
    utcb.set_status(Status::Ok);
    utcb.attach_cap(portal, Rights::CALL);
}

/// A profile of guest `n`: acts on it, logs the decisions, replies with mask 0.
fn profile(utcb: &mut Utcb, guests: &mut [Guest], n: usize) {
    let mut bytes = [0u8; MAX_ENCODED_LEN];
    let batch = utcb
        .words()
        .get(PROFILE_WORDS..)
        .ok_or(abi::profile::ProfileError::Truncated)
        .and_then(|w| unpack_words(w, &mut bytes))
        .and_then(ProfileBatch::decode);
    if let (Ok(batch), Some(guest)) = (batch, guests.get_mut(n)) {
        let mut access = Access { utcb, vm: guest.vm };
        let events = guest.policy.on_profile(&batch, &mut access);
        for e in events {
            rt::println!(utcb, "dmp: vm{n}: {e}");
        }
    }
    // An exit reply: mask 0 changes nothing in the vCPU.
    utcb.set_msg(0, &[0]);
}

/// The hypercall instruction of the guests, which share the kernel's virtualization backend:
/// the kernel says which it is (`KernelStats` `VIRT_BACKEND`); `None` if it runs no guests.
fn hypercall_insn() -> Option<HypercallInsn> {
    let backend = syscall::kernel_stats(abi::syscall::stats::VIRT_BACKEND).ok()?;
    Backend::from_stat(backend).map(Backend::hypercall_insn)
}

/// The guest through the kernel: `VmRead`, `VmPatch` and `VmDmp` on its Vm capability.
struct Access<'u> {
    utcb: &'u mut Utcb,
    vm: Sel,
}

impl GuestAccess for Access<'_> {
    fn read(&mut self, address: u64, linear: bool, out: &mut [u8]) -> Result<(), Failure> {
        rt::vm::vm_read(self.utcb, self.vm, address, linear, out).map_err(failure)
    }

    fn patch_moving(
        &mut self,
        address: u64,
        expected: &[u8],
        new: &[u8],
        from: u64,
        to: u64,
    ) -> Result<(), Failure> {
        rt::vm::vm_patch_moving(
            self.utcb,
            self.vm,
            address,
            true,
            expected,
            new,
            Some((from, to)),
        )
        .map_err(failure)
    }

    fn control(&mut self, op: u64, arg: u64) -> Result<(), Failure> {
        rt::vm::vm_dmp(self.vm, op, arg).map_err(failure)
    }

    fn patch(
        &mut self,
        address: u64,
        linear: bool,
        expected: &[u8],
        new: &[u8],
    ) -> Result<(), Failure> {
        rt::vm::vm_patch(self.utcb, self.vm, address, linear, expected, new).map_err(failure)
    }
}

fn failure(e: Error) -> Failure {
    match e {
        Error::Kernel(Status::Busy) => Failure::Busy,
        Error::Kernel(Status::Mismatch) => Failure::Mismatch,
        _ => Failure::Refused,
    }
}
