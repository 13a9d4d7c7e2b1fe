//! One vCPU's VMCB and what the kernel does with it (`VendorVcpu`).

use super::*;
use crate::arch::vm::{BadState, ShadowControl, VendorVcpu};

/// One vCPU's VMCB.
pub struct Vmcb {
    frame: u64,
    /// A software interrupt is being delivered again with RIP already moved past its INT
    /// (see [`Vmcb::redeliver`]): if its delivery is interrupted once more, RIP stays.
    soft_advanced: bool,
    /// The guest's TSC_AUX, where the CPU has RDTSCP (reset value 0).
    tsc_aux: u64,
    /// The guest's XCR0 (`crate::arch::vm::xcr0`).
    xcr0: u64,
}

impl Vmcb {
    fn words(&self) -> direct::FrameWords {
        // The frame was allocated page-aligned from the allocator, inside the window.
        direct::FrameWords::new(self.frame).expect("VMCB frame in the direct map")
    }

    fn get(&self, offset: usize) -> u64 {
        self.words().read(offset / 8)
    }

    fn set(&mut self, offset: usize, value: u64) {
        self.words().write(offset / 8, value)
    }

    fn get32(&self, offset: usize) -> u32 {
        (self.get(offset & !7) >> ((offset & 7) * 8)) as u32
    }

    fn set32(&mut self, offset: usize, value: u32) {
        let shift = (offset & 7) * 8;
        let w = self.get(offset & !7) & !(0xffff_ffffu64 << shift);
        self.set(offset & !7, w | (u64::from(value) << shift));
    }

    fn set8(&mut self, offset: usize, value: u8) {
        let shift = (offset & 7) * 8;
        let w = self.get(offset & !7) & !(0xffu64 << shift);
        self.set(offset & !7, w | (u64::from(value) << shift));
    }

    /// A VMCB that intercepts what the kernel must see, with nested paging at `nested_root`, or
    /// in shadow mode (no nested paging; #PF, CR0/CR3/CR4 accesses and INVLPG intercepted).
    pub fn new(nested_root: Option<u64>, asid: u16) -> Option<Vmcb> {
        let shared = SHARED.get()?;
        let frame = alloc_zeroed(1)?;
        let mut v = Vmcb {
            frame,
            soft_advanced: false,
            tsc_aux: 0,
            xcr0: virt::xcr0::RESET,
        };
        v.set32(INTERCEPT_CR, 0);
        v.set32(INTERCEPT_DR, DR_ALL);
        v.set32(INTERCEPT_EXCEPTIONS, EXCEPTIONS_REFLECTED);
        v.set32(
            INTERCEPT_MISC1,
            MISC1_INTR
                | MISC1_NMI
                | MISC1_SMI
                | MISC1_INIT
                | MISC1_RDPMC
                | MISC1_CPUID
                | MISC1_INVD
                | MISC1_HLT
                | MISC1_IOIO
                | MISC1_MSR
                | MISC1_SHUTDOWN,
        );
        let misc2 = if shared.rdtscp {
            MISC2_ALWAYS & !MISC2_RDTSCP
        } else {
            MISC2_ALWAYS
        };
        v.set32(INTERCEPT_MISC2, misc2);
        v.set(IOPM_BASE, shared.iopm);
        v.set(MSRPM_BASE, shared.msrpm);
        v.set32(GUEST_ASID, u32::from(asid));
        v.set8(TLB_CONTROL, TLB_FLUSH_ALL);
        v.set(VINTR, V_INTR_MASKING);
        match nested_root {
            Some(root) => {
                v.set(NP_ENABLE, 1);
                v.set(N_CR3, root);
                v.set32(INTERCEPT_CR, NESTED_CR);
            }
            None => {
                v.set32(INTERCEPT_CR, SHADOW_CR);
                v.set32(
                    INTERCEPT_EXCEPTIONS,
                    EXCEPTIONS_REFLECTED | SHADOW_EXCEPTIONS,
                );
                let misc1 = v.get32(INTERCEPT_MISC1);
                v.set32(INTERCEPT_MISC1, misc1 | MISC1_INVLPG);
            }
        }
        v.set(S_G_PAT, DEFAULT_PAT);
        v.set(S_EFER, EFER_SVME);
        v.set(S_DR6, 0xffff_0ff0);
        v.set(S_DR7, 0x400);
        v.set(S_RFLAGS, 2);
        Some(v)
    }

