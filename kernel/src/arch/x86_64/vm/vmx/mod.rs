//! Intel VMX: VMXON, one VMCS per vCPU with controls adjusted from the capability MSRs
//! (including the "true" ones), EPT with write-back memory, VPID, unrestricted guests (real and
//! protected mode without paging), interrupt-window exiting, the preemption timer, MSR bitmaps
//! and the MSR areas that switch the SYSCALL MSRs. Field encodings follow the Intel SDM vol. 3,
//! appendix B.
//!
//! One CPU: the kernel keeps track of which VMCS is current and loads another with VMPTRLD
//! before touching it.

mod vmcs;

pub use vmcs::Vmcs;

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use abi::vm::{mtd, word};
use spin::Once;
use virt::exit::{decode_vmx, Exit};
use virt::vmx_controls::{adjust, msr as cap_msr, Controls};
use x86::msr::{rdmsr, wrmsr};

use super::{Gprs, HwExit, RSP};
use crate::arch::gdt;
use crate::mem::{direct, frames};

// IA32 MSRs.
const FEATURE_CONTROL: u32 = 0x3a;
const CR0_FIXED0: u32 = 0x486;
const CR0_FIXED1: u32 = 0x487;
const CR4_FIXED0: u32 = 0x488;
const CR4_FIXED1: u32 = 0x489;
const EFER: u32 = 0xc000_0080;
const PAT: u32 = 0x277;
const FS_BASE: u32 = 0xc000_0100;
const GS_BASE: u32 = 0xc000_0101;
/// STAR LSTAR SFMASK KERNEL_GS_BASE, and TSC_AUX where the CPU has RDTSCP (the last entry:
/// the areas' counts leave it out otherwise, see [`switched_msrs`]).
const SWITCHED_MSRS: [u32; 5] = [0xc000_0081, 0xc000_0082, 0xc000_0084, 0xc000_0102, TSC_AUX];
const TSC_AUX: u32 = 0xc000_0103;
const PASSTHROUGH_MSRS: [u32; 10] = [
    FS_BASE,
    GS_BASE,
    0xc000_0102,
    0xc000_0081,
    0xc000_0082,
    0xc000_0083,
    0xc000_0084,
    0x174,
    0x175,
    0x176,
];

