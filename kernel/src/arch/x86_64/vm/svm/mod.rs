//! AMD SVM: the VMCB of each vCPU, the host save area, the shared I/O and MSR permission maps,
//! ASIDs and their flushes, event injection and the virtual-interrupt window.
//!
//! Offsets follow the AMD APM vol. 2, appendix B ("Layout of VMCB"). The VMCB is reached
//! through the kernel's direct map; nothing else touches it while the kernel runs.

mod vmcb;

pub use vmcb::Vmcb;

use abi::vm::{mtd, word, SEGMENT_ORDER};
use spin::Once;
use virt::exit::{decode_svm, Exit};
use x86::msr::{rdmsr, wrmsr};

use super::{Gprs, HwExit, RAX, RSP};
use crate::mem::{direct, frames};

const EFER: u32 = 0xc000_0080;
const EFER_SVME: u64 = 1 << 12;
const VM_HSAVE_PA: u32 = 0xc001_0117;
/// The value RDTSCP returns in ECX: the guest's own while it runs (see `Shared::rdtscp`).
pub(super) const TSC_AUX: u32 = 0xc000_0103;

// Control area.
const INTERCEPT_CR: usize = 0x000;
const INTERCEPT_DR: usize = 0x004;
const INTERCEPT_EXCEPTIONS: usize = 0x008;
const INTERCEPT_MISC1: usize = 0x00c;
const INTERCEPT_MISC2: usize = 0x010;
const IOPM_BASE: usize = 0x040;
const MSRPM_BASE: usize = 0x048;
const GUEST_ASID: usize = 0x058;
const TLB_CONTROL: usize = 0x05c;
const VINTR: usize = 0x060;
const INTERRUPT_SHADOW: usize = 0x068;
const EXIT_CODE: usize = 0x070;
const EXIT_INFO1: usize = 0x078;
const EXIT_INFO2: usize = 0x080;
const EXIT_INT_INFO: usize = 0x088;
const NP_ENABLE: usize = 0x090;
const EVENT_INJ: usize = 0x0a8;
const N_CR3: usize = 0x0b0;
const CLEAN_BITS: usize = 0x0c0;
const NEXT_RIP: usize = 0x0c8;
// State save area.
const SEGMENT_OFFSETS: [usize; 8] = [0x410, 0x420, 0x430, 0x400, 0x440, 0x450, 0x490, 0x470]; // CS SS DS ES FS GS TR LDTR
const GDTR: usize = 0x460;
const IDTR: usize = 0x480;
const CPL: usize = 0x4cb;
const S_EFER: usize = 0x4d0;
const S_CR4: usize = 0x548;
const S_CR3: usize = 0x550;
const S_CR0: usize = 0x558;
const S_DR7: usize = 0x560;
const S_DR6: usize = 0x568;
const S_RFLAGS: usize = 0x570;
const S_RIP: usize = 0x578;
const S_RSP: usize = 0x5d8;
const S_RAX: usize = 0x5f8;
const S_SYSENTER_CS: usize = 0x628;
const S_SYSENTER_ESP: usize = 0x630;
const S_SYSENTER_EIP: usize = 0x638;
const S_CR2: usize = 0x640;
const S_G_PAT: usize = 0x668;