    /// The event the exit interrupted (EXITINTINFO, abi::vm::inject form + error), if any.
    pub fn interrupted_event(&self) -> Option<(u64, u64)> {
        let info = self.get(EXIT_INT_INFO);
        // Only bit 31 says whether the rest is meaningful (QEMU leaves stale bits behind).
        (info & (1 << 31) != 0).then_some((info & 0xffff_ffff, info >> 32))
    }
}

impl VendorVcpu for Vmcb {
    fn free(self) {
        frames::free(self.frame, 1);
    }

    fn read(&self, gprs: &Gprs, mask: u64, out: &mut [u64; word::COUNT]) {
        if mask & mtd::GPRS != 0 {
            out[word::GPRS..word::GPRS + 16].copy_from_slice(&gprs.0);
            out[word::GPRS + RAX] = self.get(S_RAX);
            out[word::GPRS + RSP] = self.get(S_RSP);
        }
        if mask & mtd::RIP != 0 {
            out[word::RIP] = self.get(S_RIP);
            out[word::RFLAGS] = self.get(S_RFLAGS);
        }
        if mask & mtd::CONTROL != 0 {
            out[word::CR0] = self.get(S_CR0);
            out[word::CR2] = self.get(S_CR2);
            out[word::CR3] = self.get(S_CR3);
            out[word::CR4] = self.get(S_CR4);
            out[word::EFER] = self.get(S_EFER) & !EFER_SVME;
        }
        if mask & mtd::SEGMENTS != 0 {
            for (i, offset) in SEGMENT_OFFSETS.iter().enumerate() {
                out[word::SEGMENTS + 2 * i] = self.get(*offset);
                out[word::SEGMENTS + 2 * i + 1] = self.get(offset + 8);
            }
        }
        if mask & mtd::TABLES != 0 {
            out[word::GDTR_BASE] = self.get(GDTR + 8);
            out[word::GDTR_LIMIT] = u64::from(self.get32(GDTR + 4));
            out[word::IDTR_BASE] = self.get(IDTR + 8);
            out[word::IDTR_LIMIT] = u64::from(self.get32(IDTR + 4));
        }
        if mask & mtd::INJECT != 0 {
            let pending = self.get(EVENT_INJ);
            out[word::INJECT] = pending & 0xffff_ffff;
            out[word::INJECT_ERROR] = pending >> 32;
            out[word::INTERRUPTIBILITY] = self.get(INTERRUPT_SHADOW) & 1;
        }
        // XCR0 is a reply-only group: its word is GUEST_TSC in exit messages.
        if mask & mtd::MSRS != 0 {
            out[word::SYSENTER_CS] = self.get(S_SYSENTER_CS);
            out[word::SYSENTER_ESP] = self.get(S_SYSENTER_ESP);
            out[word::SYSENTER_EIP] = self.get(S_SYSENTER_EIP);
            out[word::PAT] = self.get(S_G_PAT);
            out[word::DR7] = self.get(S_DR7);
        }
    }

