//! Extended page tables (Intel SDM vol. 3, "EPT Translation Mechanism"): entries, the EPT
//! pointer, and the capability checks that decide which features may be used.
//!
//! NPT (AMD) needs no module of its own: nested page tables are ordinary x86-64 page tables whose
//! guest accesses count as user accesses, so `mem::paging` builds them.

use bitfield::bitfield;
/// EPT maps the same three page sizes as 4-level paging.
pub use mem::paging::PageSize;

/// IA32_VMX_EPT_VPID_CAP bits.
pub mod cap {
    pub const EXECUTE_ONLY: u64 = 1 << 0;
    pub const WALK_LENGTH_4: u64 = 1 << 6;
    pub const MEMORY_TYPE_UC: u64 = 1 << 8;
    pub const MEMORY_TYPE_WB: u64 = 1 << 14;
    pub const PAGES_2M: u64 = 1 << 16;
    pub const PAGES_1G: u64 = 1 << 17;
    pub const INVEPT: u64 = 1 << 20;
    pub const ACCESSED_DIRTY: u64 = 1 << 21;
    pub const INVEPT_SINGLE_CONTEXT: u64 = 1 << 25;
    pub const INVEPT_ALL_CONTEXTS: u64 = 1 << 26;
    pub const INVVPID: u64 = 1 << 32;
}

/// EPT memory types (in leaf entries and in the EPT pointer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MemoryType {
    Uncacheable = 0,
    WriteCombining = 1,
    WriteThrough = 4,
    WriteProtected = 5,
    WriteBack = 6,
}

bitfield! {
    /// One EPT entry of any level.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub struct EptEntry(u64);
    impl Debug;
    pub read, set_read: 0;
    pub write, set_write: 1;
    pub execute, set_execute: 2;
    /// Leaf only.
    pub u8, memory_type, set_memory_type: 5, 3;
    /// Leaf only.
    pub ignore_pat, set_ignore_pat: 6;
    /// Set in a PDPTE or PDE that maps a 1 GiB or 2 MiB page.
    pub large, set_large: 7;
    pub accessed, set_accessed: 8;
    /// Leaf only.
    pub dirty, set_dirty: 9;
    pub u64, frame, set_frame: 51, 12;
}

/// Rights of a guest-physical mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Access {
    pub read: bool,
    pub write: bool,
    pub execute: bool,
}

/// Why an EPT entry or pointer cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EptError {
    /// Write without read is an EPT misconfiguration.
    WriteWithoutRead,
    /// Execute-only mappings need the CPU's execute-only support.
    ExecuteOnlyUnsupported,
    /// No rights at all: that is an absent entry, not a mapping.
    NoAccess,
    /// The physical address is not aligned to the page size or beyond 52 bits.
    BadAddress,
    /// The CPU does not offer this page size, memory type or walk length.
    Unsupported,
}

const MAX_PHYS: u64 = 1 << 52;

/// A leaf entry mapping the page at `phys`, checked against `caps` (IA32_VMX_EPT_VPID_CAP).
pub fn leaf(
    phys: u64,
    size: PageSize,
    access: Access,
    memory: MemoryType,
    caps: u64,
) -> Result<EptEntry, EptError> {
    if !access.read && !access.write && !access.execute {
        return Err(EptError::NoAccess);
    }
    if access.write && !access.read {
        return Err(EptError::WriteWithoutRead);
    }
    if access.execute && !access.read && caps & cap::EXECUTE_ONLY == 0 {
        return Err(EptError::ExecuteOnlyUnsupported);
    }
    if !phys.is_multiple_of(size.bytes()) || phys >= MAX_PHYS {
        return Err(EptError::BadAddress);
    }
    let size_supported = match size {
        PageSize::Size4K => true,
        PageSize::Size2M => caps & cap::PAGES_2M != 0,
        PageSize::Size1G => caps & cap::PAGES_1G != 0,
    };
    if !size_supported {
        return Err(EptError::Unsupported);
    }
    let mut e = EptEntry(0);
    e.set_read(access.read);
    e.set_write(access.write);
    e.set_execute(access.execute);
    e.set_memory_type(memory as u8);
    e.set_large(size != PageSize::Size4K);
    e.set_frame(phys >> 12);
    Ok(e)
}

/// A non-leaf entry pointing at the next table: all rights, so that the leaf decides.
pub fn table(phys: u64) -> Result<EptEntry, EptError> {
    if !phys.is_multiple_of(4096) || phys >= MAX_PHYS {
        return Err(EptError::BadAddress);
    }
    let mut e = EptEntry(0);
    e.set_read(true);
    e.set_write(true);
    e.set_execute(true);
    e.set_frame(phys >> 12);
    Ok(e)
}

