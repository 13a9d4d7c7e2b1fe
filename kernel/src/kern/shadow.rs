//! Shadow paging (a vTLB) for Vms created in shadow mode: the kernel's glue around
//! `virt::shadow`, which holds the walk, the leaf rules, the #PF classification and the table
//! pool (all host-tested).
//!
//! The guest runs on shadow tables the kernel fills: the guest's own CR0, CR3 and CR4 are kept
//! here (what the guest reads and what its walks use), the hardware runs with the shadow root as
//! CR3, CR0.WP forced on, and #PF, MOV CR0/CR3/CR4 and INVLPG intercepted. Every shadow entry is
//! written by the kernel after walking the guest's own tables and looking up the Vm's memory, so
//! a guest can never reach a frame that is not its own. Only 4-level long-mode guests are
//! shadowed (a guest that leaves long-mode paging is stopped with an `Other` exit to its VMM).
//!
//! One vCPU per Vm today, so the guest's control registers live in the Vm.

use alloc::vec::Vec;

use mem::paging::TableMemory;
use virt::nested::NestedTables;
use virt::shadow::cache::Key;
use virt::shadow::classify::{classify, classify_region, RegionResolution, Resolution};
use virt::shadow::leaf::{Backing, HostMemory};
use virt::shadow::vtlb::{Install, Invalidated, ShadowMemory, Vtlb};
use virt::shadow::walk::{self, CasError, Features, GuestPhys, Paging};

use crate::mem::{direct, frames};

/// Shadow table frames per Vm (512 KiB), charged to the Vm's owner. A workload that needs more
/// gets its tables recycled, never a failure.
pub const POOL_FRAMES: usize = 128;
/// Shadow roots kept per Vm (recently used guest address spaces).
const ROOTS: usize = 4;

const CR0_PE: u64 = 1;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_PGE: u64 = 1 << 7;
const CR4_LA57: u64 = 1 << 12;
const CR4_VMXE: u64 = 1 << 13;
const CR4_PCIDE: u64 = 1 << 17;
const CR4_OSXSAVE: u64 = 1 << 18;
const CR4_SMEP: u64 = 1 << 20;
const CR4_SMAP: u64 = 1 << 21;
const CR4_PKE: u64 = 1 << 22;
/// CR4 features the vTLB does not implement (and the VMM hides from CPUID): setting one is #GP.
const CR4_REFUSED: u64 = CR4_LA57 | CR4_VMXE | CR4_PCIDE | CR4_OSXSAVE | CR4_PKE;
/// CR4 bits whose change makes every shadow translation stale.
const CR4_FLUSHING: u64 = CR4_PSE | CR4_PAE | CR4_PGE | CR4_SMEP | CR4_SMAP;
/// Bits 63:32 of CR0 and CR4 are reserved (a set one is #GP).
const HIGH: u64 = 0xffff_ffff_0000_0000;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// What the shadow paging of a Vm did, for the exit profile and the benchmark.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub fills: u64,
    pub guest_faults: u64,
    pub cr3_loads: u64,
    pub invlpgs: u64,
    pub flushes: u64,
    /// DMP hypercalls answered, and the page-table updates they carried.
    pub hypercalls: u64,
    pub updates: u64,
}

/// The answer to a DMP hypercall: RAX, RBX, and whether the hardware TLB must be flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypercallResult {
    pub status: u64,
    pub applied: u64,
    pub flush: bool,
}

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
    fn contains(&self, la: u64) -> bool {
        la.wrapping_sub(self.gla) < self.pages * 4096
    }

    fn writable(&self, la: u64) -> bool {
        let page = la.wrapping_sub(self.gla) / 4096;
        page < self.pages && page + self.scratch >= self.pages
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
    fn contains(&self, la: u64) -> bool {
        la.wrapping_sub(self.gla) < self.size
    }
}