    fn write(&mut self, gprs: &mut Gprs, mask: u64, w: &[u64; word::COUNT]) {
        if mask & mtd::GPRS != 0 {
            gprs.0.copy_from_slice(&w[word::GPRS..word::GPRS + 16]);
            self.set(S_RAX, w[word::GPRS + RAX]);
            self.set(S_RSP, w[word::GPRS + RSP]);
        }
        if mask & mtd::RIP != 0 {
            // The VMM moved RIP past an instruction it emulated: an STI or MOV SS shadow
            // that covered it is over (as KVM's skip_emulated_instruction).
            if self.get(S_RIP) != w[word::RIP] {
                self.set(INTERRUPT_SHADOW, self.get(INTERRUPT_SHADOW) & !1);
            }
            self.set(S_RIP, w[word::RIP]);
            self.set(S_RFLAGS, w[word::RFLAGS]);
        }
        if mask & mtd::CONTROL != 0 {
            // A VMM that emulated a MOV to CR4 (or changed CR0 or CR3) gets the TLB flush
            // the guest's own write would have made: the ASID's translations go.
            let paging_changed = self.get(S_CR0) != w[word::CR0]
                || self.get(S_CR3) != w[word::CR3]
                || self.get(S_CR4) != w[word::CR4];
            if paging_changed && self.get(NP_ENABLE) & 1 != 0 {
                self.flush_on_entry();
            }
            self.set(S_CR0, w[word::CR0]);
            self.set(S_CR2, w[word::CR2]);
            self.set(S_CR3, w[word::CR3]);
            self.set(S_CR4, w[word::CR4]);
            self.set(S_EFER, w[word::EFER] | EFER_SVME);
        }
        if mask & mtd::SEGMENTS != 0 {
            for (i, offset) in SEGMENT_OFFSETS.iter().enumerate() {
                self.set(*offset, w[word::SEGMENTS + 2 * i]);
                self.set(offset + 8, w[word::SEGMENTS + 2 * i + 1]);
            }
        }
        if mask & mtd::TABLES != 0 {
            self.set32(GDTR + 4, w[word::GDTR_LIMIT] as u32);
            self.set(GDTR + 8, w[word::GDTR_BASE]);
            self.set32(IDTR + 4, w[word::IDTR_LIMIT] as u32);
            self.set(IDTR + 8, w[word::IDTR_BASE]);
        }
        if mask & mtd::MSRS != 0 {
            self.set(S_SYSENTER_CS, w[word::SYSENTER_CS]);
            self.set(S_SYSENTER_ESP, w[word::SYSENTER_ESP]);
            self.set(S_SYSENTER_EIP, w[word::SYSENTER_EIP]);
            self.set(S_G_PAT, w[word::PAT]);
            self.set(S_DR7, w[word::DR7]);
        }
        if mask & mtd::XCR0 != 0 {
            self.xcr0 = w[word::XCR0];
        }
        // The CPL follows SS.DPL in protected mode and is 0 in real mode.
        let ss_attr = (self.get(SEGMENT_OFFSETS[1]) >> 16) & 0xfff;
        let protected = self.get(S_CR0) & 1 != 0;
        let cpl = if protected { (ss_attr >> 5) & 3 } else { 0 };
        self.set8(CPL, cpl as u8);
        let _ = SEGMENT_ORDER; // the offsets above follow abi::vm::SEGMENT_ORDER
    }

    fn inject(&mut self, event: u64, error: u64) {
        self.set(EVENT_INJ, (event & 0xffff_ffff) | (error << 32));
    }

    fn request_window(&mut self, on: bool) {
        let misc1 = self.get32(INTERCEPT_MISC1);
        let v = self.get(VINTR);
        if on {
            self.set32(INTERCEPT_MISC1, misc1 | MISC1_VINTR);
            self.set(VINTR, v | V_IRQ | V_IGN_TPR);
        } else {
            self.set32(INTERCEPT_MISC1, misc1 & !MISC1_VINTR);
            self.set(VINTR, v & !(V_IRQ | V_IGN_TPR));
        }
    }

    /// SVM has no read shadows: every CR access exits in shadow mode. While the guest's paging
    /// is off it runs on the Vm's nested tables (NPT), as a nested-mode guest does.
    fn shadow_control(&mut self, c: &ShadowControl) {
        self.set(S_CR0, c.cr0);
        self.set(S_CR3, c.cr3);
        self.set(S_CR4, c.cr4);
        self.set(S_EFER, c.efer | EFER_SVME);
        let was = (self.get(NP_ENABLE) & 1 != 0).then(|| self.get(N_CR3));
        if was != c.nested_root {
            match c.nested_root {
                Some(root) => {
                    self.set(N_CR3, root);
                    self.set(NP_ENABLE, 1);
                }
                None => {
                    self.set(NP_ENABLE, 0);
                    self.set(N_CR3, 0);
                }
            }
            // Translations of the other paging regime must not survive.
            self.set8(TLB_CONTROL, TLB_FLUSH_ALL);
        }
    }

    fn set_cr2(&mut self, value: u64) {
        self.set(S_CR2, value);
    }

    /// Shadow mode: intercept #PF (the vTLB's default) or let the guest's IDT take it.
    fn intercept_page_faults(&mut self, on: bool) {
        let exceptions = self.get32(INTERCEPT_EXCEPTIONS) & !SHADOW_EXCEPTIONS;
        let pf = if on { SHADOW_EXCEPTIONS } else { 0 };
        self.set32(INTERCEPT_EXCEPTIONS, exceptions | pf);
    }

