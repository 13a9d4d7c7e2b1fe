//! CPU identification: vendor, brand and which hardware virtualization the CPU offers.

use core::fmt;

use x86::cpuid::CpuId;
use x86::msr::rdmsr;

const IA32_FEATURE_CONTROL: u32 = 0x3a;
const FEATURE_CONTROL_LOCKED: u64 = 1 << 0;
const FEATURE_CONTROL_VMX_OUTSIDE_SMX: u64 = 1 << 2;
const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
/// Primary processor-based control 31: activate secondary controls (allowed-1 in the high half).
const ACTIVATE_SECONDARY_CONTROLS: u64 = 1 << (32 + 31);
/// Secondary processor-based control 1: enable EPT (allowed-1 in the high half).
const ENABLE_EPT: u64 = 1 << (32 + 1);
const VM_CR: u32 = 0xc001_0114;
const VM_CR_SVMDIS: u64 = 1 << 4;

/// Hardware virtualization as found on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Virtualization {
    /// Intel VT-x. `ept`: extended page tables offered; `firmware_disabled`: IA32_FEATURE_CONTROL
    /// is locked with VMX off.
    Vmx { ept: bool, firmware_disabled: bool },
    /// AMD-V. `npt`: nested page tables offered; `firmware_disabled`: VM_CR.SVMDIS is set.
    Svm { npt: bool, firmware_disabled: bool },
    /// Neither.
    None,
}

impl Virtualization {
    /// Whether the kernel can run guests with nested paging on this CPU.
    pub fn usable(self) -> bool {
        matches!(
            self,
            Virtualization::Vmx {
                ept: true,
                firmware_disabled: false
            } | Virtualization::Svm {
                npt: true,
                firmware_disabled: false
            }
        )
    }
}

impl fmt::Display for Virtualization {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let (name, paging, has_paging, disabled) = match *self {
            Virtualization::Vmx {
                ept,
                firmware_disabled,
            } => ("VMX", "EPT", ept, firmware_disabled),
            Virtualization::Svm {
                npt,
                firmware_disabled,
            } => ("SVM", "NPT", npt, firmware_disabled),
            Virtualization::None => return f.write_str("none (neither VMX nor SVM)"),
        };
        let with = if has_paging { "with" } else { "without" };
        write!(f, "{name} {with} {paging}")?;
        if disabled {
            f.write_str(" (disabled by firmware)")?;
        }
        Ok(())
    }
}

/// What the kernel knows about the boot CPU.
pub struct CpuInfo {
    pub vendor: heapless::String<16>,
    pub brand: heapless::String<64>,
    pub virt: Virtualization,
    pub x2apic: bool,
}

/// Identifies the boot CPU.
pub fn identify() -> CpuInfo {
    let cpuid = CpuId::new();
    let mut vendor = heapless::String::new();
    if let Some(v) = cpuid.get_vendor_info() {
        let _ = vendor.push_str(v.as_str());
    }
    let mut brand = heapless::String::new();
    if let Some(b) = cpuid.get_processor_brand_string() {
        let _ = brand.push_str(b.as_str().trim());
    }
    let features = cpuid.get_feature_info();
    let vmx = features.as_ref().is_some_and(|f| f.has_vmx());
    let x2apic = features.as_ref().is_some_and(|f| f.has_x2apic());
    let svm = cpuid
        .get_extended_processor_and_feature_identifiers()
        .is_some_and(|f| f.has_svm());
    let virt = if vmx {
        vmx_details()
    } else if svm {
        Virtualization::Svm {
            npt: cpuid.get_svm_info().is_some_and(|s| s.has_nested_paging()),
            // SAFETY: VM_CR exists on every CPU that reports SVM in CPUID.
            firmware_disabled: unsafe { rdmsr(VM_CR) } & VM_CR_SVMDIS != 0,
        }
    } else {
        Virtualization::None
    };
    CpuInfo {
        vendor,
        brand,
        virt,
        x2apic,
    }
}

fn vmx_details() -> Virtualization {
    // SAFETY: CPUID reported VMX, so IA32_FEATURE_CONTROL and the VMX capability MSRs exist.
    let (control, primary) =
        unsafe { (rdmsr(IA32_FEATURE_CONTROL), rdmsr(IA32_VMX_PROCBASED_CTLS)) };
    let ept = primary & ACTIVATE_SECONDARY_CONTROLS != 0
        // SAFETY: secondary controls are offered, so their capability MSR exists.
        && unsafe { rdmsr(IA32_VMX_PROCBASED_CTLS2) } & ENABLE_EPT != 0;
    let firmware_disabled =
        control & FEATURE_CONTROL_LOCKED != 0 && control & FEATURE_CONTROL_VMX_OUTSIDE_SMX == 0;
    Virtualization::Vmx {
        ept,
        firmware_disabled,
    }
}

/// Whether the CPU maps 1 GiB pages (CPUID 0x80000001 EDX bit 26).
/// The CPU's physical-address width (MAXPHYADDR; 36 where CPUID does not say).
pub fn physical_address_bits() -> u8 {
    CpuId::new()
        .get_processor_capacity_feature_info()
        .map_or(36, |c| c.physical_address_bits())
}

pub fn has_1gib_pages() -> bool {
    CpuId::new()
        .get_extended_processor_and_feature_identifiers()
        .is_some_and(|f| f.has_1gib_pages())
}

/// Reads the time-stamp counter. Under QEMU's `-icount shift=0` it counts executed instructions.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects; CR4.TSD is clear in ring 0.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Halts with interrupts enabled until one arrives, then disables them again (the idle loop:
/// the timer and IRQ handlers run in ring 0 and return here).
pub fn wait_for_interrupt() {
    // SAFETY: enabling interrupts only to halt; the kernel's own handlers take them.
    unsafe {
        x86::irq::enable();
        x86::halt();
        x86::irq::disable();
    }
}

/// The faulting linear address of the last page fault.
pub fn page_fault_address() -> u64 {
    // SAFETY: reading CR2 has no side effects.
    unsafe { x86::controlregs::cr2() as u64 }
}
