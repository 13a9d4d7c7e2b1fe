//! CPU instructions as functions: port I/O, CPUID, MSRs, the TSC, CR4, halting.
//!
//! Port I/O and CPUID cannot break the guest's memory safety (the guest owns its whole machine),
//! so they are safe functions. Writing an MSR or CR4 can change how memory is translated, so
//! those are `unsafe`.

use core::arch::asm;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port output touches no memory of this program.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a 32-bit value to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Reads a 32-bit value from an I/O port.
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// The four registers CPUID returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpuid {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Executes CPUID for `leaf` / `subleaf`.
pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    Cpuid {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// Reads an MSR; an MSR the machine does not have raises #GP (an unexpected exception ends the
/// guest; use [`crate::trap::try_rdmsr`] where a fault is possible).
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR reads processor state into registers and touches no memory.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes an MSR.
///
/// # Safety
/// The value must not break what this program relies on (paging, segmentation, the stack).
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller keeps the machine state consistent.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    }
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Reads CR4.
pub fn read_cr4() -> u64 {
    let value: u64;
    // SAFETY: reading CR4 has no side effect.
    unsafe { asm!("mov {}, cr4", out(reg) value, options(nomem, nostack, preserves_flags)) }
    value
}

/// Halts with interrupts disabled: nothing but an NMI or a reset continues.
pub fn cli_hlt() {
    // SAFETY: stopping the CPU touches no memory.
    unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
}

/// Writes a 16-bit value to an I/O port.
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Enables interrupts and halts until one arrives (STI's shadow covers HLT, so an interrupt
/// pending before cannot slip in between), then disables them again.
pub fn sti_hlt_cli() {
    // SAFETY: the interrupt handlers are grt's (`irq`, `trap`), which preserve every register.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) }
}

/// Enables interrupts.
pub fn sti() {
    // SAFETY: as for `sti_hlt_cli`.
    unsafe { asm!("sti", options(nomem, nostack)) }
}

/// Disables interrupts.
pub fn cli() {
    // SAFETY: masking interrupts touches no memory.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

/// A 32-bit read of device memory at `address` (identity-mapped by the entry glue).
pub fn mmio_read32(address: u64) -> u32 {
    // SAFETY: the guests map the first 4 GiB one to one; device registers below 4 GiB are read
    // with a plain MOV, as drivers do, and no Rust object lives there.
    unsafe { core::ptr::read_volatile(address as *const u32) }
}

/// A 32-bit write of device memory at `address`.
pub fn mmio_write32(address: u64, value: u32) {
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::write_volatile(address as *mut u32, value) }
}
