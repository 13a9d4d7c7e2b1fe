//! One vCPU's VMCS and what the kernel does with it (`VendorVcpu`).

use super::*;
use crate::arch::vm::{BadState, ShadowControl, VendorVcpu};

/// One vCPU's VMCS and the page that holds its guest SYSCALL MSRs.
pub struct Vmcs {
    frame: u64,
    guest_msrs: u64,
    launched: bool,
    flush: bool,
    ept_pointer: u64,
    /// The guest's CR2, which VMX does not switch: saved after each exit, restored before
    /// entry (the kernel's user threads take page faults in between).
    cr2: u64,
    /// The guest's XCR0 (`crate::arch::vm::xcr0`).
    xcr0: u64,
    /// Shadow mode: no VPID (every entry and exit flushes the guest's translations); #PF, CR3
    /// accesses, INVLPG and every CR0/CR4 change exit; EPT and unrestricted guest only while
    /// the guest's paging is off.
    shadow: bool,
    /// EPT is on (always in nested mode): a flush is an INVEPT of `ept_pointer`.
    ept: bool,
}

impl Vmcs {
    fn load(&self) {
        if CURRENT.load(Ordering::Relaxed) != self.frame {
            // SAFETY: the frame is an initialised VMCS (VMCLEARed in `new`) owned by this
            // vCPU; VMX is on.
            unsafe { core::arch::asm!("vmptrld [{}]", in(reg) &self.frame, options(nostack)) };
            CURRENT.store(self.frame, Ordering::Relaxed);
        }
    }

    pub fn new(nested_root: Option<u64>, vpid: u16) -> Option<Vmcs> {
        // VPID 0 is the host's; tags start at 1.
        let shared = SHARED.get()?;
        let frame = alloc_zeroed()?;
        let Some(guest_msrs) = alloc_zeroed() else {
            frames::free(frame, 1);
            return None;
        };
        for (i, msr) in SWITCHED_MSRS.iter().enumerate() {
            direct::write_word(guest_msrs, 2 * i, u64::from(*msr));
        }
        direct::write_word(frame, 0, u64::from(shared.revision));
        // SAFETY: a fresh page with the revision identifier; VMCLEAR initialises it.
        unsafe { core::arch::asm!("vmclear [{}]", in(reg) &frame, options(nostack)) };
        let shadow = nested_root.is_none();
        let ept_pointer = nested_root.map_or(0, |root| root | (3 << 3) | 6);
        let v = Vmcs {
            frame,
            guest_msrs,
            launched: false,
            flush: true,
            ept_pointer,
            cr2: 0,
            xcr0: virt::xcr0::RESET,
            shadow,
            ept: !shadow,
        };
        v.load();
        vmwrite(PIN_CONTROLS, u64::from(shared.pin));
        if shadow {
            vmwrite(
                PROC_CONTROLS,
                u64::from(shared.proc | PROC_INVLPG | PROC_CR3_LOAD | PROC_CR3_STORE),
            );
            vmwrite(
                SECONDARY_CONTROLS,
                u64::from(
                    shared.secondary & !(SECONDARY_EPT | SECONDARY_VPID | SECONDARY_UNRESTRICTED),
                ),
            );
        } else {
            vmwrite(PROC_CONTROLS, u64::from(shared.proc));
            vmwrite(SECONDARY_CONTROLS, u64::from(shared.secondary));
        }
        vmwrite(EXIT_CONTROLS, u64::from(shared.exit));
        vmwrite(ENTRY_CONTROLS, u64::from(shared.entry));
        let page_faults = if shadow { 1 << 14 } else { 0 };
        vmwrite(
            EXCEPTION_BITMAP,
            u64::from(EXCEPTIONS_REFLECTED | page_faults),
        );
        vmwrite(MSR_BITMAP, shared.msr_bitmap);
        vmwrite(EXIT_MSR_STORE, guest_msrs);
        vmwrite(EXIT_MSR_STORE_COUNT, switched_msrs());
        vmwrite(ENTRY_MSR_LOAD, guest_msrs);
        vmwrite(ENTRY_MSR_LOAD_COUNT, switched_msrs());
        vmwrite(EXIT_MSR_LOAD, shared.host_msrs);
        vmwrite(EXIT_MSR_LOAD_COUNT, switched_msrs());
        if !shadow {
            vmwrite(EPT_POINTER, ept_pointer);
            vmwrite(VPID, u64::from(vpid));
        }
        vmwrite(LINK_POINTER, u64::MAX);
        // CR0/CR4 bits VMX fixes belong to the host; the guest sees its own values in the
        // read shadows. PE and PG are the guest's own (unrestricted guest).
        // CD and NW exit too: NW without CD must be #GP, which Bochs 2.7 does not check in
        // VMX non-root operation (and which would then fail the next VM entry).
        vmwrite(
            CR0_MASK,
            ((shared.cr0_fixed0 | !shared.cr0_fixed1) & !(CR0_PE | CR0_PG)) | CR0_CD | CR0_NW,
        );
        // CR4: besides those, every bit but the ones any guest may own exits (VMXE, SMXE,
        // PCIDE, OSXSAVE, PKE, LA57, ...), so that the VMM gives #GP for features it does not
        // offer, as the CPU it describes would.
        vmwrite(
            CR4_MASK,
            shared.cr4_fixed0 | !shared.cr4_fixed1 | !CR4_GUEST_OWNED,
        );
        if shadow {
            // Every CR0/CR4 change exits and reads see the guest's own values.
            vmwrite(CR0_MASK, u64::MAX);
            vmwrite(CR4_MASK, u64::MAX);
        }
        vmwrite(GUEST_PAT, 0x0007_0406_0007_0406);
        vmwrite(GUEST_DR7, 0x400);
        vmwrite(GUEST_RFLAGS, 2);
        vmwrite(GUEST_ACTIVITY, 0);
        vmwrite(GUEST_INTERRUPTIBILITY, 0);
        vmwrite(HOST_SYSENTER_CS, 0);
        vmwrite(HOST_SYSENTER_ESP, 0);
        vmwrite(HOST_SYSENTER_EIP, 0);
        Some(v)
    }

