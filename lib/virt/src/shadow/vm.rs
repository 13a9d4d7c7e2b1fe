//! The vTLB of a shadow-mode Vm: its shadow tables ([`Vtlb`]), the guest's own control
//! registers, and what the kernel's intercepts ask of them (a #PF, MOV to or from CR0/CR3/CR4,
//! INVLPG, a DMP hypercall, a VMM setting the control registers). The DMP window and view, and
//! the prefills that keep event delivery from faulting, are in [`dmp`].
//!
//! The guest runs on shadow tables filled here: the guest's own CR0, CR3 and CR4 are kept here
//! (what the guest reads and what its walks use), the hardware runs with the shadow root as
//! CR3, CR0.WP forced on, and #PF, MOV CR0/CR3/CR4 and INVLPG intercepted. Every shadow entry is
//! written after walking the guest's own tables and looking up the Vm's memory, so a guest can
//! never reach a frame that is not its own. 4-level long-mode paging is shadowed on 4-level
//! tables, 32-bit and PAE paging on PAE-format ones (the hardware in PAE paging without long
//! mode, CR3 the PDPT under the tree's first PML4 entry); while the guest's paging is off it
//! runs on the Vm's nested tables ([`GuestMode`]).
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
    /// The guest's EFER as the hardware must hold it (LMA follows CR0.PG and EFER.LME).
    pub efer: u64,
    /// The guest runs on the Vm's nested tables (its paging is off), not on the vTLB.
    pub nested: bool,
}

/// The guest's paging mode, which decides what the hardware runs it on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMode {
    /// CR0.PG = 0: real mode, or protected mode without paging. Guest-linear addresses are
    /// guest-physical, so the hardware runs the guest on the Vm's nested tables (NPT/EPT),
    /// exactly as a nested-mode Vm; the vTLB waits until the guest turns paging on.
    Unpaged,
    /// 4-level long-mode paging: on the vTLB's 4-level shadow tables.
    Long,
    /// PAE paging (CR0.PG and CR4.PAE without long mode): on the vTLB's tables in PAE format,
    /// the hardware in PAE paging without long mode (as KVM's shadow MMU runs such guests).
    Pae,
    /// 32-bit paging (CR0.PG without CR4.PAE): on the vTLB's tables in PAE format too (the
    /// hardware's CR4.PAE is forced on; the guest reads its own CR4).
    Bits32,
}

impl GuestMode {
    /// 32-bit or PAE paging: the hardware runs PAE paging without long mode.
    pub fn legacy(self) -> bool {
        matches!(self, GuestMode::Pae | GuestMode::Bits32)
    }
}

/// The mode of the control state (`cr0`, `cr4`, `efer`), or why the vTLB refuses it.
pub fn guest_mode(cr0: u64, cr4: u64, efer: u64) -> Result<GuestMode, CrError> {
    if cr0 & HIGH != 0
        || cr0 & (CR0_NW | CR0_CD) == CR0_NW
        || cr4 & HIGH != 0
        || cr4 & CR4_REFUSED != 0
    {
        return Err(CrError::GeneralProtection);
    }
    let lma = efer & EFER_LMA != 0;
    if cr0 & CR0_PG == 0 {
        // Long mode is active only with paging on.
        return if lma {
            Err(CrError::GeneralProtection)
        } else {
            Ok(GuestMode::Unpaged)
        };
    }
    if cr0 & CR0_PE == 0 {
        return Err(CrError::GeneralProtection);
    }
    match (efer & (EFER_LME | EFER_LMA), cr4 & CR4_PAE != 0) {
        (e, true) if e == EFER_LME | EFER_LMA => Ok(GuestMode::Long),
        (0, true) => Ok(GuestMode::Pae),
        (0, false) => Ok(GuestMode::Bits32),
        // Long mode without PAE, or LME and LMA disagreeing with paging on: no CPU state.
        _ => Err(CrError::Unsupported),
    }
}

/// CR0 after `LMSW source` with CR0 = `cr0`: bits 3:0 (PE, MP, EM, TS) from the source's low
/// bits, except that LMSW sets PE but never clears it.
pub fn lmsw(cr0: u64, source: u64) -> u64 {
    (cr0 & !0xe) | (source & 0xf)
}

