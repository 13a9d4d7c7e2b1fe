//! The initial vCPU state of each boot protocol (as `abi::vm::word` message words) and the boot
//! structures it points at: GDT, TSS and long-mode page tables in guest RAM (see [`layout`]).
//!
//! | | real mode (flat) | protected mode (Multiboot 1/2) | long mode (ELF64) |
//! |---|---|---|---|
//! | CR0 | ET | PE, ET | PE, ET, PG |
//! | CR3, CR4, EFER | 0 | 0 | PML4, PAE, LME+LMA |
//! | CS | 0, base 0, limit 0xffff, 0x9b | 0x08 flat 4 GiB, 0xc9b | 0x08, 0xa9b |
//! | DS ES FS GS SS | 0, limit 0xffff, 0x93 | 0x10 flat 4 GiB, 0xc93 | 0x10, 0xc93 |
//! | TR | 0, limit 0xffff, 0x8b | 0x18, the TSS, 0x8b | 0x18, the TSS, 0x8b |
//! | LDTR | 0, limit 0xffff, 0x82 | unusable | unusable |
//! | GDTR | base 0, limit 0xffff | the GDT | the GDT |
//! | IDTR | base 0, limit 0x3ff | base 0, limit 0 | base 0, limit 0 |
//! | RIP / RSP | 0x7c00 / 0x7c00 | entry / 0x7c00 | entry / 0x7c00 |
//! | registers | DL = 0x80 | EAX magic, EBX info | RAX MB2 magic, RBX MB2 info |
//!
//! In every mode RFLAGS = 0x2 (interrupts off), DR7 = 0x400, PAT = its reset value, and every
//! other register is 0.

use abi::vm::{word, Segment};

use crate::info::put;
use crate::layout;
use crate::msr::PAT_RESET;
use crate::state::{Gpr, Seg, VcpuState};

/// CR0 bits.
pub const CR0_PE: u64 = 1 << 0;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PAE.
pub const CR4_PAE: u64 = 1 << 5;
/// RFLAGS bit 1 (always set).
pub const RFLAGS_FIXED: u64 = 0x2;
/// DR7 at reset.
pub const DR7_RESET: u64 = 0x400;

/// Segment attributes (12-bit SVM layout).
pub mod attr {
    pub const CODE16: u16 = 0x09b;
    pub const DATA16: u16 = 0x093;
    pub const CODE32: u16 = 0xc9b;
    pub const DATA32: u16 = 0xc93;
    pub const CODE64: u16 = 0xa9b;
    /// Busy TSS (type 11), present.
    pub const TSS_BUSY: u16 = 0x08b;
    /// LDT (type 2), present.
    pub const LDT: u16 = 0x082;
    /// Not present: unusable.
    pub const UNUSABLE: u16 = 0;
}

fn common() -> VcpuState {
    let mut s = VcpuState::default();
    s.set(word::RFLAGS, RFLAGS_FIXED);
    s.set(word::DR7, DR7_RESET);
    s.set(word::PAT, PAT_RESET);
    s.set_gpr(Gpr::Rsp, layout::STACK_TOP);
    s
}

/// Real mode at `0:0x7c00` (flat binaries): DL = 0x80 (the first hard disk, as a BIOS would
/// pass it).
pub fn real_mode() -> VcpuState {
    let mut s = common();
    s.set(word::CR0, CR0_ET);
    s.set_rip(layout::FLAT_LOAD);
    s.set_gpr(Gpr::Rdx, 0x80);
    s.set_segment(Segment::Cs, Seg::new(0, attr::CODE16, 0xffff, 0));
    for seg in [
        Segment::Ds,
        Segment::Es,
        Segment::Fs,
        Segment::Gs,
        Segment::Ss,
    ] {
        s.set_segment(seg, Seg::new(0, attr::DATA16, 0xffff, 0));
    }
    s.set_segment(Segment::Tr, Seg::new(0, attr::TSS_BUSY, 0xffff, 0));
    s.set_segment(Segment::Ldtr, Seg::new(0, attr::LDT, 0xffff, 0));
    s.set(word::GDTR_LIMIT, 0xffff);
    s.set(word::IDTR_LIMIT, 0x3ff);
    s
}