    fn guest_cr(&self, actual: u64, mask: u64, shadow: u64) -> u64 {
        (vmread(actual) & !vmread(mask)) | (vmread(shadow) & vmread(mask))
    }

    pub fn interrupted_event(&self) -> Option<(u64, u64)> {
        self.load();
        let info = vmread(IDT_VECTORING);
        (info & (1 << 31) != 0).then(|| (info & 0x8000_0fff, vmread(IDT_VECTORING_ERROR)))
    }
}

impl VendorVcpu for Vmcs {
    fn redeliver(&mut self) {
        let (event, error) = self.interrupted_event().unwrap_or((0, 0));
        self.inject(event, error);
    }

    fn other_kind(&self, raw: u64) -> u64 {
        other_kind(raw)
    }

    fn free(self) {
        // SAFETY: VMCLEAR makes the processor write back and forget the VMCS before the frame
        // is reused.
        unsafe { core::arch::asm!("vmclear [{}]", in(reg) &self.frame, options(nostack)) };
        let _ = CURRENT.compare_exchange(self.frame, 0, Ordering::Relaxed, Ordering::Relaxed);
        frames::free(self.frame, 1);
        frames::free(self.guest_msrs, 1);
    }

    fn read(&self, gprs: &Gprs, mask: u64, out: &mut [u64; word::COUNT]) {
        self.load();
        if mask & mtd::GPRS != 0 {
            out[word::GPRS..word::GPRS + 16].copy_from_slice(&gprs.0);
            out[word::GPRS + RSP] = vmread(GUEST_RSP);
        }
        if mask & mtd::RIP != 0 {
            out[word::RIP] = vmread(GUEST_RIP);
            out[word::RFLAGS] = vmread(GUEST_RFLAGS);
        }
        if mask & mtd::CONTROL != 0 {
            out[word::CR0] = self.guest_cr(GUEST_CR0, CR0_MASK, CR0_SHADOW);
            // CR2 is not in the VMCS; the kernel does not touch it, so the CPU's is the guest's.
            out[word::CR2] = self.cr2;
            out[word::CR3] = vmread(GUEST_CR3);
            out[word::CR4] = self.guest_cr(GUEST_CR4, CR4_MASK, CR4_SHADOW);
            out[word::EFER] = vmread(GUEST_EFER);
        }
        if mask & mtd::SEGMENTS != 0 {
            for i in 0..8 {
                let attr = from_access_rights(vmread(GUEST_ACCESS[i]));
                out[word::SEGMENTS + 2 * i] = abi::vm::segment::pack(
                    vmread(GUEST_SELECTORS[i]) as u16,
                    attr,
                    vmread(GUEST_LIMITS[i]) as u32,
                );
                out[word::SEGMENTS + 2 * i + 1] = vmread(GUEST_BASES[i]);
            }
        }
        if mask & mtd::TABLES != 0 {
            out[word::GDTR_BASE] = vmread(GUEST_GDTR_BASE);
            out[word::GDTR_LIMIT] = vmread(GUEST_GDTR_LIMIT);
            out[word::IDTR_BASE] = vmread(GUEST_IDTR_BASE);
            out[word::IDTR_LIMIT] = vmread(GUEST_IDTR_LIMIT);
        }
        if mask & mtd::INJECT != 0 {
            out[word::INJECT] = vmread(ENTRY_INTERRUPTION);
            out[word::INJECT_ERROR] = vmread(ENTRY_ERROR_CODE);
            let state = vmread(GUEST_INTERRUPTIBILITY);
            out[word::INTERRUPTIBILITY] = u64::from(state & 0b11 != 0) | ((state >> 3) & 1) << 1;
        }
        // XCR0 is a reply-only group: its word is GUEST_TSC in exit messages.
        if mask & mtd::MSRS != 0 {
            out[word::SYSENTER_CS] = vmread(GUEST_SYSENTER_CS);
            out[word::SYSENTER_ESP] = vmread(GUEST_SYSENTER_ESP);
            out[word::SYSENTER_EIP] = vmread(GUEST_SYSENTER_EIP);
            out[word::PAT] = vmread(GUEST_PAT);
            out[word::DR7] = vmread(GUEST_DR7);
        }
    }

