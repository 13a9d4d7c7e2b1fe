//! How a system reports its end to the emulator and to the build tool.
//!
//! The kernel prints [`SUCCESS_LINE`] or [`FAILURE_LINE`] (followed by a reason) as its last
//! serial line, then writes [`DEBUG_EXIT_SUCCESS`] or [`DEBUG_EXIT_FAILURE`] to QEMU's
//! `isa-debug-exit` device at [`DEBUG_EXIT_PORT`] and `Shutdown` to Bochs's [`BOCHS_SHUTDOWN_PORT`].

/// I/O port of QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Value written for success; QEMU then exits with status `(value << 1) | 1` = 33.
pub const DEBUG_EXIT_SUCCESS: u32 = 0x10;
/// Value written for failure; QEMU then exits with status 35.
pub const DEBUG_EXIT_FAILURE: u32 = 0x11;
/// QEMU's process exit status after [`DEBUG_EXIT_SUCCESS`].
pub const QEMU_STATUS_SUCCESS: i32 = ((DEBUG_EXIT_SUCCESS as i32) << 1) | 1;
/// QEMU's process exit status after [`DEBUG_EXIT_FAILURE`].
pub const QEMU_STATUS_FAILURE: i32 = ((DEBUG_EXIT_FAILURE as i32) << 1) | 1;
/// Bochs ends the simulation when the bytes of `Shutdown` are written to this port.
pub const BOCHS_SHUTDOWN_PORT: u16 = 0x8900;

/// Last serial line of a system that succeeded.
pub const SUCCESS_LINE: &str = "poweroff: success";
/// Prefix of the last serial line of a system that failed; a reason follows.
pub const FAILURE_LINE: &str = "poweroff: failure";

/// Whether a line (from its first byte) would read as the kernel's power-off line. Only the
/// kernel may print such a line: the serial driver marks every client line for which this holds,
/// and the build tool accepts [`SUCCESS_LINE`] only as a whole line, so no server or guest can
/// end a run with a success it did not have.
pub fn imitates_poweroff(line: &[u8]) -> bool {
    line.starts_with(b"poweroff:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poweroff_imitations() {
        assert!(imitates_poweroff(SUCCESS_LINE.as_bytes()));
        assert!(imitates_poweroff(b"poweroff: failure whatever"));
        assert!(imitates_poweroff(b"poweroff:"));
        assert!(!imitates_poweroff(b"[guest] poweroff: success"));
        assert!(!imitates_poweroff(b"poweroff"));
    }
}
