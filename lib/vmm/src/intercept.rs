//! The instructions the kernel intercepts for isolation (`Exit::Other`), given the result a CPU
//! with the features this VMM offers (its filtered CPUID) would give. Where the SDM and APM leave
//! a choice, KVM's behaviour is the reference.
//!
//! | kind | result |
//! |---|---|
//! | MOV to/from DR0-DR7 | emulated on registers of this VMM (below) |
//! | MOV to CR0 (and CLTS, register LMSW) and CR4 in nested mode, where the kernel intercepts them | checked like the CPU, then written into the vCPU state; a reserved or unoffered bit raises #GP(0) |
//! | MOV to/from CR8 (both modes) | the task priority, kept here; bits 63:4 raise #GP(0) |
//! | INVD | nothing (a no-op, as under KVM: the guest never owns the caches' contents) |
//! | XSETBV | XCR0 (ECX = 0) set to EDX:EAX when x87 is in it and nothing beyond what leaf `0xd` offers (x87, SSE); else #GP(0); #GP(0) outside ring 0; #UD where XSAVE is not offered |
//! | RDTSCP | #UD: intercepted only where the CPU lacks it (CPUID then does not show it) |
//! | anything else | #UD, logged |
//!
//! **Debug registers.** The kernel intercepts every MOV DR, so that no guest reads or sets the
//! host's debug registers; the guest's DR0-DR3, DR6 and DR7 live here. Writes and reads follow
//! the architecture: a MOV DR at CPL > 0 raises #GP(0); DR4 and DR5 alias DR6 and DR7 while
//! CR4.DE = 0 and raise #UD when CR4.DE = 1; with DR7.GD set the access raises #DB (DR6.BD set,
//! DR7.GD cleared); a value with any of bits 63:32 set written to DR6 or DR7 raises #GP(0);
//! DR6 reads its fixed bits as 1 (`0xffff_0ff0`: no RTM, no bus-lock detection) and DR7 its
//! bit 10 as 1 and bits 11, 12, 14 and 15 as 0, as KVM does. Outside 64-bit mode values are 32
//! bits. **Breakpoints do not fire**: the hardware DR7 stays at its reset value `0x400`, so the
//! guest's enables never arm the CPU (that would need the kernel to load DR0-DR3 per vCPU).
//!
//! **Finding the register.** The kernel says which debug or control register and which
//! direction (`abi::vm::other::MovAccess`), and the general register and instruction length
//! where the hardware reports them (VMX; SVM with decode assists and NRIP save). Otherwise (QEMU's
//! SVM) the instruction at RIP is read through the guest's page tables ([`fetch`]) and decoded
//! ([`decode_mov`]).

use alloc::format;
use alloc::string::String;

use abi::vm::{mtd, other, word};

use crate::cpuid;
use crate::dmp::GuestMemory;
use crate::state::VcpuState;

/// Exception vectors.
const DB: u8 = 1;
const UD: u8 = 6;
const GP: u8 = 13;

/// DR6 bits that always read 1 here (bits 4-11, 16-31: no RTM, no bus-lock detection).
pub const DR6_FIXED: u64 = 0xffff_0ff0;
/// DR6 bits a write may change: B0-B3, BD, BS, BT.
pub const DR6_VOLATILE: u64 = 0xe00f;
/// DR7 bits that always read 1 (bit 10).
pub const DR7_FIXED: u64 = 0x400;
/// DR7 bits a write may change (KVM's `DR7_VOLATILE`).
pub const DR7_VOLATILE: u64 = 0xffff_2bff;
const DR6_BD: u64 = 1 << 13;
const DR7_GD: u64 = 1 << 13;

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
/// CR0 bits the architecture defines: PE MP EM TS ET NE WP AM NW CD PG.
const CR0_DEFINED: u64 = 0x3f | 1 << 16 | 1 << 18 | 1 << 29 | 1 << 30 | 1 << 31;
const CR4_DE: u64 = 1 << 3;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const CR4_PCIDE: u64 = 1 << 17;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_VM: u64 = 1 << 17;

