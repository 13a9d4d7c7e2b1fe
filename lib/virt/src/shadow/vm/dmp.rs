//! The DMP side of a [`Shadow`]: the window (stubs and the words the hypervisor publishes), the
//! view (all guest RAM, read-only, for stubs that walk the guest's tables), and the prefills
//! that keep delivering a forwarded #PF and running a stub from faulting.

use super::{FaultOutcome, Machine, Shadow, EFER_NXE};
use crate::nested::NestedTables;
use crate::shadow::bits::{ACCESSED, ADDR, DIRTY, NO_EXECUTE, PRESENT, WRITABLE};
use crate::shadow::machine::{physical_to_host, physical_to_host_writable, Frames, Lookup};
use crate::shadow::vtlb::Install;

/// #PF error code: the access was a write.
const WRITE: u32 = 1 << 1;
/// #PF error code: the access was made at CPL 3.
const USER: u32 = 1 << 2;
/// #PF error code: the access was an instruction fetch.
const FETCH: u32 = 1 << 4;

/// The DMP window: guest-linear pages the shadow tables map to guest-physical pages whatever
/// the guest's own tables say, supervisor-only, read and execute, never writable (stubs and the
/// structures the hypervisor exposes; see `abi::vm::Syscall::VmWindow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub gla: u64,
    pub gpa: u64,
    pub pages: u64,
    /// The last `scratch` pages are writable too (`abi::vm::dmp_op::SCRATCH`).
    pub scratch: u64,
}

impl Window {
    pub(super) fn contains(&self, la: u64) -> bool {
        la.wrapping_sub(self.gla) < self.pages * 4096
    }

    fn writable(&self, la: u64) -> bool {
        let page = la.wrapping_sub(self.gla) / 4096;
        page < self.pages && page + self.scratch >= self.pages
    }

    /// The rights of window page `la` beyond present-supervisor-read: scratch pages are
    /// writable and (with EFER.NXE) not executable. Scratch pages on read-only backing stay
    /// read-only.
    pub fn rights(&self, la: u64, efer: u64, backing_writable: bool) -> u64 {
        if !self.writable(la) || !backing_writable {
            return 0;
        }
        WRITABLE | if efer & EFER_NXE != 0 { NO_EXECUTE } else { 0 }
    }
}

/// The DMP view: all guest RAM below `size`, shown read-only, supervisor-only and
/// non-executable at guest-linear `gla + gpa` through the shadow tables only, so that DMP stubs
/// can walk the guest's own page tables without an exit (`abi::vm::dmp_op::VIEW`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub gla: u64,
    pub size: u64,
}

impl View {
    pub(super) fn contains(&self, la: u64) -> bool {
        la.wrapping_sub(self.gla) < self.size
    }
}

impl<M: Machine, const N: usize, const R: usize> Shadow<M, N, R> {
    /// A #PF inside the DMP window: supervisor reads and fetches get the window's page; writes
    /// and user accesses get the protection fault a read-only supervisor page gives.
    pub(super) fn window_fault(
        &mut self,
        nested: &NestedTables,
        w: Window,
        la: u64,
        error: u32,
        user: bool,
    ) -> FaultOutcome {
        let scratch = w.writable(la);
        let refused = if scratch {
            error & FETCH != 0
        } else {
            error & WRITE != 0
        };
        if refused || user {
            return self.protection_fault(la, error);
        }
        let page = (la - w.gla) & !0xfff;
        let gpa = w.gpa + page;
        let Some((hpa, access)) = nested.translate(&Lookup(&self.machine), gpa) else {
            return FaultOutcome::MemoryFault { gpa, write: false };
        };
        if error & WRITE != 0 && !access.write {
            // A scratch page on read-only backing: the guest's write is refused like any
            // write to a read-only supervisor page.
            return self.protection_fault(la, error);
        }
        self.stats.fills += 1;
        let rights = w.rights(la, self.efer, access.write);
        let pte = (hpa & !0xfff) | PRESENT | ACCESSED | DIRTY | rights;
        let flush = !matches!(
            self.vtlb
                .install(&mut Frames(&self.machine), la & !0xfff, pte),
            Install::Installed
        );
        FaultOutcome::Resume { flush, page: None }
    }

    /// The protection fault a present page the access may not make gives (window and view).
    fn protection_fault(&mut self, la: u64, error: u32) -> FaultOutcome {
        self.stats.guest_faults += 1;
        FaultOutcome::InjectPageFault {
            address: la,
            error: (error & !crate::shadow::walk::ErrorCode::RESERVED) | 1,
        }
    }

    /// A #PF inside the DMP view: supervisor reads get the guest-physical page (read-only, NX);
    /// anything else gets the protection fault such a page gives.
    pub(super) fn view_fault(
        &mut self,
        nested: &NestedTables,
        v: View,
        la: u64,
        error: u32,
        user: bool,
    ) -> FaultOutcome {
        if error & (WRITE | FETCH) != 0 || user {
            return self.protection_fault(la, error);
        }
        let gpa = (la - v.gla) & !0xfff;
        if physical_to_host(&self.machine, nested, gpa).is_none() {
            return FaultOutcome::MemoryFault { gpa, write: false };
        }
        // The whole 2 MiB of the view at once: guest RAM is one nested leaf table per 2 MiB, and
        // a stub's walk touches page tables all over it.
        self.stats.fills += 1;
        let nx = if self.efer & EFER_NXE != 0 {
            NO_EXECUTE
        } else {
            0
        };
        let mut ptes = [0u64; 512];
        let region = (la - v.gla) & !0x1f_ffff;
        nested.translate_region(&Lookup(&self.machine), region, |i, hpa, _| {
            if region + (i as u64) * 4096 < v.size {
                ptes[i] = (hpa & !0xfff) | PRESENT | ACCESSED | DIRTY | nx;
            }
        });
        // The view is the same in every address space: global, kept across CR3 loads.
        let installed =
            self.vtlb
                .install_global_region(&mut Frames(&self.machine), la & !0x1f_ffff, &ptes);
        self.installed(installed, la & !0xfff, false)
    }

