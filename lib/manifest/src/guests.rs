//! Guests: the rules a [`Guest`] follows, the vmm-server instance each one implies, the
//! `GET_CONFIG` reply layout and how init judges a guest's end against its [`Expect`].
//!
//! **Implied servers.** Every guest runs under its own protection domain, a server named
//! `vmm.<guest>` ([`Guest::vmm_name`]) that init starts from the boot module [`VMM_MODULE`] after
//! the manifest's own servers. Its resources follow from the guest ([`SystemImage::vmm_server`]):
//! the guest's priority; a kernel-memory quota of [`VMM_QUOTA_BASE`] plus [`VMM_QUOTA_PER_MIB`]
//! per MiB of guest memory, plus [`VMM_QUOTA_SHADOW`] in shadow mode (the Vm's nested page tables, the vCPU, 18 exit portals, the server's
//! own page tables for its view of guest memory, with room to spare); [`VMM_MEMORY`] of stack;
//! scratch memory (`GET_RESOURCE "memory"`) exactly the size of the guest's RAM; and
//! `serial.log` when the system has a `serial` server providing `log`. Server names cannot hold
//! a `.`, so no server of the manifest can take a `vmm.` name; the module name [`VMM_MODULE`]
//! is reserved in systems with guests.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::check::{valid_server_name, Place, Problem, Rule};
use crate::{
    Expect, Guest, MemoryMode, Server, SystemImage, Use, MAX_PRIORITY, NAME_MAX, PAGE_SIZE,
};

/// Boot-module name of the vmm-server ELF, packed once for all guests.
pub const VMM_MODULE: &str = "vmm-server";
/// Prefix of the implied server's name: `vmm.<guest>`.
pub const VMM_PREFIX: &str = "vmm.";
/// Prefix of a guest image's boot-module name: `guest.<guest>`.
pub const IMAGE_PREFIX: &str = "guest.";
/// Prefix of a guest initrd's boot-module name: `initrd.<guest>`.
pub const INITRD_PREFIX: &str = "initrd.";
/// Longest guest name: `initrd.<name>` (the longer of a guest's module names) must fit the
/// kernel's 48-byte module-name field (with its NUL), like every module name ([`NAME_MAX`]).
pub const GUEST_NAME_MAX: usize = NAME_MAX - INITRD_PREFIX.len();
/// Guest memory is whole 2 MiB pages (the unit of large nested-paging leaves).
pub const GUEST_MEMORY_ALIGN: u64 = 2 << 20;
/// Smallest guest memory.
pub const GUEST_MEMORY_MIN: u64 = GUEST_MEMORY_ALIGN;
/// Largest guest memory: 3 GiB, below the 32-bit hole where a PC's local APIC, IOAPIC and
/// firmware live (0xc000_0000 up) and within the 32-bit fields of the Multiboot information.
/// What a machine really allows is smaller: init's pool (a quarter of free memory rounded
/// down to a power of two, 256 MiB on the largest machine, `ram = "2G"`) holds every guest's
/// memory, and the build tool refuses a system that does not fit it.
pub const GUEST_MEMORY_MAX: u64 = 3 << 30;
/// Longest guest command line in bytes (the vmm-server's `vmm::layout::CMDLINE_MAX`); it
/// reaches the vmm-server over as many `GET_CONFIG` replies as it takes ([`config_words`]).
pub const GUEST_CMDLINE_MAX: usize = 2048;
/// Virtual CPUs a guest may have (SMP guests are not supported yet).
pub const GUEST_VCPUS: u8 = 1;
/// Kernel-memory quota of every vmm-server instance, before the per-MiB part.
pub const VMM_QUOTA_BASE: u64 = 256 * 1024;
/// Kernel-memory quota of a vmm-server instance per MiB of guest memory.
pub const VMM_QUOTA_PER_MIB: u64 = 16 * 1024;
/// Extra kernel-memory quota of a vmm-server whose guest runs in shadow mode: the kernel's
/// shadow-table pool for the Vm (128 frames of 4 KiB, `kernel/src/kern/shadow.rs`).
pub const VMM_QUOTA_SHADOW: u64 = 128 * 4096;
/// Stack of every vmm-server instance (its heap is a static arena in its ELF).
pub const VMM_MEMORY: u64 = 512 * 1024;
/// The portal of the serial driver that a vmm-server uses when the system has one.
pub const SERIAL_LOG: (&str, &str) = ("serial", "log");
/// The DMP service's portal that the vmm-server of a guest with `dmp = true` uses.
pub const DMP_ATTACH: (&str, &str) = ("dmp-service", "attach");
/// The most bytes of configuration a `GET_CONFIG` reply carries: the message's 64 words less
/// the status and the length.
pub const CONFIG_BYTES_MAX: usize = (abi::utcb::MSG_WORDS - 2) * 8;
/// The most bytes a guest's whole configuration may have (several `GET_CONFIG` replies).
pub const CONFIG_TOTAL_MAX: usize = 4096;

