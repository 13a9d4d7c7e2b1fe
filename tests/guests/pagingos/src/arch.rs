//! The machine: GDT with user segments and a TSS, the IDT, the trap stubs, the way into ring 3
//! and back, and the paging instructions (CR3, CR2, INVLPG).
//!
//! Traps from ring 3 land directly in the running process's [`Ctx`]: before entering user mode
//! the kernel points TSS.RSP0 at the end of that context, so the CPU's interrupt frame and the
//! registers the stub pushes fill it. The stub then switches back to the kernel stack saved by
//! [`run_user`] and returns from it: to the kernel, a trip to user mode is a function call that
//! returns when the process traps (system call, page fault, any exception). Traps from ring 0
//! are unexpected (they print a line and end the guest), except a page fault in a kernel probe
//! of a user address ([`probe_read`], [`probe_write`]), which the probe returns.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;

/// Kernel code selector.
pub const KERNEL_CS: u64 = 0x08;
/// Kernel data selector.
pub const KERNEL_DS: u64 = 0x10;
/// User data selector (DPL 3), with RPL 3.
pub const USER_DS: u64 = 0x18 | 3;
/// User 64-bit code selector (DPL 3), with RPL 3.
pub const USER_CS: u64 = 0x20 | 3;
const TSS_SELECTOR: u16 = 0x28;

/// The system-call vector.
pub const SYSCALL_VECTOR: u64 = 0x80;
/// The page-fault vector.
pub const PF_VECTOR: u64 = 14;

/// State shared by the kernel and the trap stubs; the guest has one CPU and never enables
/// interrupts, so nothing runs concurrently with the code that uses it.
pub struct Global<T>(UnsafeCell<T>);

// SAFETY: one CPU, interrupts off: accesses are never concurrent (see `Global::get`).
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    pub const fn new(value: T) -> Self {
        Global(UnsafeCell::new(value))
    }

    /// A pointer to the value.
    pub fn get(&self) -> *mut T {
        self.0.get()
    }
}

/// A user process's registers as the trap stubs save them, lowest address first: the layout of
/// the stack after a trap from ring 3 (see `trap.s`). 22 words, 16-aligned, so that TSS.RSP0 =
/// its end is 16-aligned as the CPU wants.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Ctx {
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

impl Ctx {
    /// A fresh ring-3 context starting at `rip` with stack `rsp`, interrupts off.
    pub fn user(rip: u64, rsp: u64) -> Ctx {
        Ctx {
            rip,
            cs: USER_CS,
            rflags: 0x2,
            rsp,
            ss: USER_DS,
            ..Ctx::default()
        }
    }
}

const _: () = assert!(core::mem::size_of::<Ctx>() == 22 * 8);

global_asm!(include_str!("trap.s"));

extern "C" {
    /// Enters ring 3 with the registers in `ctx` and returns when the process traps, with the
    /// trap's registers (and vector and error code) saved in `ctx`. TSS.RSP0 must point at the
    /// end of `ctx` (see [`set_kernel_stack`]).
    fn pagingos_run_user(ctx: *mut Ctx);
    static pagingos_isr_table: [u64; 32];
    static pagingos_isr_128: u8;
}

/// Runs the process whose context is `ctx` until it traps; the trap is described by
/// `ctx.vector` and `ctx.error` (and CR2 for a page fault).
///
/// # Safety
/// `ctx` must describe a ring-3 context (CS and SS user selectors, RFLAGS without IOPL) whose
/// address space is the one loaded in CR3, and must stay valid and unaliased for the call.
pub unsafe fn run_user(ctx: *mut Ctx) {
    set_kernel_stack(ctx as u64 + core::mem::size_of::<Ctx>() as u64);
    // SAFETY: per the caller; the stub only writes inside `*ctx` (the trap frame lands there
    // because RSP0 points at its end) and returns with the kernel's callee-saved registers.
    unsafe { pagingos_run_user(ctx) }
}

/// The 64-bit TSS (only RSP0 and the I/O-map base are used).
#[repr(C, packed)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

static TSS: Global<Tss> = Global::new(Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    // No I/O bitmap: with IOPL 0, user-mode port I/O raises #GP.
    iomap_base: core::mem::size_of::<Tss>() as u16,
});

fn set_kernel_stack(top: u64) {
    // SAFETY: one CPU; the TSS is only read by the CPU at the next ring change.
    unsafe { core::ptr::addr_of_mut!((*TSS.get()).rsp[0]).write_unaligned(top) }
}

/// null, kernel code, kernel data, user data, user code, TSS (two slots).
static GDT: Global<[u64; 7]> = Global::new([0; 7]);

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct Gate([u64; 2]);

static IDT: Global<[Gate; 256]> = Global::new([Gate([0; 2]); 256]);

#[repr(C, packed)]
struct TablePointer {
    limit: u16,
    base: u64,
}

fn gate(handler: u64, dpl: u64) -> Gate {
    let low = (handler & 0xffff)
        | (KERNEL_CS << 16)
        | ((0x8e | (dpl << 5)) << 40) // present, 64-bit interrupt gate
        | ((handler >> 16) & 0xffff) << 48;
    Gate([low, handler >> 32])
}