    fn write(&mut self, gprs: &mut Gprs, mask: u64, w: &[u64; word::COUNT]) {
        self.load();
        let Some(shared) = SHARED.get() else { return };
        if mask & mtd::GPRS != 0 {
            gprs.0.copy_from_slice(&w[word::GPRS..word::GPRS + 16]);
            vmwrite(GUEST_RSP, w[word::GPRS + RSP]);
        }
        if mask & mtd::RIP != 0 {
            // The VMM moved RIP past an instruction it emulated: an STI or MOV SS shadow
            // that covered it is over (as KVM's skip_emulated_instruction).
            if vmread(GUEST_RIP) != w[word::RIP] {
                let state = vmread(GUEST_INTERRUPTIBILITY);
                vmwrite(GUEST_INTERRUPTIBILITY, state & !0b11);
            }
            vmwrite(GUEST_RIP, w[word::RIP]);
            vmwrite(GUEST_RFLAGS, w[word::RFLAGS]);
        }
        if mask & mtd::CONTROL != 0 {
            // A VMM that emulated a MOV to CR0 or CR4 gets the TLB flush the guest's own write
            // could have made (nested mode; shadow mode runs without VPID).
            let before = (
                self.guest_cr(GUEST_CR0, CR0_MASK, CR0_SHADOW),
                vmread(GUEST_CR3),
                self.guest_cr(GUEST_CR4, CR4_MASK, CR4_SHADOW),
            );
            if before != (w[word::CR0], w[word::CR3], w[word::CR4]) {
                self.flush = true;
            }
            let cr0 = w[word::CR0];
            vmwrite(CR0_SHADOW, cr0);
            let fixed0 = shared.cr0_fixed0 & !(CR0_PE | CR0_PG);
            vmwrite(GUEST_CR0, (cr0 | fixed0) & shared.cr0_fixed1);
            self.cr2 = w[word::CR2];
            vmwrite(GUEST_CR3, w[word::CR3]);
            let cr4 = w[word::CR4];
            vmwrite(CR4_SHADOW, cr4);
            vmwrite(GUEST_CR4, (cr4 | shared.cr4_fixed0) & shared.cr4_fixed1);
            let efer = w[word::EFER];
            vmwrite(GUEST_EFER, efer);
            let entry = vmread(ENTRY_CONTROLS) as u32 & !ENTRY_IA32E;
            let ia32e = if efer & EFER_LMA != 0 { ENTRY_IA32E } else { 0 };
            vmwrite(ENTRY_CONTROLS, u64::from(entry | ia32e));
        }
        if mask & mtd::SEGMENTS != 0 {
            for i in 0..8 {
                let packed = w[word::SEGMENTS + 2 * i];
                vmwrite(
                    GUEST_SELECTORS[i],
                    u64::from(abi::vm::segment::selector(packed)),
                );
                vmwrite(GUEST_LIMITS[i], u64::from(abi::vm::segment::limit(packed)));
                vmwrite(
                    GUEST_ACCESS[i],
                    to_access_rights(abi::vm::segment::attributes(packed)),
                );
                vmwrite(GUEST_BASES[i], w[word::SEGMENTS + 2 * i + 1]);
            }
        }
        if mask & mtd::TABLES != 0 {
            vmwrite(GUEST_GDTR_BASE, w[word::GDTR_BASE]);
            vmwrite(GUEST_GDTR_LIMIT, w[word::GDTR_LIMIT]);
            vmwrite(GUEST_IDTR_BASE, w[word::IDTR_BASE]);
            vmwrite(GUEST_IDTR_LIMIT, w[word::IDTR_LIMIT]);
        }
        if mask & mtd::MSRS != 0 {
            vmwrite(GUEST_SYSENTER_CS, w[word::SYSENTER_CS]);
            vmwrite(GUEST_SYSENTER_ESP, w[word::SYSENTER_ESP]);
            vmwrite(GUEST_SYSENTER_EIP, w[word::SYSENTER_EIP]);
            vmwrite(GUEST_PAT, w[word::PAT]);
            vmwrite(GUEST_DR7, w[word::DR7]);
        }
        if mask & mtd::XCR0 != 0 {
            self.xcr0 = w[word::XCR0];
        }
    }

