//! The per-guest VMM. Init starts one instance per `[[guest]]` of the manifest (a server named
//! `vmm.<guest>`); it
//!
//! 1. obtains its guest's record (`GET_CONFIG`), the guest's RAM (`GET_RESOURCE "memory"`,
//!    exactly the guest's pages) and image (`GET_RESOURCE "image"`, read-only), and maps both
//!    into its own address space ([`memory`]);
//! 2. loads the image and writes the boot structures and the guest's secret (`vmm::image`,
//!    `vmm::layout`);
//! 3. creates the Vm, maps the RAM into it at guest-physical 0, creates the 18 exit portals
//!    (bound to its main thread) and the vCPU, and sets each exit's transfer mask
//!    (`vmm::monitor::transfer_mask`);
//! 4. serves exits on its main thread until the guest ends (`vmm::monitor::Monitor` decides
//!    every reply), printing the guest's UART lines as `[<guest>] <line>`; for a guest with
//!    `dmp = true` the DMP window's last page is the guest-writable UART output ring and the
//!    monitor keeps the window's UART words (`abi::dmp::uart`, `vmm::dmp`);
//! 5. reports the end to init (`GUEST_DONE`), logs a summary of the exits, and stays idle.
//!
//! Any failure before the guest runs ends it as `FAILED` with a log line saying why.
//!
//! A guest with `fuzz_replies = <seed>` is served by [`fuzz::serve`] instead: every reply goes
//! through the seeded reply fuzzer (`vmm::fuzz`), and the guest is started again whenever it
//! ends, until an exit cap (issue #11).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

mod config;
mod cpu;
mod fuzz;
mod memory;
mod timer;

use alloc::boxed::Box;

use abi::bootstrap::outcome;
use abi::vm::{self as vmabi, word, Exit, EXIT_COUNT, EXIT_LABEL};
use abi::{well_known, Rights, Sel, Status};
use manifest::Guest;
use rt::{bootstrap, log, syscall, Error, Start, Utcb};
use vmm::image::{self, LoadError};
use vmm::monitor::{failure, transfer_mask, End, Monitor, Note, Response};
use vmm::state::VcpuState;
use vmm::timing::ExitTiming;

rt::entry!(main);

/// The serial driver's `log` portal.
const LOG: Sel = well_known::FIRST_FREE;
/// The guest's RAM and image.
const MEMORY: Sel = well_known::FIRST_FREE.offset(1);
const IMAGE: Sel = well_known::FIRST_FREE.offset(2);
const VM: Sel = well_known::FIRST_FREE.offset(3);
const VCPU: Sel = well_known::FIRST_FREE.offset(4);
/// The semaphore the server idles on once its guest has ended.
const IDLE: Sel = well_known::FIRST_FREE.offset(5);
/// Where a capability sent to an exit portal would land (the kernel sends none).
const RECV: Sel = well_known::FIRST_FREE.offset(6);
/// The DMP service's `attach` portal (guests with `dmp = true`).
const DMP: Sel = well_known::FIRST_FREE.offset(7);
/// The guest's initrd module (read-only), when it has one (8 and 9 are the fuzzer's).
const INITRD: Sel = well_known::FIRST_FREE.offset(10);
/// The timer thread's semaphore, the one the main thread sleeps on while its guest halts, and
/// the timer thread.
const KICK: Sel = well_known::FIRST_FREE.offset(11);
const HALT: Sel = well_known::FIRST_FREE.offset(12);
const TIMER_THREAD: Sel = well_known::FIRST_FREE.offset(13);
/// The timer thread's stack and UTCB.
static TIMER_MEM: rt::thread::ThreadMem<8192> = rt::thread::ThreadMem::new();
/// The exit portals: `EXIT_BASE + reason`.
const EXIT_BASE: Sel = Sel::new(32);

