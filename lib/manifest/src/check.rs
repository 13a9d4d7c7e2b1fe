//! The rules a system image must follow, checked by the build tool (which maps each [`Place`]
//! back to a line of the TOML source) and again by init when it decodes the image.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::guests::{GuestField, VMM_MODULE};
use crate::{split_portal, PortRange, SystemImage, IRQ_LINES, MAX_PRIORITY, NAME_MAX};
use crate::{RESERVED_NAMES, USE_RIGHTS};

/// A field of a server, as written in the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Name,
    Priority,
    Quota,
    Memory,
    IoPorts,
    Irqs,
    Portals,
    Uses,
    FaultHandler,
}

/// Where a problem lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The system's name.
    System,
    /// `field` of the server at index `server`; `item` indexes the field's list, if it is one.
    Server {
        server: usize,
        field: Field,
        item: Option<usize>,
    },
    /// `field` of the guest at index `guest`.
    Guest { guest: usize, field: GuestField },
}

/// The rule a problem breaks. Indices name servers (and list items) in the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The system has an empty name.
    SystemName,
    /// A server name is empty, longer than [`NAME_MAX`] or has a character outside
    /// `A-Z a-z 0-9 - _`.
    ServerName,
    /// A server takes a name from [`RESERVED_NAMES`], or [`VMM_MODULE`] in a system with guests.
    ReservedName,
    /// Another server, listed earlier, has the same name.
    DuplicateServer {
        first: usize,
    },
    /// Priority above [`MAX_PRIORITY`].
    Priority,
    ZeroQuota,
    ZeroMemory,
    /// An I/O-port range with `count = 0`.
    EmptyPortRange,
    /// An I/O-port range that runs past port 0xffff.
    PortRangeOverflow,
    /// An I/O-port range overlaps `item` of `server` (maybe the same server).
    PortOverlap {
        server: usize,
        item: usize,
    },
    /// An IRQ line at or above [`IRQ_LINES`].
    Irq,
    /// The IRQ line is given to `server` already (maybe the same server, listed twice).
    IrqTaken {
        server: usize,
    },
    /// A portal name is empty, longer than [`NAME_MAX`], or has a `.`, a space or a control
    /// character.
    PortalName,
    /// The server lists the same portal twice.
    DuplicatePortal,
    /// A use or the fault handler names a server that does not exist.
    UnknownServer,
    /// A use or the fault handler names a portal that its server does not provide.
    UnknownPortal,
    /// The fault handler is not of the form `server.portal`.
    PortalRef,
    /// A use's rights are not one of [`USE_RIGHTS`].
    Rights,
    /// The server lists the same use twice (the other is `item`).
    DuplicateUse {
        item: usize,
    },
    /// A guest name is empty, longer than [`crate::GUEST_NAME_MAX`] or has a character outside
    /// `A-Z a-z 0-9 - _`.
    GuestName,
    /// Another guest, listed earlier, has the same name.
    DuplicateGuest {
        first: usize,
    },
    /// A guest's image module is not named `guest.<valid name>`.
    GuestImage,
    /// Guest memory is not a multiple of 2 MiB from 2 MiB to 1 GiB.
    GuestMemory,
    /// A guest asks for other than [`crate::GUEST_VCPUS`] vCPUs.
    Vcpus,
    /// A guest command line is longer than [`crate::GUEST_CMDLINE_MAX`] bytes or has a control
    /// character.
    GuestCmdline,
    /// A guest with `fuzz_replies` whose `expect` is not [`crate::Expect::Any`] (how a fuzzed
    /// guest ends is random).
    FuzzedExpect,
}

/// One broken rule and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Problem {
    pub place: Place,
    pub rule: Rule,
}

