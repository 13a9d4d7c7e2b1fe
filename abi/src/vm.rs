//! Hardware virtualization: the `Vm` and `vCPU` objects, VM exits as IPC, and the reply that
//! resumes a vCPU. The same contract serves both backends (AMD SVM and Intel VMX); the kernel
//! translates between this neutral form and the VMCB or VMCS.
//!
//! **Objects.** A `Vm` is a guest-physical address space (nested tables: NPT or EPT). A VMM maps
//! pages of its memory capabilities into it with [`crate::Syscall::VmMap`]. A `vCPU` belongs to one
//! Vm and is scheduled like a thread. Both are created with a protection-domain capability
//! (CONTROL) whose quota pays for them.
//!
//! **Exits as IPC.** When a vCPU exits for a reason the kernel does not handle itself, the kernel
//! calls the exit portal for that reason: the capability at selector `exit_base + reason` in the
//! space of the domain that created the vCPU (`exit_base` is given at creation). The handler
//! receives a message with label [`EXIT_LABEL`] whose words follow [`word`]: the transfer mask,
//! the reason, two qualification words, then the register groups that the mask names (the mask is
//! set per reason with [`crate::Syscall::VcpuControl`]; [`Exit::Startup`] always carries every
//! group). A group the mask leaves out is not written: its words hold stale data.
//!
//! **Reply.** The handler's reply (any label) names in word [`word::MASK`] the groups it writes
//! back, which the kernel validates before it applies any of them; a reply the kernel refuses
//! returns `BadArgument` from `Reply`/`ReplyWait` and leaves the vCPU waiting for a better reply
//! (the handler still serves it). Word [`word::INJECT`] (with [`mtd::INJECT`]) carries an event
//! to inject. Bit [`mtd::STOP`] in the reply's mask stops the vCPU for good instead of resuming it.
//!
//! Instruction lengths: word [`word::INSTRUCTION_LEN`] is the length of the exiting instruction
//! where the hardware or the kernel knows it (CPUID, RDMSR, WRMSR, HLT, VMCALL/VMMCALL, port I/O),
//! otherwise 0; a handler that emulates the instruction advances RIP itself.

/// Message label of exit messages (the kernel's; user calls with it are refused).
pub const EXIT_LABEL: u64 = 0xe817;

/// Architecture-neutral exit reasons; the value is the offset of the exit portal from the
/// vCPU's `exit_base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Exit {
    /// The vCPU's first run: the reply sets its initial state.
    Startup = 0,
    /// The VMM recalled the vCPU ([`VcpuOp::Recall`]).
    Recall = 1,
    /// CPUID: leaf in RAX, subleaf in RCX.
    Cpuid = 2,
    /// Port I/O: qualification 0 is [`IoQual`]; for `out`, the value is in RAX.
    Io = 3,
    /// RDMSR: index in RCX.
    Rdmsr = 4,
    /// WRMSR: index in RCX, value in EDX:EAX.
    Wrmsr = 5,
    /// HLT.
    Hlt = 6,
    /// VMCALL / VMMCALL.
    Hypercall = 7,
    /// An access to guest-physical memory the Vm does not map (or maps without that access):
    /// qualification 0 = guest-physical address, 1 = [`access`] bits.
    MemoryFault = 8,
    /// Triple fault: the guest is beyond saving (real hardware would reset).
    Shutdown = 9,
    /// An intercepted exception: qualification 0 = vector | error code << 32, 1 = CR2 for #PF.
    Exception = 10,
    /// The guest can now take an interrupt (requested with [`mtd::INJECT`] + [`inject::WINDOW`]).
    InterruptWindow = 11,
    /// The hardware refused to enter the guest: qualification 0 = [`EntryError`] code,
    /// 1 = the backend's raw detail.
    EntryFailure = 12,
    /// XSETBV, MOV to/from debug registers, INVD, RDTSCP, nested-mode MOV to intercepted
    /// control registers, and other instructions the kernel intercepts for isolation:
    /// qualification 0 = an [`other`] kind, 1 = the backend's raw exit code or what the kind
    /// says.
    Other = 13,
    /// Shadow mode only, handled by the kernel's vTLB and never delivered: a guest page fault
    /// (a shadow fill, or the guest's own fault reflected). Counted in exit profiles.
    PageFault = 14,
    /// Shadow mode only, handled by the kernel: MOV to or from CR0, CR3 or CR4, CLTS.
    ControlRegister = 15,
    /// Shadow mode only, handled by the kernel: INVLPG.
    Invlpg = 16,
    /// Not a guest event: the kernel sends the Vm's exit profile every [`PROFILE_PERIOD`] exits
    /// (or [`PROFILE_TSC_PERIOD`] TSC ticks with at least one exit),
    /// before the vCPU runs again, if a portal sits at `exit_base + 17` (the VMM's own, or one
    /// it obtained from a profile consumer such as the DMP service). Words: `MASK` = 0,
    /// `REASON`, then from [`PROFILE_WORDS`] on an `abi::profile::ProfileBatch` packed with
    /// `abi::profile::pack_words` (cumulative counts, the [`PROFILE_SITES`] hottest sites).
    /// Reply: mask 0.
    Profile = 17,
}