    fn inject(&mut self, event: u64, error: u64) {
        self.load();
        vmwrite(ENTRY_INTERRUPTION, event & 0xffff_ffff);
        vmwrite(ENTRY_ERROR_CODE, error & 0xffff_ffff);
        // Software interrupts and exceptions (types 4-6) need the length of the instruction
        // that raised them: the exit's, when an exit interrupted their delivery (an INT n whose
        // IDT or stack access faulted) and the kernel delivers them again.
        if event & (1 << 31) != 0 && (4..=6).contains(&((event >> 8) & 7)) {
            vmwrite(
                ENTRY_INSTRUCTION_LEN,
                vmread(EXIT_INSTRUCTION_LEN).clamp(1, 15),
            );
        }
    }

    fn request_window(&mut self, on: bool) {
        self.load();
        let proc = vmread(PROC_CONTROLS) as u32;
        let proc = if on {
            proc | PROC_INTERRUPT_WINDOW
        } else {
            proc & !PROC_INTERRUPT_WINDOW
        };
        vmwrite(PROC_CONTROLS, u64::from(proc));
    }

    fn flush_on_entry(&mut self) {
        self.flush = true;
    }

    /// A new VPID (nested mode; shadow mode runs without one). The next entry invalidates the
    /// EPT context, which drops every mapping derived from it under any VPID.
    fn retag(&mut self, vpid: u16) {
        if !self.shadow {
            self.load();
            vmwrite(VPID, u64::from(vpid));
        }
        self.flush = true;
    }

    /// The paging state the next VM entry would use (for `virt::confine::check`).
    fn paging(&self) -> virt::confine::HwPaging {
        self.load();
        let proc = vmread(PROC_CONTROLS) as u32;
        let secondary = if proc & PROC_SECONDARY != 0 {
            vmread(SECONDARY_CONTROLS) as u32
        } else {
            0
        };
        let ept = secondary & SECONDARY_EPT != 0;
        let entry = vmread(ENTRY_CONTROLS) as u32;
        virt::confine::HwPaging {
            nested_root: ept.then(|| vmread(EPT_POINTER) & !0xfff),
            cr0: vmread(GUEST_CR0),
            cr3: vmread(GUEST_CR3),
            cr4: vmread(GUEST_CR4),
            efer: vmread(GUEST_EFER),
            long_mode: entry & ENTRY_IA32E != 0,
        }
    }

