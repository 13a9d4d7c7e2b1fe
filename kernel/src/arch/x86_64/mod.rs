//! x86-64: CPU identification, descriptor tables, traps, the local APIC, serial port and power-off.
//! All port, MSR and control-register access of the kernel lives under this module.

pub mod apic;
pub mod cpu;
pub mod gdt;
mod idt;
pub mod pic;
pub mod power;
pub mod serial;
pub mod stacks;
pub mod trap;
pub mod tsc;
pub mod user;
pub mod vm;

pub use trap::TIMER_VECTOR;

/// The kernel image runs at `physical + KERNEL_OFFSET` under the Multiboot2 path (see linker.ld).
pub const KERNEL_OFFSET: u64 = 0xffff_ffff_8000_0000;

extern "C" {
    static __kernel_start: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
    static __kernel_end: u8;
}

/// The kernel image's sections as virtual address ranges `[start, end)`, page-aligned by the
/// linker script.
#[derive(Clone, Copy, Debug)]
pub struct ImageSections {
    pub text: (u64, u64),
    pub rodata: (u64, u64),
    pub data: (u64, u64),
}

/// Virtual address of the first byte of the kernel image.
pub fn kernel_virt_start() -> u64 {
    core::ptr::addr_of!(__kernel_start) as u64
}

/// Virtual address ranges of the image's sections.
pub fn image_sections() -> ImageSections {
    use core::ptr::addr_of;
    ImageSections {
        text: (addr_of!(__text_start) as u64, addr_of!(__text_end) as u64),
        rodata: (
            addr_of!(__rodata_start) as u64,
            addr_of!(__rodata_end) as u64,
        ),
        data: (addr_of!(__data_start) as u64, addr_of!(__data_end) as u64),
    }
}

/// Size of the loaded image in bytes (text + rodata + data + bss).
pub fn kernel_image_len() -> u64 {
    core::ptr::addr_of!(__kernel_end) as u64 - kernel_virt_start()
}

/// Loads the kernel's GDT (with a TSS whose IST stacks serve double faults, NMIs and machine
/// checks) and IDT. Safe to call once, early, on either boot path.
pub fn init_traps() {
    gdt::init();
    idt::init();
    user::init_syscalls();
}
