//! The tables read back the way Linux reads them: the RSDP found by the BIOS-area scan, every
//! table through the XSDT with its checksum, and the FADT, MADT and DSDT fields checked.

use super::pm::{self, pm1, pm1_control, PowerManagement};
use super::tables::{self, checksum};
use super::*;
use crate::platform::misc::Event;

/// Guest memory below 1 MiB and the table blob wherever it was put.
struct Memory {
    low: Vec<u8>,
    tables_address: u64,
    tables: Vec<u8>,
}

impl Memory {
    fn load(image: &AcpiImage) -> Memory {
        let mut low = alloc::vec![0u8; 0x10_0000];
        let at = image.rsdp_address as usize;
        low[at..at + image.rsdp.len()].copy_from_slice(&image.rsdp);
        Memory {
            low,
            tables_address: image.tables_address,
            tables: image.tables.clone(),
        }
    }

    fn bytes(&self, address: u64, len: usize) -> &[u8] {
        if address >= self.tables_address {
            let offset = (address - self.tables_address) as usize;
            &self.tables[offset..offset + len]
        } else {
            &self.low[address as usize..address as usize + len]
        }
    }

    /// A table by address, its length and checksum checked.
    fn table(&self, address: u64) -> &[u8] {
        let length = le32(self.bytes(address + 4, 4)) as usize;
        let table = self.bytes(address, length);
        assert_eq!(sum(table), 0, "{} checksum", signature(table));
        table
    }
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}
fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().unwrap())
}
fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}
fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
}
fn signature(table: &[u8]) -> String {
    String::from_utf8_lossy(&table[..4]).into_owned()
}

/// acpi_find_root_pointer: the BIOS area 0xe0000..0xfffff in 16-byte steps.
fn scan_for_rsdp(memory: &Memory) -> Option<u64> {
    (BIOS_AREA.start..BIOS_AREA.end - 36)
        .step_by(16)
        .find(|&at| {
            let r = memory.bytes(at, 36);
            &r[..8] == b"RSD PTR " && sum(&r[..20]) == 0 && (r[15] < 2 || sum(r) == 0)
        })
}

/// The tables by signature, through the RSDP and XSDT.
fn walk(memory: &Memory) -> Vec<(String, u64)> {
    let rsdp_at = scan_for_rsdp(memory).expect("RSDP found");
    let rsdp = memory.bytes(rsdp_at, 36);
    assert_eq!(rsdp[15], 2, "revision");
    assert_eq!(le32(&rsdp[20..]), 36, "length");
    assert_eq!(le32(&rsdp[16..]), 0, "no RSDT");
    let xsdt_at = le64(&rsdp[24..]);
    let xsdt = memory.table(xsdt_at);
    assert_eq!(&xsdt[..4], b"XSDT");
    assert_eq!((xsdt.len() - 36) % 8, 0);
    xsdt[36..]
        .chunks(8)
        .map(|e| {
            let at = le64(e);
            (signature(memory.table(at)), at)
        })
        .collect()
}

fn find(list: &[(String, u64)], sig: &str) -> u64 {
    list.iter().find(|(s, _)| s == sig).unwrap().1
}

#[test]
fn the_rsdp_scan_finds_every_table() {
    let image = build(&Platform::default()).unwrap();
    assert_eq!(image.rsdp.len(), 36);
    let memory = Memory::load(&image);
    assert_eq!(scan_for_rsdp(&memory), Some(0xe_0000));
    let list = walk(&memory);
    let sigs: Vec<&str> = list.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(sigs, ["FACP", "APIC"]);
    for (_, at) in &list {
        let t = memory.table(*at);
        assert_eq!(&t[10..16], b"DMPHV ");
        assert_eq!(at % 8, 0);
    }
}

