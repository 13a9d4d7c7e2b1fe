//! The manifest's TOML form, read with the position of every value, and its translation into
//! the compiled form ([`manifest::SystemImage`]).
//!
//! Only what TOML cannot say on its own is checked here (sizes, numbers that do not fit their
//! type, `server.portal` syntax, workspace packages); the rules of the system itself live in the
//! `manifest` crate and are mapped back to lines through [`Spans`].

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use manifest::{Expect, Field, Guest, GuestField, MemoryMode, Place, PortRange, Server};
use manifest::{SystemImage, Use};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use crate::workspace::Workspace;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub system: SystemSection,
    #[serde(default)]
    pub server: Vec<ServerEntry>,
    #[serde(default)]
    pub guest: Vec<GuestEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemSection {
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: String,
    pub cmdline: Option<Spanned<String>>,
    #[serde(default)]
    pub modules: Vec<Spanned<ModuleEntry>>,
    /// RAM of the emulated machine (default [`super::DEFAULT_RAM`]).
    pub ram: Option<Spanned<Size>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleEntry {
    /// Path of the module file, relative to the repository root.
    pub file: String,
    /// The module's name (its command line); defaults to the file name.
    pub name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    name: Spanned<String>,
    /// Workspace package of the server's ELF (default: `name`).
    binary: Option<Spanned<String>>,
    priority: Spanned<i64>,
    quota: Spanned<Size>,
    memory: Spanned<Size>,
    /// Memory the server may obtain as a capability of its own (`GET_RESOURCE "memory"`).
    scratch: Option<Spanned<Size>>,
    #[serde(default)]
    io_ports: Vec<Spanned<PortEntry>>,
    #[serde(default)]
    irqs: Vec<Spanned<i64>>,
    #[serde(default)]
    portals: Vec<Spanned<String>>,
    #[serde(default)]
    uses: Vec<Spanned<UseEntry>>,
    #[serde(default)]
    power_off: bool,
    fault_handler: Option<Spanned<String>>,
}

/// A `[[guest]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestEntry {
    name: Spanned<String>,
    /// Binary of a guest crate under `tests/guests/`, or a file path ([`GuestImage::read`]).
    image: Spanned<String>,
    /// A file handed to the guest as its initrd (a path like `image`'s).
    initrd: Option<Spanned<String>>,
    memory: Spanned<Size>,
    vcpus: Option<Spanned<i64>>,
    /// `"nested"` (default) or `"shadow"`.
    mode: Option<Spanned<String>>,
    cmdline: Option<Spanned<String>>,
    priority: Option<Spanned<i64>>,
    /// `"exit N"` (default `"exit 0"`), `"stopped"`, `"shutdown"`, `"reset"`, `"any"`.
    expect: Option<Spanned<String>>,
    /// DMP hypercalls answered by the kernel (shadow mode only; default false).
    hypercalls: Option<Spanned<bool>>,
    /// Exit profiles to the DMP service, which may patch the guest (shadow mode only).
    dmp: Option<Spanned<bool>>,
    /// The seed of the reply fuzzer (issue #11): a non-negative integer (0 is a seed); the
    /// guest then needs `expect = "any"`.
    fuzz_replies: Option<Spanned<i64>>,
}

/// Where a guest's image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestImage {
    /// The binary of a guest crate under `tests/guests/`, built by the tool.
    Crate(String),
    /// A file, packed as it is (any format the vmm-server loads).
    File(PathBuf),
}

impl GuestImage {
    /// Reads the manifest's `image` value: a value with a `/` or a `.` is a file path
    /// (relative to the manifest's directory `dir`, or absolute); anything else names a guest
    /// crate's binary (package and binary names never hold either character).
    pub fn read(value: &str, dir: &Path) -> GuestImage {
        if is_path(value) {
            GuestImage::File(resolve(value, dir))
        } else {
            GuestImage::Crate(value.to_string())
        }
    }
}

/// Whether a manifest's `image` value is a file path rather than a guest crate's binary.
pub fn is_path(value: &str) -> bool {
    value.contains('/') || value.contains('.')
}

/// `value` as a path: absolute as it is, else below `dir` (the manifest's directory).
pub fn resolve(value: &str, dir: &Path) -> PathBuf {
    let path = Path::new(value);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    }
}