// VMCS fields.
const VPID: u64 = 0x0000;
const GUEST_SELECTORS: [u64; 8] = [0x802, 0x804, 0x806, 0x800, 0x808, 0x80a, 0x80e, 0x80c]; // CS SS DS ES FS GS TR LDTR
const GUEST_LIMITS: [u64; 8] = [
    0x4802, 0x4804, 0x4806, 0x4800, 0x4808, 0x480a, 0x480e, 0x480c,
];
const GUEST_ACCESS: [u64; 8] = [
    0x4816, 0x4818, 0x481a, 0x4814, 0x481c, 0x481e, 0x4822, 0x4820,
];
const GUEST_BASES: [u64; 8] = [
    0x6808, 0x680a, 0x680c, 0x6806, 0x680e, 0x6810, 0x6814, 0x6812,
];
const HOST_ES: u64 = 0xc00;
const HOST_CS: u64 = 0xc02;
const HOST_SS: u64 = 0xc04;
const HOST_DS: u64 = 0xc06;
const HOST_FS: u64 = 0xc08;
const HOST_GS: u64 = 0xc0a;
const HOST_TR: u64 = 0xc0c;
const MSR_BITMAP: u64 = 0x2004;
const EXIT_MSR_STORE: u64 = 0x2006;
const EXIT_MSR_LOAD: u64 = 0x2008;
const ENTRY_MSR_LOAD: u64 = 0x200a;
const EPT_POINTER: u64 = 0x201a;
const GUEST_PHYSICAL: u64 = 0x2400;
const LINK_POINTER: u64 = 0x2800;
const GUEST_PAT: u64 = 0x2804;
const GUEST_EFER: u64 = 0x2806;
const HOST_PAT: u64 = 0x2c00;
const HOST_EFER: u64 = 0x2c02;
const PIN_CONTROLS: u64 = 0x4000;
const PROC_CONTROLS: u64 = 0x4002;
const EXCEPTION_BITMAP: u64 = 0x4004;
const EXIT_CONTROLS: u64 = 0x400c;
const EXIT_MSR_STORE_COUNT: u64 = 0x400e;
const EXIT_MSR_LOAD_COUNT: u64 = 0x4010;
const ENTRY_CONTROLS: u64 = 0x4012;
const ENTRY_MSR_LOAD_COUNT: u64 = 0x4014;
const ENTRY_INTERRUPTION: u64 = 0x4016;
const ENTRY_ERROR_CODE: u64 = 0x4018;
const ENTRY_INSTRUCTION_LEN: u64 = 0x401a;
const SECONDARY_CONTROLS: u64 = 0x401e;
const INSTRUCTION_ERROR: u64 = 0x4400;
const EXIT_REASON: u64 = 0x4402;
const EXIT_INTERRUPTION: u64 = 0x4404;
const EXIT_INTERRUPTION_ERROR: u64 = 0x4406;
const IDT_VECTORING: u64 = 0x4408;
const IDT_VECTORING_ERROR: u64 = 0x440a;
const EXIT_INSTRUCTION_LEN: u64 = 0x440c;
const GUEST_GDTR_LIMIT: u64 = 0x4810;
const GUEST_IDTR_LIMIT: u64 = 0x4812;
const GUEST_INTERRUPTIBILITY: u64 = 0x4824;
const GUEST_ACTIVITY: u64 = 0x4826;
const GUEST_SYSENTER_CS: u64 = 0x482a;
const PREEMPTION_TIMER: u64 = 0x482e;
const HOST_SYSENTER_CS: u64 = 0x4c00;
const CR0_MASK: u64 = 0x6000;
const CR4_MASK: u64 = 0x6002;
const CR0_SHADOW: u64 = 0x6004;
const CR4_SHADOW: u64 = 0x6006;
const QUALIFICATION: u64 = 0x6400;
const GUEST_CR0: u64 = 0x6800;
const GUEST_CR3: u64 = 0x6802;
const GUEST_CR4: u64 = 0x6804;
const GUEST_GDTR_BASE: u64 = 0x6816;
const GUEST_IDTR_BASE: u64 = 0x6818;
const GUEST_DR7: u64 = 0x681a;
const GUEST_RSP: u64 = 0x681c;
const GUEST_RIP: u64 = 0x681e;
const GUEST_RFLAGS: u64 = 0x6820;
const GUEST_SYSENTER_ESP: u64 = 0x6824;
const GUEST_SYSENTER_EIP: u64 = 0x6826;
const HOST_CR0: u64 = 0x6c00;
const HOST_CR3: u64 = 0x6c02;
const HOST_CR4: u64 = 0x6c04;
const HOST_FS_BASE: u64 = 0x6c06;
const HOST_GS_BASE: u64 = 0x6c08;
const HOST_TR_BASE: u64 = 0x6c0a;
const HOST_GDTR_BASE: u64 = 0x6c0c;
const HOST_IDTR_BASE: u64 = 0x6c0e;
const HOST_SYSENTER_ESP: u64 = 0x6c10;
const HOST_SYSENTER_EIP: u64 = 0x6c12;
const HOST_RSP: u64 = 0x6c14;
const HOST_RIP: u64 = 0x6c16;