fn main(start: Start) -> ! {
    let mut utcb = start.utcb;
    log::set_name("vmm-server");
    if bootstrap::get(&mut utcb, "serial.log", LOG).is_ok() {
        log::set_portal(LOG);
    }
    let guest = match config::get(&mut utcb) {
        Ok(guest) => guest,
        Err(e) => {
            rt::println!(&mut utcb, "vmm-server: no guest configuration: {e}");
            report(&mut utcb, "vmm-server", outcome::FAILED, failure::SETUP);
            idle()
        }
    };
    let name: &'static str = Box::leak(guest.vmm_name().into_boxed_str());
    log::set_name(name);
    let mut set = match setup(&mut utcb, &guest, name) {
        Ok(set) => set,
        Err(fail) => {
            rt::println!(&mut utcb, "{name}: {fail}");
            report(&mut utcb, name, outcome::FAILED, fail.code());
            idle()
        }
    };
    let end = match guest.fuzz_replies {
        Some(seed) => {
            let end = fuzz::serve(&mut utcb, &mut set, &guest, name, seed);
            rt::println!(&mut utcb, "{name}: {}", set.monitor.summary());
            end
        }
        None => {
            let mut timing = ExitTiming::default();
            let end = serve(
                &mut utcb,
                &mut set.monitor,
                &mut set.ram,
                &mut timing,
                &guest.name,
                name,
            );
            rt::println!(&mut utcb, "{name}: {}", set.monitor.summary());
            rt::println!(
                &mut utcb,
                "{name}: {}; kernel tick {} tsc",
                timing.summary(),
                timer::tick_tsc()
            );
            end
        }
    };
    report(&mut utcb, name, end.outcome, end.detail);
    idle()
}

/// A guest set up to run: its monitor, its RAM (as the monitor reaches it, and as the loader
/// writes it), its image and the initial vCPU state the loader gave.
pub struct Set {
    pub monitor: Monitor,
    pub ram: memory::GuestRam,
    pub image: &'static [u8],
    pub initrd: Option<&'static [u8]>,
    pub initial: VcpuState,
}

/// Why the guest could not be started.
pub enum SetupError {
    /// A syscall or bootstrap request failed.
    Step(&'static str, Error),
    Load(LoadError),
}

impl SetupError {
    fn code(&self) -> u64 {
        match self {
            SetupError::Step(..) => failure::SETUP,
            SetupError::Load(_) => failure::LOAD,
        }
    }
}

impl core::fmt::Display for SetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SetupError::Step(what, e) => write!(f, "{what}: {e}"),
            SetupError::Load(e) => write!(f, "cannot load the image: {e}"),
        }
    }
}

fn step<T>(what: &'static str, result: Result<T, Error>) -> Result<T, SetupError> {
    result.map_err(|e| SetupError::Step(what, e))
}

/// Hands the Vm (READ and PATCH only) to the DMP service and installs the profile portal it
/// returns; `false` (the guest runs without DMP, logged) when the system has no DMP service.
fn attach_dmp(utcb: &mut Utcb, name: &str) -> Result<bool, SetupError> {
    use vmm::layout::{DMP_WINDOW_LINEAR, DMP_WINDOW_PAGES, DMP_WINDOW_PHYSICAL};
    if bootstrap::get(utcb, "dmp-service.attach", DMP).is_err() {
        rt::println!(
            utcb,
            "{name}: no DMP service in this system; the guest runs without it"
        );
        return Ok(false);
    }
    let mut words = [0u64; abi::dmp::attach::COUNT];
    words[abi::dmp::attach::WINDOW_LINEAR] = DMP_WINDOW_LINEAR;
    words[abi::dmp::attach::WINDOW_PHYSICAL] = DMP_WINDOW_PHYSICAL;
    words[abi::dmp::attach::WINDOW_PAGES] = DMP_WINDOW_PAGES;
    utcb.set_msg(abi::dmp::ATTACH, &words);
    utcb.attach_cap(VM, Rights::READ.union(Rights::PATCH));
    utcb.set_cap_recv(EXIT_BASE.offset(Exit::Profile as u64));
    step("dmp attach", utcb.call_msg(DMP))?;
    step("dmp attach", utcb.reply_status())?;
    if !utcb.cap_received() {
        return Err(SetupError::Step(
            "dmp attach (no profile portal)",
            Error::Protocol,
        ));
    }
    Ok(true)
}

/// Byte `at` of guest RAM, read through an opaque reference: the kernel writes it behind the
/// compiler's back.
fn read_at(ram: &[u8], at: usize) -> u8 {
    core::hint::black_box(ram)[at]
}