// Intercept bits.
const MISC1_INTR: u32 = 1 << 0;
const MISC1_NMI: u32 = 1 << 1;
const MISC1_SMI: u32 = 1 << 2;
const MISC1_INIT: u32 = 1 << 3;
const MISC1_VINTR: u32 = 1 << 4;
const MISC1_RDPMC: u32 = 1 << 15;
const MISC1_CPUID: u32 = 1 << 18;
const MISC1_INVD: u32 = 1 << 22;
const MISC1_HLT: u32 = 1 << 24;
const MISC1_INVLPG: u32 = 1 << 25;
const MISC1_IOIO: u32 = 1 << 27;
const MISC1_MSR: u32 = 1 << 28;
const MISC1_SHUTDOWN: u32 = 1 << 31;
/// VMRUN, VMMCALL, VMLOAD, VMSAVE, STGI, CLGI, SKINIT, RDTSCP, MONITOR, MWAIT,
/// MWAIT_CONDITIONAL, XSETBV. RDTSCP only where the CPU lacks it ([`MISC2_RDTSCP`]).
const MISC2_ALWAYS: u32 = 0x7f | MISC2_RDTSCP | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 13);
/// RDTSCP: intercepted (the VMM answers #UD) unless the CPU has it, in which case the kernel
/// switches TSC_AUX around every VMRUN (SVM does not), so the guest reads its own.
pub(super) const MISC2_RDTSCP: u32 = 1 << 7;
/// DR0-DR7 reads and writes: the kernel never uses debug registers, so the guest may not see
/// or set the host's.
const DR_ALL: u32 = 0x00ff_00ff;
/// #DB and #AC: a guest could otherwise hang the CPU in an endless chain of them.
const EXCEPTIONS_REFLECTED: u32 = (1 << 1) | (1 << 17);
/// Reads and writes of CR8: the task priority is the VMM's (as on VMX, where the guest would
/// otherwise set the host's), and QEMU 7.2's TCG accepts reserved CR8 bits without #GP.
const CR8_ACCESS: u32 = (1 << 8) | (1 << (16 + 8));
/// Nested mode: writes of CR0 and CR4, and CR8. SVM has no masks, so every such write exits and
/// the VMM gives the architectural result: the guest may set only the CR4 bits of features it
/// is offered (the CPU would accept, say, OSXSAVE or PCIDE that CPUID hides), and a reserved
/// bit gets #GP. QEMU 7.2's TCG checks neither itself: an unintercepted reserved CR4 bit gives
/// VMEXIT_INVALID, a reserved CR0 bit is taken into the VMCB (which the kernel's state checks
/// then refuse in every later reply).
const NESTED_CR: u32 = (1 << 16) | (1 << (16 + 4)) | CR8_ACCESS;
/// Shadow mode: reads and writes of CR0, CR3 and CR4 (the guest's own values live in the
/// kernel's vTLB; SVM has no read shadows), and CR8 (the VMM's).
const SHADOW_CR: u32 = 0b1_1001 | (0b1_1001 << 16) | CR8_ACCESS;
/// Shadow mode: #PF.
const SHADOW_EXCEPTIONS: u32 = 1 << 14;

const V_IRQ: u64 = 1 << 8;
const V_IGN_TPR: u64 = 1 << 20;
const V_INTR_MASKING: u64 = 1 << 24;
const TLB_FLUSH_ALL: u8 = 1;
const TLB_FLUSH_GUEST: u8 = 3;
/// The power-on PAT.
const DEFAULT_PAT: u64 = 0x0007_0406_0007_0406;

/// Frames shared by every vCPU: the host save area, the host VMCB for VMSAVE/VMLOAD of host
/// state, and the permission maps.
struct Shared {
    host_vmcb: u64,
    iopm: u64,
    msrpm: u64,
    nrip_save: bool,
    /// EXITINFO1 holds the INVLPG operand (decode assists).
    decode_assists: bool,
    /// The EFER and CR4 bits and physical-address width VMRUN accepts on this CPU.
    guest_features: virt::svm_state::Features,
    /// The CPU has RDTSCP: guests execute it and WRMSR/RDMSR TSC_AUX directly, and the kernel
    /// loads the vCPU's TSC_AUX before VMRUN and the host's value after the exit.
    pub(super) rdtscp: bool,
    /// The host's TSC_AUX (the kernel never changes it).
    pub(super) host_tsc_aux: u64,
}

static SHARED: Once<Shared> = Once::new();
/// `Shared::rdtscp`, in one word for the entry and exit paths.
static RDTSCP: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// MSRs the guest reads and writes directly: each is part of the state VMLOAD/VMSAVE or the VMCB
/// switch, so it never shows the host's value.
const PASSTHROUGH_MSRS: [u32; 10] = [
    0xc000_0100, // FS_BASE
    0xc000_0101, // GS_BASE
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
];

fn alloc_zeroed(count: usize) -> Option<u64> {
    let base = frames::alloc(count)?;
    for i in 0..count as u64 {
        direct::zero_frame(base + i * 4096);
    }
    Some(base)
}

fn fill(base: u64, count: usize, byte: u8) {
    let word = u64::from_ne_bytes([byte; 8]);
    for f in 0..count as u64 {
        for i in 0..512 {
            direct::write_word(base + f * 4096, i, word);
        }
    }
}

/// Clears the two intercept bits of `msr` in the MSR permission map.
fn pass_msr(msrpm: u64, msr: u32) {
    let (range_base, first) = match msr {
        0..=0x1fff => (0u64, 0u32),
        0xc000_0000..=0xc000_1fff => (0x800, 0xc000_0000),
        0xc001_0000..=0xc001_1fff => (0x1000, 0xc001_0000),
        _ => return,
    };
    let bit = u64::from(msr - first) * 2;
    let byte = range_base + bit / 8;
    let frame = msrpm + (byte / 4096) * 4096;
    let index = ((byte % 4096) / 8) as usize;
    let shift = (byte % 8) * 8 + bit % 8;
    let w = direct::read_word(frame, index);
    direct::write_word(frame, index, w & !(0b11 << shift));
}