impl SystemImage {
    /// Every problem of the image, in the order of the servers and their fields, then the
    /// guests and theirs.
    pub fn check(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.name.is_empty() {
            out.push(Problem {
                place: Place::System,
                rule: Rule::SystemName,
            });
        }
        for index in 0..self.servers.len() {
            Checker {
                image: self,
                index,
                out: &mut out,
            }
            .run();
        }
        self.check_guests(&mut out);
        out
    }
}

struct Checker<'a> {
    image: &'a SystemImage,
    index: usize,
    out: &'a mut Vec<Problem>,
}

impl Checker<'_> {
    fn report(&mut self, field: Field, item: Option<usize>, rule: Rule) {
        self.out.push(Problem {
            place: Place::Server {
                server: self.index,
                field,
                item,
            },
            rule,
        });
    }

    fn run(&mut self) {
        let image = self.image;
        let server = &image.servers[self.index];
        let earlier = &image.servers[..self.index];
        if !valid_server_name(&server.name) {
            self.report(Field::Name, None, Rule::ServerName);
        } else if RESERVED_NAMES.contains(&server.name.as_str())
            || (!image.guests.is_empty() && server.name == VMM_MODULE)
        {
            self.report(Field::Name, None, Rule::ReservedName);
        }
        if let Some(first) = earlier.iter().position(|s| s.name == server.name) {
            self.report(Field::Name, None, Rule::DuplicateServer { first });
        }
        if server.priority > MAX_PRIORITY {
            self.report(Field::Priority, None, Rule::Priority);
        }
        if server.quota == 0 {
            self.report(Field::Quota, None, Rule::ZeroQuota);
        }
        if server.memory_pages == 0 {
            self.report(Field::Memory, None, Rule::ZeroMemory);
        }
        self.ports();
        self.irqs();
        for (item, portal) in server.portals.iter().enumerate() {
            if !valid_portal_name(portal) {
                self.report(Field::Portals, Some(item), Rule::PortalName);
            } else if server.portals[..item].contains(portal) {
                self.report(Field::Portals, Some(item), Rule::DuplicatePortal);
            }
        }
        for (item, used) in server.uses.iter().enumerate() {
            if let Some(rule) = self.target_rule(&used.server, &used.portal) {
                self.report(Field::Uses, Some(item), rule);
            } else if !USE_RIGHTS.contains(&abi::Rights(used.rights)) {
                self.report(Field::Uses, Some(item), Rule::Rights);
            } else if let Some(other) = server.uses[..item]
                .iter()
                .position(|u| u.server == used.server && u.portal == used.portal)
            {
                self.report(Field::Uses, Some(item), Rule::DuplicateUse { item: other });
            }
        }
        if let Some(handler) = &server.fault_handler {
            let rule = match split_portal(handler) {
                Some((target, portal)) => self.target_rule(target, portal),
                None => Some(Rule::PortalRef),
            };
            if let Some(rule) = rule {
                self.report(Field::FaultHandler, None, rule);
            }
        }
    }

    /// Why `server.portal` cannot be obtained, if it cannot.
    fn target_rule(&self, server: &str, portal: &str) -> Option<Rule> {
        match self.image.server(server) {
            None => Some(Rule::UnknownServer),
            Some(target) if !target.provides(portal) => Some(Rule::UnknownPortal),
            Some(_) => None,
        }
    }

    fn ports(&mut self) {
        let image = self.image;
        let server = &image.servers[self.index];
        for (item, &range) in server.io_ports.iter().enumerate() {
            if range.count == 0 {
                self.report(Field::IoPorts, Some(item), Rule::EmptyPortRange);
                continue;
            }
            if range.end() > 0x1_0000 {
                self.report(Field::IoPorts, Some(item), Rule::PortRangeOverflow);
            }
            // Against every range listed before this one (in this server or an earlier one).
            let before = image.servers[..=self.index]
                .iter()
                .enumerate()
                .flat_map(|(s, other)| {
                    other
                        .io_ports
                        .iter()
                        .enumerate()
                        .map(move |(i, r)| (s, i, r))
                })
                .filter(|&(s, i, _)| s < self.index || i < item);
            if let Some((s, i, _)) = before
                .filter(|&(_, _, r)| r.count != 0)
                .find(|&(_, _, r)| r.overlaps(range))
            {
                self.report(
                    Field::IoPorts,
                    Some(item),
                    Rule::PortOverlap { server: s, item: i },
                );
            }
        }
    }

    fn irqs(&mut self) {
        let image = self.image;
        let server = &image.servers[self.index];
        for (item, &irq) in server.irqs.iter().enumerate() {
            if irq >= IRQ_LINES {
                self.report(Field::Irqs, Some(item), Rule::Irq);
            } else if server.irqs[..item].contains(&irq) {
                self.report(
                    Field::Irqs,
                    Some(item),
                    Rule::IrqTaken { server: self.index },
                );
            } else if let Some(s) = image.servers[..self.index]
                .iter()
                .position(|other| other.irqs.contains(&irq))
            {
                self.report(Field::Irqs, Some(item), Rule::IrqTaken { server: s });
            }
        }
    }
}