/// A field of a guest, as written in the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestField {
    Name,
    Image,
    Memory,
    Vcpus,
    Mode,
    Cmdline,
    Priority,
    Expect,
    FuzzReplies,
}

impl Guest {
    /// `vmm.<name>`: the server that runs this guest.
    pub fn vmm_name(&self) -> String {
        format!("{VMM_PREFIX}{}", self.name)
    }

    /// `guest.<name>`: the boot-module name the build tool gives this guest's image.
    pub fn module_name(name: &str) -> String {
        format!("{IMAGE_PREFIX}{name}")
    }

    /// `initrd.<name>`: the boot-module name of the guest's initrd, if it has one.
    pub fn initrd_module(&self) -> Option<String> {
        self.initrd.then(|| format!("{INITRD_PREFIX}{}", self.name))
    }

    /// Guest memory in 4 KiB pages.
    pub fn memory_pages(&self) -> u64 {
        self.memory_bytes / PAGE_SIZE
    }
}

impl SystemImage {
    /// The server implied by guest `guest` (see the module documentation).
    pub fn vmm_server(&self, guest: &Guest) -> Server {
        let (serial, log) = SERIAL_LOG;
        let mut uses = match self.server(serial) {
            Some(s) if s.provides(log) => vec![Use {
                server: serial.into(),
                portal: log.into(),
                rights: abi::Rights::CALL.0,
            }],
            _ => Vec::new(),
        };
        let (dmp, attach) = DMP_ATTACH;
        if guest.dmp && self.server(dmp).is_some_and(|s| s.provides(attach)) {
            uses.push(Use {
                server: dmp.into(),
                portal: attach.into(),
                rights: abi::Rights::CALL.0,
            });
        }
        Server {
            name: guest.vmm_name(),
            priority: guest.priority,
            quota: VMM_QUOTA_BASE
                + VMM_QUOTA_PER_MIB * (guest.memory_bytes >> 20)
                + if guest.mode == MemoryMode::Shadow {
                    VMM_QUOTA_SHADOW
                } else {
                    0
                },
            memory_pages: VMM_MEMORY / PAGE_SIZE,
            scratch_pages: guest.memory_pages(),
            io_ports: Vec::new(),
            irqs: Vec::new(),
            portals: Vec::new(),
            uses,
            power_off: false,
            fault_handler: None,
        }
    }

    /// Every protection domain init starts, in order: the manifest's servers, then one
    /// vmm-server per guest. Server `servers.len() + i` runs guest `i`. The result is not a
    /// manifest (its `vmm.` names break the naming rule); [`SystemImage::grant`] works on it.
    pub fn with_vmm_servers(&self) -> SystemImage {
        let mut all = self.clone();
        all.servers
            .extend(self.guests.iter().map(|g| self.vmm_server(g)));
        all
    }