/// CR4 bits every x86-64 guest may set: VME, PVI, TSD, DE, PSE, PAE, MCE, PGE, PCE, OSFXSR,
/// OSXMMEXCPT (MCE as under KVM, whatever CPUID says about machine checks).
const CR4_BASE: u64 = 0x7ff;

/// The CR4 bits a guest that sees these (filtered) CPUID leaves may set, as KVM derives them
/// (`__cr4_reserved_bits`): the base bits plus one per offered feature. SMXE, and whatever
/// this list does not name, is reserved.
pub fn cr4_allowed(leaf1: [u32; 4], leaf7: [u32; 4]) -> u64 {
    let (ecx1, ebx7, ecx7) = (leaf1[2], leaf7[1], leaf7[2]);
    let bit = |reg: u32, n: u32, cr4: u64| if reg & (1 << n) != 0 { cr4 } else { 0 };
    CR4_BASE
        | bit(ecx7, 2, 1 << 11) // UMIP
        | bit(ecx7, 16, CR4_LA57)
        | bit(ecx1, 5, 1 << 13) // VMXE
        | bit(ebx7, 0, 1 << 16) // FSGSBASE
        | bit(ecx1, 17, CR4_PCIDE)
        | bit(ecx1, 26, 1 << 18) // OSXSAVE
        | bit(ebx7, 7, 1 << 20) // SMEP
        | bit(ebx7, 20, 1 << 21) // SMAP
        | bit(ecx7, 3, 1 << 22) // PKE
}

/// What the VMM does about one intercepted instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effect {
    /// The reply: the exit's state with what the instruction changed.
    pub reply: VcpuState,
    /// Groups of `reply` to write back.
    pub mask: u64,
    /// An exception to raise instead of completing: vector and error code (if it has one).
    pub fault: Option<(u8, Option<u32>)>,
    /// A line for the VMM's log (things a guest should not meet).
    pub log: Option<String>,
}

/// The guest's debug registers, its task-priority register (CR8, where the kernel intercepts
/// it) and the CR4 bits its CPUID allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intercepts {
    db: [u64; 4],
    dr6: u64,
    dr7: u64,
    tpr: u64,
    cr4_allowed: Option<u64>,
    /// The XCR0 bits XSETBV may set (filtered CPUID 0xd.0 EAX), None without XSAVE.
    xcr0_allowed: Option<Option<u64>>,
    /// The guest's CR4 as last seen (every intercepted instruction's exit carries it) or set
    /// by an emulated MOV to CR4: what CPUID's OSXSAVE bit reports.
    cr4: u64,
}

impl Default for Intercepts {
    fn default() -> Self {
        Intercepts::new()
    }
}

/// A decoded MOV to or from a control or debug register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MovInsn {
    /// Control (false) or debug (true) register.
    pub debug: bool,
    pub reg: u8,
    pub write: bool,
    pub gpr: u8,
    pub len: u8,
}

/// Decodes a MOV CR/DR (`0F 20-23 /r`) after legacy prefixes and, in 64-bit code, one REX
/// prefix. None for anything else. The ModRM mod field is ignored, as the CPU does.
pub fn decode_mov(bytes: &[u8], long_mode: bool) -> Option<MovInsn> {
    let mut i = 0;
    let mut lock = false;
    while let Some(&b) = bytes.get(i) {
        match b {
            0x66 | 0x67 | 0xf2 | 0xf3 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 => {}
            0xf0 => lock = true,
            _ => break,
        }
        i += 1;
    }
    let mut rex = 0u8;
    if long_mode && matches!(bytes.get(i), Some(0x40..=0x4f)) {
        rex = bytes[i];
        i += 1;
    }
    if bytes.get(i) != Some(&0x0f) {
        return None;
    }
    let opcode = *bytes.get(i + 1)?;
    let modrm = *bytes.get(i + 2)?;
    let len = i + 3;
    if !matches!(opcode, 0x20..=0x23) || len > crate::intercept::MAX_LEN {
        return None;
    }
    let debug = opcode & 1 != 0;
    let mut reg = ((modrm >> 3) & 7) | ((rex & 4) << 1);
    if lock && !debug {
        // AMD's alternative encoding of CR8 (LOCK MOV CR0).
        reg |= 8;
    }
    Some(MovInsn {
        debug,
        reg,
        write: opcode & 2 != 0,
        gpr: (modrm & 7) | ((rex & 1) << 3),
        len: len as u8,
    })
}

