//! The kernel/user contract, shared by the kernel, the user-level servers and the build tool.
//!
//! Everything here is `no_std`, has a stable representation, and is the single definition of its
//! item: the kernel and its clients never restate these numbers. `docs/abi.md` is the prose form.
#![no_std]

pub mod boot;
pub mod bootstrap;
pub mod dmp;
pub mod exit;
pub mod log;
pub mod profile;
pub mod rights;
pub mod status;
pub mod syscall;
pub mod utcb;
pub mod vm;

pub use rights::Rights;
pub use status::Status;
pub use syscall::Syscall;

/// A capability selector: an index into a protection domain's capability space.
///
/// A plain number on the wire (one syscall argument register, one UTCB word); the type keeps
/// selectors apart from counts, addresses and badges in the code that handles them. Any value is
/// a `Sel`: the kernel checks it against the capability space ([`CAP_SPACE_SLOTS`]) and answers
/// `BadSelector` when it is out of range or empty. `Debug` and `Display` print the bare number,
/// as the `u64` it replaces did.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Sel(u64);

impl Sel {
    /// The selector with index `raw`.
    pub const fn new(raw: u64) -> Sel {
        Sel(raw)
    }

    /// The index, as it travels in a register or message word.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The selector `n` slots after this one (the `n`-th of a range starting here). Wraps at
    /// `u64::MAX` rather than panicking: a wrapped selector is out of range, and the kernel
    /// refuses it.
    pub const fn offset(self, n: u64) -> Sel {
        Sel(self.0.wrapping_add(n))
    }
}

impl core::fmt::Debug for Sel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(&self.0, f)
    }
}

impl core::fmt::Display for Sel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(&self.0, f)
    }
}

/// Bytes in a page: the unit of `Map`, `VmMap`, `Carve` on memory and every page-granular
/// address of this ABI (4 KiB pages only).
pub const PAGE_SIZE: u64 = 4096;

/// Number of selectors in every capability space.
pub const CAP_SPACE_SLOTS: u64 = 1024;

/// Selectors with a fixed meaning in every domain. The kernel fills them for init; for other
/// domains the creator delegates them (init does so for every server it starts).
pub mod well_known {
    use super::Sel;
    /// The protection domain itself (rights as delegated by its creator).
    pub const SELF_PD: Sel = Sel::new(0);
    /// The thread that runs the domain's entry point.
    pub const SELF_THREAD: Sel = Sel::new(1);
    /// The portal that receives the domain's faults (empty if its creator gave none). The kernel
    /// sends fault messages there; a user `Call` with `utcb::FAULT_LABEL` is refused, so a fault
    /// message is always the kernel's.
    pub const FAULT_PORTAL: Sel = Sel::new(2);
    /// Servers started by init: init's bootstrap portal (see `crate::bootstrap`).
    pub const BOOTSTRAP_PORTAL: Sel = Sel::new(15);
    /// First selector free for the domain's own use.
    pub const FIRST_FREE: Sel = Sel::new(16);
}

/// Kinds of kernel object a capability can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ObjectKind {
    Pd = 1,
    Thread = 2,
    Portal = 3,
    Semaphore = 4,
    Memory = 5,
    IoPorts = 6,
    Irq = 7,
    /// A guest-physical address space (`vm`).
    Vm = 8,
    /// A virtual CPU of a Vm (`vm`).
    Vcpu = 9,
}

impl ObjectKind {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Pd,
            2 => Self::Thread,
            3 => Self::Portal,
            4 => Self::Semaphore,
            5 => Self::Memory,
            6 => Self::IoPorts,
            7 => Self::Irq,
            8 => Self::Vm,
            9 => Self::Vcpu,
            _ => return None,
        })
    }
}

/// `docs/abi.md` is the prose form of this crate: its tables must name what the crate defines.
#[cfg(test)]
mod docs_tests {
    extern crate std;
    use std::format;
    use std::string::String;
    use std::vec::Vec;

    const DOC: &str = include_str!("../../docs/abi.md");

    /// `(number, name)` of the table rows in the section headed `heading`.
    fn rows(heading: &str) -> Vec<(u64, String)> {
        let section = DOC
            .split("\n## ")
            .find(|s| s.starts_with(heading))
            .unwrap_or_else(|| panic!("docs/abi.md has no section `{heading}`"));
        section
            .lines()
            .filter_map(|l| {
                let mut cells = l.split('|').map(str::trim).skip(1);
                let nr = cells.next()?.parse().ok()?;
                Some((nr, String::from(cells.next()?)))
            })
            .collect()
    }

    fn check(heading: &str, count: u64, name: impl Fn(u64) -> Option<String>) {
        let table = rows(heading);
        let numbers: Vec<u64> = table.iter().map(|(n, _)| *n).collect();
        let expected: Vec<u64> = (0..count).collect();
        assert_eq!(numbers, expected, "docs/abi.md `{heading}` rows");
        for (nr, doc_name) in table {
            assert_eq!(
                name(nr).as_deref(),
                Some(doc_name.as_str()),
                "{heading} {nr}"
            );
        }
        assert_eq!(
            name(count),
            None,
            "{heading}: the crate defines more than the table"
        );
    }

    #[test]
    fn syscall_table_matches() {
        use crate::syscall::{Syscall, COUNT};
        check("Syscalls", COUNT, |n| {
            Syscall::from_u64(n).map(|s| format!("{s:?}"))
        });
    }

    #[test]
    fn status_table_matches() {
        check("Statuses", 15, |n| {
            crate::Status::from_u64(n).map(|s| format!("{s:?}"))
        });
    }

    #[test]
    fn exit_table_matches() {
        use crate::vm::{Exit, EXIT_COUNT};
        check("VM exits", EXIT_COUNT, |n| {
            Exit::from_u64(n).map(|e| format!("{e:?}"))
        });
    }
}
