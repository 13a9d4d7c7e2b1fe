//! The ACPI tables, found as a kernel finds them: the RSDP by the BIOS-area scan, then the
//! XSDT, the MADT and the FADT, each checksummed.

use crate::Report;

/// `len` bytes of guest-physical memory at `address` (identity-mapped by grt's entry).
fn bytes(address: u64, len: usize) -> &'static [u8] {
    // SAFETY: the ACPI tables lie in RAM below 1 MiB or in the reserved BIOS area, both mapped
    // one to one and never written by this program.
    unsafe { core::slice::from_raw_parts(address as *const u8, len) }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

fn sums_to_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |s, &x| s.wrapping_add(x)) == 0
}

/// A table at `address` whose header is sane: its bytes, if the signature and checksum hold.
fn table(address: u64, signature: &[u8; 4]) -> Option<&'static [u8]> {
    if address == 0 || address >= 0x1_0000_0000 {
        return None;
    }
    let header = bytes(address, 36);
    let len = u32_at(header, 4) as usize;
    if &header[..4] != signature || !(36..=0x1_0000).contains(&len) {
        return None;
    }
    let whole = bytes(address, len);
    sums_to_zero(whole).then_some(whole)
}

pub fn run(report: &mut Report) {
    let rsdp = (0xe_0000u64..0x10_0000)
        .step_by(16)
        .find(|&a| bytes(a, 8) == b"RSD PTR ");
    let Some(rsdp) = rsdp else {
        report.check(
            "acpi rsdp found",
            false,
            format_args!("no RSDP in 0xe0000-0xfffff"),
        );
        return;
    };
    let r = bytes(rsdp, 36);
    let ok = sums_to_zero(&r[..20]) && r[15] >= 2 && sums_to_zero(r);
    report.check(
        "acpi rsdp found",
        ok,
        format_args!("at {rsdp:#x}, revision {}", r[15]),
    );
    let Some(xsdt) = table(u64_at(r, 24), b"XSDT") else {
        report.check(
            "acpi xsdt",
            false,
            format_args!("bad XSDT at {:#x}", u64_at(r, 24)),
        );
        return;
    };
    let entries: heapless_entries::Entries = heapless_entries::read(xsdt);
    report.check(
        "acpi xsdt",
        entries.len > 0,
        format_args!("{} tables", entries.len),
    );
    let find = |sig: &[u8; 4]| {
        entries.items[..entries.len]
            .iter()
            .find_map(|&a| table(a, sig))
    };
    match find(b"APIC") {
        Some(madt) => {
            let (cpus, ioapic, irq0_to_gsi2) = walk_madt(madt);
            let lapic = u32_at(madt, 36);
            report.check(
                "acpi madt",
                lapic == 0xfee0_0000 && cpus == 1 && ioapic == Some(0xfec0_0000) && irq0_to_gsi2,
                format_args!(
                    "local APIC {lapic:#x}, {cpus} CPU, IOAPIC {:#x}, IRQ 0 on GSI 2: {irq0_to_gsi2}",
                    ioapic.unwrap_or(0)
                ),
            );
        }
        None => report.check("acpi madt", false, format_args!("no valid MADT")),
    }
    match find(b"FACP") {
        Some(fadt) => {
            let pm1a_control = u32_at(fadt, 64);
            let pm_timer = u32_at(fadt, 76);
            let dsdt = table(u64_at(fadt, 140), b"DSDT").is_some();
            report.check(
                "acpi fadt",
                pm1a_control == 0x604 && pm_timer == 0x608 && dsdt,
                format_args!(
                    "PM1a control {pm1a_control:#x}, PM timer {pm_timer:#x}, DSDT valid: {dsdt}"
                ),
            );
        }
        None => report.check("acpi fadt", false, format_args!("no valid FADT")),
    }
}

/// The MADT's local APICs, its first IOAPIC's address, and whether ISA IRQ 0 is overridden to
/// GSI 2.
fn walk_madt(madt: &[u8]) -> (u32, Option<u32>, bool) {
    let (mut cpus, mut ioapic, mut irq0) = (0, None, false);
    let mut at = 44;
    while at + 2 <= madt.len() {
        let (kind, len) = (madt[at], usize::from(madt[at + 1]));
        if len < 2 || at + len > madt.len() {
            break;
        }
        let entry = &madt[at..at + len];
        match kind {
            0 if len >= 8 && u32_at(entry, 4) & 1 != 0 => cpus += 1,
            1 if len >= 12 && ioapic.is_none() => ioapic = Some(u32_at(entry, 4)),
            2 if len >= 10 && entry[3] == 0 && u32_at(entry, 4) == 2 => irq0 = true,
            _ => {}
        }
        at += len;
    }
    (cpus, ioapic, irq0)
}

/// The XSDT's table addresses (up to 16).
mod heapless_entries {
    pub struct Entries {
        pub items: [u64; 16],
        pub len: usize,
    }

    pub fn read(xsdt: &[u8]) -> Entries {
        let mut e = Entries {
            items: [0; 16],
            len: 0,
        };
        for chunk in xsdt[36..].chunks_exact(8).take(16) {
            e.items[e.len] = super::u64_at(chunk, 0);
            e.len += 1;
        }
        e
    }
}