/// The vTLB of a Vm and its guest's own control registers.
pub struct Shadow {
    vtlb: Vtlb<POOL_FRAMES, ROOTS>,
    // Held for its Drop: the vTLB hands these frames out.
    _frames: PoolFrames,
    features: Features,
    /// The guest's CR0, CR3, CR4 and EFER as it set them.
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub stats: Stats,
    pub window: Option<Window>,
    pub view: Option<View>,
    /// #PF is not intercepted: the guest's patched #PF gate sends hidden faults as hypercall
    /// `FAULT` (`abi::vm::dmp_op::FORWARD_FAULTS`).
    pub forward: bool,
    /// The guest's IDTR (base, limit) as last seen at an exit, published in the window.
    pub idtr: (u64, u64),
    /// Hidden faults on large guest pages fill 2 MiB at once (`dmp_op::REGION_FILLS`).
    pub regions: bool,
}

/// The pool's frames, given back to the frame allocator when the Shadow (or a half-built one)
/// goes.
struct PoolFrames(Vec<u64>);

impl Drop for PoolFrames {
    fn drop(&mut self) {
        for f in &self.0 {
            frames::free(*f, 1);
        }
    }
}

/// The hardware control registers for the guest's ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwControl {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
}

/// A guest control-register write the kernel refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrError {
    /// What the CPU would refuse: #GP(0) for the guest.
    GeneralProtection,
    /// Legal, but the vTLB cannot follow (paging off, PAE without long mode): the vCPU stops.
    Unsupported,
}

/// What a #PF taken on the shadow tables comes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// Filled (or nothing to do): run the guest again. `flush`: the hardware TLB must forget
    /// the guest's translations (frames were recycled); `page`: it must forget `page` (a leaf
    /// got more rights).
    Resume { flush: bool, page: Option<u64> },
    /// The guest's own fault: #PF with this error code, CR2 = `address`.
    InjectPageFault { address: u64, error: u32 },
    /// #GP(0) for the guest.
    InjectGeneralProtection,
    /// Guest-physical `gpa` has no memory behind it (or a write hit read-only memory): an exit
    /// for the VMM.
    MemoryFault { gpa: u64, write: bool },
}

impl Shadow {
    /// A vTLB with `POOL_FRAMES` fresh frames; None when memory is short.
    pub fn new() -> Option<Shadow> {
        let mut pool = PoolFrames(Vec::with_capacity(POOL_FRAMES));
        for _ in 0..POOL_FRAMES {
            pool.0.push(frames::alloc(1)?);
        }
        let vtlb = Vtlb::new(&pool.0).ok()?;
        Some(Shadow {
            vtlb,
            _frames: pool,
            features: host_features(),
            cr0: 0,
            cr3: 0,
            cr4: 0,
            efer: 0,
            stats: Stats::default(),
            window: None,
            view: None,
            forward: false,
            idtr: (0, 0),
            regions: false,
        })
    }

    fn paging(&self, rflags: u64) -> Option<Paging> {
        Paging::long_mode(
            self.cr0,
            self.cr3,
            self.cr4,
            self.efer,
            rflags,
            self.features,
        )
    }

    fn hardware(&self) -> HwControl {
        HwControl {
            cr0: self.cr0 | CR0_WP,
            cr3: self.vtlb.root().unwrap_or(0),
            cr4: self.cr4,
        }
    }

    /// The VMM set the guest's control registers (start-up, or a reply with the control
    /// group): checks them, starts from empty shadow tables and returns the hardware values.
    pub fn load(&mut self, cr0: u64, cr3: u64, cr4: u64, efer: u64) -> Result<HwControl, CrError> {
        self.preview(cr0, cr4, efer)?;
        self.cr0 = cr0;
        self.cr4 = cr4;
        self.efer = efer;
        self.cr3 = cr3;
        self.flush();
        Ok(self.hardware())
    }