fn flat_segments(s: &mut VcpuState, code: u16) {
    let sel = layout::CODE_SELECTOR;
    s.set_segment(Segment::Cs, Seg::new(sel, code, 0xffff_ffff, 0));
    for seg in [
        Segment::Ds,
        Segment::Es,
        Segment::Fs,
        Segment::Gs,
        Segment::Ss,
    ] {
        let data = Seg::new(layout::DATA_SELECTOR, attr::DATA32, 0xffff_ffff, 0);
        s.set_segment(seg, data);
    }
    let tss = Seg::new(
        layout::TSS_SELECTOR,
        attr::TSS_BUSY,
        layout::TSS_LIMIT,
        layout::TSS,
    );
    s.set_segment(Segment::Tr, tss);
    s.set_segment(Segment::Ldtr, Seg::new(0, attr::UNUSABLE, 0, 0));
    s.set(word::GDTR_BASE, layout::GDT);
    s.set(word::GDTR_LIMIT, u64::from(layout::GDT_LIMIT));
}

/// 32-bit protected mode, paging off (Multiboot): EAX = `magic`, EBX = `info`.
pub fn protected_mode(entry: u64, magic: u32, info: u64) -> VcpuState {
    let mut s = common();
    s.set(word::CR0, CR0_PE | CR0_ET);
    s.set_rip(entry);
    s.set_gpr(Gpr::Rax, u64::from(magic));
    s.set_gpr(Gpr::Rbx, info);
    flat_segments(&mut s, attr::CODE32);
    s
}

/// 64-bit long mode with the identity-mapped page tables (ELF64): RAX = `magic`, RBX = `info`.
pub fn long_mode(entry: u64, magic: u32, info: u64) -> VcpuState {
    let mut s = common();
    s.set(word::CR0, CR0_PE | CR0_ET | CR0_PG);
    s.set(word::CR3, layout::PML4);
    s.set(word::CR4, CR4_PAE);
    s.set(word::EFER, crate::msr::efer::LME | crate::msr::efer::LMA);
    s.set_rip(entry);
    s.set_gpr(Gpr::Rax, u64::from(magic));
    s.set_gpr(Gpr::Rbx, info);
    flat_segments(&mut s, attr::CODE64);
    s
}

/// A code or data descriptor: base 0, limit 4 GiB (G), access byte and flags nibble.
const fn descriptor(access: u8, flags: u8) -> u64 {
    0xffff | (access as u64) << 40 | (0xf | (flags as u64) << 4) << 48
}

/// Writes the GDT (with a 32-bit or 64-bit code segment at 0x08) and the TSS.
pub fn write_gdt(ram: &mut [u8], long: bool) -> bool {
    let code = if long {
        descriptor(0x9b, 0xa)
    } else {
        descriptor(0x9b, 0xc)
    };
    let data = descriptor(0x93, 0xc);
    let (base, limit) = (layout::TSS, u64::from(layout::TSS_LIMIT));
    let tss_low = limit & 0xffff
        | (base & 0xff_ffff) << 16
        | 0x8b << 40
        | (limit >> 16 & 0xf) << 48
        | (base >> 24 & 0xff) << 56;
    let tss_high = base >> 32;
    let mut gdt = [0u8; 40];
    for (i, d) in [0, code, data, tss_low, tss_high].iter().enumerate() {
        gdt[8 * i..8 * i + 8].copy_from_slice(&d.to_le_bytes());
    }
    let mut tss = [0u8; layout::TSS_LIMIT as usize + 1];
    // I/O map base beyond the limit: no I/O permission bitmap.
    tss[0x66..0x68].copy_from_slice(&(layout::TSS_LIMIT as u16 + 1).to_le_bytes());
    put(ram, layout::GDT, &gdt) && put(ram, layout::TSS, &tss)
}

/// Page-table entry bits.
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const LARGE: u64 = 1 << 7;