    /// INVLPGA: drops the translation of `la` for this VMCB's ASID from the TLB.
    fn invalidate_page(&mut self, la: u64) {
        let asid = u64::from(self.get32(GUEST_ASID));
        // SAFETY: INVLPGA only invalidates TLB entries (of a guest ASID, never the host's 0);
        // SVM is enabled whenever a VMCB exists.
        unsafe {
            core::arch::asm!("invlpga rax, ecx", in("rax") la, in("rcx") asid, options(nostack));
        }
    }

    fn flush_on_entry(&mut self) {
        if self.get32(TLB_CONTROL) & 0xff == 0 {
            // Shadow leaves may be global (the guest's G bit), which flushing the ASID's
            // non-global entries would miss: flush everything then.
            let shadow = self.get(NP_ENABLE) & 1 == 0;
            self.set8(
                TLB_CONTROL,
                if shadow {
                    TLB_FLUSH_ALL
                } else {
                    TLB_FLUSH_GUEST
                },
            );
        }
    }

    fn exit(&self, _gprs: &Gprs) -> HwExit {
        let code = self.get(EXIT_CODE);
        let (info1, info2) = (self.get(EXIT_INFO1), self.get(EXIT_INFO2));
        let exit = decode_svm(code, info1, info2);
        let rip = self.get(S_RIP);
        let next = self.get(NEXT_RIP);
        let nrip = SHARED.get().is_some_and(|s| s.nrip_save);
        let instruction_len = match exit {
            // EXITINFO2 holds the next RIP for port I/O on every SVM implementation.
            Exit::Io(_) => info2.wrapping_sub(rip),
            _ if nrip && next > rip && next - rip <= 15 => next - rip,
            // Without NRIP save (QEMU): these instructions have fixed lengths without prefixes.
            Exit::Cpuid | Exit::Rdmsr | Exit::Wrmsr => 2,
            Exit::Hlt => 1,
            Exit::Hypercall => 3,
            _ => 0,
        };
        let exception = match exit {
            Exit::Exception { vector } => u64::from(vector) | (info1 << 32),
            _ => 0,
        };
        let address = match exit {
            Exit::Exception { vector: 14 } => Some(info2),
            // With decode assists EXITINFO1 holds the address; without, the kernel decodes.
            Exit::Invlpg if SHARED.get().is_some_and(|s| s.decode_assists) => Some(info1),
            _ => None,
        };
        HwExit {
            exit,
            raw: code,
            info1,
            info2,
            instruction_len: if instruction_len > 15 {
                0
            } else {
                instruction_len
            },
            exception,
            address,
        }
    }

    /// Queues the event the last exit interrupted for the next entry (none if there was none).
    /// Without NRIP save, a software interrupt (INT n) injected through EVENTINJ returns to the
    /// VMCB's RIP, which still points at the INT instruction: RIP moves past it (INT imm8 is
    /// two bytes), or the guest would run the INT twice. Once: a delivery interrupted again
    /// (its IDT entry, then its stack missing in the shadow tables) finds RIP moved already.
    fn redeliver(&mut self) {
        let Some((event, error)) = self.interrupted_event() else {
            self.soft_advanced = false;
            self.inject(0, 0);
            return;
        };
        let software_interrupt = (event >> 8) & 7 == 4;
        let nrip = SHARED.get().is_some_and(|s| s.nrip_save);
        if software_interrupt && !nrip && !self.soft_advanced {
            let rip = self.get(S_RIP);
            self.set(S_RIP, rip.wrapping_add(2));
        }
        self.soft_advanced = software_interrupt && !nrip;
        self.inject(event, error);
    }

