//! The `probe` test guest: a Multiboot 2 kernel that reports what the machine looks like from
//! inside, one `probe: <check>: ok|FAIL (<detail>)` line per check, then
//! `probe: N checks passed, M failed`; it exits 0 only when M is 0, else 1.
//!
//! Checks: the CPUID hypervisor bit and the `DMPmicroHV01` signature leaf; VMX, SVM, AVX,
//! PCID and x2APIC hidden; the memory map's RAM size equals the command line's `memory=<N>M`;
//! the allowed MSRs read without fault, APIC_BASE is 0xfee00000 and enabled, EFER has LME and LMA
//! (and not SVME), FEATURE_CONTROL is locked with VMX off; MSRs outside the allow-list (VM_CR,
//! VM_HSAVE_PA, IA32_VMX_BASIC) raise #GP; the secret at 0x90000 carries the guest's name
//! (`name=<guestname>` on the command line, default `probe`).
#![no_std]
#![no_main]

use core::fmt;

use grt::boot::{cmdline_value, parse_size};
use grt::cpu::{cpuid, Cpuid};
use grt::trap::{try_rdmsr, Fault};
use grt::{println, secret};

grt::multiboot2_entry!(main);

const SIGNATURE: &[u8; 12] = b"DMPmicroHV01";
/// The MSRs the hypervisor allows, with their names.
const ALLOWED_MSRS: [(u32, &str); 18] = [
    (0x10, "TSC"),
    (0x1b, "APIC_BASE"),
    (0x3a, "FEATURE_CONTROL"),
    (0xfe, "MTRRcap"),
    (0x174, "SYSENTER_CS"),
    (0x175, "SYSENTER_ESP"),
    (0x176, "SYSENTER_EIP"),
    (0x1a0, "MISC_ENABLE"),
    (0x277, "PAT"),
    (0x2ff, "MTRR_DEF_TYPE"),
    (0xc000_0080, "EFER"),
    (0xc000_0081, "STAR"),
    (0xc000_0082, "LSTAR"),
    (0xc000_0083, "CSTAR"),
    (0xc000_0084, "SFMASK"),
    (0xc000_0100, "FS_BASE"),
    (0xc000_0101, "GS_BASE"),
    (0xc000_0102, "KERNEL_GS_BASE"),
];
/// MSRs outside the allow-list that a real machine might have (virtualization state).
const FORBIDDEN_MSRS: [(u32, &str); 3] = [
    (0xc001_0114, "VM_CR"),
    (0xc001_0117, "VM_HSAVE_PA"),
    (0x480, "IA32_VMX_BASIC"),
];
const MSR_APIC_BASE: u32 = 0x1b;
const MSR_FEATURE_CONTROL: u32 = 0x3a;
const MSR_EFER: u32 = 0xc000_0080;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_SVME: u64 = 1 << 12;

/// Counts and prints the checks.
struct Report {
    passed: u32,
    failed: u32,
}

impl Report {
    fn check(&mut self, what: &str, ok: bool, detail: fmt::Arguments) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        println!(
            "probe: {}: {} ({})",
            what,
            if ok { "ok" } else { "FAIL" },
            detail
        );
    }
}

fn main(boot: &grt::Boot) -> u8 {
    let cmdline = boot.cmdline();
    println!(
        "probe: booted via {}, cmdline \"{}\"",
        boot.protocol(),
        cmdline
    );
    let mut report = Report {
        passed: 0,
        failed: 0,
    };
    check_cpuid(&mut report);
    check_memory(&mut report, boot, cmdline);
    check_msrs(&mut report);
    check_secret(
        &mut report,
        cmdline_value(cmdline, "name").unwrap_or("probe"),
    );
    println!(
        "probe: {} checks passed, {} failed",
        report.passed, report.failed
    );
    if report.failed == 0 {
        grt::EXIT_SUCCESS
    } else {
        grt::EXIT_FAILURE
    }
}

fn check_cpuid(report: &mut Report) {
    let leaf1 = cpuid(1, 0);
    report.check(
        "cpuid hypervisor bit",
        leaf1.ecx & (1 << 31) != 0,
        format_args!("leaf 1 ecx {:#010x}", leaf1.ecx),
    );

    let hv = cpuid(0x4000_0000, 0);
    let mut signature = [0u8; 12];
    signature[..4].copy_from_slice(&hv.ebx.to_le_bytes());
    signature[4..8].copy_from_slice(&hv.ecx.to_le_bytes());
    signature[8..].copy_from_slice(&hv.edx.to_le_bytes());
    report.check(
        "cpuid hypervisor signature",
        &signature == SIGNATURE,
        format_args!(
            "leaf 0x40000000: max {:#x}, \"{}\"",
            hv.eax,
            Printable(&signature)
        ),
    );

    report.check(
        "vmx hidden",
        leaf1.ecx & (1 << 5) == 0,
        format_args!("leaf 1 ecx bit 5"),
    );
    let max_ext = cpuid(0x8000_0000, 0).eax;
    let ext = if max_ext >= 0x8000_0001 {
        cpuid(0x8000_0001, 0)
    } else {
        Cpuid {
            eax: 0,
            ebx: 0,
            ecx: 0,
            edx: 0,
        }
    };
    report.check(
        "svm hidden",
        ext.ecx & (1 << 2) == 0,
        format_args!("leaf 0x80000001 ecx {:#010x}", ext.ecx),
    );
    // XSAVE itself is offered where the host has it (x87 and SSE state only); AVX, which needs
    // more XSAVE state, is not.
    let others = leaf1.ecx & ((1 << 28) | (1 << 17) | (1 << 21));
    report.check(
        "avx, pcid, x2apic hidden",
        others == 0,
        format_args!("leaf 1 ecx bits 28, 17, 21: {:#x}", others),
    );
}

