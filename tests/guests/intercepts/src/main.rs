//! The `intercepts` test guest: every instruction the hypervisor intercepts must give the result a
//! real CPU with the features CPUID shows would give (KVM's where the manuals leave a choice).
//! One `intercepts: <check>: ok|FAIL (<detail>)` line per check, then
//! `intercepts: N checks passed, M failed`; exit 0 only when M is 0.
//!
//! - MOV to CR0 with a reserved bit (32), with NW without CD: #GP; clearing CR0.NE (which VMX
//!   keeps set underneath) reads back clear;
//! - MOV to CR4 with reserved bits (31, 32): #GP; with the bit of each feature CPUID does not
//!   show (VMXE, SMXE, PCIDE, OSXSAVE, PKE, LA57): #GP; an owned bit (PCE) reads back;
//! - MOV to/from CR8: the task priority reads back, a reserved bit is #GP;
//! - MOV to/from DR0-DR3 reads back; DR6 reads its fixed bits as 1 (`0xffff0ff0`); DR7 reads
//!   back (bit 10 set); bits 63:32 in DR6 or DR7 are #GP; DR4/DR5 alias DR6/DR7 while CR4.DE
//!   = 0 and are #UD while CR4.DE = 1; DR7.GD makes the next MOV DR raise #DB with DR6.BD;
//! - RDTSCP: if CPUID 0x8000_0001 EDX[27] shows it, TSC_AUX reads 0 at first, and RDTSCP
//!   returns the value written with WRMSR 0xc000_0103 in ECX after 2,000 exits; otherwise #UD;
//! - XSAVE: if CPUID 1 ECX[26] shows it, CR4.OSXSAVE sets (and CPUID 1 ECX[27] follows it,
//!   checked after the XSETBVs: in shadow mode the VMM sees CR4 at the next intercepted one),
//!   XCR0 reads 1 at first, XSETBV of an invalid XCR0 is #GP, a valid one reads back with
//!   XGETBV and an XSAVE/XRSTOR round trip restores XMM0; otherwise XSETBV and XGETBV are #UD;
//! - INVD completes (a no-op for a guest, as under KVM).
//!
//! It runs in both memory modes (the manifest starts it twice) on both backends.
#![no_std]
#![no_main]

use core::arch::asm;
use core::fmt;

use grt::cpu::{cpuid, read_cr4};
use grt::trap::{try_write_cr4, Fault};
use grt::{guarded_asm, println};

grt::elf64_entry!(main);

const CR0_NE: u64 = 1 << 5;
const CR0_NW: u64 = 1 << 29;
const CR4_DE: u64 = 1 << 3;
const CR4_PCE: u64 = 1 << 8;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXSAVE: u64 = 1 << 18;
const MSR_TSC_AUX: u32 = 0xc000_0103;

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
            "intercepts: {}: {} ({})",
            what,
            if ok { "ok" } else { "FAIL" },
            detail
        );
    }

    /// A check that `result` is the fault `expected`.
    fn fault(&mut self, what: &str, result: Result<(), Fault>, expected: Fault) {
        match result {
            Err(f) if f == expected => self.check(what, true, format_args!("{}", f)),
            Err(f) => self.check(
                what,
                false,
                format_args!("raised {}, {} expected", f, expected),
            ),
            Ok(()) => self.check(
                what,
                false,
                format_args!("completed, {} expected", expected),
            ),
        }
    }
}

fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 has no side effect.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// # Safety
/// If the write succeeds, the new CR0 must not break this program.
unsafe fn try_write_cr0(value: u64) -> Result<(), Fault> {
    // SAFETY: per the caller; a fault leaves CR0 as it was.
    unsafe { guarded_asm!("mov cr0, {}", in(reg) value) }
}

fn try_read_cr8() -> Result<u64, Fault> {
    let mut v: u64 = 0;
    // SAFETY: reading CR8 has no side effect.
    unsafe { guarded_asm!("mov {}, cr8", inout(reg) v) }?;
    Ok(v)
}

fn try_write_cr8(value: u64) -> Result<(), Fault> {
    // SAFETY: interrupts stay disabled in this guest, so the task priority changes nothing.
    unsafe { guarded_asm!("mov cr8, {}", in(reg) value) }
}