#[test]
fn the_fadt_is_what_linux_expects() {
    let image = build(&Platform::default()).unwrap();
    let memory = Memory::load(&image);
    let fadt = memory.table(find(&walk(&memory), "FACP"));
    assert_eq!(fadt.len(), 276);
    assert_eq!((fadt[8], fadt[131]), (6, 5), "revision 6.5");
    // DSDT and FACS: 32- and 64-bit fields agree (ACPICA warns otherwise).
    let (facs32, dsdt32) = (le32(&fadt[36..]), le32(&fadt[40..]));
    let (facs64, dsdt64) = (le64(&fadt[132..]), le64(&fadt[140..]));
    assert_eq!(u64::from(facs32), facs64);
    assert_eq!(u64::from(dsdt32), dsdt64);
    let facs = memory.bytes(facs64, 64);
    assert_eq!(&facs[..4], b"FACS");
    assert_eq!(le32(&facs[4..]), 64);
    assert_eq!(facs64 % 64, 0);
    let dsdt = memory.table(dsdt64);
    assert_eq!(&dsdt[..4], b"DSDT");
    assert_eq!(le16(&fadt[46..]), 9, "SCI_INT");
    assert_eq!(le32(&fadt[48..]), 0, "no SMI_CMD: ACPI mode from reset");
    assert_eq!(le32(&fadt[56..]), 0x600, "PM1a_EVT_BLK");
    assert_eq!(le32(&fadt[64..]), 0x604, "PM1a_CNT_BLK");
    assert_eq!(le32(&fadt[76..]), 0x608, "PM_TMR_BLK");
    assert_eq!(&fadt[88..92], &[4, 2, 0, 4], "block lengths");
    assert_eq!(le32(&fadt[80..]), 0, "no GPE0 block");
    assert_eq!(fadt[108], 0x32, "century");
    let boot_arch = le16(&fadt[109..]);
    assert_eq!(boot_arch & 0x2, 0x2, "8042");
    assert_eq!(
        boot_arch & 0x21,
        0,
        "no legacy-devices bit; CMOS RTC present"
    );
    let flags = le32(&fadt[112..]);
    assert_eq!(flags & (1 << 20), 0, "not HW-reduced");
    assert_eq!(flags & (1 << 8), 0, "24-bit PM timer");
    assert_ne!(flags & (1 << 10), 0, "reset register supported");
    assert_eq!(flags, 0x84a5, "QEMU's flags");
    // Reset register: one byte at I/O port 0xcf9, value 6.
    assert_eq!(fadt[116], 1);
    assert_eq!(fadt[117], 8);
    assert_eq!(le64(&fadt[120..]), 0xcf9);
    assert_eq!(fadt[128], 0x06);
    // Extended blocks: I/O space, widths matching the legacy lengths.
    for (offset, port, bits) in [(148, 0x600, 32), (172, 0x604, 16), (208, 0x608, 32)] {
        assert_eq!(fadt[offset], 1, "system I/O");
        assert_eq!(fadt[offset + 1], bits);
        assert_eq!(le64(&fadt[offset + 4..]), port);
    }
    for unused in [160, 184, 196, 220, 232, 244, 256] {
        assert_eq!(&fadt[unused..unused + 12], &[0; 12]);
    }
}

#[test]
fn the_madt_describes_the_apics_and_overrides() {
    let platform = Platform {
        cpus: 2,
        ioapic_id: 3,
        ..Platform::default()
    };
    let image = build(&platform).unwrap();
    let memory = Memory::load(&image);
    let madt = memory.table(find(&walk(&memory), "APIC"));
    assert_eq!(le32(&madt[36..]), 0xfee0_0000);
    assert_eq!(le32(&madt[40..]), 1, "PCAT_COMPAT");
    let mut entries = Vec::new();
    let mut at = 44;
    while at < madt.len() {
        let len = madt[at + 1] as usize;
        assert!(len >= 2 && at + len <= madt.len());
        entries.push(madt[at..at + len].to_vec());
        at += len;
    }
    assert_eq!(at, madt.len());
    let expected: [&[u8]; 6] = [
        &[0, 8, 0, 0, 1, 0, 0, 0],
        &[0, 8, 1, 1, 1, 0, 0, 0],
        &[1, 12, 3, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0],
        &[2, 10, 0, 0, 2, 0, 0, 0, 0, 0],
        &[2, 10, 0, 9, 9, 0, 0, 0, 0x0d, 0],
        &[4, 6, 0xff, 0, 0, 1],
    ];
    assert_eq!(entries, expected);
}