fn check_memory(report: &mut Report, boot: &grt::Boot, cmdline: &str) {
    let expected = cmdline_value(cmdline, "memory").and_then(parse_size);
    let top = boot.ram_top();
    // Firmware may keep a few KiB at the top of RAM for itself (QEMU's BIOS does); the
    // hypervisor's map ends exactly at the RAM size. Compare in whole MiB.
    let top_mib = top.map(|t| t.div_ceil(1 << 20));
    let ok = matches!((expected, top_mib), (Some(e), Some(t)) if e == t << 20);
    report.check(
        "memory size",
        ok,
        format_args!(
            "memory map tops out at {}, available {}, command line says {}",
            Hex(top),
            Hex(boot.ram_available()),
            cmdline_value(cmdline, "memory").unwrap_or("nothing (no memory=<N>M)")
        ),
    );
}

fn check_msrs(report: &mut Report) {
    let mut faulted = 0;
    for (msr, name) in ALLOWED_MSRS {
        if let Err(fault) = try_rdmsr(msr) {
            faulted += 1;
            println!("probe: rdmsr {} ({:#x}) raised {}", name, msr, fault);
        }
    }
    report.check(
        "allowed msrs read",
        faulted == 0,
        format_args!(
            "{} of {} without fault",
            ALLOWED_MSRS.len() - faulted,
            ALLOWED_MSRS.len()
        ),
    );

    let apic = try_rdmsr(MSR_APIC_BASE);
    let apic_ok = matches!(apic, Ok(v) if v & 0xffff_f000 == 0xfee0_0000 && v & (1 << 11) != 0);
    report.check(
        "apic base",
        apic_ok,
        format_args!("APIC_BASE {}", MsrValue(apic)),
    );

    let efer = try_rdmsr(MSR_EFER);
    report.check(
        "efer long mode",
        matches!(efer, Ok(v) if v & (EFER_LME | EFER_LMA) == EFER_LME | EFER_LMA),
        format_args!("EFER {}, LME and LMA expected", MsrValue(efer)),
    );
    report.check(
        "efer svme clear",
        matches!(efer, Ok(v) if v & EFER_SVME == 0),
        format_args!("EFER {}", MsrValue(efer)),
    );

    let fc = try_rdmsr(MSR_FEATURE_CONTROL);
    report.check(
        "feature control locks vmx off",
        matches!(fc, Ok(v) if v & 1 != 0 && v & 0b110 == 0),
        format_args!("FEATURE_CONTROL {}", MsrValue(fc)),
    );

    for (msr, name) in FORBIDDEN_MSRS {
        let r = try_rdmsr(msr);
        report.check(
            "unlisted msr raises #GP",
            r == Err(Fault::GP),
            format_args!("rdmsr {} ({:#x}): {}", name, msr, MsrValue(r)),
        );
    }
}

fn check_secret(report: &mut Report, name: &str) {
    // SAFETY: the secret's address is RAM of every guest (the hypervisor writes it there), and
    // this program keeps nothing there.
    let bytes = unsafe { secret::phys_bytes(secret::ADDR, secret::MAX_LEN) };
    let found = secret::parse(bytes);
    let ok = matches!(found, Some(s) if s.name == name);
    match found {
        Some(s) => report.check(
            "own secret",
            ok,
            format_args!(
                "at {:#x}: name \"{}\", expected \"{}\"",
                secret::ADDR,
                s.name,
                name
            ),
        ),
        None => report.check(
            "own secret",
            false,
            format_args!("nothing at {:#x}", secret::ADDR),
        ),
    }
}

/// Bytes as text, with `.` for anything unprintable.
struct Printable<'a>(&'a [u8]);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for &b in self.0 {
            let c = if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            };
            fmt::Write::write_char(f, c)?;
        }
        Ok(())
    }
}

/// An MSR read's outcome: its value or the exception.
struct MsrValue(Result<u64, Fault>);

impl fmt::Display for MsrValue {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Ok(v) => write!(f, "{:#x}", v),
            Err(fault) => write!(f, "raised {}", fault),
        }
    }
}

/// An optional number in hex.
struct Hex(Option<u64>);

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{:#x}", v),
            None => f.write_str("(no memory map)"),
        }
    }
}