/// Loads the GDT (with user segments and the TSS), reloads the segment registers and TR, and
/// loads the IDT: exception vectors 0-31 (ring 0 only) and the system call 0x80 (ring 3 may
/// invoke it). Also sets CR0.WP (the kernel honours read-only pages) and, when the CPU has it,
/// CR4.PGE (the kernel's mappings are global).
pub fn init() {
    let tss = TSS.get() as u64;
    let tss_limit = core::mem::size_of::<Tss>() as u64 - 1;
    let gdt = [
        0,
        0x00af_9a00_0000_ffff, // 0x08: 64-bit code, DPL 0
        0x00cf_9200_0000_ffff, // 0x10: data, DPL 0
        0x00cf_f200_0000_ffff, // 0x18: data, DPL 3
        0x00af_fa00_0000_ffff, // 0x20: 64-bit code, DPL 3
        // 0x28: available 64-bit TSS
        (tss_limit & 0xffff)
            | ((tss & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((tss >> 24) & 0xff) << 56),
        tss >> 32,
    ];
    // SAFETY: one CPU; the GDT is not in use yet (grt's is loaded).
    unsafe { GDT.get().write(gdt) };
    let pointer = TablePointer {
        limit: (core::mem::size_of::<[u64; 7]>() - 1) as u16,
        base: GDT.get() as u64,
    };
    // SAFETY: the new GDT has the same kernel selectors as grt's (0x08 code, 0x10 data), so
    // reloading CS through a far return and the data segments keeps everything valid; the TSS
    // descriptor points at a static TSS.
    unsafe {
        asm!(
            "lgdt [{ptr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov {tmp:e}, {ds}",
            "mov ds, {tmp:e}",
            "mov es, {tmp:e}",
            "mov ss, {tmp:e}",
            "ltr {tr:x}",
            ptr = in(reg) &pointer,
            cs = const KERNEL_CS,
            ds = const KERNEL_DS,
            tr = in(reg) TSS_SELECTOR,
            tmp = out(reg) _,
        )
    }

    // SAFETY: `pagingos_isr_table` is 32 initialised quadwords in trap.s.
    let handlers = unsafe { &*core::ptr::addr_of!(pagingos_isr_table) };
    // SAFETY: one CPU, interrupts off; grt's IDT is still the loaded one.
    let idt = unsafe { &mut *IDT.get() };
    for (slot, &handler) in idt.iter_mut().zip(handlers.iter()) {
        *slot = gate(handler, 0);
    }
    idt[SYSCALL_VECTOR as usize] = gate(core::ptr::addr_of!(pagingos_isr_128) as u64, 3);
    let pointer = TablePointer {
        limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
        base: IDT.get() as u64,
    };
    // SAFETY: the IDT is static and complete for every vector that can occur.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) }

    // SAFETY: WP only makes the kernel honour read-only pages (it never writes through them);
    // PGE makes global mappings survive CR3 loads, and only the kernel's mappings are global.
    unsafe {
        asm!("mov {t}, cr0", "or {t}, {wp}", "mov cr0, {t}", t = out(reg) _, wp = const 1u64 << 16);
        if grt::cpu::cpuid(1, 0).edx & (1 << 13) != 0 {
            asm!("mov {t}, cr4", "or {t}, {pge}", "mov cr4, {t}", t = out(reg) _, pge = const 1u64 << 7);
        }
    }
}

/// Whether CR4.PGE is on (global pages honoured).
pub fn global_pages() -> bool {
    grt::cpu::read_cr4() & (1 << 7) != 0
}

/// Loads CR3 (flushes every non-global TLB entry).
///
/// # Safety
/// `pml4` must be a complete PML4 that maps the kernel (its code, data and stack) as now.
pub unsafe fn write_cr3(pml4: u64) {
    // SAFETY: per the caller.
    unsafe { asm!("mov cr3, {}", in(reg) pml4, options(nostack, preserves_flags)) }
}

/// Reads CR3.
pub fn read_cr3() -> u64 {
    let value: u64;
    // SAFETY: reading CR3 has no side effect.
    unsafe { asm!("mov {}, cr3", out(reg) value, options(nomem, nostack, preserves_flags)) }
    value
}

/// Reads CR2 (the address of the last page fault).
pub fn read_cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 has no side effect.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) }
    value
}

/// Invalidates the TLB entry of `va`.
pub fn invlpg(va: u64) {
    // SAFETY: dropping a TLB entry never breaks memory safety: the next access walks the tables.
    unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) }
}

/// Reloads CR3 with its own value: flushes every non-global TLB entry and the paging-structure
/// caches.
pub fn reload_cr3() {
    // SAFETY: the loaded address space stays the same; only cached translations are dropped.
    unsafe { write_cr3(read_cr3()) }
}

const EFER: u32 = 0xc000_0080;
const EFER_NXE: u64 = 1 << 11;