/// A tiny AML reader for what the DSDT holds: names, integers, packages, buffers, scopes and
/// devices, every PkgLength checked against its contents.
#[derive(Clone, Debug, PartialEq)]
enum Obj {
    Int(u64),
    Package(Vec<Obj>),
    Buffer(Vec<u8>),
}

fn pkg_end(aml: &[u8], pos: &mut usize) -> usize {
    let start = *pos;
    let b0 = aml[start];
    let extra = usize::from(b0 >> 6);
    let mut len = usize::from(if extra == 0 { b0 & 0x3f } else { b0 & 0x0f });
    for i in 0..extra {
        len |= usize::from(aml[start + 1 + i]) << (4 + 8 * i);
    }
    *pos += 1 + extra;
    start + len
}

fn name_string(aml: &[u8], pos: &mut usize) -> String {
    let mut out = String::new();
    if aml[*pos] == b'\\' {
        out.push('\\');
        *pos += 1;
    }
    out.push_str(std::str::from_utf8(&aml[*pos..*pos + 4]).unwrap());
    *pos += 4;
    out
}

fn data(aml: &[u8], pos: &mut usize) -> Obj {
    let op = aml[*pos];
    *pos += 1;
    let int = |pos: &mut usize, n: usize| {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&aml[*pos..*pos + n]);
        *pos += n;
        Obj::Int(u64::from_le_bytes(b))
    };
    match op {
        0x00 => Obj::Int(0),
        0x01 => Obj::Int(1),
        0x0a => int(pos, 1),
        0x0b => int(pos, 2),
        0x0c => int(pos, 4),
        0x0e => int(pos, 8),
        0x12 => {
            let end = pkg_end(aml, pos);
            let count = usize::from(aml[*pos]);
            *pos += 1;
            let mut elements = Vec::new();
            while *pos < end {
                elements.push(data(aml, pos));
            }
            assert_eq!(*pos, end);
            assert_eq!(elements.len(), count);
            Obj::Package(elements)
        }
        0x11 => {
            let end = pkg_end(aml, pos);
            let Obj::Int(size) = data(aml, pos) else {
                panic!("buffer size")
            };
            let bytes = aml[*pos..end].to_vec();
            assert_eq!(bytes.len() as u64, size);
            *pos = end;
            Obj::Buffer(bytes)
        }
        _ => panic!("unexpected data op {op:#x}"),
    }
}

fn terms(aml: &[u8], pos: &mut usize, end: usize, scope: &str, out: &mut Vec<(String, Obj)>) {
    let path = |scope: &str, name: String| {
        if name.starts_with('\\') {
            name
        } else {
            format!("{scope}.{name}")
        }
    };
    while *pos < end {
        match aml[*pos] {
            0x08 => {
                *pos += 1;
                let name = path(scope, name_string(aml, pos));
                out.push((name, data(aml, pos)));
            }
            0x10 => {
                *pos += 1;
                let inner_end = pkg_end(aml, pos);
                let name = path(scope, name_string(aml, pos));
                terms(aml, pos, inner_end, &name, out);
            }
            0x5b if aml[*pos + 1] == 0x82 => {
                *pos += 2;
                let inner_end = pkg_end(aml, pos);
                let name = path(scope, name_string(aml, pos));
                terms(aml, pos, inner_end, &name, out);
            }
            op => panic!("unexpected term op {op:#x}"),
        }
    }
    assert_eq!(*pos, end);
}

fn dsdt_objects() -> Vec<(String, Obj)> {
    let image = build(&Platform::default()).unwrap();
    let memory = Memory::load(&image);
    let fadt = memory.table(find(&walk(&memory), "FACP"));
    let dsdt = memory.table(le64(&fadt[140..]));
    assert_eq!(dsdt[8], 2, "revision 2: 64-bit integers");
    let mut out = Vec::new();
    let mut pos = tables::HEADER_BYTES;
    terms(dsdt, &mut pos, dsdt.len(), "\\", &mut out);
    out
}