/// A guest's priority when the manifest gives none.
pub const GUEST_PRIORITY: u8 = 10;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortEntry {
    base: i64,
    count: i64,
}

/// A byte count: an integer, or a string of digits with an optional `K`, `M` or `G` suffix
/// (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// `"server.portal"` or `{ portal = "server.portal", grant = true }`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UseEntry {
    portal: String,
    grant: bool,
}

/// Where each value of each server was written, to turn a [`Place`] into a position.
#[derive(Debug, Default)]
pub struct Spans {
    pub system_name: Range<usize>,
    pub servers: Vec<ServerSpans>,
    pub guests: Vec<GuestSpans>,
}

/// Where each value of a guest was written (its name when the field was left out).
#[derive(Debug, Default)]
pub struct GuestSpans {
    name: Range<usize>,
    image: Range<usize>,
    memory: Range<usize>,
    vcpus: Option<Range<usize>>,
    mode: Option<Range<usize>>,
    cmdline: Option<Range<usize>>,
    priority: Option<Range<usize>>,
    expect: Option<Range<usize>>,
    fuzz_replies: Option<Range<usize>>,
}

#[derive(Debug, Default)]
pub struct ServerSpans {
    name: Range<usize>,
    priority: Range<usize>,
    quota: Range<usize>,
    memory: Range<usize>,
    io_ports: Vec<Range<usize>>,
    irqs: Vec<Range<usize>>,
    portals: Vec<Range<usize>>,
    uses: Vec<Range<usize>>,
    fault_handler: Option<Range<usize>>,
}

impl Spans {
    /// Where `place` was written (the server's name when the field has no position of its own).
    pub fn of(&self, place: Place) -> Range<usize> {
        let (server, field, item) = match place {
            Place::Server {
                server,
                field,
                item,
            } => (server, field, item),
            Place::Guest { guest, field } => return self.of_guest(guest, field),
            Place::System => return self.system_name.clone(),
        };
        let Some(s) = self.servers.get(server) else {
            return self.system_name.clone();
        };
        let listed = |list: &[Range<usize>]| item.and_then(|i| list.get(i)).cloned();
        match field {
            Field::Name => None,
            Field::Priority => Some(s.priority.clone()),
            Field::Quota => Some(s.quota.clone()),
            Field::Memory => Some(s.memory.clone()),
            Field::IoPorts => listed(&s.io_ports),
            Field::Irqs => listed(&s.irqs),
            Field::Portals => listed(&s.portals),
            Field::Uses => listed(&s.uses),
            Field::FaultHandler => s.fault_handler.clone(),
        }
        .unwrap_or_else(|| s.name.clone())
    }

    fn of_guest(&self, guest: usize, field: GuestField) -> Range<usize> {
        let Some(g) = self.guests.get(guest) else {
            return self.system_name.clone();
        };
        match field {
            GuestField::Name => None,
            GuestField::Image => Some(g.image.clone()),
            GuestField::Memory => Some(g.memory.clone()),
            GuestField::Vcpus => g.vcpus.clone(),
            GuestField::Mode => g.mode.clone(),
            GuestField::Cmdline => g.cmdline.clone(),
            GuestField::Priority => g.priority.clone(),
            GuestField::Expect => g.expect.clone(),
            GuestField::FuzzReplies => g.fuzz_replies.clone(),
        }
        .unwrap_or_else(|| g.name.clone())
    }
}

/// The compiled form of the servers, the package each is built from, where everything was
/// written, and the problems found on the way (position, message).
pub struct Compiled {
    pub image: SystemImage,
    pub binaries: Vec<String>,
    /// The image of each guest, in the order of `image.guests`.
    pub guest_images: Vec<GuestImage>,
    /// The initrd file of each guest, if any, in the order of `image.guests`.
    pub guest_initrds: Vec<Option<PathBuf>>,
    pub spans: Spans,
    /// Values that cannot be represented in the image (a placeholder stands in for each).
    pub errors: Vec<(Range<usize>, String)>,
    /// `binary` packages that are missing from the workspace or build no binary.
    pub package_errors: Vec<(Range<usize>, String)>,
}