/// The other instructions SVM's CR0 write intercept catches: CLTS (`0F 06`) and the register
/// form of LMSW (`0F 01 /6`, mod = 3). Returns the general register of LMSW (None for CLTS) and
/// the length. LMSW with a memory operand is not decoded.
pub fn decode_clts_lmsw(bytes: &[u8], long_mode: bool) -> Option<(Option<u8>, u8)> {
    let mut i = 0;
    while matches!(
        bytes.get(i),
        Some(0x66 | 0x67 | 0xf2 | 0xf3 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65)
    ) {
        i += 1;
    }
    let mut rex = 0u8;
    if long_mode && matches!(bytes.get(i), Some(0x40..=0x4f)) {
        rex = bytes[i];
        i += 1;
    }
    if bytes.get(i) != Some(&0x0f) || i + 2 > MAX_LEN {
        return None;
    }
    match *bytes.get(i + 1)? {
        0x06 => Some((None, (i + 2) as u8)),
        0x01 => {
            let modrm = *bytes.get(i + 2)?;
            (modrm >> 6 == 3 && (modrm >> 3) & 7 == 6 && i + 3 <= MAX_LEN)
                .then_some((Some((modrm & 7) | ((rex & 1) << 3)), (i + 3) as u8))
        }
        _ => None,
    }
}

/// The longest x86 instruction.
pub const MAX_LEN: usize = 15;

/// Translates guest-linear `la` with the guest's own paging (off, 32-bit, PAE or 4-level long
/// mode) for an instruction fetch; None if a table is outside RAM or the page is not present.
pub fn translate(
    mem: &mut dyn GuestMemory,
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
    la: u64,
) -> Option<u64> {
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    let mut read = |gpa: u64, size: usize| -> Option<u64> {
        let mut b = [0u8; 8];
        mem.read(gpa, &mut b[..size]).then(|| u64::from_le_bytes(b))
    };
    if cr0 & CR0_PG == 0 {
        return Some(la & 0xffff_ffff);
    }
    if cr4 & CR4_PAE == 0 {
        // 32-bit paging: 4-byte entries, 4 MiB pages with CR4.PSE.
        let pde = read((cr3 & 0xffff_f000) + ((la >> 22) & 0x3ff) * 4, 4)?;
        if pde & 1 == 0 {
            return None;
        }
        if pde & (1 << 7) != 0 && cr4 & (1 << 4) != 0 {
            return Some((pde & 0xffc0_0000) | (la & 0x3f_ffff));
        }
        let pte = read((pde & 0xffff_f000) + ((la >> 12) & 0x3ff) * 4, 4)?;
        return (pte & 1 != 0).then_some((pte & 0xffff_f000) | (la & 0xfff));
    }
    let (mut table, levels) = if efer & EFER_LMA != 0 {
        let levels = if cr4 & CR4_LA57 != 0 { 5 } else { 4 };
        (cr3 & ADDR, levels)
    } else {
        let pdpte = read((cr3 & 0xffff_ffe0) + ((la >> 30) & 3) * 8, 8)?;
        if pdpte & 1 == 0 {
            return None;
        }
        (pdpte & ADDR, 2)
    };
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (level - 1);
        let entry = read(table + ((la >> shift) & 0x1ff) * 8, 8)?;
        if entry & 1 == 0 {
            return None;
        }
        if level == 1 || (level <= 3 && entry & (1 << 7) != 0) {
            let page = (1u64 << shift) - 1;
            return Some((entry & ADDR & !page) | (la & page));
        }
        table = entry & ADDR;
    }
    None
}