/// Checks the kernel's `VmPatch` and `VmRead` on this Vm once, before the guest runs: a byte of the zeroed
/// area below the guest's GDT is swapped and put back; a wrong expectation must be refused
/// with `Mismatch` and change nothing, a range across a page with `BadArgument`. A kernel that
/// gets any of it wrong fails the guest at set-up.
fn check_patching(utcb: &mut Utcb, ram: &mut [u8]) -> Result<(), SetupError> {
    const AT: usize = 0x400;
    let read = |ram: &[u8]| read_at(ram, AT);
    let bad = |what| Err(SetupError::Step(what, Error::Protocol));
    let old = read(ram);
    let new = old ^ 0x5a;
    step(
        "patch",
        rt::vm::vm_patch(utcb, VM, AT as u64, false, &[old], &[new]),
    )?;
    if read(ram) != new {
        return bad("patch (bytes not written)");
    }
    let mut back = [0u8; 2];
    step(
        "read",
        rt::vm::vm_read(utcb, VM, AT as u64 - 1, false, &mut back),
    )?;
    if back != [read_at(ram, AT - 1), new] {
        return bad("read (other bytes than the guest's)");
    }
    match rt::vm::vm_patch(utcb, VM, AT as u64, false, &[old], &[old]) {
        Err(Error::Kernel(Status::Mismatch)) if read(ram) == new => {}
        _ => return bad("patch (a wrong expectation was not refused)"),
    }
    match rt::vm::vm_patch(utcb, VM, 0xffe, false, &[0; 4], &[0; 4]) {
        Err(Error::Kernel(Status::BadArgument)) => {}
        _ => return bad("patch (a range across a page was not refused)"),
    }
    step(
        "patch back",
        rt::vm::vm_patch(utcb, VM, AT as u64, false, &[new], &[old]),
    )?;
    if read(ram) != old {
        return bad("patch back (bytes not written)");
    }
    Ok(())
}

/// Loads the guest's image (and initrd) into its RAM and writes its secret; returns the initial
/// state.
pub fn load(
    memory: &mut [u8],
    image: &[u8],
    initrd: Option<&[u8]>,
    guest: &Guest,
) -> Result<image::Boot, SetupError> {
    let boot = image::load_with(image, memory, &guest.cmdline, initrd).map_err(SetupError::Load)?;
    if vmm::platform::acpi::install(memory).is_err() {
        return Err(SetupError::Step("acpi tables", Error::Protocol));
    }
    let secret = vmm::layout::secret(&guest.name, cpu::rdtsc());
    if !image::write_secret(memory, &secret) {
        return Err(SetupError::Step("write secret", Error::Protocol));
    }
    Ok(boot)
}

/// A monitor for a guest that starts in `initial`, with the guest's DMP options, on a PC
/// whose devices keep time with the TSC frequency the kernel measured.
pub fn new_monitor(
    guest: &Guest,
    initial: VcpuState,
    guest_ram: &mut memory::GuestRam,
) -> Result<Monitor, SetupError> {
    use vmm::platform::board::{Board, BoardConfig};
    let tsc_hz = syscall::kernel_stats(abi::syscall::stats::TSC_HZ).unwrap_or(0);
    let board = Board::new(BoardConfig {
        ram_bytes: guest.memory_bytes,
        tsc_hz,
        rtc_unix_seconds: vmm::platform::rtc::DEFAULT_UNIX_SECONDS,
        x2apic: false,
    });
    let mut monitor = Monitor::with_board(initial, board, guest.memory_bytes);
    if guest.hypercalls || guest.dmp {
        monitor.enable_vmm_hypercalls();
    }
    if guest.dmp && !monitor.enable_uart_window(vmm::dmp::UartWindow::layout(), guest_ram) {
        return Err(SetupError::Step("dmp uart window", Error::Protocol));
    }
    Ok(monitor)
}