    /// What [`Shadow::load`] would answer, changing nothing (the CR3 is the current root's;
    /// the load may pick another frame, which the hardware checks do not care about).
    pub fn preview(&self, cr0: u64, cr4: u64, efer: u64) -> Result<HwControl, CrError> {
        if cr0 & HIGH != 0 || cr4 & HIGH != 0 || cr4 & CR4_REFUSED != 0 {
            return Err(CrError::GeneralProtection);
        }
        let long = cr0 & (CR0_PG | CR0_PE) == CR0_PG | CR0_PE
            && cr4 & CR4_PAE != 0
            && efer & (EFER_LME | EFER_LMA) == EFER_LME | EFER_LMA;
        if !long {
            return Err(CrError::Unsupported);
        }
        Ok(HwControl {
            cr0: cr0 | CR0_WP,
            cr3: self.vtlb.root().unwrap_or(0),
            cr4,
        })
    }

    /// The root the hardware must run this Vm's vCPUs on: none until the VMM loaded a
    /// long-mode control state (`load`), the vTLB's current root after.
    pub fn hardware_root(&self) -> Option<u64> {
        if self.cr0 & CR0_PG == 0 {
            return None;
        }
        self.vtlb.root()
    }

    /// The guest's view of control register `cr` (MOV from CRn).
    pub fn read_cr(&self, cr: u8) -> Option<u64> {
        match cr {
            0 => Some(self.cr0),
            3 => Some(self.cr3),
            4 => Some(self.cr4),
            _ => None,
        }
    }

    /// MOV to CRn by the guest; returns the new hardware values and whether the hardware TLB
    /// must be flushed.
    pub fn write_cr(&mut self, cr: u8, value: u64) -> Result<(HwControl, bool), CrError> {
        let flush = match cr {
            0 => {
                if value & HIGH != 0 {
                    return Err(CrError::GeneralProtection);
                }
                if value & (CR0_PG | CR0_PE) != CR0_PG | CR0_PE {
                    return Err(CrError::Unsupported);
                }
                let changed = (self.cr0 ^ value) & (CR0_WP | CR0_PG) != 0;
                self.cr0 = value;
                changed
            }
            3 => {
                // Without PCIDs bit 63 is reserved, as are bits above the physical width.
                let width = u32::from(self.features.maxphyaddr).clamp(32, 52);
                if value >> width != 0 {
                    return Err(CrError::GeneralProtection);
                }
                self.cr3 = value;
                self.stats.cr3_loads += 1;
                let s = self.vtlb.switch(&mut ShadowFrames, key(value), true);
                // The new tree is empty, but the hardware TLB may hold the old space's entries.
                let _ = s;
                true
            }
            4 => {
                if value & HIGH != 0 || value & CR4_REFUSED != 0 {
                    return Err(CrError::GeneralProtection);
                }
                if value & CR4_PAE == 0 {
                    // Clearing PAE in long mode is #GP.
                    return Err(CrError::GeneralProtection);
                }
                let changed = (self.cr4 ^ value) & CR4_FLUSHING != 0;
                self.cr4 = value;
                changed
            }
            _ => return Err(CrError::Unsupported),
        };
        if flush && cr != 3 {
            self.flush();
        }
        Ok((self.hardware(), flush))
    }

    /// INVLPG of `la` by the guest. True when more than `la`'s page went (every piece of a
    /// large guest page): the hardware TLB must then forget all of the guest's translations.
    pub fn invlpg(&mut self, la: u64) -> bool {
        self.stats.invlpgs += 1;
        self.vtlb.invalidate(&mut ShadowFrames, la) != Invalidated::Page
    }