/// Writes page tables that identity-map 0..4 GiB with 2 MiB pages (read, write, execute).
pub fn write_page_tables(ram: &mut [u8]) -> bool {
    let mut page = [0u8; 4096];
    let entry = |page: &mut [u8; 4096], i: usize, v: u64| {
        page[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes())
    };
    entry(&mut page, 0, layout::PDPT | PRESENT | WRITABLE);
    if !put(ram, layout::PML4, &page) {
        return false;
    }
    page = [0; 4096];
    for i in 0..layout::PD_COUNT {
        entry(
            &mut page,
            i as usize,
            (layout::PD + i * 4096) | PRESENT | WRITABLE,
        );
    }
    if !put(ram, layout::PDPT, &page) {
        return false;
    }
    for d in 0..layout::PD_COUNT {
        for i in 0..512u64 {
            let phys = (d * 512 + i) << 21;
            entry(&mut page, i as usize, phys | PRESENT | WRITABLE | LARGE);
        }
        if !put(ram, layout::PD + d * 4096, &page) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn u64_at(b: &[u8], at: u64) -> u64 {
        let at = at as usize;
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn real_mode_state() {
        let s = real_mode();
        assert_eq!(s.rip(), 0x7c00);
        assert_eq!(s.gpr(Gpr::Rsp), 0x7c00);
        assert_eq!(s.gpr(Gpr::Rdx), 0x80);
        assert_eq!(s.get(word::CR0), CR0_ET);
        assert_eq!(s.get(word::RFLAGS), 2);
        assert_eq!(s.segment(Segment::Cs), Seg::new(0, 0x9b, 0xffff, 0));
        assert_eq!(s.segment(Segment::Tr).attributes, 0x8b);
    }

    #[test]
    fn protected_and_long_states() {
        let s = protected_mode(0x10_0000, 0x2bad_b002, 0x7000);
        assert_eq!(s.get(word::CR0), 0x11);
        assert_eq!(s.gpr(Gpr::Rax), 0x2bad_b002);
        assert_eq!(s.gpr(Gpr::Rbx), 0x7000);
        assert_eq!(s.segment(Segment::Cs), Seg::new(8, 0xc9b, 0xffff_ffff, 0));
        assert_eq!(
            s.segment(Segment::Ss),
            Seg::new(0x10, 0xc93, 0xffff_ffff, 0)
        );
        assert_eq!(s.segment(Segment::Ldtr).attributes, 0);
        let s = long_mode(0x10_0000, 0x36d7_6289, 0x7000);
        assert_eq!(s.get(word::CR0), 0x8000_0011);
        assert_eq!(s.get(word::CR3), 0x1000);
        assert_eq!(s.get(word::CR4), 0x20);
        assert_eq!(s.get(word::EFER), 0x500);
        assert_eq!(s.segment(Segment::Cs).attributes, 0xa9b);
        assert_eq!(s.segment(Segment::Tr), Seg::new(0x18, 0x8b, 0x67, 0x580));
        assert_eq!(s.get(word::GDTR_BASE), 0x500);
        assert_eq!(s.get(word::GDTR_LIMIT), 0x27);
    }

    #[test]
    fn gdt_and_tss() {
        let mut ram = vec![0u8; 2 << 20];
        assert!(write_gdt(&mut ram, true));
        assert_eq!(u64_at(&ram, 0x508), 0x00af_9b00_0000_ffff);
        assert_eq!(u64_at(&ram, 0x510), 0x00cf_9300_0000_ffff);
        assert_eq!(u64_at(&ram, 0x518), 0x0000_8b00_0580_0067);
        assert_eq!(u64_at(&ram, 0x520), 0);
        assert!(write_gdt(&mut ram, false));
        assert_eq!(u64_at(&ram, 0x508), 0x00cf_9b00_0000_ffff);
        assert_eq!(u16::from_le_bytes([ram[0x5e6], ram[0x5e7]]), 0x68);
        assert!(!write_gdt(&mut [0u8; 0x100], true));
    }

    #[test]
    fn page_tables_map_4_gib() {
        let mut ram = vec![0u8; 2 << 20];
        assert!(write_page_tables(&mut ram));
        assert_eq!(u64_at(&ram, 0x1000), 0x2003);
        assert_eq!(u64_at(&ram, 0x1008), 0);
        assert_eq!(u64_at(&ram, 0x2000 + 8 * 3), 0x6003);
        assert_eq!(u64_at(&ram, 0x2000 + 8 * 4), 0);
        assert_eq!(u64_at(&ram, 0x3000), 0x83);
        assert_eq!(u64_at(&ram, 0x3008), 0x20_0083);
        assert_eq!(u64_at(&ram, 0x6ff8), 0xffe0_0083);
        assert!(!write_page_tables(&mut [0u8; 0x3000]));
    }
}