/// Reads up to [`MAX_LEN`] bytes of the instruction at the guest's RIP (CS base added outside
/// 64-bit mode); the bytes read before a page that does not translate.
pub fn fetch(msg: &VcpuState, mem: &mut dyn GuestMemory, out: &mut [u8; MAX_LEN]) -> usize {
    let (cr0, cr3, cr4, efer) = (
        msg.get(word::CR0),
        msg.get(word::CR3),
        msg.get(word::CR4),
        msg.get(word::EFER),
    );
    let cs = msg.segment(abi::vm::Segment::Cs);
    let long = long_mode(msg);
    let start = if long {
        msg.rip()
    } else {
        cs.base.wrapping_add(msg.rip()) & 0xffff_ffff
    };
    let mut n = 0;
    while n < MAX_LEN {
        let la = start.wrapping_add(n as u64);
        let Some(pa) = translate(mem, cr0, cr3, cr4, efer, la) else {
            break;
        };
        let chunk = (MAX_LEN - n).min((0x1000 - (la & 0xfff)) as usize);
        if !mem.read(pa, &mut out[n..n + chunk]) {
            break;
        }
        n += chunk;
    }
    n
}

/// XSETBV: XCR0 (ECX = 0) from EDX:EAX, checked as the CPU checks it against what the guest
/// is offered (`allowed`: CPUID 0xd.0 EAX; None without XSAVE). The reply sets group
/// `mtd::XCR0`, which the kernel checks again and loads before every entry.
fn xsetbv(msg: &VcpuState, allowed: Option<u64>, e: &mut Effect) {
    const CR4_OSXSAVE: u64 = 1 << 18;
    let Some(allowed) = allowed else {
        e.log = Some(format!(
            "#UD for XSETBV at {:#x} (XSAVE not offered)",
            msg.rip()
        ));
        e.fault = Some((UD, None));
        return;
    };
    if msg.get(word::CR4) & CR4_OSXSAVE == 0 {
        e.fault = Some((UD, None));
        return;
    }
    let gp = Some((GP, Some(0)));
    let index = msg.get(word::GPRS + 1) as u32;
    let value = (msg.get(word::GPRS + 2) & 0xffff_ffff) << 32 | (msg.get(word::GPRS) & 0xffff_ffff);
    if cpl(msg) > 0 || index != 0 || value & 1 == 0 || value & !allowed != 0 {
        e.fault = gp;
        return;
    }
    let len = match msg.get(word::INSTRUCTION_LEN) {
        0 => 3, // 0F 01 D1
        n => n,
    };
    e.reply.set(word::XCR0, value);
    e.reply.set_rip(msg.rip().wrapping_add(len));
    e.mask |= mtd::XCR0 | mtd::RIP;
}

/// 64-bit mode: EFER.LMA and CS.L.
fn long_mode(msg: &VcpuState) -> bool {
    let cs = msg.segment(abi::vm::Segment::Cs);
    msg.get(word::EFER) & EFER_LMA != 0 && cs.attributes & abi::vm::segment::LONG != 0
}

/// The current privilege level: SS.DPL in protected mode, 0 in real mode.
fn cpl(msg: &VcpuState) -> u8 {
    if msg.get(word::CR0) & CR0_PE == 0 {
        return 0;
    }
    if msg.get(word::RFLAGS) & RFLAGS_VM != 0 {
        return 3;
    }
    ((msg.segment(abi::vm::Segment::Ss).attributes >> 5) & 3) as u8
}

impl Intercepts {
    /// The registers at reset: DR0-DR3 0, DR6 `0xffff_0ff0`, DR7 `0x400`, TPR 0.
    pub fn new() -> Intercepts {
        Intercepts {
            db: [0; 4],
            dr6: DR6_FIXED,
            dr7: DR7_FIXED,
            tpr: 0,
            cr4_allowed: None,
            xcr0_allowed: None,
            cr4: 0,
        }
    }