    /// A DMP hypercall (`abi::vm::hypercall`) with the guest's RAX, RBX, RCX, RDX.
    pub fn hypercall(&mut self, nested: &NestedTables, regs: [u64; 4]) -> HypercallResult {
        use virt::hypercall::{apply, decode, queue_entry, Invalidate, Request, Update};
        self.stats.hypercalls += 1;
        let ram = GuestRam { nested };
        let mut result = HypercallResult {
            status: abi::vm::hypercall::OK,
            applied: 0,
            flush: false,
        };
        let update = |s: &mut Shadow, u: Update| -> Result<(), u64> {
            match apply(&ram, s.cr3, u).map_err(|r| r.0)? {
                Invalidate::Page(la) => s.vtlb.invlpg(&mut ShadowFrames, la),
                Invalidate::All => s.flush(),
            }
            s.stats.updates += 1;
            Ok(())
        };
        let outcome = match decode(regs[0], regs[1], regs[2], regs[3]) {
            Err(r) => Err(r.0),
            Ok(Request::Invlpg { la }) => {
                // The whole hardware TLB tag is flushed below either way.
                let _ = self.invlpg(la);
                // The guest has just changed this mapping and is about to use it: map it again
                // now if its tables allow a user read (what the next access would fault in).
                const USER: u32 = 1 << 2;
                self.prefill_page(nested, la, USER, 0);
                Ok(())
            }
            Ok(Request::Update(u)) => update(self, u).map(|()| result.applied = 1),
            Ok(Request::Queue { gpa, count }) => (0..count).try_for_each(|i| {
                let u = queue_entry(&ram, gpa, i).map_err(|r| r.0)?;
                update(self, u)?;
                result.applied += 1;
                Ok(())
            }),
        };
        if let Err(code) = outcome {
            result.status = code;
        }
        result.flush = result.applied > 0 || regs[0] == abi::vm::hypercall::INVLPG;
        result
    }

    /// Drops every shadow translation and starts the current address space's tree afresh
    /// (guest memory was unmapped, or a paging control changed).
    pub fn flush(&mut self) {
        self.vtlb.flush_all(&mut ShadowFrames);
        self.vtlb.switch(&mut ShadowFrames, key(self.cr3), true);
        self.stats.flushes += 1;
    }

    /// A hardware #PF at `la` with error code `error`, taken at CPL 3 when `user`.
    pub fn page_fault(
        &mut self,
        nested: &NestedTables,
        la: u64,
        error: u32,
        user: bool,
        rflags: u64,
    ) -> FaultOutcome {
        let Some(paging) = self.paging(rflags) else {
            return FaultOutcome::InjectGeneralProtection;
        };
        if let Some(w) = self.window.filter(|w| w.contains(la)) {
            return self.window_fault(nested, w, la, error, user);
        }
        if let Some(v) = self.view.filter(|v| v.contains(la)) {
            return self.view_fault(nested, v, la, error, user);
        }
        let ram = GuestRam { nested };
        let resolution = if self.regions {
            classify_region(&ram, &ram, &paging, la, error, user)
        } else {
            RegionResolution::Single(classify(&ram, &ram, &paging, la, error, user))
        };
        let resolution = match resolution {
            RegionResolution::Region(r) => {
                self.stats.fills += 1;
                // A global guest page (G with CR4.PGE) survives CR3 loads, as in a TLB.
                let piece = ((la >> 12) & 0x1ff) as usize;
                let global = self.cr4 & CR4_PGE != 0
                    && r.ptes[piece] & virt::shadow::bits::GLOBAL != 0
                    && r.size == virt::shadow::PageSize::Size2M;
                let installed = if global {
                    self.vtlb
                        .install_global_region(&mut ShadowFrames, r.la, &r.ptes)
                } else {
                    self.vtlb
                        .install_region(&mut ShadowFrames, r.la, &r.ptes, r.size)
                };
                return self.installed(installed, la & !0xfff, true);
            }
            RegionResolution::Single(resolution) => resolution,
        };
        match resolution {
            Resolution::Fill(fill) => {
                self.stats.fills += 1;
                let before = self.vtlb.lookup(&ShadowFrames, fill.la);
                let installed =
                    self.vtlb
                        .install_piece(&mut ShadowFrames, fill.la, fill.pte, fill.size);
                let replaced = before & virt::shadow::bits::PRESENT != 0;
                self.installed(installed, fill.la, replaced)
            }
            Resolution::Inject(f) => {
                self.stats.guest_faults += 1;
                FaultOutcome::InjectPageFault {
                    address: f.addr,
                    error: f.code.0,
                }
            }
            Resolution::MemoryFault { gpa, write } => FaultOutcome::MemoryFault { gpa, write },
            Resolution::NonCanonical => FaultOutcome::InjectGeneralProtection,
            Resolution::Retry => FaultOutcome::Resume {
                flush: false,
                page: None,
            },
        }
    }