    pub(crate) fn check_guests(&self, out: &mut Vec<Problem>) {
        for (index, guest) in self.guests.iter().enumerate() {
            let mut report = |field, rule| {
                out.push(Problem {
                    place: Place::Guest {
                        guest: index,
                        field,
                    },
                    rule,
                })
            };
            if !valid_guest_name(&guest.name) {
                report(GuestField::Name, Rule::GuestName);
            }
            if let Some(first) = self.guests[..index]
                .iter()
                .position(|g| g.name == guest.name)
            {
                report(GuestField::Name, Rule::DuplicateGuest { first });
            }
            let image_ok = guest
                .image
                .strip_prefix(IMAGE_PREFIX)
                .is_some_and(valid_guest_name);
            if !image_ok {
                report(GuestField::Image, Rule::GuestImage);
            }
            let memory = guest.memory_bytes;
            if !(GUEST_MEMORY_MIN..=GUEST_MEMORY_MAX).contains(&memory)
                || !memory.is_multiple_of(GUEST_MEMORY_ALIGN)
            {
                report(GuestField::Memory, Rule::GuestMemory);
            }
            if guest.vcpus != GUEST_VCPUS {
                report(GuestField::Vcpus, Rule::Vcpus);
            }
            if guest.cmdline.len() > GUEST_CMDLINE_MAX
                || guest.cmdline.chars().any(char::is_control)
            {
                report(GuestField::Cmdline, Rule::GuestCmdline);
            }
            if guest.priority > MAX_PRIORITY {
                report(GuestField::Priority, Rule::Priority);
            }
            if guest.fuzz_replies.is_some() && guest.expect != Expect::Any {
                report(GuestField::FuzzReplies, Rule::FuzzedExpect);
            }
        }
    }

    /// The message of a problem of guest `index`.
    pub(crate) fn guest_message(&self, index: usize, rule: Rule) -> String {
        let Some(guest) = self.guests.get(index) else {
            return format!("guest #{index} does not exist");
        };
        let name = guest.name.as_str();
        match rule {
            Rule::GuestName => format!(
                "guest name `{name}` must be 1 to {GUEST_NAME_MAX} characters from A-Z, a-z, 0-9, `-` and `_`"
            ),
            Rule::DuplicateGuest { .. } => format!("two guests are named `{name}`"),
            Rule::GuestImage => format!(
                "the image module `{}` of guest `{name}` must be `{IMAGE_PREFIX}` and a valid guest name",
                guest.image
            ),
            Rule::GuestMemory => format!(
                "the memory of guest `{name}` ({} bytes) must be a multiple of 2 MiB from 2 MiB to 3 GiB",
                guest.memory_bytes
            ),
            Rule::Vcpus => format!(
                "guest `{name}` asks for {} vCPUs; only {GUEST_VCPUS} is supported",
                guest.vcpus
            ),
            Rule::GuestCmdline => format!(
                "the command line of guest `{name}` must be one line of at most {GUEST_CMDLINE_MAX} bytes (it has {})",
                guest.cmdline.len()
            ),
            Rule::Priority => format!(
                "priority {} of guest `{name}` is above the highest, {MAX_PRIORITY}",
                guest.priority
            ),
            Rule::FuzzedExpect => format!(
                "guest `{name}` has its replies fuzzed (fuzz_replies), so how it ends is random: it needs expect = \"any\" (it has \"{}\")",
                guest.expect
            ),
            _ => format!("guest `{name}`: {rule:?}"),
        }
    }
}

/// 1 to [`GUEST_NAME_MAX`] characters from `A-Z a-z 0-9 - _`.
pub fn valid_guest_name(name: &str) -> bool {
    name.len() <= GUEST_NAME_MAX && valid_server_name(name)
}

/// The words after the status of a `GET_CONFIG` reply for the configuration `bytes`, asked
/// from byte `offset` on: the whole length, then up to [`CONFIG_BYTES_MAX`] bytes from `offset`
/// packed eight to a word, little-endian. `None` when `offset` is past the end or the whole
/// exceeds [`CONFIG_TOTAL_MAX`].
pub fn config_words(bytes: &[u8], offset: usize) -> Option<Vec<u64>> {
    if bytes.len() > CONFIG_TOTAL_MAX {
        return None;
    }
    let rest = bytes.get(offset..)?;
    let chunk = &rest[..rest.len().min(CONFIG_BYTES_MAX)];
    let mut words = vec![bytes.len() as u64];
    words.extend(chunk.chunks(8).map(|piece| {
        let mut word = [0u8; 8];
        word[..piece.len()].copy_from_slice(piece);
        u64::from_le_bytes(word)
    }));
    Some(words)
}

