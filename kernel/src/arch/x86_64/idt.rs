//! Interrupt descriptor table: one interrupt gate per handled vector, each entering through the
//! stubs of `trap_entry.s`.

use core::arch::global_asm;

use spin::Once;
use x86::bits64::segmentation::Descriptor64;
use x86::dtables::{lidt, DescriptorTablePointer};
use x86::segmentation::{BuildDescriptor, DescriptorBuilder, GateDescriptorBuilder};
use x86::Ring;

use super::apic::{SPURIOUS_VECTOR, TIMER_VECTOR};
use super::gdt;
use super::pic::IRQ_BASE;

global_asm!(include_str!("trap_entry.s"));

/// Vectors that have a stub, in the order of `trap_stub_table`: the 32 exceptions, the APIC
/// timer, the 16 legacy IRQ lines and the spurious-interrupt vector.
const STUB_VECTORS: [u8; 50] = {
    let mut vectors = [0u8; 50];
    let mut i = 0;
    while i < 32 {
        vectors[i] = i as u8;
        i += 1;
    }
    vectors[32] = TIMER_VECTOR;
    let mut irq = 0;
    while irq < 16 {
        vectors[33 + irq] = IRQ_BASE + irq as u8;
        irq += 1;
    }
    vectors[49] = SPURIOUS_VECTOR;
    vectors
};

extern "C" {
    static trap_stub_table: [u64; STUB_VECTORS.len()];
}

#[repr(C, align(16))]
struct Idt([Descriptor64; 256]);

static IDT: Once<Idt> = Once::new();

fn ist_for(vector: u8) -> u8 {
    match vector {
        8 => gdt::IST_DOUBLE_FAULT,
        2 => gdt::IST_NMI,
        18 => gdt::IST_MACHINE_CHECK,
        _ => 0,
    }
}

/// Builds and loads the IDT.
pub fn init() {
    let idt = IDT.call_once(|| {
        let mut idt = Idt([Descriptor64::NULL; 256]);
        // SAFETY: `trap_stub_table` is an immutable table of stub addresses emitted by the
        // assembler with exactly `STUB_VECTORS.len()` entries.
        let stubs = unsafe { &trap_stub_table };
        for (&vector, &stub) in STUB_VECTORS.iter().zip(stubs.iter()) {
            idt.0[usize::from(vector)] =
                <DescriptorBuilder as GateDescriptorBuilder<u64>>::interrupt_descriptor(
                    gdt::KERNEL_CODE,
                    stub,
                )
                .present()
                .dpl(Ring::Ring0)
                .ist(ist_for(vector))
                .finish();
        }
        idt
    });
    let pointer = DescriptorTablePointer::new(idt);
    // SAFETY: the IDT lives in a static for the kernel's lifetime and every present gate points
    // at a stub that saves state and calls `trap_dispatch`.
    unsafe { lidt(&pointer) };
}
