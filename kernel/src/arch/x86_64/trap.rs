//! Trap dispatch: the APIC timer, spurious interrupts, and exceptions. An exception in the kernel
//! is a kernel bug or a deliberate test: it gets a readable dump (vector, error code, RIP, CR2,
//! control and general registers) and a failure power-off.

use core::fmt;

use x86::controlregs::{cr0, cr2, cr3, cr4};

use super::{apic, pic, power, stacks};
use crate::println;

pub use super::apic::{SPURIOUS_VECTOR, TIMER_VECTOR};

/// What the entry stubs push, lowest address first. A user thread's saved registers have the
/// same layout (the stubs build it in the thread object, see `trap_entry.s`).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(16))]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 22 * 8);

pub const PAGE_FAULT: u64 = 14;
const DOUBLE_FAULT: u64 = 8;

/// Called by `trap_common` with interrupts disabled.
#[no_mangle]
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    match frame.vector {
        v if v == u64::from(TIMER_VECTOR) => apic::timer_interrupt(),
        v if v == u64::from(SPURIOUS_VECTOR) => {}
        v => match irq_line(v) {
            Some(irq) => pic::interrupt(irq),
            None => fatal_exception(frame),
        },
    }
}

/// The legacy IRQ line a vector belongs to, if it is one.
pub fn irq_line(vector: u64) -> Option<u8> {
    let base = u64::from(pic::IRQ_BASE);
    (base..base + u64::from(pic::IRQ_LINES))
        .contains(&vector)
        .then(|| (vector - base) as u8)
}

fn fatal_exception(frame: &TrapFrame) -> ! {
    // SAFETY: reading control registers in ring 0 has no side effects.
    let (cr0, cr2, cr3, cr4) = unsafe { (cr0().bits(), cr2() as u64, cr3(), cr4().bits()) };
    let name = exception_name(frame.vector);
    println!(
        "EXCEPTION #{} (vector {}, {}) error code {:#x}{}",
        name.0,
        frame.vector,
        name.1,
        frame.error_code,
        PageFaultCause(frame)
    );
    println!(
        "  RIP={:016x} CS={:04x} RFLAGS={:016x} RSP={:016x} SS={:04x}",
        frame.rip, frame.cs, frame.rflags, frame.rsp, frame.ss
    );
    println!("  CR2={cr2:016x} CR3={cr3:016x} CR0={cr0:016x} CR4={cr4:016x}");
    println!(
        "  RAX={:016x} RBX={:016x} RCX={:016x} RDX={:016x}",
        frame.rax, frame.rbx, frame.rcx, frame.rdx
    );
    println!(
        "  RSI={:016x} RDI={:016x} RBP={:016x} R8 ={:016x}",
        frame.rsi, frame.rdi, frame.rbp, frame.r8
    );
    println!(
        "  R9 ={:016x} R10={:016x} R11={:016x} R12={:016x}",
        frame.r9, frame.r10, frame.r11, frame.r12
    );
    println!(
        "  R13={:016x} R14={:016x} R15={:016x}",
        frame.r13, frame.r14, frame.r15
    );
    let overflow =
        (frame.vector == DOUBLE_FAULT || frame.vector == PAGE_FAULT) && stacks::is_guard_page(cr2);
    if overflow {
        power::fail(format_args!(
            "kernel stack overflow: access to guard page at {cr2:#x} (#{} at RIP {:#x})",
            name.0, frame.rip
        ));
    }
    power::fail(format_args!(
        "unhandled exception #{} in the kernel at RIP {:#x}",
        name.0, frame.rip
    ))
}

/// Decodes a page fault's error code; prints nothing for other vectors.
struct PageFaultCause<'a>(&'a TrapFrame);

impl fmt::Display for PageFaultCause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.0.vector != PAGE_FAULT {
            return Ok(());
        }
        let e = self.0.error_code;
        let pick =
            |bit: u64, yes: &'static str, no: &'static str| if e & bit != 0 { yes } else { no };
        write!(
            f,
            " [{}, {}, {}{}]",
            pick(1 << 0, "protection violation", "not present"),
            pick(
                1 << 1,
                "write",
                if e & (1 << 4) != 0 {
                    "instruction fetch"
                } else {
                    "read"
                }
            ),
            pick(1 << 2, "user", "supervisor"),
            pick(1 << 3, ", reserved bit set", ""),
        )
    }
}

fn exception_name(vector: u64) -> (&'static str, &'static str) {
    match vector {
        0 => ("DE", "divide error"),
        1 => ("DB", "debug"),
        2 => ("NMI", "non-maskable interrupt"),
        3 => ("BP", "breakpoint"),
        4 => ("OF", "overflow"),
        5 => ("BR", "bound range exceeded"),
        6 => ("UD", "invalid opcode"),
        7 => ("NM", "device not available"),
        8 => ("DF", "double fault"),
        10 => ("TS", "invalid TSS"),
        11 => ("NP", "segment not present"),
        12 => ("SS", "stack-segment fault"),
        13 => ("GP", "general protection"),
        14 => ("PF", "page fault"),
        16 => ("MF", "x87 floating-point error"),
        17 => ("AC", "alignment check"),
        18 => ("MC", "machine check"),
        19 => ("XM", "SIMD floating-point"),
        20 => ("VE", "virtualization exception"),
        21 => ("CP", "control protection"),
        29 => ("VC", "VMM communication"),
        30 => ("SX", "security exception"),
        _ => ("??", "reserved or unexpected vector"),
    }
}