/// 1 to [`NAME_MAX`] characters from `A-Z a-z 0-9 - _`.
pub fn valid_server_name(name: &str) -> bool {
    (1..=NAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// 1 to [`NAME_MAX`] bytes without `.`, whitespace or control characters.
pub fn valid_portal_name(name: &str) -> bool {
    (1..=NAME_MAX).contains(&name.len())
        && !name
            .chars()
            .any(|c| c == '.' || c.is_whitespace() || c.is_control())
}

fn show_ports(range: PortRange) -> String {
    format!("{:#x}..{:#x}", range.base, range.end())
}

impl Problem {
    /// The place of the other party of a conflict (the first server of a name, the range or
    /// IRQ given before), for messages that point at both.
    pub fn related(&self) -> Option<Place> {
        let server_field = |server, field, item| Place::Server {
            server,
            field,
            item,
        };
        let server = match self.place {
            Place::Server { server, .. } => server,
            Place::Guest { .. } => {
                return match self.rule {
                    Rule::DuplicateGuest { first } => Some(Place::Guest {
                        guest: first,
                        field: GuestField::Name,
                    }),
                    _ => None,
                };
            }
            Place::System => return None,
        };
        match self.rule {
            Rule::DuplicateServer { first } => Some(server_field(first, Field::Name, None)),
            Rule::PortOverlap { server, item } => {
                Some(server_field(server, Field::IoPorts, Some(item)))
            }
            Rule::IrqTaken { server: other } if other != server => {
                Some(server_field(other, Field::Name, None))
            }
            Rule::DuplicateUse { item } => Some(server_field(server, Field::Uses, Some(item))),
            _ => None,
        }
    }

    /// A one-line description of the problem in `image` (without its place).
    pub fn message(&self, image: &SystemImage) -> String {
        let (index, item) = match self.place {
            Place::Server { server, item, .. } => (server, item),
            Place::Guest { guest, .. } => return image.guest_message(guest, self.rule),
            Place::System => return String::from("the system needs a non-empty name"),
        };
        let Some(server) = image.servers.get(index) else {
            return format!("server #{index} does not exist");
        };
        let name = server.name.as_str();
        let item = item.unwrap_or(0);
        let name_of = |i: usize| image.servers.get(i).map_or("?", |s| s.name.as_str());
        let used = server.uses.get(item);
        let target = match (self.place, used) {
            (
                Place::Server {
                    field: Field::Uses, ..
                },
                Some(u),
            ) => format!("{}.{}", u.server, u.portal),
            _ => server.fault_handler.clone().unwrap_or_default(),
        };
        let range = server
            .io_ports
            .get(item)
            .copied()
            .unwrap_or(PortRange { base: 0, count: 0 });
        let irq = server.irqs.get(item).copied().unwrap_or(0);
        let portal = server.portals.get(item).map_or("", String::as_str);
        match self.rule {
            Rule::SystemName => String::from("the system needs a non-empty name"),
            Rule::ServerName => format!(
                "server name `{name}` must be 1 to {NAME_MAX} characters from A-Z, a-z, 0-9, `-` and `_`"
            ),
            Rule::ReservedName if name == VMM_MODULE => format!(
                "server name `{name}` is reserved: a system with guests has a boot module of that name"
            ),
            Rule::ReservedName => format!(
                "server name `{name}` is reserved: every system has a boot module of that name"
            ),
            Rule::DuplicateServer { .. } => format!("two servers are named `{name}`"),
            Rule::Priority => format!(
                "priority {} of `{name}` is above the highest, {MAX_PRIORITY}",
                server.priority
            ),
            Rule::ZeroQuota => format!("the kernel-memory quota of `{name}` is zero"),
            Rule::ZeroMemory => format!("the memory of `{name}` is zero"),
            Rule::EmptyPortRange => format!(
                "the I/O-port range at {:#x} of `{name}` is empty (count = 0)",
                range.base
            ),
            Rule::PortRangeOverflow => format!(
                "the I/O ports {} of `{name}` run past the last port, 0xffff",
                show_ports(range)
            ),
            Rule::PortOverlap { server: s, item: i } => {
                let other = image
                    .servers
                    .get(s)
                    .and_then(|o| o.io_ports.get(i))
                    .copied()
                    .unwrap_or(range);
                if s == index {
                    format!(
                        "the I/O ports {} of `{name}` overlap its ports {}",
                        show_ports(range),
                        show_ports(other)
                    )
                } else {
                    format!(
                        "the I/O ports {} of `{name}` overlap the ports {} of `{}`",
                        show_ports(range),
                        show_ports(other),
                        name_of(s)
                    )
                }
            }
            Rule::Irq => format!(
                "IRQ {irq} of `{name}` does not exist (legacy lines are 0 to {})",
                IRQ_LINES - 1
            ),
            Rule::IrqTaken { server: s } if s == index => {
                format!("IRQ {irq} is listed twice for `{name}`")
            }
            Rule::IrqTaken { server: s } => {
                format!("IRQ {irq} is given to both `{}` and `{name}`", name_of(s))
            }
            Rule::PortalName => format!(
                "portal name `{portal}` of `{name}` must be 1 to {NAME_MAX} bytes without `.`, spaces or control characters"
            ),
            Rule::DuplicatePortal => format!("`{name}` lists portal `{portal}` twice"),
            Rule::UnknownServer => {
                let (s, _) = split_portal(&target).unwrap_or((&target, ""));
                format!("`{target}` names no server `{s}`")
            }
            Rule::UnknownPortal => {
                let (s, p) = split_portal(&target).unwrap_or((&target, ""));
                let provided = image.server(s).map(|t| t.portals.join(", ")).unwrap_or_default();
                if provided.is_empty() {
                    format!("server `{s}` provides no portal `{p}` (it provides none)")
                } else {
                    format!("server `{s}` provides no portal `{p}` (it provides: {provided})")
                }
            }
            Rule::PortalRef => {
                format!("fault handler `{target}` of `{name}` is not of the form `server.portal`")
            }
            Rule::Rights => format!(
                "the rights {:#x} of `{name}` on `{target}` are neither CALL nor CALL|GRANT",
                used.map_or(0, |u| u.rights)
            ),
            Rule::DuplicateUse { .. } => format!("`{name}` uses `{target}` twice"),
            Rule::GuestName
            | Rule::DuplicateGuest { .. }
            | Rule::GuestImage
            | Rule::GuestMemory
            | Rule::Vcpus
            | Rule::GuestCmdline
            | Rule::FuzzedExpect => format!("server `{name}`: {:?}", self.rule),
        }
    }
}
