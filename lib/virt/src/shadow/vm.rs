//! The vTLB of a shadow-mode Vm: its shadow tables ([`Vtlb`]), the guest's own control
//! registers, and what the kernel's intercepts ask of them (a #PF, MOV to or from CR0/CR3/CR4,
//! INVLPG, a DMP hypercall, a VMM setting the control registers). The DMP window and view, and
//! the prefills that keep event delivery from faulting, are in [`dmp`].
//!
//! The guest runs on shadow tables filled here: the guest's own CR0, CR3 and CR4 are kept here
//! (what the guest reads and what its walks use), the hardware runs with the shadow root as
//! CR3, CR0.WP forced on, and #PF, MOV CR0/CR3/CR4 and INVLPG intercepted. Every shadow entry is
//! written after walking the guest's own tables and looking up the Vm's memory, so a guest can
//! never reach a frame that is not its own. Only 4-level long-mode guests are shadowed (a
//! guest that leaves long-mode paging is stopped with an `Other` exit to its VMM).
//!
//! One vCPU per Vm today, so the guest's control registers live in the Vm. The kernel supplies
//! frames and memory access through a [`Machine`].

use super::cache::Key;
use super::classify::{classify, classify_region, RegionResolution, Resolution};
use super::machine::{Frames, GuestRam, Machine};
use super::vtlb::{Install, Invalidated, Vtlb};
use super::walk::{self, Features, Paging};
use crate::nested::NestedTables;

mod dmp;

pub use dmp::{View, Window};

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
/// CR4 bits the architecture defines for a guest: VME..OSXMMEXCPT and UMIP (bits 0-11) and the
/// named ones; SMXE, KL, CET, PKS and the rest are reserved for it, as under KVM. An undefined
/// bit would reach the hardware CR4 (and, on a CPU that has the feature, switch on state the
/// kernel does not switch per guest).
const CR4_DEFINED: u64 = 0xfff
    | CR4_LA57
    | CR4_VMXE
    | CR4_FSGSBASE
    | CR4_PCIDE
    | CR4_OSXSAVE
    | CR4_SMEP
    | CR4_SMAP
    | CR4_PKE;
/// CR4 features the vTLB does not implement (and the VMM hides from CPUID), and every undefined
/// bit: setting one is #GP. So is a bit the CPU does not accept (`Features::cr4`). OSXSAVE is
/// the guest's where the CPU has it: the kernel switches XCR0 per vCPU.
const CR4_REFUSED: u64 = CR4_LA57 | CR4_VMXE | CR4_PCIDE | CR4_PKE | !CR4_DEFINED;
const CR4_FSGSBASE: u64 = 1 << 16;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
/// CR4 bits whose change makes every shadow translation stale.
const CR4_FLUSHING: u64 = CR4_PSE | CR4_PAE | CR4_PGE | CR4_SMEP | CR4_SMAP;
/// Bits 63:32 of CR0 and CR4 are reserved (a set one is #GP).
const HIGH: u64 = 0xffff_ffff_0000_0000;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// What the shadow paging of a Vm did, for the exit profile and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

/// The hardware control registers for the guest's ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwControl {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
}

/// A guest control-register write the vTLB refuses.
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