fn lookup(objects: &[(String, Obj)], path: &str) -> Obj {
    objects.iter().find(|(p, _)| p == path).unwrap().1.clone()
}

#[test]
fn the_dsdt_offers_s5_and_the_legacy_devices() {
    let objects = dsdt_objects();
    // \_S5: SLP_TYPa, SLP_TYPb and two reserved words; Linux takes the first two.
    assert_eq!(
        lookup(&objects, "\\_S5_"),
        Obj::Package(alloc::vec![Obj::Int(0); 4])
    );
    // EisaId: PNP0501 is 0x0105d041, PNP0b00 0x000bd041, PNP0100 0x0001d041.
    assert_eq!(lookup(&objects, "\\_SB_.COM1._HID"), Obj::Int(0x0105_d041));
    assert_eq!(lookup(&objects, "\\_SB_.COM1._UID"), Obj::Int(1));
    assert_eq!(lookup(&objects, "\\_SB_.RTC_._HID"), Obj::Int(0x000b_d041));
    assert_eq!(lookup(&objects, "\\_SB_.TMR_._HID"), Obj::Int(0x0001_d041));
    // _CRS: an I/O range, an IRQ, the end tag.
    let resources = |path: &str| match lookup(&objects, path) {
        Obj::Buffer(b) => b,
        other => panic!("{other:?}"),
    };
    let com1 = resources("\\_SB_.COM1._CRS");
    assert_eq!(
        com1,
        [0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8, 0x22, 0x10, 0, 0x79, 0]
    );
    let rtc = resources("\\_SB_.RTC_._CRS");
    assert_eq!(
        &rtc[..11],
        &[0x47, 1, 0x70, 0, 0x70, 0, 1, 2, 0x22, 0x00, 0x01]
    );
    let pit = resources("\\_SB_.TMR_._CRS");
    assert_eq!(
        &pit[..11],
        &[0x47, 1, 0x40, 0, 0x40, 0, 1, 4, 0x22, 0x01, 0x00]
    );
}

#[test]
fn placement_is_checked() {
    let ok = Platform::default();
    let with = |f: fn(&mut Platform)| {
        let mut p = ok.clone();
        f(&mut p);
        build(&p)
    };
    assert!(with(|p| p.rsdp_address = 0xf_ffd0).is_ok());
    assert!(with(|p| p.rsdp_address = 0x9_fc00).is_ok(), "EBDA");
    assert_eq!(
        with(|p| p.rsdp_address = 0xe_0008).unwrap_err(),
        AcpiError::BadRsdpAddress
    );
    assert_eq!(
        with(|p| p.rsdp_address = 0xf_ffe0).unwrap_err(),
        AcpiError::BadRsdpAddress
    );
    assert_eq!(
        with(|p| p.rsdp_address = 0xd_0000).unwrap_err(),
        AcpiError::BadRsdpAddress
    );
    assert_eq!(
        with(|p| p.tables_address = 0xe_0000).unwrap_err(),
        AcpiError::BadTablesAddress
    );
    assert_eq!(
        with(|p| p.tables_address = 0xe_1020).unwrap_err(),
        AcpiError::BadTablesAddress
    );
    assert_eq!(
        with(|p| p.tables_address = 0xfff_ff00).unwrap_err(),
        AcpiError::BadTablesAddress
    );
    assert_eq!(
        with(|p| p.tables_address = u64::MAX - 63).unwrap_err(),
        AcpiError::BadTablesAddress
    );
    assert_eq!(with(|p| p.cpus = 0).unwrap_err(), AcpiError::BadCpuCount);
    // Tables high in RAM, the RSDP in the BIOS area.
    let high = with(|p| p.tables_address = 0x0f00_0000).unwrap();
    let memory = Memory::load(&high);
    assert_eq!(walk(&memory).len(), 2);
    assert_eq!(checksum(&[1, 2, 3]), 0xfa);
}

// The PM device.

const SLP_EN: u32 = pm1_control::SLEEP_ENABLE as u32;

