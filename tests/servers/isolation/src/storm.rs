//! The syscall storm: a seeded stream of syscalls with random and boundary arguments, filtered
//! so that every call must come back to the attacker without ending it or the system.
//!
//! The filter, exactly:
//!
//! - **Numbers.** `ThreadExit` and `PowerOff` are never drawn (they end the thread or the
//!   system on purpose). Every other defined number is drawn with equal weight (85 % of calls);
//!   the other 15 % are undefined numbers (`COUNT ..= COUNT + 15`, powers of two, `u64::MAX`,
//!   random values at or above `COUNT`), which must all give `BadSyscall`.
//! - **Selectors.** Every argument that the ABI defines as a selector (the capability or domain
//!   a call acts on, and the destination slot of a create, carve or delegate) is drawn from
//!   [`ZONE_A`] (55 %: where the storm's own objects live), [`ZONE_B`] (15 %), boundary values
//!   at or above `CAP_SPACE_SLOTS` (15 %) or random values at or above it (15 %); never below
//!   [`ZONE_A`], where the attacker keeps the capabilities it needs (its own domain and thread,
//!   the echo and log portals, its fault and bootstrap portals). Destinations in the attacker's
//!   own space (of creates and carves) are never in [`ZONE_B`], so that zone stays empty
//!   (a delegation's destination is in the other domain's space and may be anything). Since no
//!   storm selector can name the attacker's own domain, nothing is created, mapped or started in
//!   it; since a portal's handler must be a thread of the caller's domain and the storm can name
//!   none, no storm portal can exist, so `Call` and `ReplyWait` cannot block. `Lookup`, which
//!   only reads, takes any selector.
//! - **Blocking.** `SemDown` on a [`ZONE_A`] selector (which may hold a storm semaphore at
//!   zero) waits at most one timer tick; on other selectors its timeout is random (they name no
//!   semaphore, so it fails at once).
//! - Every other argument is a boundary value (0, 1, page and address-space edges, `u64::MAX`,
//!   ...) or random.

use abi::syscall::{Syscall, COUNT};
use abi::CAP_SPACE_SLOTS;

/// Selectors where the storm's objects (semaphores, domains) live.
pub const ZONE_A: core::ops::Range<u64> = 512..768;
/// Selectors the storm names but never fills.
pub const ZONE_B: core::ops::Range<u64> = 768..CAP_SPACE_SLOTS;
/// Syscalls a storm makes at least (issue #3).
pub const MIN_CALLS: u64 = 100_000;

/// One syscall to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    pub number: u64,
    pub args: [u64; 6],
}

/// SplitMix64: small, fast, and every seed gives a full-period stream.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the tiny modulo bias does not matter here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    fn pick(&mut self, values: &[u64]) -> u64 {
        values[self.below(values.len() as u64) as usize]
    }
}

const BOUNDARY_VALUES: [u64; 20] = [
    0,
    1,
    2,
    3,
    15,
    16,
    31,
    32,
    63,
    0xfff,
    0x1000,
    0x1001,
    0x1_0000_0000,
    0x0000_7fff_ffff_f000,
    0x0000_8000_0000_0000,
    0xffff_8000_0000_0000,
    0xffff_ffff_8000_0000,
    i64::MAX as u64,
    u64::MAX - 1,
    u64::MAX,
];

const BOUNDARY_SELECTORS: [u64; 7] = [
    CAP_SPACE_SLOTS,
    CAP_SPACE_SLOTS + 1,
    4096,
    u32::MAX as u64,
    1 << 32,
    1 << 63,
    u64::MAX,
];

/// The defined syscalls the storm makes.
pub const ALLOWED: [Syscall; 26] = [
    Syscall::Call,
    Syscall::Reply,
    Syscall::ReplyWait,
    Syscall::CreatePd,
    Syscall::CreateThread,
    Syscall::CreatePortal,
    Syscall::CreateSemaphore,
    Syscall::Delegate,
    Syscall::Revoke,
    Syscall::Lookup,
    Syscall::SemUp,
    Syscall::SemDown,
    Syscall::Map,
    Syscall::Yield,
    Syscall::IrqBind,
    Syscall::ConsoleWrite,
    Syscall::Carve,
    Syscall::CreateVm,
    Syscall::CreateVcpu,
    Syscall::VmMap,
    Syscall::VcpuControl,
    Syscall::VmPatch,
    Syscall::VmWindow,
    Syscall::VmRead,
    Syscall::VmDmp,
    Syscall::KernelStats,
];

