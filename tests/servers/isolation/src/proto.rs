//! The target's two portals.
//!
//! **`echo`** (labels below; replies are plain words):
//! - [`ECHO`]: the reply carries the request's words with word 0 incremented (wrapping). If a
//!   capability came with the request, the reply's label is [`cap_report`] of what the target
//!   found at its landing slot (kind and rights, via `Lookup`), else 0; the target then drops
//!   that capability again.
//! - [`SET_FAULT_MODE`]: words `[mode, rip]`; how the target answers the attacker's next faults
//!   (the `mode` constants). Reply `[0]`.
//! - [`LAST_FAULT`]: reply `[count, vector, error_code, rip, address]`: how many fault messages
//!   the target has received so far and the last one's contents.
//! - [`HOLD`]: the capability that comes with this call is kept at the target's hold slot
//!   (replacing the one kept before). Reply `[status]`: `Ok`, or `BadArgument` without a
//!   capability.
//! - [`PROBE_HOLD`]: reply `[status, kind, rights]` of `Lookup` on the hold slot (status
//!   `BadSelector` once the capability is gone, e.g. revoked by the domain it came from).
//!
//! **`faults`** is the attacker's fault portal: the kernel calls it with label
//! `abi::utcb::FAULT_LABEL` and words `[vector, error_code, rip, address, thread_badge]`. The
//! target records the message and answers according to the mode.

/// Echo the words back, word 0 plus one.
pub const ECHO: u64 = 1;
/// Set the fault mode: words `[mode, rip]`.
pub const SET_FAULT_MODE: u64 = 2;
/// Report the fault count and the last fault.
pub const LAST_FAULT: u64 = 3;
/// Keep the capability that comes with the call.
pub const HOLD: u64 = 4;
/// Report what the kept capability is now.
pub const PROBE_HOLD: u64 = 5;

/// Fault modes.
pub mod mode {
    /// End the faulting thread (reply without `RESUME_LABEL`). The initial mode.
    pub const STOP: u64 = 0;
    /// Resume the faulting thread at the `rip` given with the mode.
    pub const RESUME_AT: u64 = 1;
    /// Resume the faulting thread at the faulting instruction (it faults again).
    pub const RETRY: u64 = 2;
}

/// Bit that marks an [`ECHO`] reply label as a capability report.
pub const CAP_REPORT: u64 = 1 << 20;

/// The reply label reporting a received capability of `kind` with `rights`.
pub const fn cap_report(kind: u8, rights: u8) -> u64 {
    CAP_REPORT | ((rights as u64) << 8) | kind as u64
}

/// `(kind, rights)` from an [`ECHO`] reply label, `None` if no capability was reported.
pub const fn parse_cap_report(label: u64) -> Option<(u8, u8)> {
    if label & CAP_REPORT == 0 {
        None
    } else {
        Some((label as u8, (label >> 8) as u8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_reports_round_trip() {
        let label = cap_report(abi::ObjectKind::Semaphore as u8, abi::Rights::ALL.0);
        assert_eq!(
            parse_cap_report(label),
            Some((abi::ObjectKind::Semaphore as u8, abi::Rights::ALL.0))
        );
        assert_eq!(parse_cap_report(0), None);
        // Labels travel in the tag above bit 16; a report must survive that.
        let tag = abi::utcb::MsgTag::new(label, 1, false);
        assert_eq!(tag.label(), label);
    }
}