#[test]
fn linux_power_off_sequence() {
    let mut pm = PowerManagement::new();
    // acpi_hw_legacy_sleep: clear WAK_STS, then SLP_TYP, then SLP_TYP | SLP_EN.
    assert_eq!(
        pm.write(0, pm::PM1_EVENT_PORT, 2, u32::from(pm1::WAKE)),
        None
    );
    let cnt = pm.read(0, pm::PM1_CONTROL_PORT, 2);
    assert_eq!(cnt & 1, 1, "SCI_EN");
    let typed = cnt & !0x1c00 | u32::from(pm::S5_SLEEP_TYPE) << 10;
    assert_eq!(pm.write(0, pm::PM1_CONTROL_PORT, 2, typed), None);
    assert_eq!(
        pm.write(0, pm::PM1_CONTROL_PORT, 2, typed | SLP_EN),
        Some(Event::PowerOff)
    );
    // SLP_EN reads 0.
    assert_eq!(pm.read(0, pm::PM1_CONTROL_PORT, 2) & SLP_EN, 0);
    // Other sleep types do nothing; a byte write of the high half is enough for S5.
    assert_eq!(
        pm.write(0, pm::PM1_CONTROL_PORT, 2, 1 << 10 | SLP_EN | 1),
        None
    );
    assert_eq!(
        pm.write(0, pm::PM1_CONTROL_PORT + 1, 1, SLP_EN >> 8),
        Some(Event::PowerOff)
    );
    // The low byte alone never sets SLP_EN.
    assert_eq!(pm.write(0, pm::PM1_CONTROL_PORT, 1, 0xff), None);
}

#[test]
fn pm_timer_counts_at_3_579545_mhz() {
    let mut pm = PowerManagement::new();
    let t0 = pm.read(0, pm::PM_TIMER_PORT, 4);
    let t1 = pm.read(1_000_000_000, pm::PM_TIMER_PORT, 4);
    assert_eq!(t0, 0);
    assert_eq!(t1, 3_579_545);
    // 24 bits: wraps after 2^24 ticks (4.687 s), the top byte reads 0.
    let wrap_ns = 4_687_000_000;
    let v = pm.read(wrap_ns, pm::PM_TIMER_PORT, 4);
    assert_eq!(v >> 24, 0);
    assert_eq!(v, (pm::timer_ticks(wrap_ns) & 0xff_ffff) as u32);
    assert!(pm::timer_ticks(wrap_ns) > 1 << 24);
    // Linux's verified read: three reads in a row are ordered.
    let (a, b, c) = (
        pm.read(5_000, pm::PM_TIMER_PORT, 4),
        pm.read(5_300, pm::PM_TIMER_PORT, 4),
        pm.read(5_600, pm::PM_TIMER_PORT, 4),
    );
    assert!(a <= b && b <= c && c > a);
    // Byte and word reads see the same value.
    let ns = 123_456_789;
    let whole = pm.read(ns, pm::PM_TIMER_PORT, 4);
    let low = pm.read(ns, pm::PM_TIMER_PORT, 2);
    let third = pm.read(ns, pm::PM_TIMER_PORT + 2, 1);
    assert_eq!(whole, low | third << 16);
    // Writes change nothing.
    pm.write(ns, pm::PM_TIMER_PORT, 4, 0);
    assert_eq!(pm.read(ns, pm::PM_TIMER_PORT, 4), whole);
}