/// The generator.
#[derive(Clone, Debug)]
pub struct Storm {
    rng: Rng,
}

impl Storm {
    pub fn new(seed: u64) -> Storm {
        Storm {
            rng: Rng::new(seed),
        }
    }

    /// A selector argument (see the module documentation).
    fn sel(&mut self) -> u64 {
        match self.rng.below(100) {
            0..=54 => ZONE_A.start + self.rng.below(ZONE_A.end - ZONE_A.start),
            55..=69 => ZONE_B.start + self.rng.below(ZONE_B.end - ZONE_B.start),
            70..=84 => self.rng.pick(&BOUNDARY_SELECTORS),
            _ => self.rng.next_u64() | CAP_SPACE_SLOTS,
        }
    }

    /// A destination slot in the attacker's own space: like [`Storm::sel`] without [`ZONE_B`].
    fn dest(&mut self) -> u64 {
        loop {
            let sel = self.sel();
            if !ZONE_B.contains(&sel) {
                return sel;
            }
        }
    }

    /// Any other argument.
    fn value(&mut self) -> u64 {
        if self.rng.below(2) == 0 {
            self.rng.pick(&BOUNDARY_VALUES)
        } else {
            self.rng.next_u64()
        }
    }

    fn undefined_number(&mut self) -> u64 {
        match self.rng.below(4) {
            0 => COUNT + self.rng.below(16),
            1 => 1 << (5 + self.rng.below(59)),
            2 => u64::MAX - self.rng.below(2),
            _ => self.rng.next_u64().max(COUNT),
        }
    }

