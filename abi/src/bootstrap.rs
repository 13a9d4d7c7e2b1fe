//! The bootstrap protocol: how servers started by init obtain the capabilities the manifest
//! grants them. Every server holds a capability to init's bootstrap portal at
//! [`crate::well_known::BOOTSTRAP_PORTAL`]; the portal's badge tells init which server calls.
//!
//! Requests are messages with one of the labels below; string arguments are postcard-encoded
//! `&str` in the message words (see `rt::ipc`). Replies carry a [`crate::Status`] code in word 0.

/// `name` (a portal name this server provides, as listed in the manifest) + the portal
/// capability attached. Init keeps it to hand out to the servers the manifest allows.
pub const REGISTER: u64 = 1;
/// `"server.portal"`: asks for a capability that the manifest grants this server; the reply
/// carries it (landing at the caller's `cap_recv`) or word 0 = `NoRights` / `BadSelector`
/// (unknown name) / `NoPartner` (not registered yet: retry after a yield).
pub const GET: u64 = 2;
/// `[success]`: ends the system (only for servers the manifest lets power off).
pub const POWER_OFF: u64 = 3;
/// `"resource"`: asks for a resource capability the manifest grants (`"io_ports"` for its port
/// ranges, `"irq:N"` for an IRQ line); landed like `GET`.
pub const GET_RESOURCE: u64 = 4;
