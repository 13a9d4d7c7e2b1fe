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

/// Servers that run a guest (vmm-server instances, which init starts one per `[[guest]]` of the
/// manifest): the reply's words hold the guest's configuration, postcard-encoded
/// (`manifest::Guest`), after word 0 = status and word 1 = its length in bytes.
pub const GET_CONFIG: u64 = 5;
/// `[outcome, detail]`: a vmm-server reports how its guest ended (one of [`outcome`]); init
/// compares it with the manifest's `expect` and, once every guest has ended, prints
/// `guests: N passed, M failed` and powers off.
pub const GUEST_DONE: u64 = 6;

/// How a guest ended ([`GUEST_DONE`] word 0).
pub mod outcome {
    /// It wrote a status to the exit port (detail: the status).
    pub const EXITED: u64 = 1;
    /// It triple-faulted (detail: the RIP of the last exit).
    pub const SHUTDOWN: u64 = 2;
    /// It asked for a reset (detail: the port or method).
    pub const RESET: u64 = 3;
    /// Its VMM stopped it for a violation: an access outside its memory (detail: the
    /// guest-physical address).
    pub const STOPPED: u64 = 4;
    /// The VMM could not run it (bad image, entry failure; detail: a code for the log).
    pub const FAILED: u64 = 5;
}
