//! Unprivileged CPU instructions a server may use.

/// The time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter into EDX:EAX; it touches no memory, and the
    // kernel leaves CR4.TSD clear, so it works in ring 3.
    unsafe { core::arch::x86_64::_rdtsc() }
}