/// Maps and loads the guest, creates its Vm, exit portals and vCPU; returns the monitor, the
/// guest's RAM and image.
fn setup(utcb: &mut Utcb, guest: &Guest, name: &str) -> Result<Set, SetupError> {
    step(
        "get memory",
        bootstrap::get_resource(utcb, "memory", MEMORY),
    )?;
    let (image_len, image_offset) = step("get image", config::image(utcb, IMAGE))?;
    let mut guest_ram = step("map memory", memory::map_ram(MEMORY, guest.memory_bytes))?;
    let image = step(
        "map image",
        memory::map_image(IMAGE, image_len, image_offset),
    )?;
    let initrd = match guest.initrd {
        true => {
            let (len, offset) = step("get initrd", config::initrd(utcb, INITRD))?;
            let bytes = memory::map_module(INITRD, memory::INITRD_VA, len, offset);
            Some(step("map initrd", bytes)?)
        }
        false => None,
    };
    let boot = load(guest_ram.bytes_mut(), image, initrd, guest)?;
    let (mode, mode_name) = match guest.mode {
        manifest::MemoryMode::Nested => (vmabi::MemoryMode::Nested, "nested"),
        manifest::MemoryMode::Shadow => (vmabi::MemoryMode::Shadow, "shadow"),
    };
    rt::println!(
        utcb,
        "{name}: {} image, {} MiB, {mode_name}, entry {:#x}",
        boot.format.name(),
        guest.memory_bytes >> 20,
        boot.entry
    );
    let pages = guest.memory_bytes / abi::PAGE_SIZE;
    let rights = Rights::READ.union(Rights::WRITE).union(Rights::EXEC);
    step(
        "create vm",
        rt::vm::create_vm(VM, well_known::SELF_PD, mode),
    )?;
    step("map vm", rt::vm::vm_map(VM, MEMORY, 0, pages, 0, rights))?;
    check_patching(utcb, guest_ram.bytes_mut())?;
    if guest.hypercalls || guest.dmp {
        use vmm::layout::{DMP_WINDOW_LINEAR, DMP_WINDOW_PAGES, DMP_WINDOW_PHYSICAL};
        let window = DMP_WINDOW_PHYSICAL as usize
            ..(DMP_WINDOW_PHYSICAL + DMP_WINDOW_PAGES * abi::PAGE_SIZE) as usize;
        if let Some(bytes) = guest_ram.bytes_mut().get_mut(window) {
            bytes.fill(0);
        }
        step(
            "dmp window",
            rt::vm::vm_window(VM, DMP_WINDOW_LINEAR, DMP_WINDOW_PHYSICAL, DMP_WINDOW_PAGES),
        )?;
    }
    if guest.dmp {
        // The window's last page: the UART output ring that patched THR writes fill.
        step(
            "dmp scratch page",
            rt::vm::vm_dmp(VM, vmabi::dmp_op::SCRATCH, abi::dmp::WINDOW_SCRATCH_PAGES),
        )?;
    }
    // With DMP the profile portal is the service's (attach puts it at its exit-portal slot).
    let attached = guest.dmp && attach_dmp(utcb, name)?;
    for reason in 0..EXIT_COUNT {
        if attached && reason == Exit::Profile as u64 {
            continue;
        }
        step(
            "create exit portal",
            syscall::create_portal(EXIT_BASE.offset(reason), well_known::SELF_THREAD, reason),
        )?;
    }
    step("create semaphores", syscall::create_semaphore(KICK, 0))?;
    step("create semaphores", syscall::create_semaphore(HALT, 0))?;
    timer::measure_tick(HALT);
    // One below the server's main thread, so that its exit handling always preempts its guest.
    // The timer thread runs at the vCPU's priority: it takes turns with a busy vCPU (its recall
    // comes at the end of the vCPU's time slice at the latest) and can never starve it.
    let priority = u64::from(guest.priority.saturating_sub(1));
    step(
        "create vcpu",
        rt::vm::create_vcpu(VCPU, VM, well_known::SELF_PD, priority, EXIT_BASE),
    )?;

    let caps = timer::TimerCaps {
        kick: KICK,
        vcpu: VCPU,
    };
    step(
        "start the timer thread",
        timer::start(
            caps,
            &TIMER_MEM,
            TIMER_THREAD,
            guest.priority.saturating_sub(1),
        ),
    )?;
    if guest.hypercalls || guest.dmp {
        step("enable hypercalls", rt::vm::vcpu_hypercalls(VCPU, true))?;
    }
    for reason in 0..EXIT_COUNT {
        if let Some(exit) = Exit::from_u64(reason) {
            step(
                "set transfer mask",
                rt::vm::vcpu_set_mask(VCPU, exit, transfer_mask(exit)),
            )?;
        }
    }
    let monitor = new_monitor(guest, boot.state, &mut guest_ram)?;
    Ok(Set {
        monitor,
        ram: guest_ram,
        image,
        initrd,
        initial: boot.state,
    })
}

