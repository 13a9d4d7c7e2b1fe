//! Tests only: a tiny interpreter for the instructions stubs are made of, so that tests check what
//! a stub *does* (the hypercall's registers, registers and flags preserved, the stack below the
//! red zone only, where it jumps), not only what it looks like. The fault stub's instructions
//! (ALU operations with the flags they set, conditional jumps, CR2, IRETQ, an indirect jump) are
//! here too, and with an [`Env`] the port I/O and device hypercalls of a polling UART loop run
//! from guest memory ([`Cpu::run_memory`]).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use iced_x86::{ConditionCode, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use crate::classify::Bitness;

/// What lies outside the CPU: ports and the hypervisor's device hypercalls. Each hook gets the
/// whole CPU, memory and its own state (`cpu.env`) included.
pub trait Env: Sized {
    /// `in al, port`.
    fn port_in(_cpu: &mut Cpu<Self>, port: u16) -> u8 {
        panic!("test cpu: in from port {port:#x} without ports")
    }
    /// `out port, al`.
    fn port_out(_cpu: &mut Cpu<Self>, port: u16, _value: u8) {
        panic!("test cpu: out to port {port:#x} without ports")
    }
    /// A hypercall; false leaves it to the built-in fake kernel ([`Cpu::reply`]).
    fn hypercall(_cpu: &mut Cpu<Self>) -> bool {
        false
    }
}

/// No ports; hypercalls go to the built-in fake kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoEnv;

impl Env for NoEnv {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cpu<E = NoEnv> {
    pub bits: Bitness,
    /// RAX..R15.
    pub gpr: [u64; 16],
    pub rflags: u64,
    pub mem: BTreeMap<u64, u8>,
    /// (address, bytes) of every memory write.
    pub writes: Vec<(u64, usize)>,
    /// RAX, RBX, RCX, RDX at each hypercall.
    pub hypercalls: Vec<[u64; 4]>,
    /// CR2 (the fault stub reads it, and writes it back when a nested fault changed it).
    pub cr2: u64,
    /// The fake hypervisor's answer to a hypercall: RAX, RBX, RCX (`None`: RAX = 0, the rest
    /// unchanged).
    pub reply: Option<[u64; 3]>,
    /// CR2 after a hypercall, as a nested fault in the stub would have left it.
    pub reply_cr2: Option<u64>,
    pub env: E,
}

/// What one instruction did to the flow.
enum Flow {
    Next,
    Jump(u64),
    Iret(u64),
}

/// How a run left the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leave {
    /// A jump (direct or indirect) out of the code, to this address.
    Jump(u64),
    /// IRETQ, to this RIP (RSP and RFLAGS are the frame's).
    Iret(u64),
}

const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;

fn idx(r: Register) -> usize {
    (r.full_register() as u32 - Register::RAX as u32) as usize
}

fn is_high(r: Register) -> bool {
    matches!(r, Register::AH | Register::CH | Register::DH | Register::BH)
}

impl Cpu {
    pub fn new(bits: Bitness) -> Cpu {
        Cpu::with_env(bits, NoEnv)
    }
}

impl<E: Env> Cpu<E> {
    pub fn with_env(bits: Bitness, env: E) -> Cpu<E> {
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
            cr2: 0,
            reply: None,
            reply_cr2: None,
            env,
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

    /// Puts `bytes` at `at` (not counted as writes).
    pub fn load(&mut self, at: u64, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            self.mem.insert(at.wrapping_add(i as u64), b);
        }
    }

