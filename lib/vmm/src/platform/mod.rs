//! The PC platform a guest sees (issue #14): device models, host-tested, driven by the
//! vmm-server. Each model is plain state plus the accesses a driver makes; none touches the
//! hardware or the clock itself.
//!
//! Conventions every model follows, so that the vmm-server can wire them together:
//! - **Time** is guest time in nanoseconds (`now_ns`, monotonic), passed into every call that
//!   depends on it; a model that fires later says when (`next_deadline_ns`), and the vmm-server
//!   arms one host timer for the earliest deadline.
//! - **Port I/O** is `read(port, size) -> u32` / `write(port, size, value)` with `size` 1, 2 or
//!   4 bytes; **MMIO** is `read(offset, size) -> u64` / `write(offset, size, value)` with the
//!   offset inside the device's page. Reads of unknown registers return all-ones, writes to them
//!   are dropped.
//! - **Interrupt lines** are levels: a source model reports its output line (`irq_level`), the
//!   controllers take `set_line(line, level)` (an edge is a level change), and the local APIC
//!   hands the vCPU its highest-priority deliverable vector (`pending_vector`, then
//!   `acknowledge`).

pub mod acpi;
pub mod board;
pub mod fw_cfg;
pub mod ioapic;
pub mod lapic;
pub mod misc;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod serial;

/// A port access of `size` bytes to byte-wide ISA registers: a wider access touches consecutive
/// ports, as on the ISA bus (sizes other than 1 and 2 count as 4). The PIC, PIT and RTC share it.
pub(crate) fn isa_read(port: u16, size: u8, mut read_byte: impl FnMut(u16) -> u8) -> u32 {
    (0..isa_bytes(size)).fold(0, |value, i| {
        value | u32::from(read_byte(port.wrapping_add(i))) << (8 * i)
    })
}

/// The write half of [`isa_read`].
pub(crate) fn isa_write(port: u16, size: u8, value: u32, mut write_byte: impl FnMut(u16, u8)) {
    for i in 0..isa_bytes(size) {
        write_byte(port.wrapping_add(i), (value >> (8 * i)) as u8);
    }
}

fn isa_bytes(size: u8) -> u16 {
    match size {
        1 | 2 => u16::from(size),
        _ => 4,
    }
}
