//! Hardware virtualization, both backends behind one interface: turning it on at boot, a
//! vCPU's hardware state (an SVM VMCB or a VMX VMCS), moving guest state between that and the
//! neutral message words of `abi::vm::word`, entering the guest, and reading why it exited.
//!
//! The kernel proper (`kern::exit`, `kern::reply`) decides what an exit means; this module only speaks to the
//! hardware. Entry and exit go through `entry.s`: an entry never returns, an exit restarts the
//! kernel on its stack in [`vm_exited`].

pub mod svm;
pub mod vmx;
pub mod xcr0;

use core::arch::global_asm;
use core::sync::atomic::{AtomicU8, Ordering};

use abi::vm::word;

use super::cpu::Virtualization;

global_asm!(include_str!("entry.s"));

/// Which hardware the kernel drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Svm,
    Vmx,
}

impl Backend {
    pub fn abi(self) -> abi::vm::Backend {
        match self {
            Backend::Svm => abi::vm::Backend::Svm,
            Backend::Vmx => abi::vm::Backend::Vmx,
        }
    }
}

impl Backend {
    /// The nested page-table format of this backend (NPT or EPT).
    pub fn nested_format(self) -> virt::nested::Format {
        match self {
            Backend::Svm => virt::nested::Format::Npt,
            Backend::Vmx => virt::nested::Format::Ept,
        }
    }
}

/// How many ASIDs (SVM) or VPIDs (VMX) guests can use; the kernel recycles them in generations.
pub fn tag_count() -> u32 {
    match backend() {
        Some(Backend::Svm) => svm::asid_count(),
        // VPIDs are 16 bits wide; VPID 0 is the host's.
        _ => 0xffff,
    }
}

/// 0 = none, 1 = SVM, 2 = VMX (set once at boot).
static BACKEND: AtomicU8 = AtomicU8::new(0);

/// Turns on the CPU's virtualization if it is usable; says what happened.
pub fn init(virt: Virtualization) {
    let result = match virt {
        Virtualization::Svm {
            npt: true,
            firmware_disabled: false,
        } => svm::init().map(|()| Backend::Svm),
        Virtualization::Vmx {
            ept: true,
            firmware_disabled: false,
        } => vmx::init().map(|()| Backend::Vmx),
        _ => Err("no usable hardware virtualization"),
    };
    match result {
        Ok(b) => {
            xcr0::init();
            BACKEND.store(b.abi() as u8, Ordering::Release);
            log::info!("vm: {b:?} backend ready");
        }
        Err(why) => log::warn!("vm: guests disabled: {why}"),
    }
}

/// The CR4 bits this CPU accepts in a guest's hardware CR4 (for the shadow vTLB, which passes
/// the guest's CR4 on): SVM's guest-state features, VMX's CR4_FIXED1.
pub fn cpu_cr4() -> u64 {
    match backend() {
        Some(Backend::Svm) => svm::guest_cr4(),
        Some(Backend::Vmx) => vmx::guest_cr4(),
        None => 0x7ff,
    }
}

/// The backend in use, if guests can run.
pub fn backend() -> Option<Backend> {
    match BACKEND.load(Ordering::Acquire) {
        1 => Some(Backend::Svm),
        2 => Some(Backend::Vmx),
        _ => None,
    }
}

/// The guest's general registers in hardware encoding order (RAX RCX RDX RBX RSP RBP RSI RDI
/// R8..R15), as `entry.s` reads and writes them.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Gprs(pub [u64; 16]);

pub const RAX: usize = 0;
pub const RSP: usize = 4;

/// An FXSAVE image (x87, MMX, SSE state).
#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub struct FpuArea(pub [u8; 512]);

impl FpuArea {
    /// The state after FNINIT with SSE exceptions masked: FCW 0x37f, MXCSR 0x1f80.
    pub const fn initial() -> FpuArea {
        let mut a = [0u8; 512];
        a[0] = 0x7f;
        a[1] = 0x03;
        a[24] = 0x80;
        a[25] = 0x1f;
        FpuArea(a)
    }
}

