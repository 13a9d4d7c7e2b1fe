//! The vCPU object: the virtualization part of a thread whose `vcpu` is set. It is scheduled
//! like any thread; when the scheduler picks it, the kernel enters its guest (`entry`).

use abi::vm::{Exit, EXIT_COUNT};
use cap::SpaceId;
use virt::tags::Held;

use super::ids::VmId;
use crate::arch::vm::{HwVcpu, RunContext};
use crate::mem::frames;

/// The virtualization part of a vCPU thread.
pub struct Vcpu {
    pub vm: VmId,
    pub hw: HwVcpu,
    pub ctx: RunContext,
    /// Exit portals: selectors `exit_base + reason` in this space.
    pub exit_space: SpaceId,
    pub exit_base: u64,
    pub masks: [u64; EXIT_COUNT as usize],
    /// The frame the exit messages are built in (the vCPU's UTCB).
    pub message_frame: u64,
    pub started: bool,
    pub recall: bool,
    /// Exits so far, by neutral reason.
    pub exits: [u64; EXIT_COUNT as usize],
    /// The TSC right after the last hardware exit (the message's `EXIT_TSC`).
    pub exit_tsc: u64,
    /// TSC ticks spent in the guest, summed from entry to exit (instructions under `-icount`).
    pub guest_tsc: u64,
    /// Exits profiled since the last `Profile` message (one is due at `PROFILE_PERIOD`), and
    /// the messages' sequence number.
    pub unprofiled: u64,
    pub profile_sequence: u64,
    /// The exit TSC when the last profile was due.
    pub profile_tsc: u64,
    /// The kernel answers this vCPU's DMP hypercalls (`VcpuOp::Hypercalls`).
    pub hypercalls: bool,
    /// The hardware lets the guest's #PF through (its Vm's `Shadow::forward`).
    pub forwarding: bool,
    /// The Vm's shadow tables were emptied or its DMP controls changed outside this vCPU's
    /// exits: before the next entry, apply the controls and map what the guest needs to take a
    /// fault (`Shadow::prefill_critical`).
    pub resync: bool,
    /// The exit whose reply the vCPU waits for (or last waited for).
    pub answering: Exit,
    /// Its ASID or VPID (renewed before an entry when its generation is over).
    pub tag: Held,
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        frames::free(self.message_frame, 1);
        let hw = core::mem::replace(&mut self.hw, HwVcpu::Empty);
        hw.free();
    }
}