// Controls.
const PIN_EXTERNAL_INTERRUPT: u32 = 1 << 0;
const PIN_NMI: u32 = 1 << 3;
const PIN_VIRTUAL_NMI: u32 = 1 << 5;
const PIN_PREEMPTION_TIMER: u32 = 1 << 6;
const PROC_INTERRUPT_WINDOW: u32 = 1 << 2;
const PROC_HLT: u32 = 1 << 7;
const PROC_INVLPG: u32 = 1 << 9;
const PROC_CR3_LOAD: u32 = 1 << 15;
const PROC_CR3_STORE: u32 = 1 << 16;
/// MOV to and from CR8: without them (and without a TPR shadow) the guest would read and set
/// the host's own task priority, holding off the host's interrupts; the VMM emulates CR8.
const PROC_CR8_LOAD: u32 = 1 << 19;
const PROC_CR8_STORE: u32 = 1 << 20;
const PROC_MWAIT: u32 = 1 << 10;
const PROC_RDPMC: u32 = 1 << 11;
const PROC_MOV_DR: u32 = 1 << 23;
const PROC_UNCONDITIONAL_IO: u32 = 1 << 24;
const PROC_MSR_BITMAP: u32 = 1 << 28;
const PROC_MONITOR: u32 = 1 << 29;
const PROC_SECONDARY: u32 = 1 << 31;
const SECONDARY_EPT: u32 = 1 << 1;
const SECONDARY_VPID: u32 = 1 << 5;
const SECONDARY_UNRESTRICTED: u32 = 1 << 7;
const SECONDARY_RDTSCP: u32 = 1 << 3;
const EXIT_HOST_64: u32 = 1 << 9;
const EXIT_SAVE_PAT: u32 = 1 << 18;
const EXIT_LOAD_PAT: u32 = 1 << 19;
const EXIT_SAVE_EFER: u32 = 1 << 20;
const EXIT_LOAD_EFER: u32 = 1 << 21;
const ENTRY_IA32E: u32 = 1 << 9;
const ENTRY_LOAD_PAT: u32 = 1 << 14;
const ENTRY_LOAD_EFER: u32 = 1 << 15;

const CR0_PE: u64 = 1 << 0;
const CR0_PG: u64 = 1 << 31;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR4_VMXE: u64 = 1 << 13;
/// CR4 bits a nested-mode guest writes without an exit where VMX allows them: VME, PVI, TSD,
/// DE, PSE, PAE, MCE, PGE, PCE, OSFXSR, OSXMMEXCPT, UMIP, FSGSBASE, SMEP, SMAP (the VMM
/// passes their CPUID bits through from the host). Every other bit exits.
const CR4_GUEST_OWNED: u64 = 0x7ff | (1 << 11) | (1 << 16) | (1 << 20) | (1 << 21);
const EFER_LMA: u64 = 1 << 10;
/// Exceptions reflected by the kernel (#DB, #AC; see `kern::vm`).
const EXCEPTIONS_REFLECTED: u32 = (1 << 1) | (1 << 17);
/// Preemption-timer budget per entry, in timer units (TSC >> IA32_VMX_MISC[4:0]): a safety
/// net under the APIC timer, which already makes the guest exit.
const PREEMPTION_BUDGET: u64 = 1 << 24;

/// What `init` found out once.
struct Shared {
    revision: u32,
    pin: u32,
    proc: u32,
    secondary: u32,
    exit: u32,
    entry: u32,
    cr0_fixed0: u64,
    cr0_fixed1: u64,
    cr4_fixed0: u64,
    cr4_fixed1: u64,
    msr_bitmap: u64,
    /// Host values of the SWITCHED_MSRS, loaded at every exit.
    host_msrs: u64,
    /// "Enable RDTSCP" is on: guests execute RDTSCP and own TSC_AUX, which the MSR areas
    /// switch (the CPU has RDTSCP and the control).
    rdtscp: bool,
}

/// How many of [`SWITCHED_MSRS`] the VM-entry and VM-exit MSR areas switch.
fn switched_msrs() -> u64 {
    if SHARED.get().is_some_and(|s| s.rdtscp) {
        SWITCHED_MSRS.len() as u64
    } else {
        SWITCHED_MSRS.len() as u64 - 1
    }
}