/// MOV to debug register `n` (4 and 5 by their encodings, which assemblers may refuse).
fn try_write_dr(n: u8, value: u64) -> Result<(), Fault> {
    // SAFETY: no breakpoint this program sets covers an address it uses (DR7 enables at most
    // DR0, which points at an address it never touches); a fault leaves the register as it was.
    unsafe {
        match n {
            0 => guarded_asm!("mov dr0, {}", in(reg) value),
            1 => guarded_asm!("mov dr1, {}", in(reg) value),
            2 => guarded_asm!("mov dr2, {}", in(reg) value),
            3 => guarded_asm!("mov dr3, {}", in(reg) value),
            4 => guarded_asm!(".byte 0x0f, 0x23, 0xe0", in("rax") value),
            5 => guarded_asm!(".byte 0x0f, 0x23, 0xe8", in("rax") value),
            6 => guarded_asm!("mov dr6, {}", in(reg) value),
            _ => guarded_asm!("mov dr7, {}", in(reg) value),
        }
    }
}

/// MOV from debug register `n`.
fn try_read_dr(n: u8) -> Result<u64, Fault> {
    let mut v: u64 = 0;
    // SAFETY: reading a debug register changes nothing.
    unsafe {
        match n {
            0 => guarded_asm!("mov {}, dr0", inout(reg) v),
            1 => guarded_asm!("mov {}, dr1", inout(reg) v),
            2 => guarded_asm!("mov {}, dr2", inout(reg) v),
            3 => guarded_asm!("mov {}, dr3", inout(reg) v),
            4 => guarded_asm!(".byte 0x0f, 0x21, 0xe0", inout("rax") v),
            5 => guarded_asm!(".byte 0x0f, 0x21, 0xe8", inout("rax") v),
            6 => guarded_asm!("mov {}, dr6", inout(reg) v),
            _ => guarded_asm!("mov {}, dr7", inout(reg) v),
        }
    }?;
    Ok(v)
}

/// Shows a read's outcome.
struct Got(Result<u64, Fault>);

impl fmt::Display for Got {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Ok(v) => write!(f, "{v:#x}"),
            Err(fault) => write!(f, "raised {fault}"),
        }
    }
}

