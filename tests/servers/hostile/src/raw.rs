//! The hostile server's only `unsafe` code (`docs/ARCHITECTURE.md`): it makes raw syscalls and
//! touches memory the kernel writes behind the compiler's back on purpose. Every other module
//! of the server is safe; each block here says why it cannot break this program's own memory.

use abi::syscall::Syscall;
use abi::{well_known, Sel};
use rt::syscall;

/// A raw `VmRead` (the runtime's wrapper refuses bad lengths before the kernel sees them):
/// (RAX, RDX).
pub fn vm_read(vm_sel: Sel, address: u64, len: u64) -> (u64, u64) {
    // SAFETY: VmRead writes only the calling thread's UTCB, which no borrow spans here.
    unsafe {
        syscall::raw(
            Syscall::VmRead as u64,
            [vm_sel.raw(), address, len, 0, 0, 0],
        )
    }
}

/// One garbage VM syscall (`garbage`), raw: (RAX, RDX).
pub fn garbage_call(call: Syscall, a: [u64; 6]) -> (u64, u64) {
    // SAFETY: the garbage makes only VM syscalls, which change Vms, vCPUs and guest memory; the
    // generator never names the scratch capability as memory, so guest memory here is the
    // garbage page or nothing of this program's. VmRead and VmPatch use the calling thread's
    // UTCB, which no borrow spans here.
    unsafe { syscall::raw(call as u64, a) }
}

/// Writes `byte` at user address `at` (volatile).
///
/// Callers pass only addresses inside the scratch memory (`mem::addr` checks), which
/// `mem::map_scratch` mapped read/write for the whole run; nothing else of this program lives
/// there.
pub fn write_scratch(at: usize, byte: u8) {
    // SAFETY: `at` lies in the scratch memory (see above), mapped writable for the whole run;
    // a volatile byte store creates no reference, so the kernel writing the page too (VmPatch,
    // IPC into a UTCB mapped there) breaks no assumption of the compiler.
    unsafe { core::ptr::write_volatile(at as *mut u8, byte) };
}

/// Reads the byte at user address `at` of the scratch memory (volatile); as for
/// [`write_scratch`].
pub fn read_scratch(at: usize) -> u8 {
    // SAFETY: as for `write_scratch`.
    unsafe { core::ptr::read_volatile(at as *const u8) }
}

/// Reads the byte at user address `va`, which the caller mapped readable just before and keeps
/// mapped for this read (an experiment's own mapping, far from the program).
pub fn read_at(va: u64) -> u8 {
    // SAFETY: the caller mapped `va` readable and keeps it mapped for this read (the experiments
    // that call it map at addresses nothing else of the program uses); a fault here would end
    // the thread, not touch other memory.
    unsafe { core::ptr::read_volatile(va as *const u8) }
}

use crate::threads::CALLS;

// The looping thread: `Call(ECHO)` forever, counting returns, never touching its UTCB or its
// stack from user mode (its UTCB page is unmapped under it).
core::arch::global_asm!(
    ".pushsection .text.hostile_call_loop, \"ax\", @progbits",
    ".global hostile_call_loop",
    "hostile_call_loop:",
    "2:",
    "    xor eax, eax",
    "    mov edi, {echo}",
    "    syscall",
    "    lock inc qword ptr [rip + {calls}]",
    "    jmp 2b",
    ".popsection",
    echo = const crate::ECHO.raw(),
    calls = sym CALLS,
);

extern "C" {
    fn hostile_call_loop();
}

/// A stack for the looping thread (it uses none, but the kernel wants one).
#[repr(C, align(4096))]
struct Stack([u8; 4096]);
static LOOP_STACK: Stack = Stack([0; 4096]);

/// Starts the looping thread at `dest` in this domain at `priority`, with its UTCB at `utcb`.
pub fn start_call_loop(dest: Sel, priority: u64, utcb: u64) -> Result<(), rt::Error> {
    let stack_top = core::ptr::addr_of!(LOOP_STACK) as u64 + 4096;
    // SAFETY: the new thread runs `hostile_call_loop`, which makes Call syscalls and increments
    // an atomic counter, touching neither its stack nor its UTCB from user mode; its UTCB page
    // (`utcb`: the scratch page's second mapping) is used by nothing else as a UTCB.
    unsafe {
        syscall::create_thread(
            dest,
            well_known::SELF_PD,
            hostile_call_loop as *const () as u64,
            stack_top,
            priority,
            utcb,
        )
    }
}