    /// The guest's CR4 as this VMM last saw it (for CPUID's OSXSAVE bit, whose exits do not
    /// carry the control registers: they are the hottest, and the group costs about a hundred
    /// instructions per exit). Current in nested mode, where every change of CR4.OSXSAVE exits
    /// here; in shadow mode the kernel's vTLB takes CR4 writes, and the VMM sees the new value
    /// at the guest's next intercepted instruction (an XSETBV, at the latest).
    pub fn cr4(&self) -> u64 {
        self.cr4
    }

    /// The guest's DR0-DR3, DR6 and DR7.
    pub fn debug_registers(&self) -> ([u64; 4], u64, u64) {
        (self.db, self.dr6, self.dr7)
    }

    /// Handles an `Exit::Other` message `msg` (groups GPRS, RIP, CONTROL and SEGMENTS);
    /// `host_cpuid` is the host's CPUID (filtered here as the guest sees it), `mem` the
    /// guest's RAM.
    pub fn handle(
        &mut self,
        msg: &VcpuState,
        host_cpuid: &mut dyn FnMut(u32, u32) -> [u32; 4],
        mem: &mut dyn GuestMemory,
    ) -> Effect {
        let mut e = Effect {
            reply: *msg,
            mask: 0,
            fault: None,
            log: None,
        };
        let kind = msg.get(word::QUAL0);
        let len = msg.get(word::INSTRUCTION_LEN);
        if msg.get(word::MASK) & mtd::CONTROL != 0 {
            self.cr4 = msg.get(word::CR4);
        }
        match kind {
            other::DEBUG_REGISTER | other::CONTROL_REGISTER => {
                let access = other::MovAccess(msg.get(word::QUAL1));
                let cr0_write = kind == other::CONTROL_REGISTER && access.reg() == 0;
                if cr0_write && access.write() && access.gpr().is_none() {
                    if let Some((value, len)) = self.clts_lmsw(msg, mem) {
                        let insn = MovInsn {
                            debug: false,
                            reg: 0,
                            write: true,
                            gpr: 0,
                            len,
                        };
                        self.mov_cr(msg, insn, Some(value), 0, &mut e);
                        if e.fault.is_none() {
                            e.reply.set_rip(msg.rip().wrapping_add(u64::from(len)));
                            e.mask |= mtd::RIP;
                        }
                        return e;
                    }
                }
                let Some(insn) = self.operands(msg, access, mem) else {
                    e.log = Some(format!(
                        "#UD: could not decode the intercepted MOV at {:#x}",
                        msg.rip()
                    ));
                    e.fault = Some((UD, None));
                    return e;
                };
                if kind == other::DEBUG_REGISTER {
                    self.mov_dr(msg, insn, &mut e);
                } else {
                    let allowed = *self.cr4_allowed.get_or_insert_with(|| {
                        let mut leaf = |l: u32| cpuid::filter(l, 0, host_cpuid(l, 0));
                        cr4_allowed(leaf(1), leaf(7))
                    });
                    self.mov_cr(msg, insn, None, allowed, &mut e);
                }
                if e.fault.is_none() {
                    e.reply.set_rip(msg.rip().wrapping_add(u64::from(insn.len)));
                    e.mask |= mtd::RIP;
                }
            }
            other::XSETBV => {
                let allowed = *self.xcr0_allowed.get_or_insert_with(|| {
                    let mut leaf = |l: u32| cpuid::filter(l, 0, host_cpuid(l, 0));
                    let xsave = leaf(1)[2] & cpuid::leaf1::ECX_XSAVE != 0;
                    xsave.then(|| u64::from(leaf(0xd)[0]))
                });
                xsetbv(msg, allowed, &mut e);
            }
            other::INVD => {
                // INVD is 0F 08 (2 bytes) when the hardware gives no length.
                let len = if len == 0 { 2 } else { len };
                e.reply.set_rip(msg.rip().wrapping_add(len));
                e.mask |= mtd::RIP;
            }
            _ => {
                let what = match kind {
                    other::RDTSCP => String::from("RDTSCP"),
                    k => format!("kind {k}"),
                };
                e.log = Some(format!(
                    "#UD for an intercepted instruction ({what}) at {:#x}",
                    msg.rip()
                ));
                e.fault = Some((UD, None));
            }
        }
        e
    }

