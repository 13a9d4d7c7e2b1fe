//! The guest's XCR0 (the extended-state mask XSETBV sets), which the kernel loads before every
//! entry: which values a VMM may give a vCPU.
//!
//! The kernel saves and restores a guest's FPU state with FXSAVE/FXRSTOR, which covers x87 and
//! SSE and nothing else. So a guest's XCR0 may enable those two only (bit 0, x87, always set, as
//! the architecture demands; bit 1, SSE), and only where the CPU has XSAVE at all: AVX,
//! AVX-512, AMX and the rest would let the guest keep state in registers the kernel never
//! switches, visible to the next guest or the host.

/// x87 (bit 0) and SSE (bit 1): the state FXSAVE covers.
pub const SAVED: u64 = 0b11;
/// XCR0 at reset.
pub const RESET: u64 = 1;

/// Why an XCR0 value is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Xcr0Error {
    /// The CPU has no XSAVE: XCR0 does not exist (only [`RESET`] is accepted).
    NoXsave,
    /// x87 (bit 0) clear: XSETBV would raise #GP.
    NoX87,
    /// A state component the kernel does not save, or the CPU does not support.
    Unsaved,
}

/// Checks `value` for a vCPU on a CPU whose XSAVE supports the components `supported`
/// (CPUID 0xd.0 EDX:EAX; None without XSAVE).
pub fn check(value: u64, supported: Option<u64>) -> Result<(), Xcr0Error> {
    let Some(supported) = supported else {
        return if value == RESET {
            Ok(())
        } else {
            Err(Xcr0Error::NoXsave)
        };
    };
    if value & 1 == 0 {
        return Err(Xcr0Error::NoX87);
    }
    if value & !(SAVED & supported) != 0 {
        return Err(Xcr0Error::Unsaved);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_x87_and_sse_that_the_cpu_supports() {
        let avx = Some(0b111);
        assert_eq!(check(1, avx), Ok(()));
        assert_eq!(check(0b11, avx), Ok(()));
        assert_eq!(check(0b111, avx), Err(Xcr0Error::Unsaved));
        assert_eq!(check(0b10, avx), Err(Xcr0Error::NoX87));
        assert_eq!(check(0, avx), Err(Xcr0Error::NoX87));
        assert_eq!(check(1 << 63 | 1, avx), Err(Xcr0Error::Unsaved));
        assert_eq!(check(0b11, Some(1)), Err(Xcr0Error::Unsaved));
        assert_eq!(check(1, None), Ok(()));
        assert_eq!(check(0b11, None), Err(Xcr0Error::NoXsave));
        for v in 0..64u64 {
            let ok = check(v, Some(u64::MAX)).is_ok();
            assert_eq!(ok, v == 1 || v == 3, "{v:#x}");
        }
    }
}
