//! Port I/O on ports the domain was granted (an `IoPorts` capability obtained, for a server,
//! with `bootstrap::get_resource("io_ports")`).
//!
//! The kernel opens exactly the ports of the domain's `IoPorts` capabilities in its TSS I/O
//! bitmap; any other port raises #GP, which the kernel turns into a fault of the thread, never
//! an access. So port I/O from user mode can only reach devices the manifest gave this domain,
//! and it touches no memory of the program: that is what makes these functions safe.

/// One I/O port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port(u16);

impl Port {
    /// The port at address `port`.
    pub const fn new(port: u16) -> Port {
        Port(port)
    }

    /// The port `offset` after this one (wrapping at 0xffff).
    pub const fn offset(self, offset: u16) -> Port {
        Port(self.0.wrapping_add(offset))
    }

    /// Reads a byte.
    pub fn read_u8(self) -> u8 {
        let value: u8;
        // SAFETY: `in` reads a device register into AL and touches no memory or other
        // register; the kernel's I/O bitmap confines it to ports this domain was granted (any
        // other faults), so it cannot reach a device the domain has no capability for.
        unsafe {
            core::arch::asm!("in al, dx", in("dx") self.0, out("al") value,
                options(nomem, nostack, preserves_flags));
        }
        value
    }

    /// Writes a byte.
    pub fn write_u8(self, value: u8) {
        // SAFETY: as for `read_u8`: `out` writes a device register of a granted port and touches
        // no memory of the program.
        unsafe {
            core::arch::asm!("out dx, al", in("dx") self.0, in("al") value,
                options(nomem, nostack, preserves_flags));
        }
    }
}
