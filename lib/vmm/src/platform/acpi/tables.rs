//! The static tables' byte layouts (ACPI 6.5, chapter 5.2), each finished with its length and
//! checksum.

use alloc::vec::Vec;

use super::aml;
use super::pm;
use super::Platform;

pub const OEM_ID: [u8; 6] = *b"DMPHV ";
pub const OEM_TABLE_ID: [u8; 8] = *b"DMPHVPC ";
const CREATOR_ID: [u8; 4] = *b"DMPH";
pub const HEADER_BYTES: usize = 36;
pub const RSDP_BYTES: usize = 36;
pub const FADT_BYTES: usize = 276;
pub const FACS_BYTES: usize = 64;

/// The byte that makes `bytes` sum to 0.
pub fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// A table with its header; [`finish`] fills in length and checksum.
fn start(signature: &[u8; 4], revision: u8) -> Vec<u8> {
    let mut t = Vec::with_capacity(256);
    t.extend_from_slice(signature);
    t.extend_from_slice(&[0; 4]); // length
    t.push(revision);
    t.push(0); // checksum
    t.extend_from_slice(&OEM_ID);
    t.extend_from_slice(&OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(&CREATOR_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t
}

fn finish(mut table: Vec<u8>) -> Vec<u8> {
    let length = table.len() as u32;
    table[4..8].copy_from_slice(&length.to_le_bytes());
    table[9] = 0;
    table[9] = checksum(&table);
    table
}

/// RSDP revision 2: the XSDT's address, both checksums (first 20 bytes, all 36).
pub fn rsdp(xsdt_address: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(RSDP_BYTES);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum
    r.extend_from_slice(&OEM_ID);
    r.push(2); // revision
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&(RSDP_BYTES as u32).to_le_bytes());
    r.extend_from_slice(&xsdt_address.to_le_bytes());
    r.push(0); // extended checksum
    r.extend_from_slice(&[0; 3]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

pub fn xsdt(entries: &[u64]) -> Vec<u8> {
    let mut t = start(b"XSDT", 1);
    for entry in entries {
        t.extend_from_slice(&entry.to_le_bytes());
    }
    finish(t)
}

/// MADT structure types.
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_INTERRUPT_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
/// MADT flags: the PC has dual 8259s too.
const MADT_PCAT_COMPAT: u32 = 1;
/// MPS INTI flags: active high (01), level-triggered (11 << 2).
const INTI_ACTIVE_HIGH_LEVEL: u16 = 0x000d;

pub fn madt(platform: &Platform) -> Vec<u8> {
    let mut t = start(b"APIC", 3);
    t.extend_from_slice(&platform.lapic_address.to_le_bytes());
    t.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for cpu in 0..platform.cpus {
        // Processor UID = APIC ID = CPU index; enabled.
        t.extend_from_slice(&[MADT_LOCAL_APIC, 8, cpu, cpu]);
        t.extend_from_slice(&1u32.to_le_bytes());
    }
    t.extend_from_slice(&[MADT_IO_APIC, 12, platform.ioapic_id, 0]);
    t.extend_from_slice(&platform.ioapic_address.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes()); // GSI base
                                              // ISA IRQ 0 (the PIT) arrives at IOAPIC pin 2; conforming polarity and trigger.
    t.extend_from_slice(&[MADT_INTERRUPT_OVERRIDE, 10, 0, 0]);
    t.extend_from_slice(&2u32.to_le_bytes());
    t.extend_from_slice(&0u16.to_le_bytes());
    // The SCI: IRQ 9, level-triggered, active high (as QEMU describes it).
    t.extend_from_slice(&[MADT_INTERRUPT_OVERRIDE, 10, 0, pm::SCI_IRQ]);
    t.extend_from_slice(&u32::from(pm::SCI_IRQ).to_le_bytes());
    t.extend_from_slice(&INTI_ACTIVE_HIGH_LEVEL.to_le_bytes());
    // NMI on every processor's LINT1.
    t.extend_from_slice(&[MADT_LOCAL_APIC_NMI, 6, 0xff]);
    t.extend_from_slice(&0u16.to_le_bytes());
    t.push(1);
    finish(t)
}

/// Generic Address Structure address spaces.
const GAS_SYSTEM_IO: u8 = 1;

/// A Generic Address Structure for `bytes` bytes at `port` (`access_size` 0: undefined, as
/// QEMU writes the PM blocks; 1: byte).
fn gas_io(port: u16, bytes: u8, access_size: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = GAS_SYSTEM_IO;
    g[1] = bytes * 8;
    g[3] = access_size;
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

/// FADT flags: WBINVD, PROC_C1, SLP_BUTTON (no fixed sleep button), RTC_S4, RESET_REG_SUP,
/// USE_PLATFORM_CLOCK, as QEMU's pc/q35; HW_REDUCED_ACPI and TMR_VAL_EXT clear.
pub const FADT_FLAGS: u32 = 1 | 1 << 2 | 1 << 5 | 1 << 7 | 1 << 10 | 1 << 15;
/// IA-PC boot architecture flags: an 8042 at ports 0x60/0x64 (QEMU sets only this one when
/// it has an i8042; "legacy devices" stays clear).
pub const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
/// The RTC's CMOS index of the century, as QEMU.
pub const CENTURY_INDEX: u8 = 0x32;

/// FADT revision 6.5 (276 bytes) pointing at `facs` and `dsdt`.
pub fn fadt(facs: u64, dsdt: u64) -> Vec<u8> {
    let mut t = start(b"FACP", 6);
    t.resize(FADT_BYTES, 0);
    let mut put =
        |offset: usize, bytes: &[u8]| t[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(36, &(facs as u32).to_le_bytes());
    put(40, &(dsdt as u32).to_le_bytes());
    put(44, &[1]); // INT_MODEL (ACPI 1.0): APIC
    put(46, &u16::from(pm::SCI_IRQ).to_le_bytes());
    // SMI_CMD, ACPI_ENABLE and ACPI_DISABLE stay 0: the machine is in ACPI mode from reset.
    put(56, &u32::from(pm::PM1_EVENT_PORT).to_le_bytes());
    put(64, &u32::from(pm::PM1_CONTROL_PORT).to_le_bytes());
    put(76, &u32::from(pm::PM_TIMER_PORT).to_le_bytes());
    put(
        88,
        &[
            pm::PM1_EVENT_BYTES,
            pm::PM1_CONTROL_BYTES,
            0,
            pm::PM_TIMER_BYTES,
        ],
    );
    put(96, &0x0fffu16.to_le_bytes()); // C2 latency > 100: no C2
    put(98, &0x0fffu16.to_le_bytes()); // C3 latency > 1000: no C3
    put(108, &[CENTURY_INDEX]);
    put(109, &IAPC_BOOT_ARCH_8042.to_le_bytes());
    put(112, &FADT_FLAGS.to_le_bytes());
    put(116, &gas_io(super::RESET_REGISTER_PORT, 1, 1));
    put(128, &[super::RESET_VALUE]);
    put(131, &[5]); // FADT minor version: ACPI 6.5
    put(132, &facs.to_le_bytes());
    put(140, &dsdt.to_le_bytes());
    put(148, &gas_io(pm::PM1_EVENT_PORT, pm::PM1_EVENT_BYTES, 0));
    put(172, &gas_io(pm::PM1_CONTROL_PORT, pm::PM1_CONTROL_BYTES, 0));
    put(208, &gas_io(pm::PM_TIMER_PORT, pm::PM_TIMER_BYTES, 0));
    finish(t)
}

/// The FACS (no checksum; 64-byte aligned; firmware waking vector 0: no S3).
pub fn facs() -> Vec<u8> {
    let mut f = alloc::vec![0u8; FACS_BYTES];
    f[0..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&(FACS_BYTES as u32).to_le_bytes());
    f[32] = 2; // version
    f
}

/// The DSDT: `\_S5` (SLP_TYP 0 for PM1a and PM1b, as QEMU) and the legacy devices.
pub fn dsdt() -> Vec<u8> {
    let mut t = start(b"DSDT", 2);
    let s5 = aml::package(&[
        aml::integer(u64::from(pm::S5_SLEEP_TYPE)),
        aml::integer(u64::from(pm::S5_SLEEP_TYPE)),
        aml::integer(0),
        aml::integer(0),
    ]);
    t.extend(aml::name("\\_S5", s5));
    let device = |name: &str, hid: &[u8; 7], uid: Option<u64>, base: u16, len: u8, irq: u8| {
        let mut terms = aml::name("_HID", aml::eisa_id(hid));
        if let Some(uid) = uid {
            terms.extend(aml::name("_UID", aml::integer(uid)));
        }
        terms.extend(aml::name(
            "_CRS",
            aml::resource_template(&[aml::io_port(base, len), aml::irq(irq)]),
        ));
        aml::device(name, terms)
    };
    let mut devices = device("COM1", b"PNP0501", Some(1), 0x3f8, 8, 4);
    devices.extend(device("RTC", b"PNP0B00", None, 0x70, 2, 8));
    devices.extend(device("TMR", b"PNP0100", None, 0x40, 4, 0));
    t.extend(aml::scope("\\_SB", devices));
    finish(t)
}