    /// While the guest's paging is off it runs on the Vm's EPT with unrestricted guest (real
    /// mode and protected mode without paging need it), as a nested-mode guest does; with its
    /// paging on, on the shadow tables without EPT. Never with VPID: every entry flushes.
    fn shadow_control(&mut self, c: &ShadowControl) {
        let Some(shared) = SHARED.get() else { return };
        self.load();
        let ept = c.nested_root.is_some();
        if ept != self.ept || (ept && self.ept_pointer & !0xfff != c.nested_root.unwrap_or(0)) {
            let both = SECONDARY_EPT | SECONDARY_UNRESTRICTED;
            let secondary = vmread(SECONDARY_CONTROLS) as u32 & !both;
            let secondary = if ept {
                secondary | (shared.secondary & both)
            } else {
                secondary
            };
            self.ept_pointer = c.nested_root.map_or(0, |root| root | (3 << 3) | 6);
            vmwrite(EPT_POINTER, self.ept_pointer);
            vmwrite(SECONDARY_CONTROLS, u64::from(secondary));
            self.ept = ept;
            self.flush = true;
        }
        // Unrestricted guest lets PE and PG be the guest's own.
        let fixed0 = if ept {
            shared.cr0_fixed0 & !(CR0_PE | CR0_PG)
        } else {
            shared.cr0_fixed0
        };
        vmwrite(GUEST_CR0, (c.cr0 | fixed0) & shared.cr0_fixed1);
        vmwrite(CR0_SHADOW, c.visible_cr0);
        vmwrite(GUEST_CR3, c.cr3);
        vmwrite(GUEST_CR4, (c.cr4 | shared.cr4_fixed0) & shared.cr4_fixed1);
        vmwrite(CR4_SHADOW, c.visible_cr4);
        vmwrite(GUEST_EFER, c.efer);
        let entry = vmread(ENTRY_CONTROLS) as u32 & !ENTRY_IA32E;
        let ia32e = if c.efer & EFER_LMA != 0 {
            ENTRY_IA32E
        } else {
            0
        };
        vmwrite(ENTRY_CONTROLS, u64::from(entry | ia32e));
    }

    fn set_cr2(&mut self, value: u64) {
        self.cr2 = value;
    }

    /// Shadow mode: intercept #PF (the vTLB's default) or let the guest's IDT take it.
    fn intercept_page_faults(&mut self, on: bool) {
        self.load();
        let pf = if on { 1 << 14 } else { 0 };
        vmwrite(EXCEPTION_BITMAP, u64::from(EXCEPTIONS_REFLECTED | pf));
    }

    fn entered(&mut self) {
        self.cr2 = read_cr2();
        crate::arch::vm::xcr0::exited();
        self.load();
        // A failed entry leaves the VMCS as it was: launched only after a real exit.
        let failed = ENTRY_FAILED.load(Ordering::Acquire) || vmread(EXIT_REASON) & (1 << 31) != 0;
        if !failed {
            self.launched = true;
        }
    }