/// Number of exit reasons (portals per vCPU).
pub const EXIT_COUNT: u64 = 18;

/// The DMP hypercall interface of shadow-mode guests whose VMM enabled it
/// ([`VcpuOp::Hypercalls`]): what patched guest code calls (VMMCALL or VMCALL) instead of
/// exiting once per page-table change. RAX = the number, RBX/RCX/RDX its arguments; on return
/// RAX = a result code and RBX = how many queue entries were applied. Other registers are
/// preserved. Every request is checked against the guest's own tables and memory: a guest can
/// only ever change its own memory, and the kernel then drops the shadow translations the change
/// could affect. Without the enable, VMMCALL/VMCALL are ordinary exits to the VMM.
pub mod hypercall {
    /// RBX = guest-linear address: INVLPG semantics; then, when the guest's tables allow a
    /// user read there, the kernel maps the page again at once (the guest has just changed the
    /// mapping and is about to use it), saving the fault that would follow.
    pub const INVLPG: u64 = 1;
    /// RBX = guest-linear address the entry maps, RCX = guest-physical address of the
    /// paging-structure entry (8-aligned), RDX = the new value: the kernel writes it and drops
    /// the affected shadow translations (all of them when the entry is not on RBX's walk).
    pub const PTE_WRITE: u64 = 2;
    /// RBX = guest-physical address of a queue of RCX (at most [`MAX_QUEUE`]) entries of three
    /// words, (linear address, entry address, value), each applied as [`PTE_WRITE`] in order;
    /// the first bad entry stops the batch (RBX says how many were applied).
    pub const QUEUE: u64 = 3;
    /// Most entries in one [`QUEUE`] call.
    pub const MAX_QUEUE: u64 = 256;
    /// RBX = guest-linear address (the CR2 of a #PF the guest's patched #PF gate took while the
    /// Vm forwards page faults, `VmDmp` [`super::dmp_op::FORWARD_FAULTS`]), RCX = the hardware
    /// error code. The kernel resolves it as it would an intercepted #PF: RAX = [`OK`] when it
    /// was a hidden (shadow-only) fault that is now filled (the stub returns with IRETQ), or
    /// [`GUEST_FAULT`] with RCX = the error code the guest's own tables give (the stub hands the
    /// fault to the guest's handler with that code).
    pub const FAULT: u64 = 4;

    /// Result codes (RAX).
    pub const OK: u64 = 0;
    /// Unknown number, or arguments out of range.
    pub const BAD_REQUEST: u64 = 1;
    /// An entry address or queue outside guest RAM, or not 8-aligned.
    pub const BAD_ADDRESS: u64 = 2;
    /// [`FAULT`]: the fault is the guest's own; RCX holds its error code.
    pub const GUEST_FAULT: u64 = 3;
    /// Numbers from here on are not the kernel's: the hypercall goes to the VMM as an
    /// `Exit::Hypercall` exit (DMP stubs of device accesses talk to the VMM this way).
    pub const VMM_FIRST: u64 = 0x100;
}

/// Byte offset in the DMP window (`VmWindow`) of the guest's current CR3, kept by the kernel.
pub const WINDOW_CR3: u64 = 0;
/// Byte offsets of the guest's IDTR base and limit, kept by the kernel (refreshed on every CR3
/// load and `VmDmp` call): where the DMP service finds the #PF gate.
pub const WINDOW_IDTR_BASE: u64 = 8;
pub const WINDOW_IDTR_LIMIT: u64 = 16;
/// Byte offset of the reserved-bit mask of the guest's paging entries (bits MAXPHYADDR..=51,
/// and bit 63 while EFER.NXE = 0), kept by the kernel: a stub walking the guest's tables sends
/// any entry with one of these bits to the kernel.
pub const WINDOW_RESERVED_MASK: u64 = 24;
/// Byte offsets of the guest-linear base and the size of the guest-physical view (`VmDmp`
/// [`dmp_op::VIEW`]), 0 when there is none.
pub const WINDOW_VIEW_BASE: u64 = 32;
pub const WINDOW_VIEW_SIZE: u64 = 40;

