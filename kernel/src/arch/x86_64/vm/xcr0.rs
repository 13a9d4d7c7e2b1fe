//! The guests' XCR0: the kernel offers XSAVE with the state it saves (x87 and SSE, which
//! FXSAVE covers; `virt::xcr0`), loads a vCPU's XCR0 before entry where it differs from the
//! host's and puts the host's back after the exit, as KVM does. The host's XCR0 stays at its
//! reset value (x87) and the kernel never uses XSAVE itself; CR4.OSXSAVE is set on the host only
//! so that XSETBV can switch it.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use spin::Once;

/// The state components XSAVE supports on this CPU (CPUID 0xd.0 EDX:EAX), None without XSAVE.
static SUPPORTED: Once<Option<u64>> = Once::new();
/// What XCR0 holds now.
static LOADED: AtomicU64 = AtomicU64::new(virt::xcr0::RESET);
/// Whether the CPU has XSAVE (the exit and entry paths test this one word).
static ON: AtomicBool = AtomicBool::new(false);

const CR4_OSXSAVE: u64 = 1 << 18;

/// Finds out whether the CPU has XSAVE and, if so, sets CR4.OSXSAVE so that XSETBV works.
pub fn init() {
    let has_xsave = x86::cpuid::cpuid!(1).ecx & (1 << 26) != 0;
    let supported = has_xsave.then(|| {
        let leaf = x86::cpuid::cpuid!(0xd, 0);
        u64::from(leaf.eax) | u64::from(leaf.edx) << 32
    });
    if supported.is_some() {
        // SAFETY: the CPU has XSAVE, so CR4.OSXSAVE is a valid bit (VMX allows what the CPU
        // supports); it only enables XSAVE/XSETBV/XGETBV, which the kernel uses here alone.
        // XCR0 keeps its reset value, x87.
        unsafe {
            let cr4: u64;
            core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
            core::arch::asm!("mov cr4, {}", in(reg) cr4 | CR4_OSXSAVE, options(nostack));
        }
    }
    SUPPORTED.call_once(|| supported);
    ON.store(supported.is_some(), Ordering::Relaxed);
    load(virt::xcr0::RESET);
    log::info!(
        "vm: XSAVE {}",
        match supported {
            Some(s) => {
                let offered = s & virt::xcr0::SAVED;
                if offered == virt::xcr0::SAVED {
                    "offered to guests (XCR0 x87 and SSE)"
                } else {
                    "offered to guests (XCR0 x87 only)"
                }
            }
            None => "not available",
        }
    );
}

/// The components XSAVE supports, None without XSAVE.
pub fn supported() -> Option<u64> {
    SUPPORTED.get().copied().flatten()
}

/// Checks an XCR0 a VMM's reply sets (`virt::xcr0::check`).
pub fn check(value: u64) -> Result<(), super::BadState> {
    virt::xcr0::check(value, supported()).map_err(|_| super::BadState("XCR0"))
}

/// Loads `value` into XCR0 unless it is there already; nothing without XSAVE or for a value
/// [`check`] refuses (XSETBV would fault in the kernel), so every caller is safe.
fn load(value: u64) {
    if !ON.load(Ordering::Relaxed)
        || LOADED.load(Ordering::Relaxed) == value
        || virt::xcr0::check(value, supported()).is_err()
    {
        return;
    }
    // SAFETY: `init` set CR4.OSXSAVE on a CPU with XSAVE (`ON`), and `value` passed the check of
    // the components this CPU supports, so XSETBV accepts it.
    unsafe {
        core::arch::asm!(
            "xsetbv",
            in("ecx") 0u32,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
            options(nomem, nostack)
        );
    }
    LOADED.store(value, Ordering::Relaxed);
}

/// Before an entry: the vCPU's XCR0 (`value` passed [`check`], or is the reset value).
pub fn enter(value: u64) {
    load(value);
}

/// After an exit: the host's XCR0 again.
pub fn exited() {
    load(virt::xcr0::RESET);
}
