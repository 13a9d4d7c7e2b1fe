//! Exceptions: an IDT with handlers for the 32 architectural vectors, and expected faults.
//!
//! An unexpected exception prints `grt: exception #GP (vector 13), error 0x0, rip 0x...` and
//! exits with [`EXIT_EXCEPTION`](crate::EXIT_EXCEPTION).
//!
//! An expected one is how a test checks that something faults (an MSR that must raise #GP, a
//! `vmcall` that must raise #UD): [`guarded_asm!`] arms a resume address just before the
//! instruction; the handler records the vector, moves the saved RIP to the resume address and
//! returns, and the macro yields `Err(Fault)` instead of `Ok(())`. The `try_*` functions wrap the
//! common cases.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

global_asm!(include_str!("isr.s"));
global_asm!(include_str!("irq.s"));

/// The registers `isr.s` saves, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// An exception that an armed instruction raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub vector: u8,
}

impl Fault {
    pub const UD: Fault = Fault { vector: 6 };
    pub const GP: Fault = Fault { vector: 13 };
    pub const PF: Fault = Fault { vector: 14 };
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "#{}", mnemonic(self.vector))
    }
}

/// The short name of an exception vector (`GP` for 13).
pub fn mnemonic(vector: u8) -> &'static str {
    const NAMES: [&str; 32] = [
        "DE", "DB", "NMI", "BP", "OF", "BR", "UD", "NM", "DF", "CSO", "TS", "NP", "SS", "GP", "PF",
        "15", "MF", "AC", "MC", "XM", "VE", "CP", "22", "23", "24", "25", "26", "27", "HV", "VC",
        "SX", "31",
    ];
    NAMES.get(usize::from(vector)).copied().unwrap_or("??")
}

/// The armed resume address (0: nothing armed). Public only for [`guarded_asm!`].
#[doc(hidden)]
pub static RESUME_RIP: AtomicU64 = AtomicU64::new(0);
/// The vector of the last expected fault (`NO_FAULT`: none).
static FAULT_VECTOR: AtomicU64 = AtomicU64::new(NO_FAULT);
const NO_FAULT: u64 = u64::MAX;

/// Disarms and returns the fault the armed instruction raised, if any. Public only for
/// [`guarded_asm!`].
#[doc(hidden)]
pub fn take_fault() -> Result<(), Fault> {
    RESUME_RIP.store(0, Ordering::SeqCst);
    match FAULT_VECTOR.swap(NO_FAULT, Ordering::SeqCst) {
        NO_FAULT => Ok(()),
        v => Err(Fault { vector: v as u8 }),
    }
}

/// Runs an `asm!` template with an expected fault: evaluates to `Ok(())` when the instructions
/// complete, `Err(Fault)` when one of them raised an exception (execution then continues after
/// the template; outputs are unspecified). Operands are given as to `asm!`, without a trailing
/// comma; the template may not use the numeric label `2` or the operand names `grt_tmp` and
/// `grt_resume`.
///
/// It must be used inside `unsafe`, like `asm!`: the template must be sound to run, and sound to
/// abandon at a fault. Arming only stores the resume address, which lies inside the same asm
/// block, so a fault resumes at its end with the stack as it was.
///
/// ```ignore
/// // SAFETY: VMCALL either faults or returns to the next instruction.
/// let r = unsafe { grt::guarded_asm!("vmcall") };
/// ```
#[macro_export]
macro_rules! guarded_asm {
    ($template:literal $(, $($operands:tt)*)?) => {{
            core::arch::asm!(
                "lea {grt_tmp}, [rip + 2f]",
                "mov qword ptr [rip + {grt_resume}], {grt_tmp}",
                $template,
                "2:",
                $($($operands)*,)?
                grt_tmp = out(reg) _,
                grt_resume = sym $crate::trap::RESUME_RIP,
            );
        $crate::trap::take_fault()
    }};
}

/// Reads an MSR; `Err` if that faulted (an MSR the machine does not offer raises #GP).
pub fn try_rdmsr(msr: u32) -> Result<u64, Fault> {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR writes only the output registers, or faults.
    unsafe { crate::guarded_asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi) }?;
    Ok((u64::from(hi) << 32) | u64::from(lo))
}

/// Writes an MSR; `Err` if that faulted.
///
/// # Safety
/// As for [`crate::cpu::wrmsr`]: if the write succeeds, it must not break this program.
pub unsafe fn try_wrmsr(msr: u32, value: u64) -> Result<(), Fault> {
    // SAFETY: the caller vouches for the value; a fault leaves the MSR as it was.
    unsafe {
        crate::guarded_asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32)
    }
}

