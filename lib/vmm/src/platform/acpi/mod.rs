//! ACPI for the PC platform: the tables a kernel finds through the RSDP (XSDT, MADT, FADT,
//! FACS, DSDT), built from a [`Platform`] description, and the PM device the FADT describes
//! ([`pm::PowerManagement`]).
//!
//! Written here rather than with rust-vmm's `acpi_tables` (which builds `no_std`): its MADT
//! has no interrupt source override, no local-APIC NMI and no PCAT_COMPAT flag, and what is
//! left is a few dozen lines of byte layout checked by the parse-back tests.
//!
//! The machine is a non-HW-reduced PC like QEMU's pc/q35 without PCI: SCI on IRQ 9, PM
//! registers at 0x600, reset register at port 0xcf9 (value 6), an 8042, the IOAPIC with ISA
//! IRQ 0 on pin 2 and IRQ 9 level-triggered, NMI on LINT1, and only S5 to sleep in.

pub mod aml;
pub mod pm;
pub mod tables;

use alloc::vec::Vec;

/// The reset register the FADT names, and the value that resets.
pub const RESET_REGISTER_PORT: u16 = crate::platform::misc::RESET_CONTROL_PORT;
pub const RESET_VALUE: u8 = 0x06;

/// Where the RSDP may go for the BIOS-area scan: 16-byte aligned in `0xe0000..=0xfffff`.
pub const BIOS_AREA: core::ops::Range<u64> = 0xe_0000..0x10_0000;
/// The conventional EBDA range: an RSDP there is found only in the first KiB of the EBDA
/// whose segment the vmm-server writes to the BIOS data area at 0x40e.
pub const EBDA_AREA: core::ops::Range<u64> = 0x8_0000..0xa_0000;

/// What the tables describe and where they go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub ram_bytes: u64,
    /// CPUs, with APIC IDs and ACPI processor UIDs 0, 1, ...
    pub cpus: u8,
    pub ioapic_id: u8,
    pub ioapic_address: u32,
    pub lapic_address: u32,
    /// The RSDP's guest-physical address: in [`BIOS_AREA`] or [`EBDA_AREA`], 16-byte aligned.
    pub rsdp_address: u64,
    /// The other tables' guest-physical address: 64-byte aligned (the FACS comes first), in
    /// RAM below 4 GiB, not overlapping the RSDP. Report it as ACPI data in the memory map.
    pub tables_address: u64,
}

impl Default for Platform {
    /// One CPU, 256 MiB, the IOAPIC and LAPIC at their usual addresses (IOAPIC ID 0 as QEMU),
    /// the RSDP at 0xe0000 and the tables at 0xe1000.
    fn default() -> Self {
        Platform {
            ram_bytes: 256 << 20,
            cpus: 1,
            ioapic_id: 0,
            ioapic_address: 0xfec0_0000,
            lapic_address: 0xfee0_0000,
            rsdp_address: 0xe_0000,
            tables_address: 0xe_1000,
        }
    }
}

/// Why the tables were not built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// No CPU, or more than the 8-bit APIC IDs of the MADT's local APIC entries allow.
    BadCpuCount,
    /// The RSDP is not 16-byte aligned in the BIOS area or the EBDA range.
    BadRsdpAddress,
    /// The tables are not 64-byte aligned, leave RAM or 4 GiB, or overlap the RSDP.
    BadTablesAddress,
}

/// Built tables: copy `rsdp` to `rsdp_address` and `tables` to `tables_address`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiImage {
    pub rsdp_address: u64,
    pub rsdp: Vec<u8>,
    pub tables_address: u64,
    pub tables: Vec<u8>,
}

/// Appends `table` at the next multiple of `align`; returns its address.
fn place(blob: &mut Vec<u8>, base: u64, table: &[u8], align: usize) -> u64 {
    blob.resize(blob.len().next_multiple_of(align), 0);
    let address = base.wrapping_add(blob.len() as u64); // checked by `build`
    blob.extend_from_slice(table);
    address
}

/// Builds the tables for `platform`.
pub fn build(platform: &Platform) -> Result<AcpiImage, AcpiError> {
    if platform.cpus == 0 || platform.cpus == 0xff {
        return Err(AcpiError::BadCpuCount);
    }
    let rsdp_at = platform.rsdp_address;
    let rsdp_end = rsdp_at.saturating_add(tables::RSDP_BYTES as u64);
    let in_area = |area: &core::ops::Range<u64>| area.start <= rsdp_at && rsdp_end <= area.end;
    if !rsdp_at.is_multiple_of(16) || !(in_area(&BIOS_AREA) || in_area(&EBDA_AREA)) {
        return Err(AcpiError::BadRsdpAddress);
    }
    let base = platform.tables_address;
    let mut blob = Vec::new();
    let facs = place(&mut blob, base, &tables::facs(), 64);
    let dsdt = place(&mut blob, base, &tables::dsdt(), 8);
    let fadt = place(&mut blob, base, &tables::fadt(facs, dsdt), 8);
    let madt = place(&mut blob, base, &tables::madt(platform), 8);
    let xsdt = place(&mut blob, base, &tables::xsdt(&[fadt, madt]), 8);
    let end = base.checked_add(blob.len() as u64);
    let fits = end.is_some_and(|end| {
        end <= platform.ram_bytes.min(1 << 32) && (end <= rsdp_at || base >= rsdp_end)
    });
    if !base.is_multiple_of(64) || !fits {
        return Err(AcpiError::BadTablesAddress);
    }
    Ok(AcpiImage {
        rsdp_address: rsdp_at,
        rsdp: tables::rsdp(xsdt),
        tables_address: base,
        tables: blob,
    })
}

/// Builds the tables of a uniprocessor guest with `ram` as its RAM (from guest-physical 0) at
/// the [`Platform`] defaults (RSDP at 0xe0000, the rest from 0xe1000: the reserved BIOS area
/// of the guest's memory map) and copies them there.
pub fn install(ram: &mut [u8]) -> Result<AcpiImage, AcpiError> {
    let image = build(&Platform {
        ram_bytes: ram.len() as u64,
        ..Platform::default()
    })?;
    for (at, bytes) in [
        (image.rsdp_address, &image.rsdp),
        (image.tables_address, &image.tables),
    ] {
        let start = at as usize;
        let target = ram
            .get_mut(start..start + bytes.len())
            .ok_or(AcpiError::BadTablesAddress)?;
        target.copy_from_slice(bytes);
    }
    Ok(image)
}

#[cfg(test)]
mod tests;