    /// The register, direction, general register and length of the intercepted MOV: from the
    /// kernel's words where it knows them, else decoded at RIP (which must agree).
    fn operands(
        &self,
        msg: &VcpuState,
        access: other::MovAccess,
        mem: &mut dyn GuestMemory,
    ) -> Option<MovInsn> {
        let debug = msg.get(word::QUAL0) == other::DEBUG_REGISTER;
        let len = msg.get(word::INSTRUCTION_LEN);
        if let (Some(gpr), 1..=15) = (access.gpr(), len) {
            return Some(MovInsn {
                debug,
                reg: access.reg(),
                write: access.write(),
                gpr,
                len: len as u8,
            });
        }
        let mut bytes = [0u8; MAX_LEN];
        let n = fetch(msg, mem, &mut bytes);
        let insn = decode_mov(&bytes[..n], long_mode(msg))?;
        let agrees = insn.debug == debug
            && insn.write == access.write()
            && (insn.reg & 0xf) == access.reg()
            && access.gpr().is_none_or(|g| g == insn.gpr);
        agrees.then_some(insn)
    }

    /// CLTS or register LMSW at RIP (SVM's CR0 write intercept): the CR0 it would write and
    /// its length.
    fn clts_lmsw(&self, msg: &VcpuState, mem: &mut dyn GuestMemory) -> Option<(u64, u8)> {
        let mut bytes = [0u8; MAX_LEN];
        let n = fetch(msg, mem, &mut bytes);
        let long = long_mode(msg);
        let (gpr, len) = decode_clts_lmsw(&bytes[..n], long)?;
        let cr0 = msg.get(word::CR0);
        let value = match gpr {
            None => cr0 & !(1 << 3),
            // LMSW loads PE, MP, EM and TS, and cannot clear PE.
            Some(g) => (cr0 & !0xf) | (Self::gpr_value(msg, g, long) & 0xf) | (cr0 & CR0_PE),
        };
        Some((value, len))
    }

    fn gpr_value(msg: &VcpuState, gpr: u8, long: bool) -> u64 {
        let v = msg.get(word::GPRS + usize::from(gpr & 0xf));
        if long {
            v
        } else {
            v & 0xffff_ffff
        }
    }

    fn set_gpr(e: &mut Effect, gpr: u8, value: u64, long: bool) {
        let value = if long { value } else { value & 0xffff_ffff };
        e.reply.set(word::GPRS + usize::from(gpr & 0xf), value);
        e.mask |= mtd::GPRS;
    }

    fn mov_dr(&mut self, msg: &VcpuState, insn: MovInsn, e: &mut Effect) {
        let long = long_mode(msg);
        if cpl(msg) > 0 {
            e.fault = Some((GP, Some(0)));
            return;
        }
        let de = msg.get(word::CR4) & CR4_DE != 0;
        let reg = match insn.reg {
            4 | 5 if de => {
                e.fault = Some((UD, None));
                return;
            }
            4 | 5 => insn.reg + 2,
            r @ (0..=3 | 6 | 7) => r,
            _ => {
                e.fault = Some((UD, None));
                return;
            }
        };
        if self.dr7 & DR7_GD != 0 {
            // General detect: #DB before the access, with DR6.BD, and GD cleared for the
            // handler.
            self.dr6 = (self.dr6 & !0xf) | DR6_BD;
            self.dr7 &= !DR7_GD;
            e.fault = Some((DB, None));
            return;
        }
        if insn.write {
            let value = Self::gpr_value(msg, insn.gpr, long);
            match reg {
                0..=3 => self.db[usize::from(reg)] = value,
                _ if value >> 32 != 0 => {
                    e.fault = Some((GP, Some(0)));
                }
                6 => self.dr6 = (value & DR6_VOLATILE) | DR6_FIXED,
                _ => self.dr7 = (value & DR7_VOLATILE) | DR7_FIXED,
            }
        } else {
            let value = match reg {
                0..=3 => self.db[usize::from(reg)],
                6 => self.dr6,
                _ => self.dr7,
            };
            Self::set_gpr(e, insn.gpr, value, long);
        }
    }