/// `VmDmp` operations (syscall 26, on a Vm capability with PATCH).
pub mod dmp_op {
    /// arg = guest-linear base (2 MiB-aligned, canonical, upper half, not overlapping the
    /// window) of a read-only, supervisor-only, non-executable view of all guest RAM (guest
    /// physical address `p` at `base + p`), filled by the kernel on demand like the window; 0
    /// removes it. Stubs walk the guest's own page tables through it.
    pub const VIEW: u64 = 1;
    /// arg = 1: stop intercepting #PF; the guest's IDT delivers every #PF and its patched gate
    /// sends hidden faults back as hypercall `FAULT`. arg = 0: intercept again. Needs a window
    /// and a view; the kernel keeps the window, the view's tables and the pages event delivery
    /// needs (stack, IDT, GDT, TSS) mapped after every CR3 load so that delivery never faults.
    pub const FORWARD_FAULTS: u64 = 2;
    /// arg = how many of the window's last pages the guest may also write (supervisor only,
    /// never executable): buffers that stubs fill and the VMM drains (e.g. UART output). The
    /// kernel never reads them. 0 makes the whole window read-only again.
    pub const SCRATCH: u64 = 3;
    /// arg = 1: a hidden fault on a 2 MiB or 1 GiB guest page fills the whole 2 MiB part
    /// holding the address at once (512 leaves) instead of one 4 KiB piece; 0: one piece.
    pub const REGION_FILLS: u64 = 4;
}
/// Most pages of a DMP window.
pub const WINDOW_MAX_PAGES: u64 = 512;

/// `VmPatch` flag (in the length argument): the address is guest-linear.
pub const PATCH_VIRTUAL: u64 = 1 << 63;

/// Exits between two [`Exit::Profile`] messages.
pub const PROFILE_PERIOD: u64 = 4_096;
/// TSC ticks after which a profile is due even with fewer exits (at least one): a guest whose
/// hot sites were patched away still gets its patches verified (about 10 ms on a 2 GHz TSC, 20
/// million instructions under QEMU `-icount` or on Bochs).
pub const PROFILE_TSC_PERIOD: u64 = 20_000_000;
/// First message word of the packed batch in an [`Exit::Profile`] message.
pub const PROFILE_WORDS: usize = 2;
/// Hot sites an [`Exit::Profile`] message carries (what fits the message after its header).
pub const PROFILE_SITES: usize = ((crate::utcb::MSG_WORDS - PROFILE_WORDS - 1) * 8
    - crate::profile::max_encoded_len(0))
    / (1 + 3 * 10);