#[test]
fn timer_carry_raises_the_sci() {
    let mut pm = PowerManagement::new();
    assert_eq!(
        pm.next_deadline_ns(),
        None,
        "no deadline while TMR_EN is off"
    );
    pm.write(0, pm::PM1_EVENT_PORT + 2, 2, u32::from(pm1::TIMER));
    // Bit 23 flips at 2^23 ticks: 2.3435 s.
    let due = pm.next_deadline_ns().unwrap();
    assert_eq!(pm::timer_ticks(due), 1 << 23);
    assert_eq!(pm::timer_ticks(due - 1), (1 << 23) - 1);
    pm.advance(due - 1);
    assert!(!pm.irq_level());
    pm.advance(due);
    assert!(pm.irq_level());
    assert_eq!(pm.next_deadline_ns(), None);
    assert_eq!(
        pm.read(due, pm::PM1_EVENT_PORT, 2) as u16 & pm1::TIMER,
        pm1::TIMER
    );
    // Writing 1 clears it; the next carry is 2^23 ticks later.
    pm.write(due, pm::PM1_EVENT_PORT, 2, u32::from(pm1::TIMER));
    assert!(!pm.irq_level());
    assert_eq!(pm::timer_ticks(pm.next_deadline_ns().unwrap()), 2 << 23);
    // Without SCI_EN the line stays low.
    pm.advance(u64::MAX / 4);
    assert!(pm.irq_level());
    pm.write(0, pm::PM1_CONTROL_PORT, 2, 0);
    assert!(!pm.irq_level());
}

#[test]
fn power_button() {
    let mut pm = PowerManagement::new();
    pm.press_power_button();
    assert!(!pm.irq_level(), "not enabled");
    pm.write(
        0,
        pm::PM1_EVENT_PORT + 3,
        1,
        u32::from(pm1::POWER_BUTTON >> 8),
    );
    assert_eq!(pm.registers().1, pm1::POWER_BUTTON);
    assert!(pm.irq_level());
    // A 4-byte write to the event block: clear the status, keep the enable.
    pm.write(
        0,
        pm::PM1_EVENT_PORT,
        4,
        u32::from(pm1::POWER_BUTTON) << 16 | 0x0100,
    );
    assert!(!pm.irq_level());
    assert_eq!(pm.registers().0, 0);
    assert_eq!(pm.read(0, pm::PM1_EVENT_PORT, 4), 0x0100 << 16);
}

#[test]
fn pm_any_access_is_safe() {
    let mut pm = PowerManagement::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for step in 0..100_000u64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = 0x5fe + (seed >> 8) as u16 % 16;
        let size = [1, 2, 4, 3][(seed >> 20) as usize % 4];
        let now = step.wrapping_mul(seed >> 40);
        if seed & 1 == 0 {
            assert!(pm.read(now, port, size) <= crate::platform::misc::all_ones(size));
        } else if let Some(event) = pm.write(now, port, size, (seed >> 32) as u32) {
            assert_eq!(event, Event::PowerOff);
        }
        pm.next_deadline_ns();
    }
    assert!(PowerManagement::claims(0x608) && !PowerManagement::claims(0x606));
}

#[test]
fn status_bits_clear_only_where_one_is_written() {
    let mut pm = PowerManagement::new();
    pm.press_power_button();
    pm.advance(10_000_000_000); // past the first carries: TMR_STS
    assert_eq!(pm.registers().0, pm1::TIMER | pm1::POWER_BUTTON);
    // Linux clears WAK_STS before sleeping: the other bits stay.
    pm.write(0, pm::PM1_EVENT_PORT, 2, u32::from(pm1::WAKE));
    assert_eq!(pm.registers().0, pm1::TIMER | pm1::POWER_BUTTON);
    pm.write(
        0,
        pm::PM1_EVENT_PORT + 1,
        1,
        u32::from(pm1::POWER_BUTTON >> 8),
    );
    assert_eq!(pm.registers().0, pm1::TIMER);
    pm.write(0, pm::PM1_EVENT_PORT, 1, 0xff);
    assert_eq!(pm.registers().0, 0);
}

#[test]
fn install_puts_the_tables_where_the_scan_finds_them() {
    let mut ram = alloc::vec![0u8; 2 << 20];
    let image = install(&mut ram).unwrap();
    let at = image.rsdp_address as usize;
    assert_eq!(&ram[at..at + 8], b"RSD PTR ");
    assert_eq!(sum(&ram[at..at + 20]), 0);
    let tables = image.tables_address as usize;
    assert_eq!(&ram[tables..tables + image.tables.len()], &image.tables[..]);
    // Too little RAM for the BIOS area: refused, nothing written.
    let mut small = alloc::vec![0u8; 0xe_0010];
    assert!(install(&mut small).is_err());
}
