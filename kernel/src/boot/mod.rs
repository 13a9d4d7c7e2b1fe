//! From a loader's hand-over to a running kernel.
//!
//! Each boot path fills one [`BootInfo`] and calls [`start`]. `start` validates it (a memory map
//! with usable memory, modules that do not overlap the kernel or each other, a CPU with hardware
//! virtualization) and brings the kernel up; each failure is a readable message and a failure
//! power-off.

mod limine;
mod multiboot2;

use bootinfo::BootInfo;
use spin::Once;

use crate::arch::{self, cpu, power};
use crate::mem::KernelImage;
use crate::{klog, mem, selftest};

/// The boot information, copied into kernel memory before anything else is allocated.
static BOOT_INFO: Once<BootInfo> = Once::new();

/// The boot path's hand-over: boot information and the kernel's placement. The boot path has
/// already told `mem::direct` how its loader maps physical memory.
pub struct Handover {
    pub info: BootInfo,
    pub image: KernelImage,
    /// TSC when the boot path started (boot-time measurements).
    pub tsc_at_entry: u64,
}

/// Brings the kernel up. Never returns: the system ends with a power-off.
pub fn start(handover: Handover) -> ! {
    klog::init_early();
    arch::init_traps();
    let info = BOOT_INFO.call_once(|| handover.info);
    klog::set_level_from_cmdline(&info.cmdline);

    let cpu = cpu::identify();
    crate::println!(
        "dmphv {}: capability microhypervisor with dynamic memory paravirtualization",
        env!("CARGO_PKG_VERSION")
    );
    crate::println!(
        "cpu: {} \"{}\", virtualization: {}",
        cpu.vendor.as_str(),
        cpu.brand.as_str(),
        cpu.virt
    );
    crate::println!(
        "boot: {} via \"{}\", cmdline \"{}\", entry_tsc={}, tsc={}",
        match info.protocol {
            bootinfo::BootProtocol::Limine => "limine",
            bootinfo::BootProtocol::Multiboot2 => "multiboot2",
        },
        info.bootloader.as_str(),
        info.cmdline.as_str(),
        handover.tsc_at_entry,
        cpu::rdtsc()
    );
    if info.truncated {
        log::warn!(
            "boot information was truncated (too many regions, modules or too long strings)"
        );
    }
    match cpu.virt {
        cpu::Virtualization::None => power::fail(format_args!(
            "no hardware virtualization: the CPU offers neither VMX nor SVM"
        )),
        virt if !virt.usable() => power::fail(format_args!(
            "hardware virtualization unusable: {virt} (the kernel needs VMX with EPT or SVM with NPT)"
        )),
        _ => {}
    }

    mem::init(info, handover.image).unwrap_or_else(|e| power::fail(format_args!("memory: {e}")));
    // `tick_us=N` (the last one counts): the scheduler's timer tick in microseconds, measured
    // against the PIT
    // (default: 200,000 APIC-timer periods, 3.2 ms on QEMU, about 0.8 s of emulated time on
    // Bochs, whose APIC timer runs at its instruction rate).
    let tick_us = info
        .cmdline
        .split_ascii_whitespace()
        .rev()
        .find_map(|arg| arg.strip_prefix("tick_us="))
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&us| (100..=1_000_000).contains(&us));
    let apic = arch::apic::init(cpu.x2apic, tick_us)
        .unwrap_or_else(|e| power::fail(format_args!("local APIC: {e}")));
    log::info!(
        "apic: {apic} id {} enabled, timer on vector {:#x}",
        arch::apic::id(),
        arch::TIMER_VECTOR
    );
    if let Some(us) = tick_us {
        log::info!("timer tick: {us} us (tick_us, measured against the PIT)");
    }
    log::info!(
        "tsc: {} kHz (measured against the PIT)",
        arch::tsc::calibrate() / 1000
    );
    arch::vm::init(cpu.virt);
    // With an `init` module the system is init's to run; without one the kernel checks itself.
    crate::kern::start_init(info);
    selftest::run(info)
}
