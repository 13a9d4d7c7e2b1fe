//! Global descriptor table and task-state segment.
//!
//! Layout (fixed, because SYSCALL/SYSRET derive selectors from it): 0x08 kernel code, 0x10 kernel
//! data, 0x18 user data, 0x20 user code (64-bit), 0x28 TSS. The TSS's interrupt stack table gives
//! double faults, NMIs and machine checks stacks of their own (each above a guard page).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

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
/// User data and code selectors as user mode loads them (RPL 3); `trap_entry.s` pushes the same values.
pub const USER_DATA: u64 = 0x18 | 3;
pub const USER_CODE: u64 = 0x20 | 3;
const TSS: SegmentSelector = SegmentSelector::new(5, Ring::Ring0);

/// IST slots (1-based, as the IDT names them).
pub const IST_DOUBLE_FAULT: u8 = 1;
pub const IST_NMI: u8 = 2;
pub const IST_MACHINE_CHECK: u8 = 3;

#[repr(C, align(16))]
struct Gdt {
    segments: [Descriptor; 5],
    tss: TssDescriptor,
}

/// The TSS descriptor, whose busy bit the kernel clears to reload TR after a VMX exit (which
/// leaves TR's limit at 0x67, cutting off the I/O bitmap).
#[repr(transparent)]
struct TssDescriptor(UnsafeCell<Descriptor64>);

// SAFETY: written only by `reload_task_register`, with interrupts disabled on the one CPU.
unsafe impl Sync for TssDescriptor {}

/// Bytes of the I/O permission bitmap: one bit per port, set = denied.
pub const IO_BITMAP_BYTES: usize = 65536 / 8;

/// The TSS followed by its I/O permission bitmap (and the all-ones byte the CPU reads past it).
#[repr(C, packed)]
struct TssWithBitmap {
    tss: TaskStateSegment,
    bitmap: [u8; IO_BITMAP_BYTES + 1],
}

/// The single CPU's TSS. Written only by this module, with interrupts disabled (the kernel runs
/// with interrupts off except in its idle loop, which does not touch it).
struct TssCell(UnsafeCell<TssWithBitmap>);

// SAFETY: one CPU; every access happens in the kernel with interrupts disabled, so accesses never
// overlap (see `TssCell`).
unsafe impl Sync for TssCell {}

static TSS_AREA: TssCell = TssCell(UnsafeCell::new(TssWithBitmap {
    tss: TaskStateSegment::new(),
    bitmap: [0xff; IO_BITMAP_BYTES + 1],
}));
static GDT: Once<Gdt> = Once::new();

extern "C" {
    /// Where `syscall_entry` starts pushing a thread's frame (see `trap_entry.s`).
    static mut current_regs_end: u64;
}

/// Makes the next entry from user mode (trap or syscall) save the user state just below `top`,
/// the end of the current thread's register save area (16-byte aligned).
pub fn set_user_entry_stack(top: u64) {
    debug_assert!(top.is_multiple_of(16));
    let tss = TSS_AREA.0.get();
    // SAFETY: see `TssCell`: no concurrent access; the fields are written unaligned because the
    // TSS layout is packed.
    unsafe {
        core::ptr::addr_of_mut!((*tss).tss.rsp).write_unaligned([top, 0, 0]);
        core::ptr::addr_of_mut!(current_regs_end).write(top);
    }
}

/// Whether the TSS bitmap currently allows some port (else it is all ones and a switch between
/// two domains without ports need not touch it).
static BITMAP_OPEN: AtomicBool = AtomicBool::new(false);

/// Loads the I/O permission bitmap for the thread about to run: `None` denies every port.
pub fn load_io_bitmap(bitmap: Option<&[u8; IO_BITMAP_BYTES]>) {
    if bitmap.is_none() && !BITMAP_OPEN.load(Ordering::Relaxed) {
        return;
    }
    let tss = TSS_AREA.0.get();
    // SAFETY: see `TssCell`; `bitmap` is a plain byte array inside the static.
    let target = unsafe { &mut *core::ptr::addr_of_mut!((*tss).bitmap) };
    match bitmap {
        Some(bits) => target[..IO_BITMAP_BYTES].copy_from_slice(bits),
        None => target.fill(0xff),
    }
    BITMAP_OPEN.store(bitmap.is_some(), Ordering::Relaxed);
}

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
    let area = TSS_AREA.0.get();
    let [double_fault, nmi, machine_check] = stacks::ist_tops();
    let mut ist = [0u64; 7];
    ist[usize::from(IST_DOUBLE_FAULT - 1)] = double_fault;
    ist[usize::from(IST_NMI - 1)] = nmi;
    ist[usize::from(IST_MACHINE_CHECK - 1)] = machine_check;
    // SAFETY: see `TssCell`; runs once at boot before any user thread exists.
    unsafe {
        core::ptr::addr_of_mut!((*area).tss.ist).write_unaligned(ist);
        core::ptr::addr_of_mut!((*area).tss.iomap_base)
            .write_unaligned(core::mem::size_of::<TaskStateSegment>() as u16);
    }
    let gdt = GDT.call_once(|| {
        let base = area as u64;
        let limit = core::mem::size_of::<TssWithBitmap>() as u64 - 1;
        Gdt {
            segments: [
                Descriptor::NULL,
                segment(true, Ring::Ring0),
                segment(false, Ring::Ring0),
                segment(false, Ring::Ring3),
                segment(true, Ring::Ring3),
            ],
            tss: TssDescriptor(UnsafeCell::new(
                <DescriptorBuilder as GateDescriptorBuilder<u64>>::tss_descriptor(
                    base, limit, true,
                )
                .present()
                .dpl(Ring::Ring0)
                .finish(),
            )),
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

/// Selector of the TSS (for the VMCS host state).
pub const TSS_SELECTOR: u16 = TSS.bits();

/// Base addresses of the GDT and the TSS (for the VMCS host state).
pub fn host_bases() -> (u64, u64) {
    let gdt = GDT.get().map_or(0, |g| g as *const Gdt as u64);
    (gdt, TSS_AREA.0.get() as u64)
}

/// Restores the GDT limit and TR (with its full limit) after a VMX exit, which set the GDT
/// limit to 0xffff and TR's limit to 0x67.
pub fn reload_after_vm_exit() {
    let Some(gdt) = GDT.get() else { return };
    let pointer = DescriptorTablePointer::new(gdt);
    // Type 0xb (busy 64-bit TSS) becomes 0x9 (available): LTR refuses a busy descriptor.
    const BUSY: u64 = 1 << 41;
    // SAFETY: the descriptor lives in the static GDT; only this function writes it, on the one
    // CPU with interrupts disabled, and LTR of the now-available TSS reloads the same TSS.
    unsafe {
        lgdt(&pointer);
        let low = gdt.tss.0.get() as *mut u64;
        low.write_volatile(low.read_volatile() & !BUSY);
        load_tr(TSS);
    }
}