static SHARED: Once<Shared> = Once::new();
/// The VMCS loaded with VMPTRLD (physical address), 0 for none.
static CURRENT: AtomicU64 = AtomicU64::new(0);
/// Set by `note_entry_failure` until the failure has been read.
static ENTRY_FAILED: AtomicBool = AtomicBool::new(false);

fn alloc_zeroed() -> Option<u64> {
    let f = frames::alloc(1)?;
    direct::zero_frame(f);
    Some(f)
}

fn vmwrite(field: u64, value: u64) {
    // SAFETY: a VMCS is current (callers go through `Vmcs::load` first) and `field` is an
    // encoding from the SDM; a bad value makes VM entry fail, which the kernel reports.
    unsafe {
        core::arch::asm!("vmwrite {}, {}", in(reg) field, in(reg) value, options(nostack));
    }
}

fn vmread(field: u64) -> u64 {
    let value: u64;
    // SAFETY: as in `vmwrite`; VMREAD has no side effects.
    unsafe {
        core::arch::asm!("vmread {}, {}", out(reg) value, in(reg) field, options(nostack));
    }
    value
}

fn control(kind: Controls, wanted: u32, basic: u64) -> Result<u32, &'static str> {
    // SAFETY: the capability MSRs exist on every CPU with VMX.
    let capability = unsafe { rdmsr(kind.capability_msr(basic)) };
    adjust(kind, wanted, capability).map_err(|_| "the CPU lacks a VMX control the kernel needs")
}

