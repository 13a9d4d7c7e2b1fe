//! The `pagingos` test guest: a small paging operating system (plain ELF64, started in long
//! mode) that knows nothing about the hypervisor. It builds its own 4-level page tables, GDT,
//! TSS and IDT, runs user programs in ring 3 with an `int 0x80` system-call interface, handles
//! their page faults (demand-zero, copy-on-write), creates processes by copying page tables
//! (fork), switches between them (CR3 loads) and tears them down; physical frames come from
//! the Multiboot 2 memory map.
//!
//! Command line: `workload=<pagefault|forkwait|cr3switch|invlpg|compute|garbage|print>` and
//! optionally `rounds=<N>` (and, for `garbage`, `verbose=1|2`). The workload ends with
//!
//! ```text
//! pagingos: <workload> rounds=<N> checksum=0x<16 hex digits>
//! pagingos: done
//! ```
//!
//! and exit status 0. The checksum covers only what the work produced (values the programs read
//! back, fault and event counts), never time, so it is the same under any paging mode of any
//! hypervisor and on bare hardware. See `workloads` for what each does.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

mod arch;
mod frames;
mod garbage;
mod kernel;
mod paging;
mod user;
mod workloads;

use grt::println;

#[cfg(not(feature = "multiboot1"))]
grt::elf64_entry!(main);
// For bare QEMU (`-kernel` after `objcopy -O elf32-i386`): the same kernel behind grt's
// Multiboot 1 entry, which builds its own identity map and enters long mode.
#[cfg(feature = "multiboot1")]
grt::multiboot1_entry!(main);

extern "C" {
    /// The end of this image, .bss included (link.ld).
    static __guest_end: u8;
}

fn main(boot: &grt::Boot) -> u8 {
    let cmdline = boot.cmdline();
    let Some(name) = grt::boot::cmdline_value(cmdline, "workload") else {
        println!(
            "pagingos: no workload=<name> on the command line \"{}\" (one of: {})",
            cmdline,
            workloads::NAMES
        );
        return grt::EXIT_FAILURE;
    };
    let Some(workload) = workloads::find(name) else {
        println!(
            "pagingos: unknown workload \"{}\" (one of: {})",
            name,
            workloads::NAMES
        );
        return grt::EXIT_FAILURE;
    };
    let rounds = match grt::boot::cmdline_value(cmdline, "rounds") {
        None => workload.default_rounds,
        Some(text) => match text.parse::<u64>() {
            Ok(n) if (1..=workload.max_rounds).contains(&n) => n,
            _ => {
                println!(
                    "pagingos: rounds=\"{}\" is not a number from 1 to {}",
                    text, workload.max_rounds
                );
                return grt::EXIT_FAILURE;
            }
        },
    };
    // Read before any frame is allocated: a loader may leave the command line just above the
    // image, in memory the frame allocator hands out.
    let verbose = match grt::boot::cmdline_value(cmdline, "verbose").map(str::parse::<u64>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            println!("pagingos: verbose= is not a number");
            return grt::EXIT_FAILURE;
        }
    };
    let Some(ram_top) = boot.ram_top() else {
        println!("pagingos: the loader gave no memory map");
        return grt::EXIT_BOOT;
    };

    arch::init();
    let image_end = core::ptr::addr_of!(__guest_end) as u64;
    let mut frames = frames::Frames::new(boot, image_end.max(1 << 20));
    let kernel_pml4 = paging::kernel_space(&mut frames, ram_top.min(frames::MAX_PHYS));
    // SAFETY: the new PML4 identity-maps all RAM (the image, its stack, the boot information)
    // as the loader's tables did; from now on the loader's tables are not used.
    unsafe { arch::write_cr3(kernel_pml4) };
    println!(
        "pagingos: workload {}, rounds {}: {} MiB of RAM, {} frames free, global pages {}",
        workload.name,
        rounds,
        ram_top >> 20,
        frames.free(),
        if arch::global_pages() { "on" } else { "off" }
    );

    let mut kernel = kernel::Kernel::new(frames, kernel_pml4, workload.name);
    kernel.verbose = verbose;
    let free_before = kernel.frames.free();
    let checksum = (workload.run)(&mut kernel, rounds);
    let free_after = kernel.frames.free();
    if free_after != free_before {
        kernel.fatal(format_args!(
            "{} frames free after the workload, {} before",
            free_after, free_before
        ));
    }
    println!(
        "pagingos: {} rounds={} checksum={:#018x}",
        workload.name, rounds, checksum
    );
    println!("pagingos: done");
    grt::EXIT_SUCCESS
}