fn control_registers(r: &mut Report) {
    let cr0 = read_cr0();
    // SAFETY: a reserved bit: the write must fault; if it does not, CR0 is restored below.
    r.fault(
        "mov cr0 reserved bit 32",
        unsafe { try_write_cr0(cr0 | 1 << 32) },
        Fault::GP,
    );
    // SAFETY: NW without CD is invalid: the write must fault.
    r.fault(
        "mov cr0 nw without cd",
        unsafe { try_write_cr0(cr0 | CR0_NW) },
        Fault::GP,
    );
    // SAFETY: NE only selects how x87 errors are reported; this program uses no x87.
    let cleared = unsafe { try_write_cr0(cr0 & !CR0_NE) };
    let seen = read_cr0();
    // SAFETY: the CR0 this program runs with.
    let restored = unsafe { try_write_cr0(cr0) };
    r.check(
        "mov cr0 clears ne",
        cleared.is_ok() && seen == cr0 & !CR0_NE && restored.is_ok() && read_cr0() == cr0,
        format_args!("cr0 {cr0:#x} -> {seen:#x}, back {:#x}", read_cr0()),
    );
    // SAFETY: as before, if these ever succeed.
    unsafe {
        let _ = try_write_cr0(cr0);
    }

    let cr4 = read_cr4();
    for bit in [31, 32] {
        // SAFETY: a reserved bit: the write must fault.
        let result = unsafe { try_write_cr4(cr4 | 1 << bit) };
        r.fault(
            if bit == 31 {
                "mov cr4 reserved bit 31"
            } else {
                "mov cr4 reserved bit 32"
            },
            result,
            Fault::GP,
        );
    }
    let leaf1 = cpuid(1, 0);
    let leaf7 = cpuid(7, 0);
    let hidden = [
        ("vmxe", 13, leaf1.ecx & (1 << 5) != 0),
        ("smxe", 14, false),
        ("pcide", 17, leaf1.ecx & (1 << 17) != 0),
        ("osxsave", 18, leaf1.ecx & (1 << 26) != 0),
        ("pke", 22, leaf7.ecx & (1 << 3) != 0),
        ("la57", 12, true),
    ];
    for (name, bit, offered) in hidden {
        // LA57 may not change in long mode whatever CPUID says; the others are #GP only when
        // not offered (an offered one is tested where it is used, or not at all).
        let what = match name {
            "vmxe" => "mov cr4.vmxe (not offered)",
            "smxe" => "mov cr4.smxe (not offered)",
            "pcide" => "mov cr4.pcide (not offered)",
            "osxsave" => "mov cr4.osxsave (not offered)",
            "pke" => "mov cr4.pke (not offered)",
            _ => "mov cr4.la57 in long mode",
        };
        if offered && name != "la57" {
            r.check(what, true, format_args!("offered by CPUID: not tested"));
            continue;
        }
        // SAFETY: the write must fault; if it does not, CR4 is restored at once.
        let result = unsafe { try_write_cr4(cr4 | 1 << bit) };
        if result.is_ok() {
            // SAFETY: the CR4 this program runs with.
            unsafe {
                let _ = try_write_cr4(cr4);
            }
        }
        r.fault(what, result, Fault::GP);
    }
    // SAFETY: PCE only allows RDPMC outside ring 0.
    let set = unsafe { try_write_cr4(cr4 | CR4_PCE) };
    let seen = read_cr4();
    // SAFETY: the CR4 this program runs with.
    let back = unsafe { try_write_cr4(cr4) };
    r.check(
        "mov cr4.pce reads back",
        set.is_ok() && back.is_ok() && seen == cr4 | CR4_PCE && read_cr4() == cr4,
        format_args!("cr4 {cr4:#x} -> {seen:#x}"),
    );

    let written = try_write_cr8(5);
    let seen = try_read_cr8();
    let zero = try_write_cr8(0);
    r.check(
        "mov cr8 reads back",
        written.is_ok() && zero.is_ok() && seen == Ok(5),
        format_args!("wrote 5, read {}", Got(seen)),
    );
    r.fault("mov cr8 reserved bits", try_write_cr8(0x10), Fault::GP);
}

fn debug_registers(r: &mut Report) {
    let values = [
        0x1111_2000,
        0xffff_8000_0000_3000,
        0x7fff_ffff_f000,
        0xdead_b000,
    ];
    let mut ok = true;
    for (n, v) in values.iter().enumerate() {
        ok &= try_write_dr(n as u8, *v).is_ok();
    }
    let got = [0u8, 1, 2, 3].map(try_read_dr);
    ok &= got.iter().zip(values).all(|(g, v)| *g == Ok(v));
    r.check(
        "mov dr0-dr3 read back",
        ok,
        format_args!(
            "{} {} {} {}",
            Got(got[0]),
            Got(got[1]),
            Got(got[2]),
            Got(got[3])
        ),
    );

    let w = try_write_dr(6, 0);
    let dr6 = try_read_dr(6);
    r.check(
        "dr6 fixed bits read as 1",
        w.is_ok() && dr6 == Ok(0xffff_0ff0),
        format_args!("wrote 0, read {}", Got(dr6)),
    );

    // L0 with DR0 at 0x1111_2000, which this program never touches.
    let w = try_write_dr(7, 0x401);
    let dr7 = try_read_dr(7);
    let off = try_write_dr(7, 0);
    let dr7_off = try_read_dr(7);
    r.check(
        "mov dr7 reads back",
        w.is_ok() && off.is_ok() && dr7 == Ok(0x401) && dr7_off == Ok(0x400),
        format_args!(
            "wrote 0x401, read {}; wrote 0, read {}",
            Got(dr7),
            Got(dr7_off)
        ),
    );

    let results = [try_write_dr(6, 1 << 32), try_write_dr(7, 1 << 40)];
    let unchanged = try_read_dr(7) == Ok(0x400);
    let ok = results.iter().all(|x| *x == Err(Fault::GP)) && unchanged;
    r.check(
        "mov dr6/dr7 bits 63:32 raise #GP",
        ok,
        format_args!("{:?} {:?}", results[0], results[1]),
    );

    let cr4 = read_cr4();
    // SAFETY: DE only changes how DR4/DR5 are treated.
    let de_off = unsafe { try_write_cr4(cr4 & !CR4_DE) };
    let w5 = try_write_dr(5, 0x403);
    let dr7 = try_read_dr(7);
    let dr4 = try_read_dr(4);
    let dr6 = try_read_dr(6);
    let _ = try_write_dr(7, 0x400);
    r.check(
        "dr4/dr5 alias dr6/dr7 with cr4.de clear",
        de_off.is_ok() && w5.is_ok() && dr7 == Ok(0x403) && dr4.is_ok() && dr4 == dr6,
        format_args!("dr7 {}, dr4 {}, dr6 {}", Got(dr7), Got(dr4), Got(dr6)),
    );
    // SAFETY: as above.
    let de_on = unsafe { try_write_cr4(cr4 | CR4_DE) };
    let read4 = try_read_dr(4);
    let write5 = try_write_dr(5, 0x400);
    // SAFETY: the CR4 this program runs with.
    unsafe {
        let _ = try_write_cr4(cr4);
    }
    r.check(
        "dr4/dr5 raise #UD with cr4.de set",
        de_on.is_ok() && read4 == Err(Fault::UD) && write5 == Err(Fault::UD),
        format_args!("read dr4: {}, write dr5: {:?}", Got(read4), write5),
    );

    // General detect: the next MOV DR raises #DB (DR6.BD set) and clears GD.
    let gd = try_write_dr(7, 0x400 | 1 << 13);
    let trapped = try_read_dr(0);
    let dr6 = try_read_dr(6);
    let dr7 = try_read_dr(7);
    let _ = try_write_dr(6, 0);
    r.check(
        "dr7.gd makes mov dr raise #DB",
        gd.is_ok()
            && trapped == Err(Fault { vector: 1 })
            && dr6.is_ok_and(|v| v & (1 << 13) != 0)
            && dr7 == Ok(0x400),
        format_args!(
            "mov from dr0: {}, dr6 {}, dr7 {}",
            Got(trapped),
            Got(dr6),
            Got(dr7)
        ),
    );
}