/// Writes CR4; `Err` if that faulted (setting a bit the CPU does not offer raises #GP).
///
/// # Safety
/// If the write succeeds, the new CR4 must not break this program.
pub unsafe fn try_write_cr4(value: u64) -> Result<(), Fault> {
    // SAFETY: the caller vouches for the value; a fault leaves CR4 as it was.
    unsafe { crate::guarded_asm!("mov cr4, {}", in(reg) value) }
}

/// Executes Intel's VMCALL (`Err(#UD)` is expected outside VMX root operation).
pub fn try_vmcall() -> Result<(), Fault> {
    // SAFETY: outside VMX non-root operation VMCALL faults; under a hypervisor that answers it,
    // the registers it may change are declared clobbered.
    unsafe { crate::guarded_asm!("vmcall", inout("rax") 0u64 => _, out("rcx") _, out("rdx") _) }
}

/// Executes AMD's VMMCALL (`Err(#UD)` is expected when SVM is not offered).
pub fn try_vmmcall() -> Result<(), Fault> {
    // SAFETY: as for `try_vmcall`.
    unsafe { crate::guarded_asm!("vmmcall", inout("rax") 0u64 => _, out("rcx") _, out("rdx") _) }
}

/// Executes XSETBV (`Err(#UD)` is expected while CR4.OSXSAVE is clear).
pub fn try_xsetbv(xcr: u32, value: u64) -> Result<(), Fault> {
    // SAFETY: with CR4.OSXSAVE clear XSETBV faults; if it succeeds it only changes which
    // extended states XSAVE would manage, which this program never uses.
    unsafe {
        crate::guarded_asm!("xsetbv", in("ecx") xcr, in("eax") value as u32, in("edx") (value >> 32) as u32)
    }
}

/// Reads a byte at a physical address (identity-mapped); `Err` if that faulted.
///
/// # Safety
/// `addr` must not be memory that Rust code has borrowed mutably.
pub unsafe fn try_read_u8(addr: u64) -> Result<u8, Fault> {
    let value: u8;
    // SAFETY: per the caller the byte is not mutably borrowed; a fault leaves `value` unset,
    // and it is then not used.
    unsafe {
        crate::guarded_asm!("mov {v}, byte ptr [{a}]", a = in(reg) addr, v = out(reg_byte) value)
    }?;
    Ok(value)
}

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct Gate([u64; 2]);

struct Idt(UnsafeCell<[Gate; 256]>);

// SAFETY: the guest runs on one CPU, and the table is written only by `init`, before `lidt`.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([Gate([0; 2]); 256]));

extern "C" {
    static grt_isr_table: [u64; 32];
    /// The 224 interrupt entries of `irq.s`, 16 bytes apart.
    fn grt_irq_stubs();
}

/// Fills the IDT (64-bit interrupt gates on code selector 0x08, as `boot.s` loads it) and loads
/// it. Called once by the entry glue before the guest's `main`.
pub(crate) fn init() {
    // SAFETY: `grt_isr_table` is 32 initialised quadwords in isr.s's read-only data.
    let handlers = unsafe { &grt_isr_table };
    // SAFETY: one CPU and interrupts off: nothing else reads or writes the table now.
    let idt = unsafe { &mut *IDT.0.get() };
    let stubs = grt_irq_stubs as *const () as u64;
    let irq_handlers = (0..224u64).map(|i| stubs + 16 * i);
    let all = handlers.iter().copied().chain(irq_handlers);
    for (gate, handler) in idt.iter_mut().zip(all) {
        let low = (handler & 0xffff)
            | (0x08 << 16)
            | (0x8e << 40) // present, DPL 0, 64-bit interrupt gate
            | ((handler >> 16) & 0xffff) << 48;
        *gate = Gate([low, handler >> 32]);
    }
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let pointer = Pointer {
        limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
        base: IDT.0.get() as u64,
    };
    // SAFETY: the IDT is static, complete, and its handlers are the stubs in isr.s.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) }
}

/// The Rust half of every exception (called by isr.s with the saved registers).
#[no_mangle]
extern "C" fn grt_exception(frame: &mut Frame) {
    let resume = RESUME_RIP.swap(0, Ordering::SeqCst);
    if resume != 0 {
        FAULT_VECTOR.store(frame.vector, Ordering::SeqCst);
        frame.rip = resume;
        return;
    }
    crate::println!(
        "grt: exception #{} (vector {}), error {:#x}, rip {:#x}, rsp {:#x}",
        mnemonic(frame.vector as u8),
        frame.vector,
        frame.error,
        frame.rip,
        frame.rsp
    );
    crate::exit(crate::EXIT_EXCEPTION);
}
