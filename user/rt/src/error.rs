//! The runtime's error type.

use abi::Status;

/// Why a runtime operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The kernel refused the syscall with this status.
    Kernel(Status),
    /// The server answered with this status in reply word 0.
    Reply(Status),
    /// The kernel or a server answered with a status code that `abi::Status` does not define.
    Unknown(u64),
    /// A payload did not fit in a message or could not be decoded.
    Payload(uwire::Error),
    /// The answer was well-formed but not what the protocol promises (e.g. no capability
    /// arrived with a successful `GET`).
    Protocol,
    /// A one-shot resource (a heap arena, a thread's memory) was already in use.
    InUse,
}

impl Error {
    /// The status code, if the error carries a known one.
    pub fn status(self) -> Option<Status> {
        match self {
            Error::Kernel(s) | Error::Reply(s) => Some(s),
            _ => None,
        }
    }

    /// A kernel result code: `Ok` for 0, the status for known codes, [`Error::Unknown`] else.
    pub fn from_kernel(code: u64) -> Result<(), Error> {
        match Status::from_u64(code) {
            Some(Status::Ok) => Ok(()),
            Some(s) => Err(Error::Kernel(s)),
            None => Err(Error::Unknown(code)),
        }
    }

    /// A status word from a reply: `Ok` for 0, the status for known codes, [`Error::Unknown`]
    /// else.
    pub fn from_reply(code: u64) -> Result<(), Error> {
        match Status::from_u64(code) {
            Some(Status::Ok) => Ok(()),
            Some(s) => Err(Error::Reply(s)),
            None => Err(Error::Unknown(code)),
        }
    }
}

impl From<uwire::Error> for Error {
    fn from(e: uwire::Error) -> Self {
        Error::Payload(e)
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Kernel(s) => write!(f, "kernel: {s}"),
            Error::Reply(s) => write!(f, "server: {s}"),
            Error::Unknown(code) => write!(f, "unknown status {code}"),
            Error::Payload(e) => write!(f, "payload: {e}"),
            Error::Protocol => f.write_str("protocol violation"),
            Error::InUse => f.write_str("already in use"),
        }
    }
}