fn rdtscp(r: &mut Report) {
    let offered = cpuid(0x8000_0001, 0).edx & (1 << 27) != 0;
    if !offered {
        // SAFETY: RDTSCP writes only the named registers, or faults.
        let result = unsafe { guarded_asm!("rdtscp", out("eax") _, out("edx") _, out("ecx") _) };
        r.fault("rdtscp (not offered)", result, Fault::UD);
        return;
    }
    // Every vCPU starts with TSC_AUX 0, whatever another guest (or the host) wrote.
    let initial = grt::trap::try_rdmsr(MSR_TSC_AUX);
    // A value of its own (from the TSC: the other guest of the manifest picks another).
    let value = (grt::cpu::rdtsc() as u32 & 0xffff) << 8 | 0x5a;
    // SAFETY: TSC_AUX is only what RDTSCP reports.
    let written = unsafe { grt::trap::try_wrmsr(MSR_TSC_AUX, u64::from(value)) };
    // Exits in between (the other guest may run meanwhile): the value must survive them.
    for leaf in 0..2000 {
        let _ = cpuid(leaf & 7, 0);
    }
    let mut aux: u32 = 0;
    // SAFETY: RDTSCP writes only the named registers, or faults.
    let result = unsafe { guarded_asm!("rdtscp", out("eax") _, out("edx") _, inout("ecx") aux) };
    r.check(
        "rdtscp returns tsc_aux",
        initial == Ok(0) && written.is_ok() && result.is_ok() && aux == value,
        format_args!(
            "initial {}, wrote {value:#x}: wrmsr {:?}, rdtscp {:?}, ecx {:#x}",
            Got(initial),
            written,
            result,
            aux
        ),
    );
}

fn try_xgetbv(xcr: u32) -> Result<u64, Fault> {
    let (mut lo, mut hi): (u32, u32) = (0, 0);
    // SAFETY: XGETBV only reads an extended control register, or faults.
    unsafe { guarded_asm!("xgetbv", in("ecx") xcr, inout("eax") lo, inout("edx") hi) }?;
    Ok(u64::from(hi) << 32 | u64::from(lo))
}

#[repr(C, align(64))]
struct XsaveArea([u8; 4096]);