/// Translates the parsed file. `workspace` (when given) is where `binary` packages must exist;
/// guest image and initrd paths are relative to `dir`, the manifest's directory, and must exist.
pub fn compile(file: &File, workspace: Option<&Workspace>, dir: &Path) -> Compiled {
    let mut errors = Vec::new();
    let mut package_errors = Vec::new();
    let mut servers = Vec::new();
    let mut binaries = Vec::new();
    let mut spans = Spans {
        system_name: file.system.name.span(),
        servers: Vec::new(),
        guests: Vec::new(),
    };
    for entry in &file.server {
        if let Some(ws) = workspace {
            check_package(entry, ws, &mut package_errors);
        }
        let (server, binary, server_spans) = compile_server(entry, &mut errors);
        servers.push(server);
        binaries.push(binary);
        spans.servers.push(server_spans);
    }
    let mut guests = Vec::new();
    let mut guest_images = Vec::new();
    let mut guest_initrds = Vec::new();
    for entry in &file.guest {
        let image = GuestImage::read(entry.image.get_ref(), dir);
        match &image {
            GuestImage::Crate(_) => {
                if let Some(ws) = workspace {
                    check_guest_image(entry, ws, &mut package_errors);
                }
            }
            GuestImage::File(path) => check_file(entry, "image", &entry.image, path, &mut errors),
        }
        let initrd = entry.initrd.as_ref().map(|value| {
            let path = resolve(value.get_ref(), dir);
            check_file(entry, "initrd", value, &path, &mut errors);
            path
        });
        guests.push(compile_guest(entry, &mut errors));
        guest_images.push(image);
        guest_initrds.push(initrd);
        spans.guests.push(GuestSpans {
            name: entry.name.span(),
            image: entry.image.span(),
            memory: entry.memory.span(),
            vcpus: entry.vcpus.as_ref().map(Spanned::span),
            mode: entry.mode.as_ref().map(Spanned::span),
            cmdline: entry.cmdline.as_ref().map(Spanned::span),
            priority: entry.priority.as_ref().map(Spanned::span),
            expect: entry.expect.as_ref().map(Spanned::span),
            fuzz_replies: entry.fuzz_replies.as_ref().map(Spanned::span),
        });
    }
    Compiled {
        image: SystemImage {
            name: file.system.name.get_ref().clone(),
            servers,
            guests,
        },
        binaries,
        guest_images,
        guest_initrds,
        spans,
        errors,
        package_errors,
    }
}

fn check_package(entry: &ServerEntry, ws: &Workspace, errors: &mut Vec<(Range<usize>, String)>) {
    let name = entry.name.get_ref();
    let (binary, span) = match &entry.binary {
        Some(binary) => (binary.get_ref(), binary.span()),
        None => (name, entry.name.span()),
    };
    if !ws.has(binary) {
        errors.push((
            span,
            format!("no workspace package `{binary}` (the binary of server `{name}`)"),
        ));
    } else if let Err(err) = ws.binary(binary) {
        errors.push((span, format!("{err} (server `{name}`)")));
    }
}