/// The EPT pointer for a 4-level walk from the PML4 at `pml4`: write-back paging structures when
/// the CPU allows it (else uncacheable), accessed/dirty flags only if asked and offered.
pub fn pointer(pml4: u64, accessed_dirty: bool, caps: u64) -> Result<u64, EptError> {
    if !pml4.is_multiple_of(4096) || pml4 >= MAX_PHYS {
        return Err(EptError::BadAddress);
    }
    if caps & cap::WALK_LENGTH_4 == 0 {
        return Err(EptError::Unsupported);
    }
    let memory = if caps & cap::MEMORY_TYPE_WB != 0 {
        MemoryType::WriteBack
    } else if caps & cap::MEMORY_TYPE_UC != 0 {
        MemoryType::Uncacheable
    } else {
        return Err(EptError::Unsupported);
    };
    if accessed_dirty && caps & cap::ACCESSED_DIRTY == 0 {
        return Err(EptError::Unsupported);
    }
    const WALK_LENGTH_MINUS_ONE: u64 = 3;
    Ok(pml4
        | (WALK_LENGTH_MINUS_ONE << 3)
        | memory as u64
        | if accessed_dirty { 1 << 6 } else { 0 })
}

impl EptEntry {
    /// The entry as the hardware reads it.
    pub const fn bits(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_CAPS: u64 = cap::EXECUTE_ONLY
        | cap::WALK_LENGTH_4
        | cap::MEMORY_TYPE_UC
        | cap::MEMORY_TYPE_WB
        | cap::PAGES_2M
        | cap::PAGES_1G
        | cap::ACCESSED_DIRTY;
    const RW: Access = Access {
        read: true,
        write: true,
        execute: false,
    };
    const RX: Access = Access {
        read: true,
        write: false,
        execute: true,
    };

    #[test]
    fn leaf_entries_carry_rights_type_and_frame() {
        let e = leaf(
            0x1234_5000,
            PageSize::Size4K,
            RW,
            MemoryType::WriteBack,
            ALL_CAPS,
        )
        .unwrap();
        assert_eq!(e.0, 0x1234_5000 | 0b011 | (6 << 3));
        let big = leaf(
            0x4000_0000,
            PageSize::Size1G,
            RX,
            MemoryType::WriteBack,
            ALL_CAPS,
        )
        .unwrap();
        assert!(big.large() && big.execute() && !big.write());
        assert_eq!(big.frame() << 12, 0x4000_0000);
    }

    #[test]
    fn misconfigurations_are_refused() {
        let w_only = Access {
            read: false,
            write: true,
            execute: false,
        };
        let x_only = Access {
            read: false,
            write: false,
            execute: true,
        };
        let wb = MemoryType::WriteBack;
        assert_eq!(
            leaf(0, PageSize::Size4K, w_only, wb, ALL_CAPS),
            Err(EptError::WriteWithoutRead)
        );
        assert_eq!(
            leaf(0, PageSize::Size4K, Access::default(), wb, ALL_CAPS),
            Err(EptError::NoAccess)
        );
        assert!(leaf(0, PageSize::Size4K, x_only, wb, ALL_CAPS).is_ok());
        assert_eq!(
            leaf(
                0,
                PageSize::Size4K,
                x_only,
                wb,
                ALL_CAPS & !cap::EXECUTE_ONLY
            ),
            Err(EptError::ExecuteOnlyUnsupported)
        );
    }

    #[test]
    fn sizes_and_addresses_are_checked() {
        let wb = MemoryType::WriteBack;
        assert_eq!(
            leaf(0x1000, PageSize::Size2M, RW, wb, ALL_CAPS),
            Err(EptError::BadAddress)
        );
        assert_eq!(
            leaf(1 << 52, PageSize::Size4K, RW, wb, ALL_CAPS),
            Err(EptError::BadAddress)
        );
        assert_eq!(
            leaf(0, PageSize::Size1G, RW, wb, ALL_CAPS & !cap::PAGES_1G),
            Err(EptError::Unsupported)
        );
        assert_eq!(table(0x2001), Err(EptError::BadAddress));
        assert_eq!(table(0x2000).map(|e| e.0), Ok(0x2007));
    }

    #[test]
    fn pointer_follows_the_capabilities() {
        assert_eq!(pointer(0x5000, false, ALL_CAPS), Ok(0x5000 | (3 << 3) | 6));
        assert_eq!(
            pointer(0x5000, true, ALL_CAPS),
            Ok(0x5000 | (3 << 3) | 6 | (1 << 6))
        );
        let uc_only = cap::WALK_LENGTH_4 | cap::MEMORY_TYPE_UC;
        assert_eq!(pointer(0x5000, false, uc_only), Ok(0x5000 | (3 << 3)));
        assert_eq!(pointer(0x5000, true, uc_only), Err(EptError::Unsupported));
        assert_eq!(
            pointer(0x5000, false, cap::MEMORY_TYPE_WB),
            Err(EptError::Unsupported)
        );
        assert_eq!(pointer(0x5008, false, ALL_CAPS), Err(EptError::BadAddress));
    }
}
