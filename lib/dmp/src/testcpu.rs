//! Tests only: a tiny interpreter for the instructions stubs are made of, so that tests check what
//! a stub *does* (the hypercall's registers, registers and flags preserved, the stack below the
//! red zone only, where it jumps), not only what it looks like.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use crate::classify::Bitness;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cpu {
    pub bits: Bitness,
    /// RAX..R15.
    pub gpr: [u64; 16],
    pub rflags: u64,
    pub mem: BTreeMap<u64, u8>,
    /// (address, bytes) of every memory write.
    pub writes: Vec<(u64, usize)>,
    /// RAX, RBX, RCX, RDX at each hypercall.
    pub hypercalls: Vec<[u64; 4]>,
}

fn idx(r: Register) -> usize {
    (r.full_register() as u32 - Register::RAX as u32) as usize
}

fn is_high(r: Register) -> bool {
    matches!(r, Register::AH | Register::CH | Register::DH | Register::BH)
}

impl Cpu {
    pub fn new(bits: Bitness) -> Cpu {
        let mut gpr = [0u64; 16];
        for (i, g) in gpr.iter_mut().enumerate() {
            // Distinct values in every byte, small enough to be 32-bit addresses too.
            *g = match bits {
                Bitness::Bits64 => 0x0101_0000_1000 * (i as u64 + 1) + 0x0102_0304,
                Bitness::Bits32 => 0x0100_0000 * (i as u64 + 1) + 0x0002_0304,
            };
        }
        gpr[4] = match bits {
            Bitness::Bits64 => 0x7fff_ffff_e000,
            Bitness::Bits32 => 0xbfff_e000,
        };
        Cpu {
            bits,
            gpr,
            rflags: 0x246,
            mem: BTreeMap::new(),
            writes: Vec::new(),
            hypercalls: Vec::new(),
        }
    }

    pub fn get(&self, r: Register) -> u64 {
        let full = self.gpr[idx(r)];
        match r.size() {
            8 => full,
            4 => full as u32 as u64,
            2 => full as u16 as u64,
            _ if is_high(r) => (full >> 8) as u8 as u64,
            _ => full as u8 as u64,
        }
    }

    pub fn set(&mut self, r: Register, v: u64) {
        let i = idx(r);
        let full = self.gpr[i];
        self.gpr[i] = match r.size() {
            8 => v,
            4 => v as u32 as u64,
            2 => (full & !0xffff) | (v & 0xffff),
            _ if is_high(r) => (full & !0xff00) | ((v & 0xff) << 8),
            _ => (full & !0xff) | (v & 0xff),
        };
    }

    pub fn read(&self, addr: u64, len: usize) -> u64 {
        (0..len).fold(0, |v, i| {
            let b = self
                .mem
                .get(&addr.wrapping_add(i as u64))
                .copied()
                .unwrap_or(0);
            v | (u64::from(b) << (8 * i))
        })
    }

    pub fn write(&mut self, addr: u64, len: usize, v: u64) {
        for i in 0..len {
            self.mem
                .insert(addr.wrapping_add(i as u64), (v >> (8 * i)) as u8);
        }
        self.writes.push((addr, len));
    }

    fn sp(&self) -> Register {
        match self.bits {
            Bitness::Bits64 => Register::RSP,
            Bitness::Bits32 => Register::ESP,
        }
    }

    fn push(&mut self, v: u64) {
        let w = self.bits.word_bytes();
        let sp = self.get(self.sp()).wrapping_sub(w);
        self.set(self.sp(), sp);
        self.write(sp, w as usize, v);
    }

    fn pop(&mut self) -> u64 {
        let w = self.bits.word_bytes();
        let sp = self.get(self.sp());
        let v = self.read(sp, w as usize);
        self.set(self.sp(), sp.wrapping_add(w));
        v
    }

    fn address(&self, insn: &Instruction, op: u32) -> u64 {
        let a = insn
            .virtual_address(op, 0, |r, _, _| match r {
                Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
                r if r.is_gpr() => Some(self.get(r)),
                _ => None,
            })
            .expect("address");
        match self.bits {
            Bitness::Bits64 => a,
            Bitness::Bits32 => a as u32 as u64,
        }
    }

    fn operand(&self, insn: &Instruction, op: u32) -> u64 {
        match insn.op_kind(op) {
            OpKind::Register => self.get(insn.op_register(op)),
            OpKind::Memory => self.read(self.address(insn, op), insn.memory_size().size()),
            _ => insn.immediate(op),
        }
    }

    /// Run `code` placed at `base` from its start until a jump leaves it; the jump's target.
    pub fn run(&mut self, code: &[u8], base: u64) -> u64 {
        let mut pc = base;
        for _ in 0..1000 {
            let offset = (pc - base) as usize;
            let mut d =
                Decoder::with_ip(self.bits.bits(), &code[offset..], pc, DecoderOptions::NONE);
            let insn = d.decode();
            assert!(!insn.is_invalid(), "invalid at {pc:#x}");
            pc = insn.next_ip();
            match insn.mnemonic() {
                Mnemonic::Lea => {
                    let a = self.address(&insn, 1);
                    self.set(insn.op0_register(), a);
                }
                Mnemonic::Mov | Mnemonic::Movzx | Mnemonic::Movnti => {
                    let v = self.operand(&insn, 1);
                    match insn.op0_kind() {
                        OpKind::Register => self.set(insn.op0_register(), v),
                        _ => {
                            let a = self.address(&insn, 0);
                            self.write(a, insn.memory_size().size(), v);
                        }
                    }
                }
                Mnemonic::Push => {
                    let v = self.get(insn.op0_register());
                    self.push(v);
                }
                Mnemonic::Pop => {
                    let v = self.pop();
                    self.set(insn.op0_register(), v);
                }
                Mnemonic::Pushfq | Mnemonic::Pushfd => self.push(self.rflags),
                Mnemonic::Popfq | Mnemonic::Popfd => self.rflags = self.pop(),
                Mnemonic::Vmcall | Mnemonic::Vmmcall => {
                    let r = [Register::RAX, Register::RBX, Register::RCX, Register::RDX];
                    self.hypercalls.push(r.map(|r| self.get(r)));
                    // The hypervisor's status: the stub must restore the guest's RAX.
                    self.set(Register::RAX, 0);
                }
                Mnemonic::Jmp => {
                    let target = insn.near_branch_target();
                    if target >= base && target < base + code.len() as u64 {
                        pc = target;
                    } else {
                        return target;
                    }
                }
                m => panic!("test cpu: {m:?} not supported"),
            }
        }
        panic!("stub does not leave");
    }
}
