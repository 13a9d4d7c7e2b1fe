//! Entering and leaving user mode: SYSCALL set-up and the hand-off from the entry stubs of
//! `trap_entry.s` (traps, `syscall_entry`, `return_to_user`) to the kernel proper
//! (`crate::kern`).

use x86::msr::{rdmsr, wrmsr};

use super::gdt;
use super::trap::TrapFrame;

const EFER: u32 = 0xc000_0080;
const EFER_SCE: u64 = 1 << 0;
const STAR: u32 = 0xc000_0081;
const LSTAR: u32 = 0xc000_0082;
const FMASK: u32 = 0xc000_0084;
/// RFLAGS bits cleared on SYSCALL: TF, IF, DF, NT, AC.
const SYSCALL_RFLAGS_MASK: u64 = (1 << 8) | (1 << 9) | (1 << 10) | (1 << 14) | (1 << 18);
/// RFLAGS a thread starts with: IF set, reserved bit 1 set.
pub const USER_RFLAGS: u64 = (1 << 9) | (1 << 1);

extern "C" {
    fn syscall_entry();
    fn return_to_user(regs: *const TrapFrame) -> !;
}

/// Enables SYSCALL with the kernel's selectors and entry point.
pub fn init_syscalls() {
    // SAFETY: the GDT has the layout STAR describes (kernel CS 0x08/SS 0x10; user base 0x10 so
    // that SYSRET would load SS 0x18|3 and CS 0x20|3); `syscall_entry` is the entry stub.
    unsafe {
        wrmsr(EFER, rdmsr(EFER) | EFER_SCE);
        wrmsr(STAR, (0x10u64 << 48) | (0x08u64 << 32));
        wrmsr(LSTAR, syscall_entry as *const () as u64);
        wrmsr(FMASK, SYSCALL_RFLAGS_MASK);
    }
}

/// A fresh user frame: `entry` with stack `stack_top`, arguments in RDI and RSI.
pub fn initial_frame(entry: u64, stack_top: u64, rdi: u64, rsi: u64) -> TrapFrame {
    TrapFrame {
        rip: entry,
        cs: gdt::USER_CODE,
        rflags: USER_RFLAGS,
        rsp: stack_top,
        ss: gdt::USER_DATA,
        rdi,
        rsi,
        ..TrapFrame::default()
    }
}

/// Whether a frame is safe to return to user mode with: user selectors, IF set, IOPL 0, and a
/// canonical user RIP. Frames only change through the kernel, but this keeps a bug from becoming
/// a ring-0 return.
pub fn frame_is_user(frame: &TrapFrame) -> bool {
    const IOPL: u64 = 3 << 12;
    frame.cs == gdt::USER_CODE
        && frame.ss == gdt::USER_DATA
        && frame.rflags & IOPL == 0
        && frame.rip < 0x0000_8000_0000_0000
}

/// Resumes a user thread whose registers are `regs`; its next entry into the kernel saves them
/// back there.
pub fn resume(regs: &TrapFrame) -> ! {
    assert!(
        frame_is_user(regs),
        "refusing to return to a non-user frame"
    );
    let end = regs as *const TrapFrame as u64 + core::mem::size_of::<TrapFrame>() as u64;
    gdt::set_user_entry_stack(end);
    // SAFETY: `regs` is a complete user frame (checked above) inside a thread object that lives
    // as long as the thread can run; entries from user mode save into the same place.
    unsafe { return_to_user(regs) }
}

/// Called by `trap_entry.s` for an interrupt or exception from user mode, on the kernel stack.
#[no_mangle]
extern "C" fn trap_from_user(frame: &mut TrapFrame) -> ! {
    crate::kern::on_user_trap(frame)
}

/// Called by `syscall_entry`, on the kernel stack.
#[no_mangle]
extern "C" fn syscall_from_user(frame: &mut TrapFrame) -> ! {
    crate::kern::on_syscall(frame)
}