/// Clean FPU contents loaded after every exit, so nothing of a guest's FPU state is visible to
/// whatever runs next.
static INITIAL_FPU: FpuArea = FpuArea::initial();

const CR4_OSFXSR: u64 = 1 << 9;

/// Loads a guest's FPU state before entry.
pub fn load_fpu(area: &FpuArea) {
    // SAFETY: OSFXSR is set only for the FXRSTOR (SSE state included) and stays set while the
    // guest runs (the guest has its own CR4); `area` is a 16-byte-aligned FXSAVE image made by
    // FXSAVE or `FpuArea::initial`, which FXRSTOR accepts (MXCSR reserved bits clear).
    unsafe {
        let cr4 = x86::controlregs::cr4().bits() as u64;
        core::arch::asm!("mov cr4, {}", in(reg) cr4 | CR4_OSFXSR);
        core::arch::asm!("fxrstor64 [{}]", in(reg) area.0.as_ptr(), options(nostack));
    }
}

/// Saves a guest's FPU state after an exit and loads clean contents.
pub fn save_fpu(area: &mut FpuArea) {
    // SAFETY: FXSAVE writes 512 bytes to a 16-byte-aligned area the caller owns; FXRSTOR of the
    // initial image is always valid; OSFXSR is cleared again so user threads keep getting #UD
    // for SSE (the kernel switches no FPU state between threads).
    unsafe {
        let cr4 = x86::controlregs::cr4().bits() as u64;
        core::arch::asm!("mov cr4, {}", in(reg) cr4 | CR4_OSFXSR);
        core::arch::asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr(), options(nostack));
        core::arch::asm!("fxrstor64 [{}]", in(reg) INITIAL_FPU.0.as_ptr(), options(nostack));
        core::arch::asm!("mov cr4, {}", in(reg) cr4 & !CR4_OSFXSR);
    }
}

/// Why a vCPU left the guest, as the hardware said it.
#[derive(Clone, Copy, Debug)]
pub struct HwExit {
    pub exit: virt::exit::Exit,
    /// Backend-specific raw reason (SVM EXITCODE, VMX basic exit reason).
    pub raw: u64,
    /// Raw qualification words (SVM EXITINFO1/2; VMX qualification and guest-physical address).
    pub info1: u64,
    pub info2: u64,
    /// Length of the exiting instruction where known, else 0.
    pub instruction_len: u64,
    /// For an exception exit: vector | error code << 32.
    pub exception: u64,
    /// The linear address a #PF (CR2) or INVLPG exit names, where the hardware says it (SVM
    /// without decode assists does not for INVLPG).
    pub address: Option<u64>,
}

/// A refused guest state: which rule it broke, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadState(pub &'static str);

/// Shadow mode: the control registers the hardware runs with (`cr3` the shadow root, or the
/// guest's own while its paging is off), where the hardware has read shadows (VMX) what guest
/// reads of CR0 and CR4 return, and the nested root the guest runs on while its paging is off
/// (None: the vTLB's tables, nested paging off).
#[derive(Clone, Copy, Debug)]
pub struct ShadowControl {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub visible_cr0: u64,
    pub visible_cr4: u64,
    pub nested_root: Option<u64>,
}

