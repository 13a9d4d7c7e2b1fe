//! Syscall results. `Ok` is 0; every other value names one reason for refusal. The kernel never
//! panics on a bad request: it returns one of these.

/// Result code of a syscall, returned in RAX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Status {
    Ok = 0,
    /// No such syscall number.
    BadSyscall = 1,
    /// The selector is out of range or names no capability.
    BadSelector = 2,
    /// The capability names an object of another kind than the call needs.
    WrongKind = 3,
    /// The capability lacks a right the call needs, or a delegation asked for more rights.
    NoRights = 4,
    /// The protection domain's kernel-memory quota does not cover the request.
    QuotaExceeded = 5,
    /// An argument is out of range (size, priority, alignment, …).
    BadArgument = 6,
    /// The destination selector is already in use.
    SelectorInUse = 7,
    /// A wait ended at its timeout.
    Timeout = 8,
    /// The operation was cut short: the partner or the object went away (revoke, exit).
    Aborted = 9,
    /// A user address is not mapped, not user-accessible or not aligned as required.
    BadAddress = 10,
    /// The kernel has no memory left for the request.
    OutOfMemory = 11,
    /// A reply with nobody to reply to, or a call to a portal whose handler is gone.
    NoPartner = 12,
    /// A compare-and-swap found other values than expected (`VmPatch`).
    Mismatch = 13,
    /// The object is in a state that forbids the operation now (`VmPatch`: a vCPU's next
    /// instruction lies inside the range); retry later.
    Busy = 14,
}

impl Status {
    pub const fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            0 => Self::Ok,
            1 => Self::BadSyscall,
            2 => Self::BadSelector,
            3 => Self::WrongKind,
            4 => Self::NoRights,
            5 => Self::QuotaExceeded,
            6 => Self::BadArgument,
            7 => Self::SelectorInUse,
            8 => Self::Timeout,
            9 => Self::Aborted,
            10 => Self::BadAddress,
            11 => Self::OutOfMemory,
            12 => Self::NoPartner,
            13 => Self::Mismatch,
            14 => Self::Busy,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::BadSyscall => "bad syscall",
            Self::BadSelector => "bad selector",
            Self::WrongKind => "wrong object kind",
            Self::NoRights => "insufficient rights",
            Self::QuotaExceeded => "quota exceeded",
            Self::BadArgument => "bad argument",
            Self::SelectorInUse => "selector in use",
            Self::Timeout => "timeout",
            Self::Aborted => "aborted",
            Self::BadAddress => "bad address",
            Self::OutOfMemory => "out of memory",
            Self::NoPartner => "no partner",
            Self::Mismatch => "bytes differ from the expected ones",
            Self::Busy => "busy",
        }
    }
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_code_and_rejects_others() {
        for v in 0..=14 {
            let status = Status::from_u64(v).expect("codes 0..=14 exist");
            assert_eq!(status as u64, v);
        }
        assert_eq!(Status::from_u64(15), None);
        assert_eq!(Status::from_u64(u64::MAX), None);
    }
}