    /// The next call.
    pub fn next_call(&mut self) -> Call {
        if self.rng.below(100) < 15 {
            let number = self.undefined_number();
            let args = [(); 6].map(|()| self.value());
            return Call { number, args };
        }
        let call = ALLOWED[self.rng.below(ALLOWED.len() as u64) as usize];
        let mut args = [(); 6].map(|()| self.value());
        match call {
            Syscall::Call | Syscall::ReplyWait | Syscall::SemUp => args[0] = self.sel(),
            Syscall::CreatePd | Syscall::CreateSemaphore => args[0] = self.dest(),
            Syscall::Revoke => {
                args[0] = self.sel();
                args[1] = self.rng.pick(&[0, 1, 2, u64::MAX]);
            }
            Syscall::CreateThread | Syscall::CreatePortal => {
                args[0] = self.dest();
                args[1] = self.sel();
            }
            Syscall::Map | Syscall::IrqBind => {
                args[0] = self.sel();
                args[1] = self.sel();
            }
            Syscall::Carve => {
                args[0] = self.sel();
                args[1] = self.dest();
            }
            Syscall::CreateVm => {
                args[0] = self.dest();
                args[1] = self.sel();
                args[2] = self.rng.below(3);
            }
            Syscall::CreateVcpu => {
                args[0] = self.dest();
                args[1] = self.sel();
                args[2] = self.sel();
            }
            Syscall::VmWindow => {
                args[0] = self.sel();
                args[3] = self.rng.pick(&[0, 1, 512, 513]);
            }
            Syscall::VmDmp => {
                args[0] = self.sel();
                args[1] = self.rng.pick(&[0, 1, 2, 3]);
                args[2] = self.rng.pick(&[0, 1, 2, 0xffff_ff80_0000_0000]);
            }
            Syscall::VmPatch | Syscall::VmRead => {
                args[0] = self.sel();
                args[2] = self
                    .rng
                    .pick(&[0, 1, 5, 64, 65, abi::vm::PATCH_VIRTUAL | 8]);
            }
            Syscall::VmMap | Syscall::VcpuControl => {
                args[0] = self.sel();
                if call == Syscall::VmMap {
                    args[1] = self.sel();
                } else {
                    args[1] = self.rng.below(3);
                }
            }
            Syscall::Delegate => {
                args[0] = self.sel();
                args[1] = self.sel();
                // The destination is in the other domain's space; any value is fair.
                if self.rng.below(2) == 0 {
                    args[2] = self.sel();
                }
                if self.rng.below(2) == 0 {
                    args[3] = self.rng.below(0x80);
                }
            }
            Syscall::SemDown => {
                args[0] = self.sel();
                if ZONE_A.contains(&args[0]) {
                    args[1] = 1;
                }
            }
            Syscall::Lookup => {
                if self.rng.below(2) == 0 {
                    args[0] = self.rng.below(CAP_SPACE_SLOTS);
                }
            }
            Syscall::Reply | Syscall::Yield | Syscall::ConsoleWrite => {}
            Syscall::KernelStats => args[0] = self.rng.pick(&[0, 1, 2, 3, 4, u64::MAX]),
            Syscall::ThreadExit | Syscall::PowerOff => unreachable!("not in ALLOWED"),
        }
        Call {
            number: call as u64,
            args,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Argument positions the ABI defines as selectors, per defined syscall number.
    fn selector_positions(number: u64) -> &'static [usize] {
        match Syscall::from_u64(number) {
            Some(Syscall::Call | Syscall::ReplyWait | Syscall::CreatePd) => &[0],
            Some(Syscall::CreateSemaphore | Syscall::Revoke | Syscall::SemUp) => &[0],
            Some(Syscall::SemDown) => &[0],
            Some(Syscall::CreateThread | Syscall::CreatePortal) => &[0, 1],
            Some(Syscall::Delegate | Syscall::Map | Syscall::IrqBind | Syscall::Carve) => &[0, 1],
            Some(Syscall::CreateVm | Syscall::VmMap) => &[0, 1],
            Some(Syscall::CreateVcpu) => &[0, 1, 2],
            Some(
                Syscall::VcpuControl
                | Syscall::VmPatch
                | Syscall::VmWindow
                | Syscall::VmRead
                | Syscall::VmDmp,
            ) => &[0],
            _ => &[],
        }
    }

    fn calls(seed: u64, n: usize) -> Vec<Call> {
        let mut storm = Storm::new(seed);
        (0..n).map(|_| storm.next_call()).collect()
    }

    #[test]
    fn never_ends_the_thread_or_the_system() {
        for call in calls(1, 200_000) {
            assert_ne!(call.number, Syscall::ThreadExit as u64);
            assert_ne!(call.number, Syscall::PowerOff as u64);
        }
    }

    #[test]
    fn never_names_the_attackers_own_selectors() {
        for call in calls(2, 200_000) {
            for &i in selector_positions(call.number) {
                assert!(call.args[i] >= ZONE_A.start, "{call:?}");
            }
        }
    }

    #[test]
    fn sem_down_on_storm_objects_never_waits_forever() {
        for call in calls(3, 200_000) {
            if call.number == Syscall::SemDown as u64 && call.args[0] < CAP_SPACE_SLOTS {
                if ZONE_A.contains(&call.args[0]) {
                    assert_eq!(call.args[1], 1);
                } else {
                    assert!(ZONE_B.contains(&call.args[0]));
                }
            }
        }
    }

    /// Positions of destination slots in the caller's own space.
    fn own_destinations(number: u64) -> &'static [usize] {
        match Syscall::from_u64(number) {
            Some(
                Syscall::CreatePd
                | Syscall::CreateThread
                | Syscall::CreatePortal
                | Syscall::CreateSemaphore
                | Syscall::CreateVm
                | Syscall::CreateVcpu,
            ) => &[0],
            Some(Syscall::Carve) => &[1],
            _ => &[],
        }
    }

    #[test]
    fn zone_b_is_never_filled() {
        for call in calls(5, 200_000) {
            for &i in own_destinations(call.number) {
                assert!(!ZONE_B.contains(&call.args[i]), "{call:?}");
            }
        }
    }

    #[test]
    fn covers_every_allowed_number_and_undefined_ones() {
        let all = calls(4, 100_000);
        for allowed in ALLOWED {
            assert!(
                all.iter().any(|c| c.number == allowed as u64),
                "{allowed:?}"
            );
        }
        let undefined = all.iter().filter(|c| c.number >= COUNT).count();
        assert!((12_000..18_000).contains(&undefined), "{undefined}");
        assert!(all.iter().any(|c| c.args.contains(&u64::MAX)));
        assert!(all.iter().any(|c| c.args.contains(&0)));
    }

    #[test]
    fn the_seed_decides_everything() {
        assert_eq!(calls(42, 1000), calls(42, 1000));
        assert_ne!(calls(42, 1000), calls(43, 1000));
    }
}