    /// Maps, with the access it will make, a guest page that event delivery or a DMP stub
    /// touches (see [`Shadow::prefill_critical`]); quietly does nothing when the guest's tables
    /// do not allow it: the fault then comes as it would on hardware.
    pub(super) fn prefill_page(&mut self, nested: &NestedTables, la: u64, error: u32, rflags: u64) {
        if self.leaf(la) & PRESENT == 0 {
            let _ = self.page_fault(nested, la, error, false, rflags);
        }
    }

    /// After a CR3 load or a recycle emptied the current tree: maps the window and, while page
    /// faults are forwarded, what delivering a #PF through the guest's IDT needs without
    /// faulting (a fault there would be a double fault): the current stack, the stack in the
    /// TSS (RSP0) for faults from user mode, the IDT's #PF gate, the GDT and the TSS.
    /// `w` holds the vCPU's GPRS, RIP, SEGMENTS and TABLES words.
    pub fn prefill_critical(&mut self, nested: &NestedTables, w: &[u64; abi::vm::word::COUNT]) {
        if self.forward {
            self.prefill_delivery(nested, w);
        }
        // Last, so that no recycle on the way takes the window out again.
        self.prefill_window(nested);
    }

    fn prefill_delivery(&mut self, nested: &NestedTables, w: &[u64; abi::vm::word::COUNT]) {
        use abi::vm::word;
        let rflags = w[word::RFLAGS];
        let cs = abi::vm::segment::attributes(w[word::SEGMENTS]);
        let cpl3 = (cs >> 5) & 3 == 3;
        let rsp = w[word::GPRS + 4];
        let stack_access = WRITE | if cpl3 { USER } else { 0 };
        // The frame, and the page below for what the stub and the handler push.
        self.prefill_page(nested, rsp.wrapping_sub(8), stack_access, rflags);
        self.prefill_page(nested, rsp.wrapping_sub(8 + 4096), stack_access, rflags);
        // The stub's first read: the guest's PML4, through the view.
        if let Some(v) = self.view {
            let la = v.gla + (self.cr3 & ADDR);
            if v.contains(la) && self.leaf(la) & PRESENT == 0 {
                let _ = self.view_fault(nested, v, la, 0, false);
            }
        }
        let (idt, _) = self.idtr;
        self.prefill_page(nested, idt + 14 * 16, 0, rflags);
        self.prefill_page(nested, w[word::GDTR_BASE], 0, rflags);
        // TR is the 7th segment pair (abi::vm::SEGMENT_ORDER).
        let tss = w[word::SEGMENTS + 13];
        self.prefill_page(nested, tss, 0, rflags);
        let mut rsp0 = [0u8; 8];
        if self.read_virtual(nested, tss + 4, rflags, &mut rsp0) == 8 {
            let rsp0 = u64::from_le_bytes(rsp0);
            self.prefill_page(nested, rsp0.wrapping_sub(8), WRITE, rflags);
            self.prefill_page(nested, rsp0.wrapping_sub(8 + 4096), WRITE, rflags);
        }
    }

    /// Maps the whole DMP window into the current shadow tree. Every CR3 load starts an empty
    /// tree; without this, code patched to avoid an exit would pay one window fill per address
    /// space switch instead.
    pub fn prefill_window(&mut self, nested: &NestedTables) {
        let Some(w) = self.window else { return };
        for page in 0..w.pages {
            let Some((hpa, access)) = nested.translate(&Lookup(&self.machine), w.gpa + page * 4096)
            else {
                continue;
            };
            let la = w.gla + page * 4096;
            let rights = w.rights(la, self.efer, access.write);
            let pte = (hpa & !0xfff) | PRESENT | ACCESSED | DIRTY | rights;
            self.vtlb.install(&mut Frames(&self.machine), la, pte);
        }
    }

    /// Writes the guest's current CR3 into the first word of the DMP window (what patched
    /// `mov reg, cr3` sites read instead of exiting), with the other window words.
    pub fn publish(&self, nested: &NestedTables) {
        use abi::vm::{
            WINDOW_CR3, WINDOW_IDTR_BASE, WINDOW_IDTR_LIMIT, WINDOW_RESERVED_MASK,
            WINDOW_VIEW_BASE, WINDOW_VIEW_SIZE,
        };
        let Some(hpa) = self
            .window
            .and_then(|w| physical_to_host_writable(&self.machine, nested, w.gpa))
        else {
            return;
        };
        let width = u32::from(self.features.maxphyaddr).clamp(32, 52);
        let mut reserved = ADDR & !((1u64 << width) - 1);
        if self.efer & EFER_NXE == 0 {
            reserved |= NO_EXECUTE;
        }
        let view = self.view.map_or((0, 0), |v| (v.gla, v.size));
        let words = [
            (WINDOW_CR3, self.cr3),
            (WINDOW_IDTR_BASE, self.idtr.0),
            (WINDOW_IDTR_LIMIT, self.idtr.1),
            (WINDOW_RESERVED_MASK, reserved),
            (WINDOW_VIEW_BASE, view.0),
            (WINDOW_VIEW_SIZE, view.1),
        ];
        for (offset, value) in words {
            // The guest may write the window's frame through its own mappings of it; a
            // compare-and-swap against what is there now keeps the store a plain word write.
            let at = hpa + offset;
            if let Some(old) = self.machine.read_shared(at) {
                let _ = self.machine.compare_exchange(at, old, value);
            }
        }
    }
}
