//! The host CPU instructions the server executes itself: CPUID (for the guest's filtered view)
//! and RDTSC (the seed of the guest's secret).

/// CPUID `leaf`/`subleaf` on the host: EAX, EBX, ECX, EDX.
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// The host's time-stamp counter.
pub use rt::cpu::rdtsc;