impl Exit {
    pub const fn from_u64(v: u64) -> Option<Exit> {
        Some(match v {
            0 => Exit::Startup,
            1 => Exit::Recall,
            2 => Exit::Cpuid,
            3 => Exit::Io,
            4 => Exit::Rdmsr,
            5 => Exit::Wrmsr,
            6 => Exit::Hlt,
            7 => Exit::Hypercall,
            8 => Exit::MemoryFault,
            9 => Exit::Shutdown,
            10 => Exit::Exception,
            11 => Exit::InterruptWindow,
            12 => Exit::EntryFailure,
            13 => Exit::Other,
            14 => Exit::PageFault,
            15 => Exit::ControlRegister,
            16 => Exit::Invlpg,
            17 => Exit::Profile,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Exit::Startup => "startup",
            Exit::Recall => "recall",
            Exit::Cpuid => "cpuid",
            Exit::Io => "io",
            Exit::Rdmsr => "rdmsr",
            Exit::Wrmsr => "wrmsr",
            Exit::Hlt => "hlt",
            Exit::Hypercall => "hypercall",
            Exit::MemoryFault => "memory-fault",
            Exit::Shutdown => "shutdown",
            Exit::Exception => "exception",
            Exit::InterruptWindow => "interrupt-window",
            Exit::EntryFailure => "entry-failure",
            Exit::Other => "other",
            Exit::PageFault => "page-fault",
            Exit::ControlRegister => "control-register",
            Exit::Invlpg => "invlpg",
            Exit::Profile => "profile",
        }
    }
}

/// Qualification 0 of [`Exit::Other`]: what the guest executed. Qualification 1 is the
/// backend's raw exit code, except where a kind says otherwise.
pub mod other {
    pub const XSETBV: u64 = 1;
    /// MOV to or from a debug register (every one exits). Qualification 1: a [`MovAccess`].
    pub const DEBUG_REGISTER: u64 = 2;
    pub const INVD: u64 = 3;
    /// Shadow mode: the guest entered a paging mode the vTLB does not shadow; it cannot go on.
    /// Qualification 1: the control register. Every mode a guest can reach is run today
    /// (paging off on the nested tables; 32-bit, PAE and 4-level paging on the vTLB; 5-level
    /// paging is #GP), so the kernel sends it only for a control state no CPU could be in.
    pub const UNSHADOWED_MODE: u64 = 4;
    /// Nested mode: a MOV to a control register that the kernel intercepts so that the VMM
    /// can give the architectural result (CR4 bits of features the guest may not be offered,
    /// reserved bits, on VMX also CR0 bits VMX fixes). Qualification 1: a [`MovAccess`].
    pub const CONTROL_REGISTER: u64 = 5;
    /// RDTSCP, intercepted where the CPU would otherwise execute it with the host's TSC_AUX.
    pub const RDTSCP: u64 = 6;
    pub const UNKNOWN: u64 = 0xff;

    /// Qualification 1 of [`DEBUG_REGISTER`] and [`CONTROL_REGISTER`]: `reg | write << 4 |
    /// gpr << 8 | gpr_known << 12`. `reg` is the debug or control register's number, `write`
    /// set for a MOV to it, `gpr` the general-purpose register (hardware encoding, RAX = 0)
    /// when the hardware reported it (`gpr_known`); otherwise (SVM without decode assists,
    /// e.g. QEMU) the VMM decodes the instruction at RIP. The instruction length is in word
    /// `INSTRUCTION_LEN` where the hardware reports it (VMX, SVM with NRIP save), else 0.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct MovAccess(pub u64);

