//! The system manifest in its compiled form: what the build tool packs as the boot module named
//! [`abi::boot::MANIFEST_MODULE`] and what the root server (init) turns into protection domains
//! and capabilities at boot.
//!
//! A person writes `manifests/<system>.toml`; `cargo xtask` parses it (with file and line in
//! every error), builds the servers and encodes a [`SystemImage`] with [`SystemImage::encode`].
//! Init calls [`SystemImage::decode`], which checks the same rules again ([`SystemImage::check`]),
//! so init never acts on an image that the build tool would have refused.
//!
//! The image is the whole authority graph of a system: each [`Server`] lists the hardware it
//! owns (I/O ports, IRQ lines), the portals it provides and the portals of other servers it may
//! obtain from init ([`SystemImage::grant`] answers init's question "may `client` have
//! `server.portal`, and with which rights?").
//!
//! Encoding: the four bytes [`MAGIC`], the format [`VERSION`], then the `SystemImage` in
//! `postcard`. Zero bytes after it are ignored (a loader may pad a module to a page).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod check;
mod guests;

use alloc::string::String;
use alloc::vec::Vec;

use abi::Rights;
use serde::{Deserialize, Serialize};

pub use check::{valid_portal_name, valid_server_name, Field, Place, Problem, Rule};
pub use guests::{config_chunk, config_gather, config_words, outcome_text, valid_guest_name};
pub use guests::{GuestField, CONFIG_TOTAL_MAX, INITRD_PREFIX};
pub use guests::{CONFIG_BYTES_MAX, GUEST_CMDLINE_MAX, GUEST_MEMORY_ALIGN, GUEST_MEMORY_MAX};
pub use guests::{GUEST_MEMORY_MIN, GUEST_NAME_MAX, GUEST_VCPUS, IMAGE_PREFIX, SERIAL_LOG};
pub use guests::{VMM_MEMORY, VMM_MODULE, VMM_PREFIX, VMM_QUOTA_BASE, VMM_QUOTA_PER_MIB};

/// First bytes of an encoded image.
pub const MAGIC: [u8; 4] = *b"dmpm";
/// Format version written after [`MAGIC`]; bumped whenever a type below changes.
pub const VERSION: u8 = 4;
/// Longest server or portal name in bytes. A server's name is its boot module's name, which the
/// kernel hands to init in a 48-byte NUL-padded field.
pub const NAME_MAX: usize = 47;
/// Boot-module names that every system with servers uses already, so no server may take them.
pub const RESERVED_NAMES: [&str; 2] = [abi::boot::INIT_MODULE, abi::boot::MANIFEST_MODULE];
/// Size of the pages that [`Server::memory_pages`] counts (`abi::PAGE_SIZE`).
pub use abi::PAGE_SIZE;
/// Legacy IRQ lines a server may be given (`0..IRQ_LINES`).
pub const IRQ_LINES: u8 = abi::boot::IRQ_COUNT as u8;
/// Highest server priority.
pub const MAX_PRIORITY: u8 = abi::syscall::MAX_PRIORITY as u8;
/// The only rights a [`Use`] may carry: calling the portal, optionally passing it on.
pub const USE_RIGHTS: [Rights; 2] = [Rights::CALL, Rights(Rights::CALL.0 | Rights::GRANT.0)];

/// A bootable system: its servers, in the order init starts them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SystemImage {
    pub name: String,
    pub servers: Vec<Server>,
    /// Guests, each run by its own vmm-server instance that init starts after the servers.
    pub guests: Vec<Guest>,
}

/// A guest virtual machine. Init runs each under its own instance of the `vmm-server` boot
/// module (a server named `vmm.<guest name>`), which asks for this record with
/// `abi::bootstrap::GET_CONFIG` (postcard-encoded) and reports the end with `GUEST_DONE`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Guest {
    /// Unique among guests; prefixes the guest's console output (`[name] ...`).
    pub name: String,
    /// Boot-module name of its image (`guest.<name>`); the vmm-server obtains it with
    /// `GET_RESOURCE "image"` (READ).
    pub image: String,
    /// Guest RAM in bytes (a multiple of 2 MiB), mapped at guest-physical 0.
    pub memory_bytes: u64,
    /// Virtual CPUs (1: SMP guests are not supported yet).
    pub vcpus: u8,
    pub mode: MemoryMode,
    /// Whether the boot module `initrd.<name>` ([`Guest::initrd_module`]) holds an initrd that
    /// the vmm-server loads above the image and hands over as a Multiboot module.
    pub initrd: bool,
    /// Passed to the guest as its command line (Multiboot) and logged.
    pub cmdline: String,
    /// Priority of the vmm-server and of the guest's vCPUs.
    pub priority: u8,
    /// How the guest is expected to end; init judges the `guests` scenario by it.
    pub expect: Expect,
    /// Shadow mode only: the kernel answers the guest's DMP hypercalls
    /// (`abi::vm::hypercall`) instead of the VMM treating VMMCALL/VMCALL as undefined.
    pub hypercalls: bool,
    /// Shadow mode only: the guest's exit profiles go to the DMP service (`dmp-service.attach`),
    /// which may patch hot sites of the guest (`abi::dmp`).
    pub dmp: bool,
    /// `fuzz_replies = <seed>` (issue #11): the guest's vmm-server passes every reply through
    /// the seeded reply fuzzer (`vmm::fuzz::ReplyFuzzer`), which turns about one reply in three
    /// into a hostile one, so that the kernel's reply checks and its last-moment confinement
    /// check are hammered; the guest's end is then random, so such a guest must expect
    /// [`Expect::Any`]. `None`: correct replies only. Any `u64` is a seed, 0 included.
    pub fuzz_replies: Option<u64>,
}