    /// VMX rules the neutral checks do not cover: CR0/CR4 bits VMX fixes are taken care of by
    /// the masks; the SVM rules (reserved bits, long-mode consistency) apply to both.
    fn check(&self, mask: u64, w: &[u64; word::COUNT]) -> Result<(), BadState> {
        if mask & mtd::XCR0 != 0 {
            crate::arch::vm::xcr0::check(w[word::XCR0])?;
        }
        // The control registers and CS decide these rules: check whenever a reply changes
        // either, on the state merged from the reply and the VMCS.
        if mask & (mtd::CONTROL | mtd::SEGMENTS) == 0 {
            return Ok(());
        }
        self.load();
        let (cr0, cr3, cr4, efer) = if mask & mtd::CONTROL != 0 {
            (w[word::CR0], w[word::CR3], w[word::CR4], w[word::EFER])
        } else {
            (
                vmread(GUEST_CR0),
                vmread(GUEST_CR3),
                vmread(GUEST_CR4),
                vmread(GUEST_EFER),
            )
        };
        let cs = if mask & mtd::SEGMENTS != 0 {
            abi::vm::segment::attributes(w[word::SEGMENTS])
        } else {
            from_access_rights(vmread(GUEST_ACCESS[0]))
        };
        if cr0 & CR0_PG != 0 && cr0 & CR0_PE == 0 {
            return Err(BadState("CR0.PG without CR0.PE"));
        }
        // Intel's EFER has SCE, LME, LMA and NXE only (SVME is AMD's): the rest is reserved
        // and would fail the entry.
        const EFER_DEFINED: u64 = 1 | (1 << 8) | (1 << 10) | (1 << 11);
        if efer & !EFER_DEFINED != 0 {
            return Err(BadState("EFER reserved bits"));
        }
        let state = virt::svm_state::GuestState {
            efer: efer | (1 << 12),
            cr0,
            cr3,
            cr4,
            dr6: 0,
            dr7: 0x400,
            cs_long: cs & abi::vm::segment::LONG != 0,
            cs_default32: cs & abi::vm::segment::DB != 0,
            asid: 1,
            intercepts_vmrun: true,
        };
        virt::svm_state::check(&state).map_err(|_| BadState("guest control registers"))?;
        // IA32e mode (LMA) must agree with LME and paging.
        let lme = efer & (1 << 8) != 0;
        let lma = efer & EFER_LMA != 0;
        if lma != (lme && cr0 & CR0_PG != 0) {
            return Err(BadState("EFER.LMA disagrees with EFER.LME and CR0.PG"));
        }
        Ok(())
    }

    fn exit(&self, _gprs: &Gprs) -> HwExit {
        self.load();
        if ENTRY_FAILED.swap(false, Ordering::AcqRel) {
            let error = vmread(INSTRUCTION_ERROR);
            return HwExit {
                exit: Exit::EntryFailure { reason: 0 },
                raw: error,
                info1: error,
                info2: 0,
                instruction_len: 0,
                exception: 0,
                address: None,
            };
        }
        let reason = vmread(EXIT_REASON);
        let qualification = vmread(QUALIFICATION);
        let mut exit = decode_vmx(reason as u32, qualification, vmread(GUEST_PHYSICAL));
        let mut exception = 0;
        if let Exit::Exception { .. } = exit {
            let info = vmread(EXIT_INTERRUPTION);
            let vector = (info & 0xff) as u8;
            exit = match (info >> 8) & 7 {
                2 => Exit::Nmi,
                _ => Exit::Exception { vector },
            };
            let error = if info & (1 << 11) != 0 {
                vmread(EXIT_INTERRUPTION_ERROR)
            } else {
                0
            };
            exception = u64::from(vector) | (error << 32);
        }
        HwExit {
            exit,
            raw: reason & 0xffff,
            info1: qualification,
            info2: qualification,
            instruction_len: vmread(EXIT_INSTRUCTION_LEN).min(15),
            exception,
            // #PF: the faulting address; INVLPG: its operand.
            address: Some(qualification),
        }
    }

    /// Runs the guest: host state as it is now, then VMLAUNCH or VMRESUME.
    ///
    /// # Safety
    ///
    /// The VMCS, its EPT and `gprs` stay allocated until the exit is handled.
    unsafe fn run(&mut self, gprs: &mut Gprs) -> ! {
        extern "C" {
            fn vmx_run(gprs: *mut Gprs, launched: u64) -> !;
            fn vmx_exit_stub();
            static boot_stack_top: u8;
        }
        self.load();
        if self.flush {
            self.flush = false;
            // Shadow mode runs without VPID: the entry itself flushes the guest's linear
            // entries; what EPT derived goes with INVEPT.
            if self.ept {
                invept(self.ept_pointer);
            }
        }
        set_cr2(self.cr2);
        crate::arch::vm::xcr0::enter(self.xcr0);
        write_host_state();
        if SHARED
            .get()
            .is_some_and(|s| s.pin & PIN_PREEMPTION_TIMER != 0)
        {
            vmwrite(PREEMPTION_TIMER, PREEMPTION_BUDGET);
        }
        vmwrite(HOST_RSP, core::ptr::addr_of!(boot_stack_top) as u64);
        vmwrite(HOST_RIP, vmx_exit_stub as *const () as u64);
        // SAFETY: the VMCS is current and complete; the caller keeps everything alive.
        unsafe { vmx_run(gprs, u64::from(self.launched)) }
    }
}