/// Register `old` after `SMSW` of `size` bytes (2, 4 or 8) with CR0 = `cr0`: a 16-bit
/// destination keeps its upper bits, wider ones take CR0 zero-extended (as a 32-bit write
/// does in 64-bit mode).
pub fn smsw(old: u64, cr0: u64, size: u8) -> u64 {
    match size {
        2 => (old & !0xffff) | (cr0 & 0xffff),
        4 => cr0 & 0xffff_ffff,
        _ => cr0,
    }
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
    /// The VMM has loaded a control state (`load`): until then there is nothing to run on.
    loaded: bool,
    /// PAE paging: the PDPTEs as the guest's CPU loaded them at the last CR3 load (or CR0/CR4
    /// change that entered PAE paging).
    pub pdptes: [u64; 4],
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
            loaded: false,
            pdptes: [0; 4],
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
        .or_else(|| {
            Paging::legacy(
                self.cr0,
                self.cr3,
                self.cr4,
                self.efer,
                rflags,
                self.features,
                self.pdptes,
            )
        })
    }

    /// The PDPTEs PAE paging with `cr3` loads from guest memory, or #GP (a reserved bit, or no
    /// guest RAM there, where a CPU would read all ones). Without `nested` (no guest memory to
    /// read) the vTLB cannot follow.
    fn load_pdptes(&self, nested: Option<&NestedTables>, cr3: u64) -> Result<[u64; 4], CrError> {
        let nested = nested.ok_or(CrError::Unsupported)?;
        let ram = GuestRam {
            nested,
            machine: &self.machine,
        };
        walk::legacy::load_pdptes(&ram, cr3, self.features).map_err(|_| CrError::GeneralProtection)
    }

    /// The PDPTEs of the state (`mode`, `cr3`), or the current ones outside PAE paging.
    fn pdptes_for(
        &self,
        nested: Option<&NestedTables>,
        mode: GuestMode,
        cr3: u64,
    ) -> Result<[u64; 4], CrError> {
        if mode == GuestMode::Pae {
            self.load_pdptes(nested, cr3)
        } else {
            Ok(self.pdptes)
        }
    }

    /// The guest's paging mode now (its control registers were checked when set).
    pub fn mode(&self) -> GuestMode {
        guest_mode(self.cr0, self.cr4, self.efer).unwrap_or(GuestMode::Unpaged)
    }

    fn hardware(&self) -> HwControl {
        self.hardware_for(self.mode(), self.cr0, self.cr3, self.cr4, self.efer)
    }

    fn hardware_for(&self, mode: GuestMode, cr0: u64, cr3: u64, cr4: u64, efer: u64) -> HwControl {
        match mode {
            // Paging off: the hardware holds the guest's own values over nested paging.
            GuestMode::Unpaged => HwControl {
                cr0,
                cr3,
                cr4,
                efer,
                nested: true,
            },
            GuestMode::Long => HwControl {
                cr0: cr0 | CR0_WP,
                cr3: self.vtlb.root().unwrap_or(0),
                cr4,
                efer,
                nested: false,
            },
            // PAE paging without long mode on the PDPT of the current tree.
            GuestMode::Pae | GuestMode::Bits32 => HwControl {
                cr0: cr0 | CR0_WP,
                cr3: self.vtlb.legacy_pdpt(&Frames(&self.machine)).unwrap_or(0),
                cr4: cr4 | CR4_PAE,
                efer,
                nested: false,
            },
        }
    }

    /// Before an entry in 32-bit or PAE paging: completes the current tree's PAE-format top
    /// (`Vtlb::legacy_root`) and returns the hardware values (their CR3 the PDPT) and whether
    /// frames were recycled (flush the hardware TLB). None in other modes.
    pub fn legacy_entry(&mut self) -> Option<(HwControl, bool)> {
        if !self.loaded || !self.mode().legacy() {
            return None;
        }
        let frames = &mut Frames(&self.machine);
        let recycled = match self.vtlb.legacy_root(frames) {
            Some((_, recycled)) => recycled,
            None => {
                // No current tree (a recycle took it): start one.
                self.vtlb.switch(frames, key(self.cr3), true);
                let _ = self.vtlb.legacy_root(frames);
                true
            }
        };
        Some((self.hardware(), recycled))
    }

    /// The VMM set the guest's control registers (start-up, or a reply with the control
    /// group): checks them, starts from empty shadow tables and returns the hardware values.
    pub fn load(&mut self, cr0: u64, cr3: u64, cr4: u64, efer: u64) -> Result<HwControl, CrError> {
        self.load_in(None, cr0, cr3, cr4, efer)
    }

    /// [`Shadow::load`] with the guest's memory (`nested`), which PAE paging needs: its PDPTEs
    /// are loaded (a reserved bit refuses the state).
    pub fn load_in(
        &mut self,
        nested: Option<&NestedTables>,
        cr0: u64,
        cr3: u64,
        cr4: u64,
        efer: u64,
    ) -> Result<HwControl, CrError> {
        let mode = self.checked_mode(cr0, cr4, efer)?;
        let pdptes = self.pdptes_for(nested, mode, cr3)?;
        self.cr0 = cr0;
        self.cr4 = cr4;
        self.efer = efer;
        self.cr3 = cr3;
        self.pdptes = pdptes;
        self.loaded = true;
        self.vtlb.set_legacy(mode.legacy());
        self.flush();
        if mode.legacy() {
            let _ = self.vtlb.legacy_root(&mut Frames(&self.machine));
        }
        Ok(self.hardware())
    }

    /// [`guest_mode`], and CR4 bits this CPU lacks are #GP as on the CPU (a VMM or guest that
    /// sets one would otherwise fail the hardware's entry checks).
    fn checked_mode(&self, cr0: u64, cr4: u64, efer: u64) -> Result<GuestMode, CrError> {
        if cr4 & !self.features.cr4 != 0 {
            return Err(CrError::GeneralProtection);
        }
        guest_mode(cr0, cr4, efer)
    }

    /// What [`Shadow::load`] would answer, changing nothing (the CR3 is the current root's;
    /// the load may pick another frame, which the hardware checks do not care about; with
    /// paging off it is the current guest CR3, which nothing uses).
    pub fn preview(&self, cr0: u64, cr4: u64, efer: u64) -> Result<HwControl, CrError> {
        let mode = self.checked_mode(cr0, cr4, efer)?;
        if mode == GuestMode::Pae {
            // PDPTEs to load, and no memory to load them from.
            return Err(CrError::Unsupported);
        }
        Ok(self.hardware_for(mode, cr0, self.cr3, cr4, efer))
    }

    /// [`Shadow::preview`] of [`Shadow::load_in`] with CR3 `cr3`.
    pub fn preview_in(
        &self,
        nested: Option<&NestedTables>,
        cr0: u64,
        cr3: u64,
        cr4: u64,
        efer: u64,
    ) -> Result<HwControl, CrError> {
        let mode = self.checked_mode(cr0, cr4, efer)?;
        self.pdptes_for(nested, mode, cr3)?;
        Ok(self.hardware_for(mode, cr0, self.cr3, cr4, efer))
    }

    /// What the hardware must run this Vm's vCPUs on (`virt::confine`), given the Vm's nested
    /// root: nothing until the VMM loaded a control state; the nested tables while the
    /// guest's paging is off; the vTLB's current root in long mode.
    pub fn confinement(&self, nested_root: u64) -> crate::confine::Expected {
        use crate::confine::Expected;
        if !self.loaded {
            return Expected::Shadow { root: None };
        }
        match self.mode() {
            GuestMode::Unpaged => Expected::ShadowUnpaged { root: nested_root },
            GuestMode::Long => Expected::Shadow {
                root: self.vtlb.root(),
            },
            GuestMode::Pae | GuestMode::Bits32 => Expected::ShadowLegacy {
                root: self.vtlb.legacy_pdpt(&Frames(&self.machine)),
            },
        }
    }

    /// The root the hardware must run this Vm's vCPUs on when the guest pages: none until the
    /// VMM loaded a control state with paging on (`load`), the vTLB's current root after.
    pub fn hardware_root(&self) -> Option<u64> {
        match self.mode() {
            _ if !self.loaded => None,
            GuestMode::Unpaged => None,
            GuestMode::Long => self.vtlb.root(),
            GuestMode::Pae | GuestMode::Bits32 => self.vtlb.legacy_pdpt(&Frames(&self.machine)),
        }
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
        self.write_cr_in(None, cr, value)
    }

    /// [`Shadow::write_cr`] with the guest's memory (`nested`), from which PAE paging loads
    /// its PDPTEs (at MOV CR3, and at MOV CR0/CR4 that enter PAE paging or change CR4.PGE,
    /// PSE or SMEP in it, as the CPU does).
    pub fn write_cr_in(
        &mut self,
        nested: Option<&NestedTables>,
        cr: u8,
        value: u64,
    ) -> Result<(HwControl, bool), CrError> {
        let before = self.mode();
        let flush = match cr {
            0 => {
                // Reserved bits, NW without CD and PG without PE are #GP, as on the CPU.
                if value & HIGH != 0
                    || value & (CR0_NW | CR0_CD) == CR0_NW
                    || value & (CR0_PG | CR0_PE) == CR0_PG
                {
                    return Err(CrError::GeneralProtection);
                }
                let paging = value & CR0_PG != 0;
                // Paging on with EFER.LME activates long mode, which needs PAE (else #GP).
                if paging && self.efer & EFER_LME != 0 && self.cr4 & CR4_PAE == 0 {
                    return Err(CrError::GeneralProtection);
                }
                let efer = if paging && self.efer & EFER_LME != 0 {
                    self.efer | EFER_LMA
                } else {
                    self.efer & !EFER_LMA
                };
                let mode = guest_mode(value, self.cr4, efer)?;
                let pdptes = if mode == GuestMode::Pae && self.cr0 & CR0_PG == 0 {
                    self.load_pdptes(nested, self.cr3)?
                } else {
                    self.pdptes
                };
                let changed = (self.cr0 ^ value) & (CR0_WP | CR0_PG) != 0;
                self.cr0 = value;
                self.efer = efer;
                self.pdptes = pdptes;
                changed
            }
            3 => {
                // Without PCIDs bit 63 is reserved, as are bits above the physical width.
                let width = u32::from(self.features.maxphyaddr).clamp(32, 52);
                if value >> width != 0 {
                    return Err(CrError::GeneralProtection);
                }
                if self.mode() == GuestMode::Pae {
                    self.pdptes = self.load_pdptes(nested, value)?;
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
                if value & CR4_PAE == 0 && self.efer & EFER_LMA != 0 {
                    // Clearing PAE in long mode is #GP.
                    return Err(CrError::GeneralProtection);
                }
                let mode = guest_mode(self.cr0, value, self.efer)?;
                let changed = (self.cr4 ^ value) & CR4_FLUSHING != 0;
                let pdptes = if mode == GuestMode::Pae && changed {
                    self.load_pdptes(nested, self.cr3)?
                } else {
                    self.pdptes
                };
                self.cr4 = value;
                self.pdptes = pdptes;
                changed
            }
            _ => return Err(CrError::Unsupported),
        };
        let mode = self.mode();
        if mode.legacy() != before.legacy() {
            // Another hardware format: no tree of the old one may stay.
            self.vtlb.set_legacy(mode.legacy());
            self.flush();
        } else if flush && cr != 3 {
            self.flush();
        }
        if mode.legacy() {
            let _ = self.vtlb.legacy_root(&mut Frames(&self.machine));
        }
        Ok((self.hardware(), flush))
    }

    /// INVLPG of `la` by the guest. True when more than `la`'s page went (every piece of a
    /// large guest page): the hardware TLB must then forget all of the guest's translations.
    pub fn invlpg(&mut self, la: u64) -> bool {
        self.stats.invlpgs += 1;
        let frames = &mut Frames(&self.machine);
        let mut more = self.vtlb.invalidate(frames, la) != Invalidated::Page;
        if self.mode() == GuestMode::Bits32 && self.cr4 & CR4_PSE != 0 {
            // A 4 MiB page is shadowed as two 2 MiB regions: drop the other half too.
            more |= self.vtlb.invalidate(frames, la ^ (1 << 21)) != Invalidated::Page;
        }
        more
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
        if self.mode() != GuestMode::Long {
            // The hypercalls name long-mode page-table entries and linear addresses.
            result.status = abi::vm::hypercall::BAD_REQUEST;
            return result;
        }
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
        if self.mode() == GuestMode::Unpaged {
            // Paging off: linear addresses (32 bits wide outside long mode) are physical.
            return self.read_physical(nested, |i| (la.wrapping_add(i as u64)) & 0xffff_ffff, out);
        }
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

impl<M: Machine, const N: usize, const R: usize> Shadow<M, N, R> {
    /// Reads `out.len()` bytes of guest-physical memory, byte `i` at `gpa(i)`; returns how
    /// many were read before memory ran out.
    fn read_physical(
        &self,
        nested: &NestedTables,
        gpa: impl Fn(usize) -> u64,
        out: &mut [u8],
    ) -> usize {
        for (i, byte) in out.iter_mut().enumerate() {
            let Some((hpa, _)) = nested.translate(&super::machine::Lookup(&self.machine), gpa(i))
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