    /// MOV to or from control register `insn.reg`; `value` instead of the general register's
    /// for CLTS and LMSW.
    fn mov_cr(
        &mut self,
        msg: &VcpuState,
        insn: MovInsn,
        value: Option<u64>,
        cr4_allowed: u64,
        e: &mut Effect,
    ) {
        let long = long_mode(msg);
        if cpl(msg) > 0 {
            e.fault = Some((GP, Some(0)));
            return;
        }
        let gp = Some((GP, Some(0)));
        let (cr0, cr4, efer) = (msg.get(word::CR0), msg.get(word::CR4), msg.get(word::EFER));
        if !insn.write {
            // Only CR8 reads are ever intercepted in nested mode; the others read the state.
            let value = match insn.reg {
                0 => cr0,
                2 => msg.get(word::CR2),
                3 => msg.get(word::CR3),
                4 => cr4,
                8 => self.tpr,
                _ => {
                    e.fault = Some((UD, None));
                    return;
                }
            };
            Self::set_gpr(e, insn.gpr, value, long);
            return;
        }
        let value = value.unwrap_or_else(|| Self::gpr_value(msg, insn.gpr, long));
        match insn.reg {
            0 => {
                if value >> 32 != 0
                    || (value & CR0_NW != 0 && value & CR0_CD == 0)
                    || (value & CR0_PG != 0 && value & CR0_PE == 0)
                {
                    e.fault = gp;
                    return;
                }
                let mut efer_new = efer;
                let paging_on = value & CR0_PG != 0 && cr0 & CR0_PG == 0;
                let paging_off = value & CR0_PG == 0 && cr0 & CR0_PG != 0;
                if paging_on && efer & EFER_LME != 0 {
                    if cr4 & CR4_PAE == 0 {
                        e.fault = gp;
                        return;
                    }
                    efer_new |= EFER_LMA;
                }
                if paging_off && efer & EFER_LMA != 0 {
                    if long {
                        e.fault = gp;
                        return;
                    }
                    efer_new &= !EFER_LMA;
                }
                // Undefined low bits are ignored; ET is fixed to 1.
                e.reply.set(word::CR0, (value & CR0_DEFINED) | CR0_ET);
                e.reply.set(word::EFER, efer_new);
                e.mask |= mtd::CONTROL;
            }
            4 => {
                let lma = efer & EFER_LMA != 0;
                let bad = value & !cr4_allowed != 0
                    || (lma && value & CR4_PAE == 0)
                    || (lma && (value ^ cr4) & CR4_LA57 != 0)
                    || (value & CR4_PCIDE != 0
                        && cr4 & CR4_PCIDE == 0
                        && (!lma || msg.get(word::CR3) & 0xfff != 0));
                if bad {
                    e.fault = gp;
                    return;
                }
                e.reply.set(word::CR4, value);
                e.mask |= mtd::CONTROL;
                self.cr4 = value;
            }
            8 => {
                if value >> 4 != 0 {
                    e.fault = gp;
                    return;
                }
                self.tpr = value;
            }
            _ => e.fault = Some((UD, None)),
        }
    }
}

#[cfg(test)]
#[path = "intercept_tests.rs"]
mod tests;