    impl MovAccess {
        pub const fn new(reg: u8, write: bool, gpr: Option<u8>) -> MovAccess {
            let gpr = match gpr {
                Some(g) => (g as u64 & 0xf) << 8 | 1 << 12,
                None => 0,
            };
            MovAccess((reg as u64 & 0xf) | (write as u64) << 4 | gpr)
        }
        pub const fn reg(self) -> u8 {
            (self.0 & 0xf) as u8
        }
        pub const fn write(self) -> bool {
            self.0 & (1 << 4) != 0
        }
        pub const fn gpr(self) -> Option<u8> {
            if self.0 & (1 << 12) != 0 {
                Some(((self.0 >> 8) & 0xf) as u8)
            } else {
                None
            }
        }
    }
}

/// Why an entry failed ([`Exit::EntryFailure`] qualification 0).
pub mod entry_error {
    /// The guest state broke a rule the hardware checks (the kernel's own check, or the
    /// hardware's VM-entry failure).
    pub const INVALID_GUEST_STATE: u64 = 1;
    /// The hardware reported a failure the kernel did not expect (VMfail, VMEXIT_INVALID).
    pub const HARDWARE: u64 = 2;
    /// The kernel refused to enter: the hardware state would not confine the guest to its
    /// Vm (shadow mode without the shadow root and long-mode paging loaded, or nested paging
    /// off). Qualification 1 names the broken rule (`virt::confine::Breach`).
    pub const UNCONFINED: u64 = 3;
}

/// Access bits of [`Exit::MemoryFault`] qualification 1.
pub mod access {
    pub const READ: u64 = 1 << 0;
    pub const WRITE: u64 = 1 << 1;
    pub const EXEC: u64 = 1 << 2;
    /// The address was mapped, but without this access.
    pub const PRESENT: u64 = 1 << 3;
}

/// Port I/O qualification: `port | size << 16 | in << 24 | string << 25 | rep << 26`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoQual(pub u64);

impl IoQual {
    pub const fn new(port: u16, size: u8, is_in: bool, string: bool, rep: bool) -> IoQual {
        IoQual(
            port as u64
                | (size as u64) << 16
                | (is_in as u64) << 24
                | (string as u64) << 25
                | (rep as u64) << 26,
        )
    }
    pub const fn port(self) -> u16 {
        self.0 as u16
    }
    /// Access size in bytes: 1, 2 or 4.
    pub const fn size(self) -> u8 {
        (self.0 >> 16) as u8
    }
    pub const fn is_in(self) -> bool {
        self.0 & (1 << 24) != 0
    }
    pub const fn string(self) -> bool {
        self.0 & (1 << 25) != 0
    }
    pub const fn rep(self) -> bool {
        self.0 & (1 << 26) != 0
    }
}

/// Transfer-mask bits: register groups in an exit message or a reply.
pub mod mtd {
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15.
    pub const GPRS: u64 = 1 << 0;
    /// RIP and RFLAGS.
    pub const RIP: u64 = 1 << 1;
    /// CR0, CR2, CR3, CR4, EFER (CR0/CR4 as the guest sees them).
    pub const CONTROL: u64 = 1 << 2;
    /// CS, SS, DS, ES, FS, GS, TR, LDTR.
    pub const SEGMENTS: u64 = 1 << 3;
    /// GDTR and IDTR.
    pub const TABLES: u64 = 1 << 4;
    /// Exit message: the interruptibility state and a pending event; reply: the event to
    /// inject ([`super::word::INJECT`]).
    pub const INJECT: u64 = 1 << 5;
    /// SYSENTER_CS/ESP/EIP, PAT, DR7.
    pub const MSRS: u64 = 1 << 6;
    /// Every group but [`XCR0`].
    pub const ALL: u64 = (1 << 7) - 1;
    /// Reply only: XCR0 (word [`super::word::XCR0`]), the guest's extended-state mask, which the
    /// kernel loads with XSETBV before every entry. Not in [`ALL`], and never in an exit message
    /// (the VMM that sets it knows it): a reply may set only x87 (bit 0, always) and SSE (bit 1),
    /// the state the kernel saves for the guest, and only where the CPU has XSAVE. At creation
    /// it is 1.
    pub const XCR0: u64 = 1 << 7;
    /// Reply only: stop the vCPU for good (it never runs again).
    pub const STOP: u64 = 1 << 63;
}

/// The message words a reply with `mask` must carry: up to the highest group it names (the
/// kernel refuses a shorter reply and never reads words beyond a reply's length).
pub fn reply_len(mask: u64) -> usize {
    let groups: [(u64, usize); 8] = [
        (mtd::XCR0, word::XCR0 + 1),
        (mtd::MSRS, word::DR7 + 1),
        (mtd::INJECT, word::INTERRUPTIBILITY + 1),
        (mtd::TABLES, word::IDTR_LIMIT + 1),
        (mtd::SEGMENTS, word::SEGMENTS + 16),
        (mtd::CONTROL, word::EFER + 1),
        (mtd::RIP, word::RFLAGS + 1),
        (mtd::GPRS, word::GPRS + 16),
    ];
    groups
        .iter()
        .find(|(bit, _)| mask & bit != 0)
        .map_or(word::MASK + 1, |&(_, len)| len)
}

/// A segment register in the neutral form: `selector | attributes << 16 | limit << 32` in one
/// word, the base in the next. Attributes use the 12-bit SVM layout: type (bits 0-3), S (4),
/// DPL (5-6), P (7), AVL (8), L (9), D/B (10), G (11). A segment with P clear is unusable.
pub mod segment {
    pub const fn pack(selector: u16, attributes: u16, limit: u32) -> u64 {
        selector as u64 | ((attributes & 0xfff) as u64) << 16 | (limit as u64) << 32
    }
    pub const fn selector(word: u64) -> u16 {
        word as u16
    }
    pub const fn attributes(word: u64) -> u16 {
        ((word >> 16) & 0xfff) as u16
    }
    pub const fn limit(word: u64) -> u32 {
        (word >> 32) as u32
    }
    pub const PRESENT: u16 = 1 << 7;
    pub const LONG: u16 = 1 << 9;
    pub const DB: u16 = 1 << 10;
    pub const GRANULARITY: u16 = 1 << 11;
}

/// Events to inject: `vector | kind << 8 | has_error << 11 | VALID`; the error code is in
/// [`super::word::INJECT_ERROR`].
pub mod inject {
    pub const VALID: u64 = 1 << 31;
    pub const HAS_ERROR: u64 = 1 << 11;
    pub const KIND_EXTERNAL: u64 = 0 << 8;
    pub const KIND_NMI: u64 = 2 << 8;
    pub const KIND_EXCEPTION: u64 = 3 << 8;
    pub const KIND_SOFTWARE: u64 = 4 << 8;
    /// Reply only: exit with [`super::Exit::InterruptWindow`] as soon as the guest can take an
    /// external interrupt (instead of, or besides, injecting now).
    pub const WINDOW: u64 = 1 << 32;
    pub const fn vector(word: u64) -> u8 {
        word as u8
    }
    pub const fn kind(word: u64) -> u64 {
        word & (7 << 8)
    }
}

/// Word offsets in exit messages and replies.
pub mod word {
    pub const MASK: usize = 0;
    pub const REASON: usize = 1;
    pub const QUAL0: usize = 2;
    pub const QUAL1: usize = 3;
    pub const INSTRUCTION_LEN: usize = 4;
    /// The TSC read right after the hardware exit. The guest's TSC runs unshifted (no TSC
    /// offset), so this is also the guest's TSC at the exit; VMMs use it for RDMSR of the TSC
    /// and to time their exit path (under QEMU `-icount` it counts instructions).
    pub const EXIT_TSC: usize = 5;
    /// 16 words: RAX RCX RDX RBX RSP RBP RSI RDI R8..R15 (hardware encoding order).
    pub const GPRS: usize = 6;
    pub const RIP: usize = 22;
    pub const RFLAGS: usize = 23;
    pub const CR0: usize = 24;
    pub const CR2: usize = 25;
    pub const CR3: usize = 26;
    pub const CR4: usize = 27;
    pub const EFER: usize = 28;
    /// 16 words: (packed, base) for CS SS DS ES FS GS TR LDTR, in [`super::SEGMENT_ORDER`].
    pub const SEGMENTS: usize = 29;
    pub const GDTR_BASE: usize = 45;
    pub const GDTR_LIMIT: usize = 46;
    pub const IDTR_BASE: usize = 47;
    pub const IDTR_LIMIT: usize = 48;
    /// Exit: the event being delivered when the exit happened (to re-inject), in
    /// [`super::inject`] form, 0 if none. Reply: the event to inject.
    pub const INJECT: usize = 49;
    pub const INJECT_ERROR: usize = 50;
    /// Bit 0: interrupts blocked by STI / MOV SS; bit 1: NMI blocked.
    pub const INTERRUPTIBILITY: usize = 51;
    pub const SYSENTER_CS: usize = 52;
    pub const SYSENTER_ESP: usize = 53;
    pub const SYSENTER_EIP: usize = 54;
    pub const PAT: usize = 55;
    pub const DR7: usize = 56;
    /// Exit only, in no group: TSC ticks the vCPU spent in guest mode so far, summed from each
    /// entry to the next exit (guest instructions under QEMU `-icount`). With `EXIT_TSC` it
    /// splits guest from hypervisor time.
    pub const GUEST_TSC: usize = 57;
    /// Reply only, group [`super::mtd::XCR0`]: the guest's XCR0 (the word that is `GUEST_TSC`
    /// in an exit message, as `INJECT` is an exit's pending event and a reply's new one).
    pub const XCR0: usize = 57;
    /// Words a full message uses.
    pub const COUNT: usize = 58;
}

/// Order of the segment registers in [`word::SEGMENTS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Segment {
    Cs = 0,
    Ss = 1,
    Ds = 2,
    Es = 3,
    Fs = 4,
    Gs = 5,
    Tr = 6,
    Ldtr = 7,
}