/// What this CPU implements of the guest-state bits VMRUN checks (CPUID), so that a state the
/// CPU would refuse is refused by the kernel first, with a typed error.
fn guest_features() -> virt::svm_state::Features {
    use virt::svm_state::Features;
    let leaf1 = x86::cpuid::cpuid!(1);
    let leaf7 = x86::cpuid::cpuid!(7, 0);
    let ext1 = x86::cpuid::cpuid!(0x8000_0001);
    let bit = |reg: u32, n: u32, value: u64| if reg & (1 << n) != 0 { value } else { 0 };
    // SCE, LME, LMA and SVME exist on every CPU that runs this kernel.
    let efer = (1 << 0 | 1 << 8 | 1 << 10 | 1 << 12)
        | bit(ext1.edx, 20, 1 << 11) // NXE
        | bit(ext1.edx, 25, 1 << 14) // FFXSR
        | bit(ext1.ecx, 17, 1 << 15); // TCE
                                      // VME..OSXMMEXCPT (bits 0-10) are architectural on x86-64.
    let cr4 = 0x7ff
        | bit(leaf7.ebx, 0, 1 << 16) // FSGSBASE
        | bit(leaf1.ecx, 17, 1 << 17) // PCIDE
        | bit(leaf1.ecx, 26, 1 << 18) // OSXSAVE
        | bit(leaf7.ebx, 7, 1 << 20) // SMEP
        | bit(leaf7.ebx, 20, 1 << 21); // SMAP
    Features {
        efer: efer & !Features::NEVER_EFER,
        cr4,
        maxphyaddr: crate::arch::cpu::physical_address_bits(),
    }
}

/// Enables SVM on this CPU and builds the shared structures.
pub fn init() -> Result<(), &'static str> {
    let svm = x86::cpuid::CpuId::new()
        .get_svm_info()
        .ok_or("CPUID has no SVM leaf")?;
    let host_save = alloc_zeroed(1).ok_or("no memory for the host save area")?;
    let host_vmcb = alloc_zeroed(1).ok_or("no memory for the host VMCB")?;
    let iopm = alloc_zeroed(3).ok_or("no memory for the I/O permission map")?;
    let msrpm = alloc_zeroed(2).ok_or("no memory for the MSR permission map")?;
    fill(iopm, 3, 0xff);
    fill(msrpm, 2, 0xff);
    for msr in PASSTHROUGH_MSRS {
        pass_msr(msrpm, msr);
    }
    let rdtscp = x86::cpuid::cpuid!(0x8000_0001).edx & (1 << 27) != 0;
    let mut host_tsc_aux = 0;
    if rdtscp {
        pass_msr(msrpm, TSC_AUX);
        // SAFETY: TSC_AUX exists on CPUs with RDTSCP; reading it has no side effect.
        host_tsc_aux = unsafe { rdmsr(TSC_AUX) };
    }
    // SAFETY: CPUID reported SVM and firmware has not disabled it (checked by the caller);
    // setting EFER.SVME enables the SVM instructions, and VM_HSAVE_PA gets a page the kernel
    // owns for good.
    unsafe {
        wrmsr(EFER, rdmsr(EFER) | EFER_SVME);
        wrmsr(VM_HSAVE_PA, host_save);
    }
    SHARED.call_once(|| Shared {
        host_vmcb,
        iopm,
        msrpm,
        nrip_save: svm.has_nrip(),
        decode_assists: svm.has_decode_assists(),
        guest_features: guest_features(),
        rdtscp,
        host_tsc_aux,
    });
    RDTSCP.store(rdtscp, core::sync::atomic::Ordering::Relaxed);
    log::info!(
        "svm: {} ASIDs, NRIP save {}, decode assists {}",
        svm.supported_asids(),
        if svm.has_nrip() { "yes" } else { "no" },
        if svm.has_decode_assists() {
            "yes"
        } else {
            "no"
        }
    );
    Ok(())
}

/// The CR4 bits VMRUN accepts in a guest's CR4 on this CPU.
pub fn guest_cr4() -> u64 {
    SHARED.get().map_or(0x7ff, |s| s.guest_features.cr4)
}

/// Number of ASIDs (ASID 0 is the host's).
pub fn asid_count() -> u32 {
    x86::cpuid::CpuId::new()
        .get_svm_info()
        .map_or(0, |s| s.supported_asids())
}

/// The `abi::vm::other` kind of an SVM exit code.
pub fn other_kind(code: u64) -> u64 {
    use abi::vm::other;
    match code {
        0x20..=0x3f => other::DEBUG_REGISTER,
        0x76 => other::INVD,
        0x87 => other::RDTSCP,
        0x8d => other::XSETBV,
        _ => other::UNKNOWN,
    }
}