fn check_guest_image(entry: &GuestEntry, ws: &Workspace, errors: &mut Vec<(Range<usize>, String)>) {
    let image = entry.image.get_ref();
    if ws.guest_package(image).is_none() {
        let known = ws.guest_images();
        errors.push((
            entry.image.span(),
            format!(
                "no guest image `{image}` (guest `{}`): guest images are the binaries of the crates under tests/guests/ ({})",
                entry.name.get_ref(),
                if known.is_empty() {
                    "there are none yet".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ));
    }
}

/// A guest's `image` or `initrd` file must exist and be a file.
fn check_file(
    entry: &GuestEntry,
    what: &str,
    value: &Spanned<String>,
    path: &Path,
    errors: &mut Vec<(Range<usize>, String)>,
) {
    if !path.is_file() {
        errors.push((
            value.span(),
            format!(
                "the {what} file of guest `{}` does not exist: {} (`{}`; a path is relative to the manifest's directory, or absolute)",
                entry.name.get_ref(),
                path.display(),
                value.get_ref()
            ),
        ));
    }
}

/// Translates one `[[guest]]`; a value that cannot be represented is reported and a valid
/// placeholder stands in for it.
fn compile_guest(entry: &GuestEntry, errors: &mut Vec<(Range<usize>, String)>) -> Guest {
    let name = entry.name.get_ref().clone();
    let mut small = |value: Option<&Spanned<i64>>, what: &str, default: u8| -> u8 {
        let Some(value) = value else {
            return default;
        };
        u8::try_from(*value.get_ref()).unwrap_or_else(|_| {
            errors.push((
                value.span(),
                format!(
                    "{what} {} of guest `{name}` is not between 0 and 255",
                    value.get_ref()
                ),
            ));
            default
        })
    };
    let vcpus = small(entry.vcpus.as_ref(), "vcpus", manifest::GUEST_VCPUS);
    let priority = small(entry.priority.as_ref(), "priority", GUEST_PRIORITY);
    let mode = match entry.mode.as_ref().map(|m| (m, m.get_ref().as_str())) {
        None | Some((_, "nested")) => MemoryMode::Nested,
        Some((_, "shadow")) => MemoryMode::Shadow,
        Some((spanned, other)) => {
            errors.push((
                spanned.span(),
                format!("mode `{other}` of guest `{name}` is neither \"nested\" nor \"shadow\""),
            ));
            MemoryMode::Nested
        }
    };
    let hypercalls = entry.hypercalls.as_ref().is_some_and(|h| *h.get_ref());
    if let (Some(h), true, MemoryMode::Nested) = (entry.hypercalls.as_ref(), hypercalls, mode) {
        errors.push((
            h.span(),
            format!(
                "hypercalls of guest `{name}` need mode = \"shadow\" (they change shadow tables)"
            ),
        ));
    }
    let dmp = entry.dmp.as_ref().is_some_and(|h| *h.get_ref());
    if let (Some(h), true, MemoryMode::Nested) = (entry.dmp.as_ref(), dmp, mode) {
        errors.push((
            h.span(),
            format!(
                "dmp of guest `{name}` needs mode = \"shadow\" (DMP patches shadow paging's exits)"
            ),
        ));
    }
    let expect = match &entry.expect {
        None => Expect::Exit(0),
        Some(text) => Expect::parse(text.get_ref()).unwrap_or_else(|| {
            errors.push((
                text.span(),
                format!(
                    "expect `{}` of guest `{name}` is none of \"exit N\" (N from 0 to 255), \"stopped\", \"shutdown\", \"reset\", \"any\"",
                    text.get_ref()
                ),
            ));
            Expect::Exit(0)
        }),
    };
    let fuzz_replies = entry.fuzz_replies.as_ref().map(|seed| {
        u64::try_from(*seed.get_ref()).unwrap_or_else(|_| {
            errors.push((
                seed.span(),
                format!(
                    "fuzz_replies {} of guest `{name}` is not a seed: a non-negative integer (0 is one)",
                    seed.get_ref()
                ),
            ));
            0
        })
    });
    Guest {
        image: Guest::module_name(&name),
        memory_bytes: entry.memory.get_ref().0,
        vcpus,
        mode,
        cmdline: entry
            .cmdline
            .as_ref()
            .map(|c| c.get_ref().clone())
            .unwrap_or_default(),
        priority,
        expect,
        hypercalls,
        dmp,
        initrd: entry.initrd.is_some(),
        fuzz_replies,
        name,
    }
}

fn compile_server(
    entry: &ServerEntry,
    errors: &mut Vec<(Range<usize>, String)>,
) -> (Server, String, ServerSpans) {
    let name = entry.name.get_ref().clone();
    let binary = entry
        .binary
        .as_ref()
        .map_or_else(|| name.clone(), |b| b.get_ref().clone());
    let priority = *entry.priority.get_ref();
    let priority = u8::try_from(priority).unwrap_or_else(|_| {
        errors.push((
            entry.priority.span(),
            format!(
                "priority {priority} of `{name}` is not between 0 and {}",
                manifest::MAX_PRIORITY
            ),
        ));
        0
    });
    let mut io_ports = Vec::new();
    for spanned in &entry.io_ports {
        let PortEntry { base, count } = *spanned.get_ref();
        match (u16::try_from(base), u16::try_from(count)) {
            (Ok(base), Ok(count)) => io_ports.push(PortRange { base, count }),
            _ => {
                errors.push((
                    spanned.span(),
                    format!(
                        "I/O ports {base:#x}+{count:#x} of `{name}`: base and count must lie in 0..=0xffff"
                    ),
                ));
                // Keep the indices of the remaining ranges (and their positions) in step.
                io_ports.push(PortRange { base: 0, count: 1 });
            }
        }
    }
    let mut irqs = Vec::new();
    for irq in &entry.irqs {
        let line = *irq.get_ref();
        irqs.push(u8::try_from(line).unwrap_or_else(|_| {
            errors.push((
                irq.span(),
                format!(
                    "IRQ {line} of `{name}` does not exist (legacy lines are 0 to {})",
                    manifest::IRQ_LINES - 1
                ),
            ));
            0
        }));
    }
    let mut uses = Vec::new();
    for used in &entry.uses {
        let UseEntry { portal, grant } = used.get_ref();
        let (server, portal) = manifest::split_portal(portal).unwrap_or_else(|| {
            errors.push((
                used.span(),
                format!("use `{portal}` of `{name}` is not of the form `server.portal`"),
            ));
            (portal, "")
        });
        let rights = if *grant {
            abi::Rights::CALL | abi::Rights::GRANT
        } else {
            abi::Rights::CALL
        };
        uses.push(Use {
            server: server.to_string(),
            portal: portal.to_string(),
            rights: rights.0,
        });
    }
    let server = Server {
        name,
        priority,
        quota: entry.quota.get_ref().0,
        memory_pages: entry.memory.get_ref().0.div_ceil(manifest::PAGE_SIZE),
        scratch_pages: entry
            .scratch
            .as_ref()
            .map_or(0, |s| s.get_ref().0.div_ceil(manifest::PAGE_SIZE)),
        io_ports,
        irqs,
        portals: entry.portals.iter().map(|p| p.get_ref().clone()).collect(),
        uses,
        power_off: entry.power_off,
        fault_handler: entry.fault_handler.as_ref().map(|f| f.get_ref().clone()),
    };
    let spans = ServerSpans {
        name: entry.name.span(),
        priority: entry.priority.span(),
        quota: entry.quota.span(),
        memory: entry.memory.span(),
        io_ports: entry.io_ports.iter().map(Spanned::span).collect(),
        irqs: entry.irqs.iter().map(Spanned::span).collect(),
        portals: entry.portals.iter().map(Spanned::span).collect(),
        uses: entry.uses.iter().map(Spanned::span).collect(),
        fault_handler: entry.fault_handler.as_ref().map(Spanned::span),
    };
    (server, binary, spans)
}

/// Reads `"64K"`-style sizes; `None` for anything else.
pub fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'K' => (&text[..text.len() - 1], 10),
        b'M' => (&text[..text.len() - 1], 20),
        b'G' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte count: an integer or a string like \"64K\" or \"2M\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("size {v} is negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).ok_or_else(|| {
                    E::custom(format!(
                        "invalid size `{v}`: write bytes as an integer or digits with a K, M or G suffix (\"64K\")"
                    ))
                })
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

impl<'de> Deserialize<'de> for UseEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UseVisitor;
        impl<'de> Visitor<'de> for UseVisitor {
            type Value = UseEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"server.portal\" or { portal = \"server.portal\", grant = true }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<UseEntry, E> {
                Ok(UseEntry {
                    portal: v.to_string(),
                    grant: false,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UseEntry, A::Error> {
                const FIELDS: &[&str] = &["portal", "grant"];
                let mut portal = None;
                let mut grant = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "portal" if portal.is_none() => portal = Some(map.next_value()?),
                        "grant" if grant.is_none() => grant = Some(map.next_value()?),
                        "portal" | "grant" => return Err(de::Error::duplicate_field("portal")),
                        other => return Err(de::Error::unknown_field(other, FIELDS)),
                    }
                }
                Ok(UseEntry {
                    portal: portal.ok_or_else(|| de::Error::missing_field("portal"))?,
                    grant: grant.unwrap_or(false),
                })
            }
        }
        deserializer.deserialize_any(UseVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("0"), Some(0));
        for bad in [
            "",
            "K",
            "64k",
            "64 K",
            "-1",
            "1.5M",
            "64KB",
            "99999999999999999999G",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}