/// What each backend does for one vCPU: SVM's VMCB (`svm::Vmcb`) and VMX's VMCS
/// (`vmx::Vmcs`) implement it; the kernel reaches them through [`HwVcpu`], which dispatches
/// statically.
pub trait VendorVcpu {
    /// Copies the groups `mask` names into message words.
    fn read(&self, gprs: &Gprs, mask: u64, out: &mut [u64; word::COUNT]);
    /// Writes the groups `mask` names from message words, after the kernel checked them.
    fn write(&mut self, gprs: &mut Gprs, mask: u64, w: &[u64; word::COUNT]);
    /// Queues `event` (abi::vm::inject form, error code `error`) for the next entry.
    fn inject(&mut self, event: u64, error: u64);
    /// Asks for (or stops asking for) an exit when the guest can take an interrupt.
    fn request_window(&mut self, on: bool);
    /// Shadow mode: what the hardware runs the guest with (`ShadowControl`).
    fn shadow_control(&mut self, c: &ShadowControl);
    /// The guest's CR2 from the next entry on (a #PF the kernel injects).
    fn set_cr2(&mut self, value: u64);
    /// Shadow mode: intercept #PF or let the guest's IDT take it (DMP fault forwarding).
    fn intercept_page_faults(&mut self, on: bool);
    /// Drops the hardware TLB's translation of guest-linear `la` (a shadow leaf changed). VMX
    /// runs shadow mode without VPID, so every entry flushes the guest's translations anyway.
    fn invalidate_page(&mut self, _la: u64) {}
    /// Makes the next entry flush the guest's TLB entries (its nested mappings changed).
    fn flush_on_entry(&mut self);
    /// The last exit.
    fn exit(&self, gprs: &Gprs) -> HwExit;
    /// Bookkeeping right after an exit (one-shot flush requests are done).
    fn entered(&mut self);
    /// Queues the event the last exit interrupted (if any) for the next entry; the VMM's reply
    /// may replace it.
    fn redeliver(&mut self);
    /// Checks the state the next entry would see if the groups of `mask` were written from `w`.
    fn check(&self, mask: u64, w: &[u64; word::COUNT]) -> Result<(), BadState>;
    /// Runs the guest under ASID/VPID `tag` from the next entry on, which first drops every
    /// TLB entry the tag may still hold from another guest.
    fn retag(&mut self, tag: u16);
    /// The paging state the next entry would use (`virt::confine`).
    fn paging(&self) -> virt::confine::HwPaging;
    /// The `abi::vm::other` kind of an exit the kernel forwards as `Exit::Other`.
    fn other_kind(&self, raw: u64) -> u64;
    /// Runs the guest.
    ///
    /// # Safety
    ///
    /// The hardware structure, its nested tables and `gprs` stay allocated until the exit is
    /// handled.
    unsafe fn run(&mut self, gprs: &mut Gprs) -> !;
    /// Returns the hardware structures to the frame allocator.
    fn free(self)
    where
        Self: Sized;
}

/// Calls `$call` on the backend's vCPU (`$v` bound to the VMCB or VMCS), or gives `$empty`
/// once the vCPU is freed. A `match`, not a trait object: the exit and reply paths stay direct,
/// inlinable calls.
macro_rules! vendor {
    ($hw:expr, $v:ident => $call:expr, $empty:expr) => {
        match $hw {
            HwVcpu::Svm($v) => $call,
            HwVcpu::Vmx($v) => $call,
            HwVcpu::Empty => $empty,
        }
    };
}

/// One vCPU's hardware state: the backend's [`VendorVcpu`].
pub enum HwVcpu {
    Svm(svm::Vmcb),
    Vmx(vmx::Vmcs),
    /// Already freed (a vCPU being dropped).
    Empty,
}

impl HwVcpu {
    /// A vCPU in `backend` over nested tables at `nested_root`, or in shadow mode (no nested
    /// paging; #PF, MOV CR0/CR3/CR4 and INVLPG intercepted) when None; tagged `tag` (ASID or
    /// VPID).
    pub fn new(backend: Backend, nested_root: Option<u64>, tag: u16) -> Option<HwVcpu> {
        match backend {
            Backend::Svm => svm::Vmcb::new(nested_root, tag).map(HwVcpu::Svm),
            Backend::Vmx => vmx::Vmcs::new(nested_root, tag).map(HwVcpu::Vmx),
        }
    }

    pub fn read(&self, gprs: &Gprs, mask: u64, out: &mut [u64; word::COUNT]) {
        vendor!(self, v => v.read(gprs, mask, out), ())
    }

    pub fn write(&mut self, gprs: &mut Gprs, mask: u64, words: &[u64; word::COUNT]) {
        vendor!(self, v => v.write(gprs, mask, words), ())
    }

    pub fn inject(&mut self, event: u64, error: u64) {
        vendor!(self, v => v.inject(event, error), ())
    }

    pub fn request_window(&mut self, on: bool) {
        vendor!(self, v => v.request_window(on), ())
    }