    /// Runs the guest. Clears the one-shot TLB flush request first.
    ///
    /// # Safety
    ///
    /// The VMCB, its nested tables and `gprs` stay allocated until the exit is handled.
    unsafe fn run(&mut self, gprs: &mut Gprs) -> ! {
        extern "C" {
            fn svm_run(gprs: *mut Gprs, vmcb: u64, host_vmcb: u64) -> !;
        }
        let host = SHARED.get().map_or(0, |s| s.host_vmcb);
        self.set(CLEAN_BITS, 0);
        if RDTSCP.load(core::sync::atomic::Ordering::Relaxed) {
            // SAFETY: the CPU has RDTSCP, hence TSC_AUX; the guest's value replaces the
            // host's until `entered` puts it back (the kernel itself never reads it).
            unsafe { wrmsr(TSC_AUX, self.tsc_aux) };
        }
        crate::arch::vm::xcr0::enter(self.xcr0);
        // SAFETY: SVM is enabled (a VMCB exists only after `init`), the VMCB passed the
        // kernel's guest-state checks, and the caller keeps everything alive until the exit.
        unsafe { svm_run(gprs, self.frame, host) }
    }

    /// After an exit: the one-shot TLB flush has happened; the guest's TSC_AUX is kept and
    /// the host's put back.
    fn entered(&mut self) {
        self.set8(TLB_CONTROL, 0);
        crate::arch::vm::xcr0::exited();
        if RDTSCP.load(core::sync::atomic::Ordering::Relaxed) {
            let host = SHARED.get().map_or(0, |s| s.host_tsc_aux);
            // SAFETY: the CPU has RDTSCP, hence TSC_AUX; reading and restoring it touches no
            // memory.
            unsafe {
                self.tsc_aux = rdmsr(TSC_AUX);
                wrmsr(TSC_AUX, host);
            }
        }
    }

    /// A new ASID; the next VMRUN flushes the whole TLB (the ASID's global entries too).
    fn retag(&mut self, asid: u16) {
        self.set32(GUEST_ASID, u32::from(asid));
        self.set8(TLB_CONTROL, TLB_FLUSH_ALL);
    }

    /// The paging state VMRUN would enter with (for `virt::confine::check`).
    fn paging(&self) -> virt::confine::HwPaging {
        let efer = self.get(S_EFER);
        virt::confine::HwPaging {
            nested_root: (self.get(NP_ENABLE) & 1 != 0).then(|| self.get(N_CR3)),
            cr0: self.get(S_CR0),
            cr3: self.get(S_CR3),
            cr4: self.get(S_CR4),
            efer,
            long_mode: efer & (1 << 10) != 0,
        }
    }

    /// Checks the state VMRUN would see if the groups of `mask` were written from `w`
    /// (`virt::svm_state::check`), changing nothing.
    fn check(&self, mask: u64, w: &[u64; word::COUNT]) -> Result<(), BadState> {
        if mask & mtd::XCR0 != 0 {
            crate::arch::vm::xcr0::check(w[word::XCR0])?;
        }
        self.state_check(mask, w)
            .map_err(|_| BadState("SVM guest-state check"))
    }

    fn other_kind(&self, raw: u64) -> u64 {
        other_kind(raw)
    }
}

impl Vmcb {
    fn state_check(
        &self,
        mask: u64,
        w: &[u64; word::COUNT],
    ) -> Result<(), virt::svm_state::StateError> {
        let control = mask & mtd::CONTROL != 0;
        let pick = |group: bool, word_index: usize, offset: usize| {
            if group {
                w[word_index]
            } else {
                self.get(offset)
            }
        };
        let cs = if mask & mtd::SEGMENTS != 0 {
            w[word::SEGMENTS]
        } else {
            self.get(SEGMENT_OFFSETS[0])
        };
        let cs_attr = (cs >> 16) & 0xfff;
        let features = SHARED
            .get()
            .map_or(virt::svm_state::Features::ALL, |s| s.guest_features);
        virt::svm_state::check_on(
            &virt::svm_state::GuestState {
                efer: pick(control, word::EFER, S_EFER) | EFER_SVME,
                cr0: pick(control, word::CR0, S_CR0),
                cr3: pick(control, word::CR3, S_CR3),
                cr4: pick(control, word::CR4, S_CR4),
                dr6: self.get(S_DR6),
                dr7: pick(mask & mtd::MSRS != 0, word::DR7, S_DR7),
                cs_long: cs_attr & u64::from(abi::vm::segment::LONG) != 0,
                cs_default32: cs_attr & u64::from(abi::vm::segment::DB) != 0,
                asid: self.get32(GUEST_ASID),
                intercepts_vmrun: self.get32(INTERCEPT_MISC2) & 1 != 0,
            },
            &features,
        )
    }
}