pub const SEGMENT_ORDER: [Segment; 8] = [
    Segment::Cs,
    Segment::Ss,
    Segment::Ds,
    Segment::Es,
    Segment::Fs,
    Segment::Gs,
    Segment::Tr,
    Segment::Ldtr,
];

/// Memory modes of a Vm ([`crate::Syscall::CreateVm`] argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum MemoryMode {
    /// Nested paging: NPT (SVM) or EPT (VMX).
    Nested = 0,
    /// Shadow paging (a vTLB in the kernel).
    Shadow = 1,
}

impl MemoryMode {
    pub const fn from_u64(v: u64) -> Option<Self> {
        match v {
            0 => Some(Self::Nested),
            1 => Some(Self::Shadow),
            _ => None,
        }
    }
}

/// Operations of [`crate::Syscall::VcpuControl`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum VcpuOp {
    /// `reason, mask`: the groups exit messages for `reason` carry.
    SetMask = 0,
    /// Make the vCPU exit with [`Exit::Recall`] before it runs guest code again.
    Recall = 1,
    /// `on` (1 or 0): the kernel answers the DMP [`hypercall`]s of this shadow-mode vCPU
    /// itself instead of delivering VMMCALL/VMCALL to the VMM.
    Hypercalls = 2,
}

impl VcpuOp {
    pub const fn from_u64(v: u64) -> Option<Self> {
        match v {
            0 => Some(Self::SetMask),
            1 => Some(Self::Recall),
            2 => Some(Self::Hypercalls),
            _ => None,
        }
    }
}