/// Turns on EFER.NXE (bit 63 of paging entries becomes XD) when the CPU has NX (CPUID
/// 0x8000_0001 EDX bit 20); returns whether it is on.
pub fn enable_nx() -> bool {
    let max = grt::cpu::cpuid(0x8000_0000, 0).eax;
    if max < 0x8000_0001 || grt::cpu::cpuid(0x8000_0001, 0).edx & (1 << 20) == 0 {
        return false;
    }
    // SAFETY: NXE only gives bit 63 of paging entries a meaning; no entry of the kernel's or
    // of the other address spaces sets it.
    unsafe { grt::cpu::wrmsr(EFER, grt::cpu::rdmsr(EFER) | EFER_NXE) };
    grt::cpu::rdmsr(EFER) & EFER_NXE != 0
}

/// The physical-address width (CPUID 0x8000_0008 EAX bits 7:0; 36 without that leaf).
pub fn maxphyaddr() -> u32 {
    if grt::cpu::cpuid(0x8000_0000, 0).eax >= 0x8000_0008 {
        grt::cpu::cpuid(0x8000_0008, 0).eax & 0xff
    } else {
        36
    }
}

/// A page fault taken by [`probe_read`] or [`probe_write`]: the error code and CR2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelFault {
    pub error: u64,
    pub cr2: u64,
}

/// Where a kernel probe resumes after a page fault (0: no probe under way), and the fault.
static PROBE_RECOVER: Global<u64> = Global::new(0);
static PROBE_FAULT: Global<KernelFault> = Global::new(KernelFault { error: 0, cr2: 0 });

/// Reads the word at `va` in ring 0 through the loaded address space; a page fault is returned
/// instead of ending the guest.
///
/// # Safety
/// `va` must be 8-aligned and, if it is mapped, map memory that may be read (this kernel's own
/// RAM).
pub unsafe fn probe_read(va: u64) -> Result<u64, KernelFault> {
    let value: u64;
    let faulted: u64;
    // SAFETY: per the caller; a page fault on the load resumes at label 2 with RAX = 1 (see
    // `pagingos_kernel_fault`), every other register as it was.
    unsafe {
        asm!(
            "lea rax, [rip + 2f]",
            "mov [{rec}], rax",
            "mov {value}, qword ptr [{va}]",
            "xor eax, eax",
            "2:",
            "mov qword ptr [{rec}], 0",
            rec = in(reg) PROBE_RECOVER.get(),
            va = in(reg) va,
            value = inout(reg) 0u64 => value,
            out("rax") faulted,
            options(nostack),
        )
    }
    if faulted == 0 {
        Ok(value)
    } else {
        // SAFETY: one CPU; written by the trap handler that just ran.
        Err(unsafe { PROBE_FAULT.get().read() })
    }
}

/// Writes `value` to the word at `va` in ring 0 through the loaded address space; a page
/// fault is returned instead of ending the guest.
///
/// # Safety
/// As for [`probe_read`], and the memory `va` maps (if any) may be overwritten.
pub unsafe fn probe_write(va: u64, value: u64) -> Result<(), KernelFault> {
    let faulted: u64;
    // SAFETY: as for `probe_read`.
    unsafe {
        asm!(
            "lea rax, [rip + 2f]",
            "mov [{rec}], rax",
            "mov qword ptr [{va}], {value}",
            "xor eax, eax",
            "2:",
            "mov qword ptr [{rec}], 0",
            rec = in(reg) PROBE_RECOVER.get(),
            va = in(reg) va,
            value = in(reg) value,
            out("rax") faulted,
            options(nostack),
        )
    }
    if faulted == 0 {
        Ok(())
    } else {
        // SAFETY: one CPU; written by the trap handler that just ran.
        Err(unsafe { PROBE_FAULT.get().read() })
    }
}

/// Called by trap.s for every trap taken in ring 0: a page fault during a kernel probe is
/// recorded and resumed at the probe's recovery address with RAX = 1 (returns true); anything
/// else returns false (the stub then calls `pagingos_kernel_trap`).
#[no_mangle]
extern "C" fn pagingos_kernel_fault(frame: &mut Ctx) -> bool {
    // SAFETY: one CPU, interrupts off: the probe that set it is suspended in this trap.
    let recover = unsafe { PROBE_RECOVER.get().read() };
    if frame.vector != PF_VECTOR || recover == 0 {
        return false;
    }
    // SAFETY: as above.
    unsafe {
        PROBE_FAULT.get().write(KernelFault {
            error: frame.error,
            cr2: read_cr2(),
        });
        PROBE_RECOVER.get().write(0);
    }
    frame.rip = recover;
    frame.rax = 1;
    true
}

/// Called by trap.s for a trap taken in ring 0: always a bug; prints the frame and ends the
/// guest with `grt::EXIT_EXCEPTION`.
#[no_mangle]
extern "C" fn pagingos_kernel_trap(frame: &Ctx) -> ! {
    grt::println!(
        "pagingos: unexpected exception #{} (vector {}) in the kernel, error {:#x}, rip {:#x}, rsp {:#x}, cr2 {:#x}",
        grt::trap::mnemonic(frame.vector as u8),
        frame.vector,
        frame.error,
        frame.rip,
        frame.rsp,
        read_cr2()
    );
    grt::exit(grt::EXIT_EXCEPTION)
}