static mut XSAVE_AREA: XsaveArea = XsaveArea([0; 4096]);

fn xsave(r: &mut Report) {
    let offered = cpuid(1, 0).ecx & (1 << 26) != 0;
    if !offered {
        let set = grt::trap::try_xsetbv(0, 1);
        let get = try_xgetbv(0);
        r.check(
            "xsetbv/xgetbv (xsave not offered)",
            set == Err(Fault::UD) && get == Err(Fault::UD),
            format_args!("xsetbv {:?}, xgetbv {}", set, Got(get)),
        );
        return;
    }
    let cr4 = read_cr4();
    let osxsave_before = cpuid(1, 0).ecx & (1 << 27) != 0;
    // SAFETY: OSXSAVE and OSFXSR enable XSAVE and SSE, which only this function uses.
    let enabled = unsafe { try_write_cr4(cr4 | CR4_OSXSAVE | CR4_OSFXSR) };
    // Every vCPU starts with XCR0 = x87, whatever another guest set.
    let initial = try_xgetbv(0);
    let supported = u64::from(cpuid(0xd, 0).eax) | u64::from(cpuid(0xd, 0).edx) << 32;
    // x87 clear, AVX without SSE, a bit the machine does not support, XCR1.
    let invalid = [
        grt::trap::try_xsetbv(0, 0b10),
        grt::trap::try_xsetbv(0, 0b101),
        grt::trap::try_xsetbv(0, 0b11 | (!supported & 0xffff_ffff_ffff_fffc).min(1 << 62)),
        grt::trap::try_xsetbv(1, 0b11),
    ];
    let valid = grt::trap::try_xsetbv(0, 0b11);
    // In shadow mode the VMM learns CR4.OSXSAVE at the next intercepted instruction (here the
    // XSETBVs): the OSXSAVE bit of CPUID is checked after them.
    let osxsave_after = cpuid(1, 0).ecx & (1 << 27) != 0;
    let xcr0 = try_xgetbv(0);
    let mut restored: u64 = 0;
    // SAFETY: SSE is enabled (CR4.OSFXSR) and XCR0 holds x87 and SSE; the area is this
    // program's own, 64-byte aligned and large enough for those states.
    let round_trip = unsafe {
        let area = core::ptr::addr_of_mut!(XSAVE_AREA) as u64;
        guarded_asm!(
            "mov rcx, 0x1122334455667788",
            "movq xmm0, rcx",
            "mov eax, 3",
            "xor edx, edx",
            "xsave [{area}]",
            "pxor xmm0, xmm0",
            "mov eax, 3",
            "xor edx, edx",
            "xrstor [{area}]",
            "movq {out}, xmm0",
            area = in(reg) area,
            out = out(reg) restored,
            out("rax") _, out("rdx") _, out("rcx") _, out("xmm0") _
        )
    };
    r.check(
        "xsetbv/xgetbv/xsave",
        enabled.is_ok()
            && !osxsave_before
            && osxsave_after
            && initial == Ok(1)
            && invalid.iter().all(|x| *x == Err(Fault::GP))
            && valid.is_ok()
            && xcr0 == Ok(0b11)
            && round_trip.is_ok()
            && restored == 0x1122_3344_5566_7788,
        format_args!(
            "cpuid osxsave {} -> {}, initial xcr0 {}, invalid {:?}, valid {:?}, xgetbv {}, \
             xmm0 {:#x}",
            osxsave_before,
            osxsave_after,
            Got(initial),
            invalid,
            valid,
            Got(xcr0),
            restored
        ),
    );
}

fn main(_boot: &grt::Boot) -> u8 {
    let mut r = Report {
        passed: 0,
        failed: 0,
    };
    control_registers(&mut r);
    debug_registers(&mut r);
    rdtscp(&mut r);
    xsave(&mut r);
    // SAFETY: INVD would drop dirty cache lines on bare metal; a guest's INVD never reaches the
    // caches (hypervisors make it a no-op or WBINVD).
    let invd = unsafe { guarded_asm!("invd") };
    r.check("invd completes", invd.is_ok(), format_args!("{:?}", invd));
    println!(
        "intercepts: {} checks passed, {} failed",
        r.passed, r.failed
    );
    u8::from(r.failed != 0)
}
