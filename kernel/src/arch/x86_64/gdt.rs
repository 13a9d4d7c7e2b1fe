//! Global descriptor table and task-state segment.
//!
//! Layout (fixed, because SYSCALL/SYSRET derive selectors from it): 0x08 kernel code, 0x10 kernel
//! data, 0x18 user data, 0x20 user code (64-bit), 0x28 TSS. The TSS's interrupt stack table gives
//! double faults, NMIs and machine checks stacks of their own (each above a guard page).

use spin::Once;
use x86::bits64::segmentation::Descriptor64;
use x86::bits64::task::TaskStateSegment;
use x86::dtables::{lgdt, DescriptorTablePointer};
use x86::segmentation::{
    load_cs, load_ds, load_es, load_fs, load_gs, load_ss, BuildDescriptor, CodeSegmentType,
    DataSegmentType, Descriptor, DescriptorBuilder, GateDescriptorBuilder,
    SegmentDescriptorBuilder, SegmentSelector,
};
use x86::task::load_tr;
use x86::Ring;

use super::stacks;

pub const KERNEL_CODE: SegmentSelector = SegmentSelector::new(1, Ring::Ring0);
pub const KERNEL_DATA: SegmentSelector = SegmentSelector::new(2, Ring::Ring0);
const TSS: SegmentSelector = SegmentSelector::new(5, Ring::Ring0);

/// IST slots (1-based, as the IDT names them).
pub const IST_DOUBLE_FAULT: u8 = 1;
pub const IST_NMI: u8 = 2;
pub const IST_MACHINE_CHECK: u8 = 3;

#[repr(C, align(16))]
struct Gdt {
    segments: [Descriptor; 5],
    tss: Descriptor64,
}

static TSS_SEGMENT: Once<TaskStateSegment> = Once::new();
static GDT: Once<Gdt> = Once::new();

fn segment(code: bool, ring: Ring) -> Descriptor {
    let builder = if code {
        DescriptorBuilder::code_descriptor(0, 0xf_ffff, CodeSegmentType::ExecuteRead).l()
    } else {
        DescriptorBuilder::data_descriptor(0, 0xf_ffff, DataSegmentType::ReadWrite).db()
    };
    builder.present().dpl(ring).limit_granularity_4kb().finish()
}

/// Builds and loads the GDT and TSS, and reloads every segment register.
pub fn init() {
    let tss = TSS_SEGMENT.call_once(|| {
        let mut tss = TaskStateSegment::new();
        let [double_fault, nmi, machine_check] = stacks::ist_tops();
        tss.set_ist(usize::from(IST_DOUBLE_FAULT - 1), double_fault);
        tss.set_ist(usize::from(IST_NMI - 1), nmi);
        tss.set_ist(usize::from(IST_MACHINE_CHECK - 1), machine_check);
        tss
    });
    let gdt = GDT.call_once(|| {
        let base = tss as *const TaskStateSegment as u64;
        let limit = core::mem::size_of::<TaskStateSegment>() as u64 - 1;
        Gdt {
            segments: [
                Descriptor::NULL,
                segment(true, Ring::Ring0),
                segment(false, Ring::Ring0),
                segment(false, Ring::Ring3),
                segment(true, Ring::Ring3),
            ],
            tss: <DescriptorBuilder as GateDescriptorBuilder<u64>>::tss_descriptor(
                base, limit, true,
            )
            .present()
            .dpl(Ring::Ring0)
            .finish(),
        }
    });
    let pointer = DescriptorTablePointer::new(gdt);
    // SAFETY: the GDT lives in a static for the kernel's lifetime, its code and data descriptors
    // are flat 64-bit ring-0 segments equivalent to the loader's, so reloading the selectors keeps
    // the running code valid; the TSS descriptor points at a static TSS and is loaded once.
    unsafe {
        lgdt(&pointer);
        load_cs(KERNEL_CODE);
        load_ss(KERNEL_DATA);
        load_ds(KERNEL_DATA);
        load_es(KERNEL_DATA);
        load_fs(SegmentSelector::from_raw(0));
        load_gs(SegmentSelector::from_raw(0));
        load_tr(TSS);
    }
}