/// Turns VMX on (VMXON) and works out the controls every VMCS gets.
pub fn init() -> Result<(), &'static str> {
    // SAFETY: CPUID reported VMX (the caller checked), so these MSRs exist; FEATURE_CONTROL is
    // written only when unlocked, to allow VMXON outside SMX and lock it.
    let (basic, feature) = unsafe { (rdmsr(cap_msr::BASIC), rdmsr(FEATURE_CONTROL)) };
    if feature & 1 == 0 {
        // SAFETY: see above.
        unsafe { wrmsr(FEATURE_CONTROL, feature | 1 | (1 << 2)) };
    }
    let pin = control(
        Controls::PinBased,
        PIN_EXTERNAL_INTERRUPT | PIN_NMI | PIN_VIRTUAL_NMI,
        basic,
    )?;
    // SAFETY: as above.
    let pin_caps = unsafe { rdmsr(Controls::PinBased.capability_msr(basic)) };
    let pin = if virt::vmx_controls::may_set(pin_caps, PIN_PREEMPTION_TIMER) {
        pin | PIN_PREEMPTION_TIMER
    } else {
        pin
    };
    let proc = control(
        Controls::PrimaryProcBased,
        PROC_HLT
            | PROC_CR8_LOAD
            | PROC_CR8_STORE
            | PROC_MWAIT
            | PROC_RDPMC
            | PROC_MOV_DR
            | PROC_UNCONDITIONAL_IO
            | PROC_MSR_BITMAP
            | PROC_MONITOR
            | PROC_SECONDARY,
        basic,
    )?;
    let secondary = control(
        Controls::SecondaryProcBased,
        SECONDARY_EPT | SECONDARY_VPID | SECONDARY_UNRESTRICTED,
        basic,
    )?;
    // SAFETY: as above.
    let secondary_caps = unsafe { rdmsr(Controls::SecondaryProcBased.capability_msr(basic)) };
    let rdtscp = x86::cpuid::cpuid!(0x8000_0001).edx & (1 << 27) != 0
        && virt::vmx_controls::may_set(secondary_caps, SECONDARY_RDTSCP);
    let secondary = if rdtscp {
        secondary | SECONDARY_RDTSCP
    } else {
        secondary
    };
    let exit = control(
        Controls::Exit,
        EXIT_HOST_64 | EXIT_SAVE_PAT | EXIT_LOAD_PAT | EXIT_SAVE_EFER | EXIT_LOAD_EFER,
        basic,
    )?;
    let entry = control(Controls::Entry, ENTRY_LOAD_PAT | ENTRY_LOAD_EFER, basic)?;
    // SAFETY: the fixed-bit MSRs exist with VMX.
    let (cr0_fixed0, cr0_fixed1, cr4_fixed0, cr4_fixed1) = unsafe {
        (
            rdmsr(CR0_FIXED0),
            rdmsr(CR0_FIXED1),
            rdmsr(CR4_FIXED0),
            rdmsr(CR4_FIXED1),
        )
    };
    let revision = (basic & 0x7fff_ffff) as u32;
    let vmxon = alloc_zeroed().ok_or("no memory for the VMXON region")?;
    let msr_bitmap = alloc_zeroed().ok_or("no memory for the MSR bitmap")?;
    let host_msrs = alloc_zeroed().ok_or("no memory for the host MSR area")?;
    for i in 0..512 {
        direct::write_word(msr_bitmap, i, u64::MAX);
    }
    let passthrough_tsc_aux = rdtscp.then_some(TSC_AUX);
    for msr in PASSTHROUGH_MSRS.into_iter().chain(passthrough_tsc_aux) {
        let (base, n) = if msr >= 0xc000_0000 {
            (1024u64, msr - 0xc000_0000)
        } else {
            (0, msr)
        };
        for half in [0u64, 2048] {
            let bit = (base + half) * 8 + u64::from(n);
            let index = (bit / 64) as usize;
            let w = direct::read_word(msr_bitmap, index);
            direct::write_word(msr_bitmap, index, w & !(1 << (bit % 64)));
        }
    }
    for (i, msr) in SWITCHED_MSRS.iter().enumerate() {
        if *msr == TSC_AUX && !rdtscp {
            continue;
        }
        direct::write_word(host_msrs, 2 * i, u64::from(*msr));
        // SAFETY: these MSRs exist on every x86-64 CPU (TSC_AUX on those with RDTSCP).
        direct::write_word(host_msrs, 2 * i + 1, unsafe { rdmsr(*msr) });
    }
    direct::write_word(vmxon, 0, u64::from(revision));
    // SAFETY: CR0 and CR4 get the bits VMX operation requires (NE, VMXE; the kernel's own
    // values already meet the rest), then VMXON with a page-aligned region carrying the
    // revision identifier, which stays allocated for good.
    unsafe {
        let cr0 = x86::controlregs::cr0().bits() as u64;
        core::arch::asm!("mov cr0, {}", in(reg) (cr0 | cr0_fixed0) & cr0_fixed1);
        let cr4 = x86::controlregs::cr4().bits() as u64;
        core::arch::asm!("mov cr4, {}", in(reg) (cr4 | cr4_fixed0 | CR4_VMXE) & cr4_fixed1);
        let failed: u8;
        core::arch::asm!("vmxon [{}]", "setna {}", in(reg) &vmxon, out(reg_byte) failed);
        if failed != 0 {
            return Err("VMXON failed");
        }
    }
    SHARED.call_once(|| Shared {
        revision,
        pin,
        proc,
        secondary,
        exit,
        entry,
        cr0_fixed0,
        cr0_fixed1,
        cr4_fixed0,
        cr4_fixed1,
        msr_bitmap,
        host_msrs,
        rdtscp,
    });
    log::info!("vmx: revision {revision:#x}, pin {pin:#x}, proc {proc:#x}/{secondary:#x}, exit {exit:#x}, entry {entry:#x}");
    Ok(())
}

/// The CR4 bits VMX allows in a guest's CR4 (CR4_FIXED1).
pub fn guest_cr4() -> u64 {
    SHARED.get().map_or(0x7ff, |s| s.cr4_fixed1)
}

/// After every exit: the host's GDT limit and TR come back (see `gdt::reload_after_vm_exit`).
pub fn after_exit() {
    gdt::reload_after_vm_exit();
}