    /// The outcome of installing leaves for page `la`; `replaced`: the hardware TLB may hold an
    /// older translation of it.
    fn installed(&mut self, installed: Install, la: u64, replaced: bool) -> FaultOutcome {
        let flush = match installed {
            Install::Installed => false,
            Install::InstalledAfterRecycle => true,
            Install::NoRoot => {
                self.vtlb.switch(&mut ShadowFrames, key(self.cr3), true);
                true
            }
        };
        FaultOutcome::Resume {
            flush,
            page: replaced.then_some(la),
        }
    }

    /// A #PF inside the DMP window: supervisor reads and fetches get the window's page; writes
    /// and user accesses get the protection fault a read-only supervisor page gives.
    fn window_fault(
        &mut self,
        nested: &NestedTables,
        w: Window,
        la: u64,
        error: u32,
        user: bool,
    ) -> FaultOutcome {
        use virt::shadow::bits::{ACCESSED, DIRTY, PRESENT};
        const WRITE: u32 = 1 << 1;
        const FETCH: u32 = 1 << 4;
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
        let Some((hpa, access)) = nested.translate(&DirectTables, gpa) else {
            return FaultOutcome::MemoryFault { gpa, write: false };
        };
        if error & WRITE != 0 && !access.write {
            // A scratch page on read-only backing: the guest's write is refused like any
            // write to a read-only supervisor page.
            return self.protection_fault(la, error);
        }
        self.stats.fills += 1;
        let rights = window_rights(w, la, self.efer, access.write);
        let pte = (hpa & !0xfff) | PRESENT | ACCESSED | DIRTY | rights;
        let flush = !matches!(
            self.vtlb.install(&mut ShadowFrames, la & !0xfff, pte),
            Install::Installed
        );
        FaultOutcome::Resume { flush, page: None }
    }

    /// The protection fault a present page the access may not make gives (window and view).
    fn protection_fault(&mut self, la: u64, error: u32) -> FaultOutcome {
        self.stats.guest_faults += 1;
        FaultOutcome::InjectPageFault {
            address: la,
            error: (error & !virt::shadow::walk::ErrorCode::RESERVED) | 1,
        }
    }