/// Guest-physical addresses a Vm can map: below 512 GiB (one top-level nested table entry's
/// reach is enough for the guests this system runs, and it bounds the tables a VMM can make the
/// kernel build).
pub const GUEST_PHYS_LIMIT: u64 = 1 << 39;

/// Which backend the kernel uses (the `Lookup` value of a Vm capability's object, bits 16..23,
/// and `KernelStats` [`crate::syscall::stats::VIRT_BACKEND`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Backend {
    /// AMD SVM.
    Svm = 1,
    /// Intel VMX.
    Vmx = 2,
}

impl Backend {
    /// The backend a `KernelStats` [`crate::syscall::stats::VIRT_BACKEND`] figure names; `None`
    /// for 0 (no usable virtualization) and for values this ABI does not define.
    pub const fn from_stat(v: u64) -> Option<Self> {
        match v {
            1 => Some(Self::Svm),
            2 => Some(Self::Vmx),
            _ => None,
        }
    }

    /// The instruction a guest of this backend makes hypercalls with.
    pub const fn hypercall_insn(self) -> HypercallInsn {
        match self {
            Self::Svm => HypercallInsn::Vmmcall,
            Self::Vmx => HypercallInsn::Vmcall,
        }
    }
}

/// The hypercall instruction of a virtualization backend ([`Backend::hypercall_insn`]): what
/// DMP stubs and guests call the kernel's [`hypercall`]s (or the VMM) with. Executing the other
/// vendor's instruction raises #UD in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypercallInsn {
    /// Intel VMX: `vmcall` (`0F 01 C1`).
    Vmcall,
    /// AMD SVM: `vmmcall` (`0F 01 D9`).
    Vmmcall,
}

impl HypercallInsn {
    /// The instruction's encoding.
    pub const fn bytes(self) -> [u8; 3] {
        match self {
            Self::Vmcall => [0x0f, 0x01, 0xc1],
            Self::Vmmcall => [0x0f, 0x01, 0xd9],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_numbers_are_dense() {
        for v in 0..EXIT_COUNT {
            assert_eq!(Exit::from_u64(v).map(|e| e as u64), Some(v));
        }
        assert_eq!(Exit::from_u64(EXIT_COUNT), None);
    }

    #[test]
    fn message_fits_the_utcb() {
        const { assert!(word::COUNT <= crate::utcb::MSG_WORDS) };
        assert_eq!(word::SEGMENTS + 16, word::GDTR_BASE);
        assert_eq!(word::GPRS + 16, word::RIP);
    }

    #[test]
    fn io_qualification_round_trips() {
        let q = IoQual::new(0x3f8, 1, false, false, false);
        assert_eq!((q.port(), q.size(), q.is_in()), (0x3f8, 1, false));
        let q = IoQual::new(0xf4, 4, true, true, true);
        assert!(q.is_in() && q.string() && q.rep());
        assert_eq!(q.size(), 4);
    }

    #[test]
    fn mov_access_round_trips() {
        let a = other::MovAccess::new(7, true, Some(13));
        assert_eq!((a.reg(), a.write(), a.gpr()), (7, true, Some(13)));
        let a = other::MovAccess::new(4, false, None);
        assert_eq!((a.reg(), a.write(), a.gpr()), (4, false, None));
        assert_eq!(other::MovAccess::new(0, false, Some(0)).gpr(), Some(0));
    }

    #[test]
    fn segments_pack() {
        let w = segment::pack(0x8, 0xa9b, 0xffff_ffff);
        assert_eq!(segment::selector(w), 0x8);
        assert_eq!(segment::attributes(w), 0xa9b);
        assert_eq!(segment::limit(w), 0xffff_ffff);
    }
}
