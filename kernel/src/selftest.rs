//! Boot self-checks, and the deliberate faults that test the exception path.
//!
//! The checks run on every boot and print one `selftest:` line each; any failure ends the system
//! with a failure status. `selftest=fault` (a page fault on an unmapped address) and
//! `selftest=stack-overflow` (unbounded recursion into the boot stack's guard page) on the
//! command line end the system through the exception dump instead.

use alloc::boxed::Box;
use alloc::vec::Vec;

use bootinfo::BootInfo;

use crate::arch::{self, apic, cpu, power};
use crate::mem::{direct, frames, paging};
use crate::println;

/// Timer ticks the boot waits for.
const TICKS_WANTED: u64 = 3;
/// TSC budget for those ticks (roughly a second on QEMU, tens of seconds at Bochs speed).
const TICK_BUDGET_TSC: u64 = 3_000_000_000;

/// Runs the checks (or the deliberate fault the command line asks for) and powers off.
pub fn run(info: &BootInfo) -> ! {
    let request = info
        .cmdline
        .split_ascii_whitespace()
        .find_map(|arg| arg.strip_prefix("selftest="));
    match request {
        None => {}
        Some("fault") => deliberate_page_fault(),
        Some("stack-overflow") => {
            println!("selftest: recursing into the stack guard page");
            recurse(0);
        }
        Some(other) => power::fail(format_args!(
            "unknown selftest '{other}' (known: fault, stack-overflow)"
        )),
    }
    check(frame_allocator());
    check(heap());
    check(kernel_mappings());
    check(timer());
    power::succeed()
}

fn check(result: Result<(), &'static str>) {
    if let Err(what) = result {
        power::fail(format_args!("selftest failed: {what}"));
    }
}

fn frame_allocator() -> Result<(), &'static str> {
    let (free_before, total) = frames::stats();
    let a = frames::alloc(1).ok_or("frame allocation failed")?;
    let b = frames::alloc(4).ok_or("4-frame allocation failed")?;
    if a == b || !a.is_multiple_of(4096) || !b.is_multiple_of(4 * 4096) {
        return Err("frame allocator returned overlapping or misaligned frames");
    }
    direct::zero_frame(a);
    direct::write_word(a, 7, 0x5a5a_5a5a);
    if direct::read_word(a, 7) != 0x5a5a_5a5a {
        return Err("a frame written through the direct map did not read back");
    }
    frames::free(a, 1);
    frames::free(b, 4);
    if frames::stats().0 != free_before {
        return Err("frame counts differ after freeing");
    }
    println!("selftest: frames ok ({free_before} of {total} free)");
    Ok(())
}

fn heap() -> Result<(), &'static str> {
    let numbers: Vec<u64> = (0..10_000).collect();
    let boxed = Box::new([0xabu8; 4096]);
    if numbers.iter().sum::<u64>() != 49_995_000 || boxed.iter().any(|&b| b != 0xab) {
        return Err("heap data corrupted");
    }
    println!("selftest: heap ok");
    Ok(())
}

fn kernel_mappings() -> Result<(), &'static str> {
    let sections = arch::image_sections();
    let text = paging::translate(sections.text.0).ok_or("kernel text not mapped")?;
    let rodata = paging::translate(sections.rodata.0).ok_or("kernel rodata not mapped")?;
    let data = paging::translate(sections.data.0).ok_or("kernel data not mapped")?;
    if text.flags.writable || !text.flags.executable {
        return Err("kernel text is writable or not executable");
    }
    if rodata.flags.writable || rodata.flags.executable {
        return Err("kernel rodata is writable or executable");
    }
    if !data.flags.writable || data.flags.executable {
        return Err("kernel data is not writable or is executable");
    }
    for guard in arch::stacks::guard_pages() {
        if paging::translate(guard).is_some() {
            return Err("a stack guard page is mapped");
        }
    }
    let (mut leaves, mut wx) = (0u64, 0u64);
    paging::for_each_mapping(|_, t| {
        leaves += 1;
        if t.flags.writable && t.flags.executable {
            wx += 1;
        }
    });
    if wx != 0 {
        return Err("a mapping is both writable and executable");
    }
    println!("selftest: paging ok ({leaves} leaf mappings, none writable and executable, 4 guard pages unmapped)");
    Ok(())
}

fn timer() -> Result<(), &'static str> {
    let start = cpu::rdtsc();
    let first = apic::ticks();
    // SAFETY: the IDT handles the timer and spurious vectors; nothing else is unmasked.
    unsafe { x86::irq::enable() };
    while apic::ticks() - first < TICKS_WANTED && cpu::rdtsc() - start < TICK_BUDGET_TSC {
        core::hint::spin_loop();
    }
    // SAFETY: back to the kernel's default of running with interrupts off.
    unsafe { x86::irq::disable() };
    let ticks = apic::ticks() - first;
    if ticks < TICKS_WANTED {
        return Err("the APIC timer did not tick");
    }
    println!(
        "selftest: apic timer ok ({ticks} ticks, {} TSC per tick)",
        (cpu::rdtsc() - start) / ticks
    );
    Ok(())
}

fn deliberate_page_fault() -> ! {
    const UNMAPPED: u64 = 0x0000_00de_ad00_0000;
    println!("selftest: reading unmapped address {UNMAPPED:#x}");
    // SAFETY: not safe by design: the read faults, and the page-fault handler ends the system.
    let value = unsafe { core::ptr::read_volatile(UNMAPPED as *const u64) };
    power::fail(format_args!(
        "read of an unmapped address returned {value:#x}"
    ))
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = [depth; 64];
    // `black_box` keeps the frame and the recursion from being optimised away.
    core::hint::black_box(&frame);
    recurse(depth + 1) + core::hint::black_box(frame[3])
}