    /// A #PF inside the DMP view: supervisor reads get the guest-physical page (read-only, NX);
    /// anything else gets the protection fault such a page gives.
    fn view_fault(
        &mut self,
        nested: &NestedTables,
        v: View,
        la: u64,
        error: u32,
        user: bool,
    ) -> FaultOutcome {
        use virt::shadow::bits::{ACCESSED, DIRTY, NO_EXECUTE, PRESENT};
        const WRITE: u32 = 1 << 1;
        const FETCH: u32 = 1 << 4;
        if error & (WRITE | FETCH) != 0 || user {
            return self.protection_fault(la, error);
        }
        let gpa = (la - v.gla) & !0xfff;
        if physical_to_host(nested, gpa).is_none() {
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
        nested.translate_region(&DirectTables, region, |i, hpa, _| {
            if region + (i as u64) * 4096 < v.size {
                ptes[i] = (hpa & !0xfff) | PRESENT | ACCESSED | DIRTY | nx;
            }
        });
        // The view is the same in every address space: global, kept across CR3 loads.
        let installed = self
            .vtlb
            .install_global_region(&mut ShadowFrames, la & !0x1f_ffff, &ptes);
        self.installed(installed, la & !0xfff, false)
    }

    /// Maps, with the access it will make, a guest page that event delivery or a DMP stub
    /// touches (see [`Shadow::prefill_critical`]); quietly does nothing when the guest's tables
    /// do not allow it: the fault then comes as it would on hardware.
    fn prefill_page(&mut self, nested: &NestedTables, la: u64, error: u32, rflags: u64) {
        if self.vtlb.lookup(&ShadowFrames, la & !0xfff) & virt::shadow::bits::PRESENT == 0 {
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
        const WRITE: u32 = 1 << 1;
        const USER: u32 = 1 << 2;
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
            let la = v.gla + (self.cr3 & virt::shadow::bits::ADDR);
            if v.contains(la)
                && self.vtlb.lookup(&ShadowFrames, la & !0xfff) & virt::shadow::bits::PRESENT == 0
            {
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
        use virt::shadow::bits::{ACCESSED, DIRTY, PRESENT};
        let Some(w) = self.window else { return };
        for page in 0..w.pages {
            let Some((hpa, access)) = nested.translate(&DirectTables, w.gpa + page * 4096) else {
                continue;
            };
            let la = w.gla + page * 4096;
            let rights = window_rights(w, la, self.efer, access.write);
            let pte = (hpa & !0xfff) | PRESENT | ACCESSED | DIRTY | rights;
            self.vtlb.install(&mut ShadowFrames, la, pte);
        }
    }

    /// Writes the guest's current CR3 into the first word of the DMP window (what patched
    /// `mov reg, cr3` sites read instead of exiting).
    pub fn publish(&self, nested: &NestedTables) {
        use abi::vm::{
            WINDOW_CR3, WINDOW_IDTR_BASE, WINDOW_IDTR_LIMIT, WINDOW_RESERVED_MASK,
            WINDOW_VIEW_BASE, WINDOW_VIEW_SIZE,
        };
        let Some(hpa) = self
            .window
            .and_then(|w| physical_to_host_writable(nested, w.gpa))
        else {
            return;
        };
        let width = u32::from(self.features.maxphyaddr).clamp(32, 52);
        let mut reserved = virt::shadow::bits::ADDR & !((1u64 << width) - 1);
        if self.efer & EFER_NXE == 0 {
            reserved |= virt::shadow::bits::NO_EXECUTE;
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
            if let Some(old) = direct::read_shared(at) {
                let _ = direct::compare_exchange(at, old, value);
            }
        }
    }

    /// Reads guest-virtual memory for instruction decoding: up to `out.len()` bytes at `la`
    /// through the guest's tables (no A/D updates); returns how many were read.
    pub fn read_virtual(
        &self,
        nested: &NestedTables,
        la: u64,
        rflags: u64,
        out: &mut [u8],
    ) -> usize {
        let Some(paging) = self.paging(rflags) else {
            return 0;
        };
        let ram = GuestRam { nested };
        let access = walk::Access::supervisor(virt::shadow::AccessKind::Execute);
        for (i, byte) in out.iter_mut().enumerate() {
            let at = la.wrapping_add(i as u64);
            let Ok(t) = walk::translate(&ram, &paging, at, access) else {
                return i;
            };
            let Some((hpa, _)) = nested.translate(&DirectTables, t.gpa) else {
                return i;
            };
            let Some(word) = direct::read_shared(hpa & !7) else {
                return i;
            };
            *byte = (word >> ((hpa & 7) * 8)) as u8;
        }
        out.len()
    }
}

/// Guest-linear `la` to guest-physical through the guest's own long-mode tables (controls from
/// its registers), without A/D updates or rights checks; None when nothing maps it.
pub fn linear_to_physical(
    nested: &NestedTables,
    regs: (u64, u64, u64, u64),
    la: u64,
) -> Option<u64> {
    let (cr0, cr3, cr4, efer) = regs;
    let paging = Paging::long_mode(cr0, cr3, cr4, efer, 0, host_features())?;
    let ram = GuestRam { nested };
    let access = walk::Access::implicit(virt::shadow::AccessKind::Read);
    walk::translate(&ram, &paging, la, access)
        .ok()
        .map(|t| t.gpa)
}

/// The host-physical address of guest-physical `gpa`, if guest memory backs it.
pub fn physical_to_host(nested: &NestedTables, gpa: u64) -> Option<u64> {
    nested.translate(&DirectTables, gpa).map(|(hpa, _)| hpa)
}

/// The host-physical address of guest-physical `gpa` for a kernel write: only where the
/// mapping was made with WRITE (the kernel never writes through a read-only capability).
pub fn physical_to_host_writable(nested: &NestedTables, gpa: u64) -> Option<u64> {
    nested
        .translate(&DirectTables, gpa)
        .and_then(|(hpa, access)| access.write.then_some(hpa))
}

/// The rights of window page `la` beyond present-supervisor-read: scratch pages are writable
/// and (with EFER.NXE) not executable.
/// Scratch pages on read-only backing stay read-only.
fn window_rights(w: Window, la: u64, efer: u64, backing_writable: bool) -> u64 {
    use virt::shadow::bits::{NO_EXECUTE, WRITABLE};
    if !w.writable(la) || !backing_writable {
        return 0;
    }
    WRITABLE | if efer & EFER_NXE != 0 { NO_EXECUTE } else { 0 }
}

fn key(cr3: u64) -> Key {
    Key::new(cr3, false)
}

/// The host's physical-address width and 1 GiB-page support (what the guest's CPUID shows).
fn host_features() -> Features {
    let id = x86::cpuid::CpuId::new();
    let maxphyaddr = id
        .get_processor_capacity_feature_info()
        .map_or(36, |c| c.physical_address_bits());
    let gb_pages = id
        .get_extended_processor_and_feature_identifiers()
        .is_some_and(|f| f.has_1gib_pages());
    Features {
        maxphyaddr,
        gb_pages,
    }
}

/// Reads page-table frames through the direct map (lookups only: it never allocates).
struct DirectTables;

impl TableMemory for DirectTables {
    fn alloc_table(&mut self) -> Option<u64> {
        None
    }

    fn read(&self, table: u64, index: usize) -> u64 {
        direct::read_word(table, index)
    }

    fn write(&mut self, _table: u64, _index: usize, _value: u64) {}
}

/// The shadow tables: kernel frames from the pool, through the direct map.
struct ShadowFrames;

impl ShadowMemory for ShadowFrames {
    fn read(&self, table: u64, index: usize) -> u64 {
        direct::read_word(table, index)
    }

    fn write(&mut self, table: u64, index: usize, value: u64) {
        direct::write_word(table, index, value)
    }

    fn zero(&mut self, table: u64) {
        direct::zero_frame(table)
    }
}

/// The guest's RAM as the Vm maps it: the walker's reads and A/D updates, and the backing of
/// each guest page.
struct GuestRam<'a> {
    nested: &'a NestedTables,
}

impl GuestPhys for GuestRam<'_> {
    fn read(&self, gpa: u64) -> Option<u64> {
        let (hpa, _) = self.nested.translate(&DirectTables, gpa)?;
        direct::read_shared(hpa)
    }

    fn compare_exchange(&self, gpa: u64, current: u64, new: u64) -> Result<(), CasError> {
        let (hpa, access) = self
            .nested
            .translate(&DirectTables, gpa)
            .ok_or(CasError::NotRam)?;
        if !access.write {
            return Err(CasError::NotRam);
        }
        match direct::compare_exchange(hpa, current, new) {
            Some(Ok(_)) => Ok(()),
            Some(Err(_)) => Err(CasError::Changed),
            None => Err(CasError::NotRam),
        }
    }
}

impl HostMemory for GuestRam<'_> {
    fn backing(&self, gpa: u64) -> Option<Backing> {
        let (hpa, access) = self.nested.translate(&DirectTables, gpa)?;
        Some(Backing {
            hpa: hpa & !0xfff,
            writable: access.write,
            executable: access.execute,
        })
    }

    fn backing_region(&self, gpa_2m: u64, out: &mut [Option<Backing>; 512]) {
        *out = [None; 512];
        self.nested
            .translate_region(&DirectTables, gpa_2m, |i, hpa, access| {
                out[i] = Some(Backing {
                    hpa,
                    writable: access.write,
                    executable: access.execute,
                });
            });
    }
}