/// The inverse of [`config_words`] for a reply asked from `offset`: the whole length and this
/// reply's bytes. `None` when the length exceeds [`CONFIG_TOTAL_MAX`], `offset` is past it, or
/// the words hold fewer bytes than they should.
pub fn config_chunk(words: &[u64], offset: usize) -> Option<(usize, Vec<u8>)> {
    let (&total, rest) = words.split_first()?;
    let total = usize::try_from(total).ok()?;
    if total > CONFIG_TOTAL_MAX || offset > total {
        return None;
    }
    let len = (total - offset).min(CONFIG_BYTES_MAX);
    if len > rest.len().checked_mul(8)? {
        return None;
    }
    let mut bytes: Vec<u8> = rest.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.truncate(len);
    Some((total, bytes))
}

/// The whole configuration, asked reply by reply: `ask(offset)` returns the words of the
/// `GET_CONFIG` reply from `offset` (`None`: the request failed). `None` on a failed request,
/// a malformed reply or a length that changes between replies.
pub fn config_gather(mut ask: impl FnMut(usize) -> Option<Vec<u64>>) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut total = None;
    loop {
        let (whole, chunk) = config_chunk(&ask(bytes.len())?, bytes.len())?;
        if *total.get_or_insert(whole) != whole {
            return None;
        }
        bytes.extend_from_slice(&chunk);
        if bytes.len() >= whole {
            return Some(bytes);
        }
    }
}

impl Expect {
    /// Reads the manifest's `expect` text: `exit N` (N in 0..=255), `stopped`, `shutdown`,
    /// `reset`, `any`.
    pub fn parse(text: &str) -> Option<Expect> {
        match text {
            "any" => Some(Expect::Any),
            "stopped" => Some(Expect::Stopped),
            "shutdown" => Some(Expect::Shutdown),
            "reset" => Some(Expect::Reset),
            _ => {
                let status = text.strip_prefix("exit ")?;
                if status.is_empty() || !status.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                status.parse().ok().map(Expect::Exit)
            }
        }
    }

    /// Whether a guest that ended with `outcome` (`abi::bootstrap::outcome`) and `detail` met
    /// this expectation.
    pub fn met_by(self, outcome: u64, detail: u64) -> bool {
        use abi::bootstrap::outcome::{EXITED, RESET, SHUTDOWN, STOPPED};
        match self {
            Expect::Exit(status) => outcome == EXITED && detail == u64::from(status),
            Expect::Stopped => outcome == STOPPED,
            Expect::Shutdown => outcome == SHUTDOWN,
            Expect::Reset => outcome == RESET,
            Expect::Any => true,
        }
    }
}

impl core::fmt::Display for Expect {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Expect::Exit(status) => write!(f, "exit {status}"),
            Expect::Stopped => f.write_str("stopped"),
            Expect::Shutdown => f.write_str("shutdown"),
            Expect::Reset => f.write_str("reset"),
            Expect::Any => f.write_str("any"),
        }
    }
}

/// How init words a guest's end: `exited 0`, `stopped at 0x1000`, `shut down`, `reset`,
/// `failed (code 3)`, `ended with outcome 9`.
pub fn outcome_text(outcome: u64, detail: u64) -> String {
    use abi::bootstrap::outcome::{EXITED, FAILED, RESET, SHUTDOWN, STOPPED};
    match outcome {
        EXITED => format!("exited {detail}"),
        STOPPED => format!("stopped at {detail:#x}"),
        SHUTDOWN => format!("shut down (rip {detail:#x})"),
        RESET => String::from("reset"),
        FAILED => format!("failed (code {detail})"),
        other => format!("ended with outcome {other}"),
    }
}
