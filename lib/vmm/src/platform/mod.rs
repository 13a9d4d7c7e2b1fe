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
pub mod fw_cfg;
pub mod ioapic;
pub mod lapic;
pub mod misc;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod serial;
