//! System manifests: `manifests/<system>.toml` describes one bootable system, the whole
//! authority graph included.
//!
//! ```toml
//! [system]
//! name = "isolation"          # = the file name
//! description = "…"
//! cmdline = ""                # kernel command line
//! modules = []                # extra boot modules: [{ file = "path from the root", name = "…" }]
//!
//! [[server]]
//! name = "serial"             # unique; its boot module's name
//! binary = "serial"           # workspace package of its ELF (default: name)
//! priority = 20               # 0..=31
//! quota = "64K"               # kernel-memory quota: bytes, or digits with K/M/G
//! memory = "128K"             # RAM for stack and heap, rounded up to 4 KiB pages
//! io_ports = [{ base = 0x3f8, count = 8 }]
//! irqs = [4]                  # legacy IRQ lines 0..=15
//! portals = ["log"]           # portals it provides
//! uses = ["other.portal", { portal = "x.y", grant = true }]
//! power_off = false           # may end the system
//! fault_handler = "x.faults"  # optional: the portal that receives its faults
//!
//! [[guest]]
//! name = "hello"              # unique; its vmm-server is the server `vmm.hello`
//! image = "hello"             # binary of a guest crate under tests/guests/, or a file path
//!                             # (has a `/` or a `.`; relative to the manifest's directory)
//! initrd = "initrd.img"       # optional: a file (path like `image`'s) handed to the guest
//! memory = "16M"              # guest RAM: a multiple of 2 MiB, 2 MiB to 3 GiB (init's pool bounds it)
//! vcpus = 1                   # default 1 (the only value supported)
//! mode = "nested"             # or "shadow"; default "nested"
//! cmdline = "greeting=hi"     # at most 2,048 bytes; default ""
//! priority = 10               # of its vmm-server and vCPU; default 10
//! expect = "exit 0"           # or "exit N", "stopped", "shutdown", "reset", "any"; default "exit 0"
//! hypercalls = false          # shadow mode only: the kernel answers the DMP hypercalls
//! dmp = false                 # shadow mode only: attach to the DMP service
//! fuzz_replies = 7            # optional: fuzz the VMM's replies with this seed (needs expect = "any")
//! ```
//!
//! `[system] ram = "1G"` sets the emulated machine's RAM (default [`DEFAULT_RAM`] MiB); the
//! kernel gives init a quarter of the free memory (rounded down to a power of two) as the pool
//! it hands servers and guests, and the tool refuses a system that would not fit it.
//!
//! A system without servers or guests boots the kernel alone (with `modules`, if any). With
//! servers or guests, the image carries the boot modules `init`, `manifest` (the compiled
//! [`manifest::SystemImage`]), one module per server, named like it, and with guests the module
//! `vmm-server` and one `guest.<name>` per guest (see [`crate::pack`]).
//!
//! Every problem is reported as `file:line:column: message`, all of them at once where the file
//! parses; unknown sections and keys are errors, so a manifest written for a later version of
//! the tool never half-works.

mod source;

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use manifest::SystemImage;

use crate::image::BootModule;
pub use crate::manifest::source::GuestImage;
use crate::toml_file::Source;
use crate::workspace::Workspace;

/// A checked system manifest.
#[derive(Debug)]
pub struct System {
    pub name: String,
    pub description: String,
    pub cmdline: String,
    /// Extra boot modules (`[system] modules`), packed after the servers' modules.
    pub modules: Vec<BootModule>,
    /// The compiled form; `image.servers` is empty for a kernel-only system.
    pub image: SystemImage,
    /// The workspace package of each server's ELF, in the order of `image.servers`.
    pub binaries: Vec<String>,
    /// The image of each guest (a guest crate's binary or a file), in the order of
    /// `image.guests`.
    pub guest_images: Vec<GuestImage>,
    /// The initrd file of each guest that has one, in the order of `image.guests`.
    pub guest_initrds: Vec<Option<PathBuf>>,
    /// RAM of the emulated machine in MiB.
    pub ram_mib: u64,
}

/// RAM of the emulated machine, in MiB, when the manifest does not say.
pub const DEFAULT_RAM: u64 = 256;
/// The RAM a manifest may ask for, in MiB (Bochs's limit is 2 GiB).
const RAM_RANGE: std::ops::RangeInclusive<u64> = 64..=2048;

impl System {
    /// Whether the system runs user space (init, servers, guests) rather than the kernel alone.
    pub fn has_servers(&self) -> bool {
        !self.image.servers.is_empty() || self.has_guests()
    }

    pub fn has_guests(&self) -> bool {
        !self.image.guests.is_empty()
    }
}