/// Serves the vCPU's exits until the guest ends; returns how.
fn serve(
    utcb: &mut Utcb,
    monitor: &mut Monitor,
    ram: &mut memory::GuestRam,
    timing: &mut ExitTiming,
    guest: &str,
    name: &str,
) -> End {
    // The first wait has nothing to reply to.
    utcb.set_msg(0, &[]);
    // The exit being answered: (reason, EXIT_TSC, TSC at receipt).
    let mut answering: Option<(u64, u64, u64)> = None;
    loop {
        utcb.set_cap_recv(RECV);
        if let Some((reason, exit_tsc, received)) = answering.take() {
            timing.record(reason, exit_tsc, received, cpu::rdtsc());
        }
        let result = utcb.reply_wait(EXIT_BASE);
        let received = cpu::rdtsc();
        match result {
            Ok(_) => {}
            Err(Error::Kernel(Status::BadArgument)) => {
                // The kernel refused the reply; the vCPU still waits for one: stop it.
                let response = monitor.refused(ram);
                if let Some(end) = answer(utcb, response, guest, name) {
                    return end;
                }
                continue;
            }
            Err(e) => {
                rt::println!(utcb, "{name}: exit portal unusable: {e}");
                return End {
                    outcome: outcome::FAILED,
                    detail: failure::SETUP,
                };
            }
        }
        if utcb.label() != EXIT_LABEL {
            // Only the kernel calls exit portals; anything else gets an empty reply.
            utcb.set_msg(0, &[]);
            continue;
        }
        let words = utcb.words();
        let reason = words.get(word::REASON).copied().unwrap_or(u64::MAX);
        // A profile message carries a packed batch, not the exit words: no timing in it.
        answering = (reason != Exit::Profile as u64).then(|| {
            timing.guest_time(words.get(word::GUEST_TSC).copied().unwrap_or(0));
            (
                reason,
                words.get(word::EXIT_TSC).copied().unwrap_or(received),
                received,
            )
        });
        timer::exited(words.get(word::EXIT_TSC).copied().unwrap_or(received));
        let mut response = monitor.handle(words, &mut cpu::cpuid, ram);
        // HLT: the reply waits until a device interrupts the sleeping guest.
        while let Some(until) = response.halted_until {
            timer::arm(None);
            timer::sleep_until(HALT, until);
            let now = cpu::rdtsc();
            if now >= until {
                timing.wake_late(now - until);
            }
            if monitor.wake(&mut response, now) {
                break;
            }
        }
        timer::arm(monitor.next_deadline_tsc());
        if let Some(end) = answer(utcb, response, guest, name) {
            return end;
        }
    }
}

/// Prints the response's notes and prepares its reply; if the reply stops the vCPU, sends it
/// and returns the guest's end.
fn answer(utcb: &mut Utcb, response: Response, guest: &str, name: &str) -> Option<End> {
    let mut end = None;
    for note in &response.notes {
        match note {
            Note::Line(line) => rt::println!(utcb, "[{guest}] {line}"),
            Note::Log(text) => rt::println!(utcb, "{name}: {text}"),
            Note::End(e) => end = Some(*e),
        }
    }
    utcb.set_msg(0, response.words());
    if !response.stops() {
        return None;
    }
    if let Err(e) = utcb.reply() {
        rt::println!(utcb, "{name}: the stop reply failed: {e}");
    }
    Some(end.unwrap_or(End {
        outcome: outcome::FAILED,
        detail: failure::PROTOCOL,
    }))
}

/// Reports the guest's end to init.
fn report(utcb: &mut Utcb, name: &str, outcome: u64, detail: u64) {
    if let Err(e) = config::done(utcb, outcome, detail) {
        rt::println!(utcb, "{name}: cannot report the guest's end: {e}");
    }
}

/// Blocks forever: init decides when the system ends.
fn idle() -> ! {
    if syscall::create_semaphore(IDLE, 0).is_ok() {
        loop {
            let _ = syscall::sem_down(IDLE, 0);
        }
    }
    syscall::thread_exit()
}