    pub fn shadow_control(&mut self, c: &ShadowControl) {
        vendor!(self, v => v.shadow_control(c), ())
    }

    pub fn set_cr2(&mut self, value: u64) {
        vendor!(self, v => v.set_cr2(value), ())
    }

    pub fn intercept_page_faults(&mut self, on: bool) {
        vendor!(self, v => v.intercept_page_faults(on), ())
    }

    pub fn invalidate_page(&mut self, la: u64) {
        vendor!(self, v => v.invalidate_page(la), ())
    }

    pub fn flush_on_entry(&mut self) {
        vendor!(self, v => v.flush_on_entry(), ())
    }

    pub fn exit(&self, gprs: &Gprs) -> HwExit {
        vendor!(
            self,
            v => v.exit(gprs),
            HwExit {
                exit: virt::exit::Exit::Unknown { reason: 0 },
                raw: 0,
                info1: 0,
                info2: 0,
                instruction_len: 0,
                exception: 0,
                address: None,
            }
        )
    }

    pub fn after_exit(&mut self) {
        vendor!(self, v => v.entered(), ())
    }

    pub fn redeliver(&mut self) {
        vendor!(self, v => v.redeliver(), ())
    }

    pub fn check(&self, mask: u64, w: &[u64; word::COUNT]) -> Result<(), BadState> {
        vendor!(self, v => v.check(mask, w), Err(BadState("vCPU gone")))
    }

    pub fn retag(&mut self, tag: u16) {
        vendor!(self, v => v.retag(tag), ())
    }

    pub fn paging(&self) -> virt::confine::HwPaging {
        vendor!(self, v => v.paging(), virt::confine::HwPaging::default())
    }

    pub fn other_kind(&self, raw: u64) -> u64 {
        vendor!(self, v => v.other_kind(raw), abi::vm::other::UNKNOWN)
    }

    /// Returns the hardware structures to the frame allocator.
    pub fn free(self) {
        match self {
            HwVcpu::Svm(v) => v.free(),
            HwVcpu::Vmx(v) => v.free(),
            HwVcpu::Empty => {}
        }
    }
}

/// What `entry.s` needs to run a vCPU; lives in the vCPU object, so its address is stable.
pub struct RunContext {
    pub gprs: Gprs,
    pub fpu: FpuArea,
    /// The TSC just before the last entry: the kernel splits guest from hypervisor time with it.
    pub entry_tsc: u64,
}

/// Enters the guest of `hw`; the exit continues in [`vm_exited`].
///
/// # Safety
///
/// `hw` and `ctx` belong to the vCPU the kernel chose to run and stay allocated until its next
/// exit has been handled (the kernel frees vCPUs only while they are not running).
pub unsafe fn enter(hw: &mut HwVcpu, ctx: &mut RunContext) -> ! {
    load_fpu(&ctx.fpu);
    ctx.entry_tsc = super::cpu::rdtsc();
    // SAFETY: as the caller guarantees.
    vendor!(hw, v => unsafe { v.run(&mut ctx.gprs) }, panic!("entering a freed vCPU"))
}

/// Called by `entry.s` after every exit, on a fresh kernel stack.
#[no_mangle]
extern "C" fn vm_exited() -> ! {
    if backend() == Some(Backend::Vmx) {
        vmx::after_exit();
    }
    crate::kern::on_vm_exit()
}

/// Called by `entry.s` when VMLAUNCH/VMRESUME failed without entering the guest.
#[no_mangle]
extern "C" fn vmx_entry_failed() -> ! {
    vmx::after_exit();
    vmx::note_entry_failure();
    crate::kern::on_vm_exit()
}

/// Takes a physical interrupt that made the guest exit: it is pending in the APIC; opening the
/// interrupt flag for one instruction lets the kernel's ordinary handler count it.
pub fn take_pending_interrupt() {
    // SAFETY: the kernel runs with interrupts disabled; enabling them for one instruction in
    // ring 0 delivers a pending interrupt to the kernel's own handlers, which return here.
    unsafe {
        core::arch::asm!("sti", "nop", "cli", options(nomem, nostack));
    }
}