/// A cautious estimate, in pages, of the pool that the kernel hands init on a machine with
/// `ram_mib` MiB (the policy of `kernel/src/kern/init.rs` and `kernel/src/mem`): usable memory
/// less 8 MiB (first MiB, kernel, modules, firmware), less the kernel heap (an eighth, 1 to
/// 64 MiB); a quarter of the rest, rounded down to a power of two.
pub fn pool_estimate(ram_mib: u64) -> u64 {
    let usable = ram_mib.saturating_sub(8) << 20;
    let heap = (usable / 8).clamp(1 << 20, 64 << 20);
    let quarter = usable.saturating_sub(heap) / 4 / manifest::PAGE_SIZE;
    if quarter == 0 {
        0
    } else {
        1 << (63 - quarter.leading_zeros())
    }
}

/// Pages the servers and guests take from init's pool, not counting the servers' ELF images
/// (a page table's worth of slack per domain stands in for those).
pub fn pool_need(image: &SystemImage) -> u64 {
    let all = image.with_vmm_servers();
    all.servers
        .iter()
        .map(|s| s.memory_pages + s.scratch_pages + 256 + 1)
        .sum()
}

/// Loads `manifests/<name>.toml` below `root`; `binary` packages must exist in the workspace.
pub fn load(root: &Path, name: &str) -> Result<System> {
    load_with(root, name, Some(Workspace::load(root)?))
}

/// Like [`load`]; without a workspace, `binary` packages are not looked up.
pub fn load_with(root: &Path, name: &str, workspace: Option<&Workspace>) -> Result<System> {
    let dir = root.join("manifests");
    let path = dir.join(format!("{name}.toml"));
    if !path.is_file() {
        bail!(
            "no system `{name}`: {} does not exist (systems: {})",
            crate::layout::show(&path),
            available(&dir).join(", ")
        );
    }
    let source = Source::read(&path)?;
    parse_in(&source, name, root, &dir, workspace)
}

/// Loads a manifest from any `path` (`run --manifest`, a generated one, outside `manifests/`);
/// the system's name must be the file's stem, as for [`load`]. Module paths are resolved
/// against `root`, guest image and initrd paths against the manifest's directory, and `binary`
/// packages must exist in the workspace.
pub fn load_file(root: &Path, path: &Path) -> Result<System> {
    load_file_with(root, path, Some(Workspace::load(root)?))
}

/// Like [`load_file`]; without a workspace, `binary` packages are not looked up.
pub fn load_file_with(root: &Path, path: &Path, workspace: Option<&Workspace>) -> Result<System> {
    let name = path
        .file_stem()
        .and_then(|stem| stem.to_str())
        .ok_or_else(|| anyhow!("{}: no file name", crate::layout::show(path)))?;
    if !path.is_file() {
        bail!("no manifest {}", path.display());
    }
    let source = Source::read(path)?;
    let dir = std::path::absolute(path)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    parse_in(&source, name, root, &dir, workspace)
}