/// VMLAUNCH/VMRESUME failed without entering: the next `exit` reports it.
pub fn note_entry_failure() {
    ENTRY_FAILED.store(true, Ordering::Release);
}

/// The `abi::vm::other` kind of a VMX basic exit reason.
pub fn other_kind(reason: u64) -> u64 {
    use abi::vm::other;
    match reason & 0xffff {
        29 => other::DEBUG_REGISTER,
        13 => other::INVD,
        51 => other::RDTSCP,
        55 => other::XSETBV,
        _ => other::UNKNOWN,
    }
}

/// SVM-layout attributes to VMX access rights (unusable when not present).
fn to_access_rights(attr: u16) -> u64 {
    let a = u64::from(attr);
    let mut ar = (a & 0xff) | ((a & 0xf00) << 4);
    if attr & abi::vm::segment::PRESENT == 0 {
        ar |= 1 << 16;
    }
    ar
}

fn from_access_rights(ar: u64) -> u16 {
    if ar & (1 << 16) != 0 {
        return 0;
    }
    ((ar & 0xff) | ((ar >> 4) & 0xf00)) as u16
}

/// Flushes the guest-physical and combined mappings of one EPT context.
fn invept(ept_pointer: u64) {
    let descriptor: [u64; 2] = [ept_pointer, 0];
    // SAFETY: single-context INVEPT (type 1) with a valid EPT pointer only drops TLB entries.
    unsafe {
        core::arch::asm!("invept {}, [{}]", in(reg) 1u64, in(reg) &descriptor, options(nostack));
    }
}

/// The host state a VM exit loads: the kernel as it runs now.
fn write_host_state() {
    let (gdt_base, tss_base) = gdt::host_bases();
    let mut idtr = x86::dtables::DescriptorTablePointer::<u64>::default();
    // SAFETY: reading control registers, the IDTR and MSRs has no side effects.
    let (cr0, cr3, cr4, efer, pat, fs, gs) = unsafe {
        x86::dtables::sidt(&mut idtr);
        (
            x86::controlregs::cr0().bits() as u64,
            x86::controlregs::cr3(),
            x86::controlregs::cr4().bits() as u64,
            rdmsr(EFER),
            rdmsr(PAT),
            rdmsr(FS_BASE),
            rdmsr(GS_BASE),
        )
    };
    vmwrite(HOST_CR0, cr0);
    vmwrite(HOST_CR3, cr3);
    vmwrite(HOST_CR4, cr4);
    vmwrite(HOST_EFER, efer);
    vmwrite(HOST_PAT, pat);
    vmwrite(HOST_ES, u64::from(gdt::KERNEL_DATA.bits()));
    vmwrite(HOST_CS, u64::from(gdt::KERNEL_CODE.bits()));
    vmwrite(HOST_SS, u64::from(gdt::KERNEL_DATA.bits()));
    vmwrite(HOST_DS, u64::from(gdt::KERNEL_DATA.bits()));
    vmwrite(HOST_FS, 0);
    vmwrite(HOST_GS, 0);
    vmwrite(HOST_TR, u64::from(gdt::TSS_SELECTOR));
    vmwrite(HOST_FS_BASE, fs);
    vmwrite(HOST_GS_BASE, gs);
    vmwrite(HOST_TR_BASE, tss_base);
    vmwrite(HOST_GDTR_BASE, gdt_base);
    vmwrite(HOST_IDTR_BASE, idtr.base as u64);
}

fn read_cr2() -> u64 {
    // SAFETY: reading CR2 has no side effects.
    unsafe { x86::controlregs::cr2() as u64 }
}

fn set_cr2(value: u64) {
    // SAFETY: CR2 only reports page-fault addresses; the kernel does not rely on its value
    // outside a page-fault handler, and under VMX the CPU's CR2 is the guest's.
    unsafe { x86::controlregs::cr2_write(value) }
}
