//! The kernel's static stacks (defined in `stacks.s`) and the guard pages below them.

use core::arch::global_asm;
use core::ptr::addr_of;

global_asm!(include_str!("stacks.s"));

extern "C" {
    static boot_stack_guard: u8;
    static ist_double_fault_guard: u8;
    static ist_nmi_guard: u8;
    static ist_machine_check_guard: u8;
    static ist_double_fault_top: u8;
    static ist_nmi_top: u8;
    static ist_machine_check_top: u8;
}

/// Virtual addresses of the guard pages that the kernel's page tables leave unmapped.
pub fn guard_pages() -> [u64; 4] {
    [
        addr_of!(boot_stack_guard) as u64,
        addr_of!(ist_double_fault_guard) as u64,
        addr_of!(ist_nmi_guard) as u64,
        addr_of!(ist_machine_check_guard) as u64,
    ]
}

/// Tops of the interrupt stacks: IST1 double fault, IST2 NMI, IST3 machine check.
pub fn ist_tops() -> [u64; 3] {
    [
        addr_of!(ist_double_fault_top) as u64,
        addr_of!(ist_nmi_top) as u64,
        addr_of!(ist_machine_check_top) as u64,
    ]
}

/// Whether `addr` lies in one of the guard pages.
pub fn is_guard_page(addr: u64) -> bool {
    guard_pages()
        .iter()
        .any(|&page| (page..page + 4096).contains(&addr))
}