    /// `len` bytes at `at` (0 where nothing was put).
    pub fn bytes(&self, at: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| self.mem.get(&at.wrapping_add(i)).copied().unwrap_or(0))
            .collect()
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
        match self.run_until(code, base) {
            Leave::Jump(target) => target,
            Leave::Iret(rip) => panic!("iretq to {rip:#x}"),
        }
    }

    /// Sets the arithmetic flags of a `size`-byte result; `carry` and `overflow` as computed.
    fn set_flags(&mut self, result: u64, size: usize, carry: bool, overflow: bool) {
        let bits = 8 * size as u32;
        let r = if bits == 64 {
            result
        } else {
            result & ((1 << bits) - 1)
        };
        let mut f = self.rflags & !(CF | PF | ZF | SF | OF);
        f |= if carry { CF } else { 0 };
        f |= if overflow { OF } else { 0 };
        f |= if r == 0 { ZF } else { 0 };
        f |= if r >> (bits - 1) & 1 != 0 { SF } else { 0 };
        f |= if (r as u8).count_ones() & 1 == 0 {
            PF
        } else {
            0
        };
        self.rflags = f;
    }

    fn condition(&self, cc: ConditionCode) -> bool {
        let f = |bit: u64| self.rflags & bit != 0;
        match cc {
            ConditionCode::b => f(CF),
            ConditionCode::ae => !f(CF),
            ConditionCode::e => f(ZF),
            ConditionCode::ne => !f(ZF),
            ConditionCode::s => f(SF),
            ConditionCode::ns => !f(SF),
            c => panic!("test cpu: condition {c:?} not supported"),
        }
    }

    /// Writes `v` to operand 0 (a register or memory).
    fn store(&mut self, insn: &Instruction, v: u64) {
        match insn.op0_kind() {
            OpKind::Register => self.set(insn.op0_register(), v),
            _ => {
                let a = self.address(insn, 0);
                self.write(a, insn.memory_size().size(), v);
            }
        }
    }

    /// Size in bytes of operand 0.
    fn size0(insn: &Instruction) -> usize {
        match insn.op0_kind() {
            OpKind::Register => insn.op0_register().size(),
            _ => insn.memory_size().size(),
        }
    }

    /// Run `code` placed at `base` from its start until a jump leaves it or IRETQ returns.
    pub fn run_until(&mut self, code: &[u8], base: u64) -> Leave {
        let inside = |a: u64| a >= base && a < base + code.len() as u64;
        let mut pc = base;
        for _ in 0..1000 {
            let offset = (pc - base) as usize;
            let mut d =
                Decoder::with_ip(self.bits.bits(), &code[offset..], pc, DecoderOptions::NONE);
            let insn = d.decode();
            assert!(!insn.is_invalid(), "invalid at {pc:#x}");
            pc = match self.exec(&insn) {
                Flow::Next => insn.next_ip(),
                Flow::Jump(target) if inside(target) => target,
                Flow::Jump(target) => return Leave::Jump(target),
                Flow::Iret(rip) => return Leave::Iret(rip),
            };
        }
        panic!("stub does not leave");
    }

    /// Runs the code in memory from `pc` until it reaches `stop` (across stubs and guest code).
    pub fn run_memory(&mut self, mut pc: u64, stop: u64) {
        for _ in 0..10_000_000 {
            if pc == stop {
                return;
            }
            let bytes = self.bytes(pc, 15);
            let insn =
                Decoder::with_ip(self.bits.bits(), &bytes, pc, DecoderOptions::NONE).decode();
            assert!(!insn.is_invalid(), "invalid instruction at {pc:#x}");
            pc = match self.exec(&insn) {
                Flow::Next => insn.next_ip(),
                Flow::Jump(target) => target,
                Flow::Iret(rip) => panic!("iretq to {rip:#x}"),
            };
        }
        panic!("the code does not reach {stop:#x}");
    }

    /// Executes one instruction.
    fn exec(&mut self, insn: &Instruction) -> Flow {
        let insn = *insn;
        match insn.mnemonic() {
            Mnemonic::Lea => {
                let a = self.address(&insn, 1);
                self.set(insn.op0_register(), a);
            }
            Mnemonic::Mov if insn.op1_register() == Register::CR2 => {
                self.set(insn.op0_register(), self.cr2)
            }
            Mnemonic::Mov if insn.op0_register() == Register::CR2 => {
                self.cr2 = self.get(insn.op1_register())
            }
            Mnemonic::Mov | Mnemonic::Movzx | Mnemonic::Movnti => {
                let v = self.operand(&insn, 1);
                self.store(&insn, v);
            }
            Mnemonic::Sub | Mnemonic::Cmp => {
                let size = Self::size0(&insn);
                let (a, b) = (self.operand(&insn, 0), self.operand(&insn, 1));
                let top = 1u64 << (8 * size - 1);
                let mask = top | (top - 1);
                let (a, b) = (a & mask, b & mask);
                let r = a.wrapping_sub(b) & mask;
                self.set_flags(r, size, a < b, (a ^ b) & (a ^ r) & top != 0);
                if insn.mnemonic() == Mnemonic::Sub {
                    self.store(&insn, r);
                }
            }
            Mnemonic::And | Mnemonic::Or | Mnemonic::Test => {
                let size = Self::size0(&insn);
                let (a, b) = (self.operand(&insn, 0), self.operand(&insn, 1));
                let r = if insn.mnemonic() == Mnemonic::Or {
                    a | b
                } else {
                    a & b
                };
                self.set_flags(r, size, false, false);
                if insn.mnemonic() != Mnemonic::Test {
                    self.store(&insn, r);
                }
            }
            Mnemonic::Shr => {
                let size = Self::size0(&insn);
                let count = (self.operand(&insn, 1) & 63) as u32;
                let a = self.operand(&insn, 0);
                if count != 0 {
                    let r = a >> count;
                    self.set_flags(r, size, (a >> (count - 1)) & 1 != 0, false);
                    self.store(&insn, r);
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
            Mnemonic::Vmcall | Mnemonic::Vmmcall if E::hypercall(self) => {}
            Mnemonic::Vmcall | Mnemonic::Vmmcall => {
                let r = [Register::RAX, Register::RBX, Register::RCX, Register::RDX];
                self.hypercalls.push(r.map(|r| self.get(r)));
                // The hypervisor's status: the stub must restore the guest's RAX.
                match self.reply {
                    Some([rax, rbx, rcx]) => {
                        self.set(Register::RAX, rax);
                        self.set(Register::RBX, rbx);
                        self.set(Register::RCX, rcx);
                    }
                    None => self.set(Register::RAX, 0),
                }
                if let Some(cr2) = self.reply_cr2 {
                    self.cr2 = cr2;
                }
            }
            Mnemonic::Iretq => {
                let rip = self.pop();
                let _cs = self.pop();
                let rflags = self.pop();
                let rsp = self.pop();
                let _ss = self.pop();
                self.rflags = rflags;
                self.set(Register::RSP, rsp);
                return Flow::Iret(rip);
            }
            Mnemonic::Jmp if insn.op0_kind() == OpKind::Memory => {
                let a = self.address(&insn, 0);
                return Flow::Jump(self.read(a, 8));
            }
            Mnemonic::Jmp => return Flow::Jump(insn.near_branch_target()),
            _ if insn.is_jcc_short_or_near() => {
                if self.condition(insn.condition_code()) {
                    return Flow::Jump(insn.near_branch_target());
                }
            }
            Mnemonic::Nop | Mnemonic::Pause => {}
            Mnemonic::Inc | Mnemonic::Dec => {
                // CF stays; the rest as for ADD/SUB of 1.
                let size = Self::size0(&insn);
                let top = 1u64 << (8 * size - 1);
                let mask = top | (top - 1);
                let a = self.operand(&insn, 0) & mask;
                let (r, overflow) = if insn.mnemonic() == Mnemonic::Inc {
                    let r = a.wrapping_add(1) & mask;
                    (r, r == top)
                } else {
                    (a.wrapping_sub(1) & mask, a == top)
                };
                let carry = self.rflags & CF != 0;
                self.set_flags(r, size, carry, overflow);
                self.store(&insn, r);
            }
            Mnemonic::Add => {
                let size = Self::size0(&insn);
                let top = 1u64 << (8 * size - 1);
                let mask = top | (top - 1);
                let (a, b) = (self.operand(&insn, 0) & mask, self.operand(&insn, 1) & mask);
                let r = a.wrapping_add(b) & mask;
                self.set_flags(r, size, r < a, (a ^ r) & (b ^ r) & top != 0);
                self.store(&insn, r);
            }
            Mnemonic::In => {
                assert_eq!(insn.op0_register(), Register::AL, "only `in al`");
                let port = self.operand(&insn, 1) as u16;
                let v = E::port_in(self, port);
                self.set(Register::AL, u64::from(v));
            }
            Mnemonic::Out => {
                assert_eq!(insn.op1_register(), Register::AL, "only `out .., al`");
                let port = self.operand(&insn, 0) as u16;
                let v = self.get(Register::AL) as u8;
                E::port_out(self, port, v);
            }
            m => panic!("test cpu: {m:?} at {:#x} not supported", insn.ip()),
        }
        Flow::Next
    }
}