/// The vTLB of a Vm (`N` table frames, `R` cached roots) and its guest's own control registers.
pub struct Shadow<M: Machine, const N: usize, const R: usize> {
    vtlb: Vtlb<N, R>,
    machine: M,
    /// The pool's frames, given back to the machine when the Shadow goes.
    frames: [u64; N],
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

impl<M: Machine, const N: usize, const R: usize> Drop for Shadow<M, N, R> {
    fn drop(&mut self) {
        for &f in &self.frames {
            self.machine.free_frame(f);
        }
    }
}

impl<M: Machine, const N: usize, const R: usize> Shadow<M, N, R> {
    /// A vTLB with `N` fresh frames from `machine`; None when memory is short (the frames taken
    /// so far go back).
    pub fn new(machine: M) -> Option<Self> {
        let mut frames = [0u64; N];
        for i in 0..N {
            let Some(f) = machine.alloc_frame() else {
                for &f in &frames[..i] {
                    machine.free_frame(f);
                }
                return None;
            };
            frames[i] = f;
        }
        let Ok(vtlb) = Vtlb::new(&frames) else {
            for &f in &frames {
                machine.free_frame(f);
            }
            return None;
        };
        Some(Self {
            vtlb,
            features: machine.features(),
            machine,
            frames,
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

    /// The machine the vTLB runs on.
    pub fn machine(&self) -> &M {
        &self.machine
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
        if cr0 & HIGH != 0
            || cr0 & (CR0_NW | CR0_CD) == CR0_NW
            || cr4 & HIGH != 0
            || cr4 & (CR4_REFUSED | !self.features.cr4) != 0
        {
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
                // Reserved bits, NW without CD and PG without PE are #GP, as on the CPU.
                if value & HIGH != 0
                    || value & (CR0_NW | CR0_CD) == CR0_NW
                    || value & (CR0_PG | CR0_PE) == CR0_PG
                {
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
                // The new tree is empty, but the hardware TLB may hold the old space's entries.
                self.vtlb
                    .switch(&mut Frames(&self.machine), key(value), true);
                true
            }
            4 => {
                if value & HIGH != 0 || value & (CR4_REFUSED | !self.features.cr4) != 0 {
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
        self.vtlb.invalidate(&mut Frames(&self.machine), la) != Invalidated::Page
    }

    /// A DMP hypercall (`abi::vm::hypercall`) with the guest's RAX, RBX, RCX, RDX.
    pub fn hypercall(&mut self, nested: &NestedTables, regs: [u64; 4]) -> HypercallResult {
        use crate::hypercall::{apply, decode, queue_entry, Invalidate, Request, Update};
        self.stats.hypercalls += 1;
        let mut result = HypercallResult {
            status: abi::vm::hypercall::OK,
            applied: 0,
            flush: false,
        };
        let update = |s: &mut Self, u: Update| -> Result<(), u64> {
            let ram = GuestRam {
                nested,
                machine: &s.machine,
            };
            match apply(&ram, s.cr3, u).map_err(|r| r.0)? {
                Invalidate::Page(la) => s.vtlb.invlpg(&mut Frames(&s.machine), la),
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
                let ram = GuestRam {
                    nested,
                    machine: &self.machine,
                };
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
        self.vtlb.flush_all(&mut Frames(&self.machine));
        self.vtlb
            .switch(&mut Frames(&self.machine), key(self.cr3), true);
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
        let ram = GuestRam {
            nested,
            machine: &self.machine,
        };
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
                    && r.ptes[piece] & super::bits::GLOBAL != 0
                    && r.size == super::PageSize::Size2M;
                let frames = &mut Frames(&self.machine);
                let installed = if global {
                    self.vtlb.install_global_region(frames, r.la, &r.ptes)
                } else {
                    self.vtlb.install_region(frames, r.la, &r.ptes, r.size)
                };
                return self.installed(installed, la & !0xfff, true);
            }
            RegionResolution::Single(resolution) => resolution,
        };
        match resolution {
            Resolution::Fill(fill) => {
                self.stats.fills += 1;
                let frames = &mut Frames(&self.machine);
                let before = self.vtlb.lookup(&*frames, fill.la);
                let installed = self
                    .vtlb
                    .install_piece(frames, fill.la, fill.pte, fill.size);
                let replaced = before & super::bits::PRESENT != 0;
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
                self.vtlb
                    .switch(&mut Frames(&self.machine), key(self.cr3), true);
                true
            }
        };
        FaultOutcome::Resume {
            flush,
            page: replaced.then_some(la),
        }
    }

    /// The shadow leaf that maps `la` now (0 when none does), for tests and diagnostics.
    pub fn leaf(&self, la: u64) -> u64 {
        self.vtlb.lookup(&Frames(&self.machine), la & !0xfff)
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
        let ram = GuestRam {
            nested,
            machine: &self.machine,
        };
        let access = walk::Access::supervisor(super::AccessKind::Execute);
        for (i, byte) in out.iter_mut().enumerate() {
            let at = la.wrapping_add(i as u64);
            let Ok(t) = walk::translate(&ram, &paging, at, access) else {
                return i;
            };
            let Some((hpa, _)) = nested.translate(&super::machine::Lookup(&self.machine), t.gpa)
            else {
                return i;
            };
            let Some(word) = self.machine.read_shared(hpa & !7) else {
                return i;
            };
            *byte = (word >> ((hpa & 7) * 8)) as u8;
        }
        out.len()
    }
}

fn key(cr3: u64) -> Key {
    Key::new(cr3, false)
}

#[cfg(test)]
mod tests;