impl Guest {
    /// The postcard encoding that `GET_CONFIG` replies carry.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a Guest always serializes")
    }

    /// Decodes [`Guest::encode`]'s output; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Guest> {
        postcard::from_bytes(bytes).ok()
    }
}

/// Guest memory mode.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryMode {
    Nested,
    Shadow,
}

/// How a guest is expected to end (`expect = "exit 0"`, `"stopped"`, `"shutdown"`, `"reset"`,
/// `"any"`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// It writes this status to the exit port (0xf4).
    Exit(u8),
    /// Its VMM stops it for an access outside its memory.
    Stopped,
    /// It triple-faults.
    Shutdown,
    /// It asks for a reset.
    Reset,
    /// Whatever way it ends (its VMM reported an end, any outcome): for guests whose replies
    /// are fuzzed (`fuzz_replies`), where the point is that the rest of the system survives.
    /// A vmm-server that faults still fails its guest: that is not an end of the guest.
    Any,
}

/// One server: a protection domain with one thread running the ELF in the boot module of the
/// same name.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Server {
    /// Unique; also the boot-module name of its ELF.
    pub name: String,
    /// 0..=[`MAX_PRIORITY`].
    pub priority: u8,
    /// Kernel-memory quota in bytes.
    pub quota: u64,
    /// RAM pages for its stack and heap beyond its ELF image.
    pub memory_pages: u64,
    /// RAM pages it may obtain as a memory capability (`GET_RESOURCE "memory"`) to map, delegate
    /// and revoke itself; 0 = none.
    pub scratch_pages: u64,
    pub io_ports: Vec<PortRange>,
    /// Legacy IRQ lines `0..IRQ_LINES`.
    pub irqs: Vec<u8>,
    /// Names of the portals it provides (and registers with init).
    pub portals: Vec<String>,
    /// Portals of other servers (or its own) that it may obtain from init.
    pub uses: Vec<Use>,
    /// May ask init to end the system.
    pub power_off: bool,
    /// `"server.portal"` that receives its faults; `None`: init reports them and stops the
    /// thread.
    pub fault_handler: Option<String>,
}

/// I/O ports `base .. base + count`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub base: u16,
    pub count: u16,
}

/// A portal that a server may obtain from init.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Use {
    pub server: String,
    pub portal: String,
    /// [`abi::Rights`] bits: `CALL`, plus `GRANT` when the manifest says `grant = true`.
    pub rights: u8,
}

/// Why [`SystemImage::decode`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes do not start with [`MAGIC`]: not a compiled manifest.
    NotAManifest,
    /// Written in another format version (the one found).
    Version(u8),
    /// The body is not a postcard-encoded `SystemImage`.
    Malformed,
    /// Non-zero bytes follow the image.
    TrailingBytes,
    /// The image decodes but breaks a rule (the first problem [`SystemImage::check`] found).
    Invalid(Problem),
}

impl PortRange {
    /// One past the last port (up to 0x10000).
    pub fn end(self) -> u32 {
        u32::from(self.base) + u32::from(self.count)
    }

    /// Whether the two ranges share a port.
    pub fn overlaps(self, other: PortRange) -> bool {
        u32::from(self.base) < other.end() && u32::from(other.base) < self.end()
    }
}

impl Server {
    /// The fault handler as `(server, portal)`, if one is named and has the right form.
    pub fn fault_portal(&self) -> Option<(&str, &str)> {
        self.fault_handler.as_deref().and_then(split_portal)
    }

    /// Whether the server provides a portal called `name`.
    pub fn provides(&self, name: &str) -> bool {
        self.portals.iter().any(|p| p == name)
    }
}

/// Splits `"server.portal"` at its first dot; `None` without a dot.
pub fn split_portal(name: &str) -> Option<(&str, &str)> {
    name.split_once('.')
}

impl SystemImage {
    /// The image's bytes: [`MAGIC`], [`VERSION`], the postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::from(MAGIC);
        out.push(VERSION);
        // Strings, integers, options and vectors of known length always serialize.
        postcard::to_extend(self, out).expect("a SystemImage always serializes")
    }

    /// Decodes and checks an image made by [`SystemImage::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let body = bytes
            .strip_prefix(&MAGIC[..])
            .ok_or(DecodeError::NotAManifest)?;
        let (&version, body) = body.split_first().ok_or(DecodeError::NotAManifest)?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let (image, rest): (SystemImage, &[u8]) =
            postcard::take_from_bytes(body).map_err(|_| DecodeError::Malformed)?;
        if rest.iter().any(|&b| b != 0) {
            return Err(DecodeError::TrailingBytes);
        }
        match image.check().into_iter().next() {
            Some(problem) => Err(DecodeError::Invalid(problem)),
            None => Ok(image),
        }
    }

    /// The server called `name`.
    pub fn server(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// Whether `client` may obtain `server.portal`, and with which rights: only when `client`
    /// lists the use and `server` provides the portal.
    pub fn grant(&self, client: &str, server: &str, portal: &str) -> Option<Rights> {
        if !self.server(server)?.provides(portal) {
            return None;
        }
        self.server(client)?
            .uses
            .iter()
            .find(|u| u.server == server && u.portal == portal)
            .map(|u| Rights(u.rights))
            .filter(|r| USE_RIGHTS.contains(r))
    }
}

#[cfg(test)]
mod tests;