/// The names of the systems in `dir`.
pub fn available(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            (path.extension()? == "toml").then(|| path.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    names
}

/// Parses and checks a manifest whose file is named `<expected_name>.toml`; module paths are
/// resolved against `root`, guest paths against `root/manifests`. Syntax errors stop at the first; every other problem is collected
/// and all are reported, one `file:line:column: message` per line, in file order.
#[cfg(test)]
pub fn parse(
    source: &Source,
    expected_name: &str,
    root: &Path,
    workspace: Option<&Workspace>,
) -> Result<System> {
    parse_in(
        source,
        expected_name,
        root,
        &root.join("manifests"),
        workspace,
    )
}

/// [`parse`] for a manifest in directory `dir`, against which guest image and initrd paths are
/// resolved.
pub fn parse_in(
    source: &Source,
    expected_name: &str,
    root: &Path,
    dir: &Path,
    workspace: Option<&Workspace>,
) -> Result<System> {
    let file: source::File = source.parse()?;
    let compiled = source::compile(&file, workspace, dir);
    // A value that is wrong in the source stands in the image as a placeholder; the rules
    // would only repeat the complaint about it.
    let reported: Vec<usize> = compiled.errors.iter().map(|(s, _)| s.start).collect();
    let mut errors = compiled.errors;
    errors.extend(compiled.package_errors);
    let section = &file.system;
    if section.name.get_ref() != expected_name {
        errors.push((
            section.name.span(),
            format!(
                "system name `{}` differs from the file name `{expected_name}`",
                section.name.get_ref()
            ),
        ));
    }
    let cmdline = section.cmdline.as_ref();
    if let Some(line) = cmdline.filter(|c| c.get_ref().contains('\n')) {
        errors.push((line.span(), "`cmdline` must be one line".into()));
    }
    let image = compiled.image;
    for problem in image.check() {
        let span = compiled.spans.of(problem.place);
        // The tool names every image module after its guest: a bad module name is a bad guest
        // name, reported already.
        if reported.contains(&span.start) || problem.rule == manifest::Rule::GuestImage {
            continue;
        }
        let mut message = problem.message(&image);
        if let Some(other) = problem.related() {
            let line = source.line(compiled.spans.of(other).start);
            message.push_str(&format!(" (see line {line})"));
        }
        errors.push((span, message));
    }
    let modules = extra_modules(section, &image, root, &mut errors);
    let ram_mib = ram(section, &image, &mut errors);
    if errors.is_empty() {
        return Ok(System {
            name: section.name.get_ref().clone(),
            description: section.description.clone(),
            cmdline: cmdline.map(|c| c.get_ref().clone()).unwrap_or_default(),
            modules,
            image,
            binaries: compiled.binaries,
            guest_images: compiled.guest_images,
            guest_initrds: compiled.guest_initrds,
            ram_mib,
        });
    }
    errors.sort_by_key(|(span, _)| span.start);
    let lines: Vec<String> = errors
        .into_iter()
        .map(|(span, message)| source.message(Some(span), message))
        .collect();
    Err(match lines.as_slice() {
        [one] => anyhow!("{one}"),
        _ => anyhow!("{} problems:\n{}", lines.len(), lines.join("\n")),
    })
}

/// The machine's RAM in MiB (`[system] ram`), checked against its range and against what the
/// servers and guests take from init's pool.
fn ram(
    section: &source::SystemSection,
    image: &SystemImage,
    errors: &mut Vec<(Range<usize>, String)>,
) -> u64 {
    let (bytes, span) = match &section.ram {
        Some(ram) => (ram.get_ref().0, ram.span()),
        None => (DEFAULT_RAM << 20, section.name.span()),
    };
    let mib = bytes >> 20;
    if bytes % (1 << 20) != 0 || !RAM_RANGE.contains(&mib) {
        errors.push((
            span,
            format!(
                "`ram` must be whole MiB from {} MiB to {} MiB",
                RAM_RANGE.start(),
                RAM_RANGE.end()
            ),
        ));
        return DEFAULT_RAM;
    }
    let need = pool_need(image);
    let pool = pool_estimate(mib);
    // A system that breaks a rule (say, 2 GiB for a guest) has been refused already.
    let checked = image.check().is_empty();
    if (!image.servers.is_empty() || !image.guests.is_empty()) && checked && need > pool {
        let to_mib = |pages: u64| (pages * manifest::PAGE_SIZE).div_ceil(1 << 20);
        errors.push((
            span,
            format!(
                "the servers and guests need about {} MiB of init's memory pool; with {mib} MiB of RAM the kernel gives init about {} MiB: raise `[system] ram`",
                to_mib(need),
                to_mib(pool)
            ),
        ));
    }
    mib
}

/// The `[system] modules` as boot modules, checked against each other, against the servers'
/// modules and against the number of modules the kernel describes to init.
fn extra_modules(
    section: &source::SystemSection,
    image: &SystemImage,
    root: &Path,
    errors: &mut Vec<(Range<usize>, String)>,
) -> Vec<BootModule> {
    let servers = !image.servers.is_empty() || !image.guests.is_empty();
    let guests = !image.guests.is_empty();
    let mut modules: Vec<BootModule> = Vec::new();
    for entry in &section.modules {
        let span = entry.span();
        let module = entry.get_ref();
        let file = PathBuf::from(&module.file);
        let default_name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let name = module
            .name
            .clone()
            .unwrap_or_else(|| default_name.to_string());
        if name.is_empty() || name.contains('\n') {
            errors.push((span, "a module needs a one-line, non-empty `name`".into()));
        } else if modules.iter().any(|m| m.name == name) {
            errors.push((span, format!("two modules are named `{name}`")));
        } else if servers
            && (manifest::RESERVED_NAMES.contains(&name.as_str())
                || image.server(&name).is_some()
                || (guests
                    && (name == manifest::VMM_MODULE
                        || image.guests.iter().any(|g| {
                            g.image == name || g.initrd_module().is_some_and(|m| m == name)
                        }))))
        {
            errors.push((
                span,
                format!("module name `{name}` is taken by the servers' boot modules"),
            ));
        }
        modules.push(BootModule {
            source: root.join(file),
            name,
        });
    }
    let count = modules.len()
        + if servers {
            manifest::RESERVED_NAMES.len() + image.servers.len()
        } else {
            0
        }
        + if guests { 1 + image.guests.len() } else { 0 }
        + image.guests.iter().filter(|g| g.initrd).count();
    if count > abi::boot::MAX_BOOT_MODULES {
        errors.push((
            section.name.span(),
            format!(
                "the system needs {count} boot modules; the kernel hands init at most {}",
                abi::boot::MAX_BOOT_MODULES
            ),
        ));
    }
    modules
}

/// Joins command-line fragments with single spaces, skipping empty ones.
pub fn join_cmdline<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    parts
        .into_iter()
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
