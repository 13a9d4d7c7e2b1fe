//! Where the jump goes: the bytes the kernel's compare-and-swap replaces at a hot site.
//!
//! The site is overwritten with `jmp rel32` (five bytes) to the stub. If the hot instruction is
//! shorter, the following instructions are displaced too — whole instructions, until at least
//! five bytes are covered — and re-executed in the stub; the bytes after the jump up to the end of
//! the last displaced instruction become `int3`, so that a jump into the middle of the range
//! traps at once instead of running the remains of an instruction.
//!
//! A displaced instruction after the hot one must not end a basic block (branch, call, return,
//! interrupt, …) nor be NOP or INT3 padding, which compilers emit in front of branch targets:
//! either would make a jump into the displaced range likely. Jumps into the range that bytes
//! cannot reveal remain the known limitation of this kind of patching (crate docs).
//!
//! The range must lie in one 4 KiB page and hold at most [`MAX_PATCH_LEN`] bytes (`VmPatch`'s
//! rules), and the stub must be reachable with a `rel32` (±2 GiB in 64-bit code).

use alloc::vec::Vec;
use core::fmt;
use iced_x86::{Decoder, DecoderError, DecoderOptions, FlowControl, Instruction, Mnemonic};

use crate::classify::{Bitness, Site, Unpatchable};

/// Length of `jmp rel32` (`E9 rel32`).
pub const JMP_REL32_LEN: usize = 5;
/// The most bytes one `VmPatch` swaps.
pub const MAX_PATCH_LEN: usize = 64;
/// A patch never crosses a boundary of this size (`abi::PAGE_SIZE`).
pub use abi::PAGE_SIZE;

/// `jmp rel32`'s opcode.
const JMP_REL32: u8 = 0xe9;
/// What the rest of the displaced range is filled with.
const INT3: u8 = 0xcc;

/// Why no patch was planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// The site itself was classified unpatchable.
    Unpatchable(Unpatchable),
    /// The code given ends before whole instructions cover five bytes.
    NeedMoreCode,
    /// The instruction at this offset from the site is not valid.
    Undecodable { offset: usize },
    /// The instruction at this offset ends a basic block (branch, call, return, interrupt).
    ControlFlow { offset: usize },
    /// The instruction at this offset is NOP or INT3 padding: likely followed by a branch target.
    Padding { offset: usize },
    /// The displaced range would cross a page boundary.
    CrossesPage,
    /// The stub is out of `rel32` reach of the site (or above 4 GiB in 32-bit code).
    StubOutOfRange,
    /// The stub address lies inside the displaced range.
    StubOverlapsSite,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Unpatchable(why) => write!(f, "unpatchable site: {why}"),
            PlanError::NeedMoreCode => f.write_str("code ends before five bytes are covered"),
            PlanError::Undecodable { offset } => write!(f, "invalid instruction at +{offset}"),
            PlanError::ControlFlow { offset } => {
                write!(
                    f,
                    "control-flow instruction at +{offset} in the displaced range"
                )
            }
            PlanError::Padding { offset } => {
                write!(f, "padding at +{offset} in the displaced range")
            }
            PlanError::CrossesPage => f.write_str("displaced range crosses a page"),
            PlanError::StubOutOfRange => f.write_str("stub out of rel32 range"),
            PlanError::StubOverlapsSite => f.write_str("stub inside the displaced range"),
        }
    }
}

/// A planned patch: the compare-and-swap for `VmPatch` and what the stub must contain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatchPlan {
    /// Guest-linear address of the hot instruction (the start of the swapped range).
    pub site: u64,
    /// Guest-linear address of the stub.
    pub stub: u64,
    pub bitness: Bitness,
    /// Bytes displaced (the length of `expected` and `new`): at least [`JMP_REL32_LEN`].
    pub covered: usize,
    /// The original bytes: the swap's expected value.
    pub expected: Vec<u8>,
    /// `jmp rel32` to the stub, then `int3` up to `covered`.
    pub new: Vec<u8>,
    /// The displaced instructions, decoded at their original addresses; the first is the hot one.
    pub displaced: Vec<Instruction>,
}

impl PatchPlan {
    /// Where the stub jumps back to: the first instruction after the displaced range.
    pub fn resume(&self) -> u64 {
        self.site + self.covered as u64
    }
}

fn is_padding(insn: &Instruction) -> bool {
    matches!(insn.mnemonic(), Mnemonic::Nop | Mnemonic::Int3)
}

/// Plan the patch of a classified site, jumping to a stub at guest-linear address `stub`.
pub fn plan_patch(site: &Site, stub: u64) -> Result<PatchPlan, PlanError> {
    if let crate::SiteKind::Unpatchable(why) = site.kind {
        return Err(PlanError::Unpatchable(why));
    }
    let bits = site.bitness.bits();
    let mut displaced = Vec::new();
    displaced.push(site.instruction);
    let mut covered = site.instruction.len();
    if covered < JMP_REL32_LEN {
        let rest = site.code.get(covered..).unwrap_or(&[]);
        let mut decoder =
            Decoder::with_ip(bits, rest, site.instruction.next_ip(), DecoderOptions::NONE);
        while covered < JMP_REL32_LEN {
            if !decoder.can_decode() {
                return Err(PlanError::NeedMoreCode);
            }
            let insn = decoder.decode();
            if insn.is_invalid() {
                return Err(match decoder.last_error() {
                    DecoderError::NoMoreBytes => PlanError::NeedMoreCode,
                    _ => PlanError::Undecodable { offset: covered },
                });
            }
            // A `ret` may end the displaced range when it completes the five bytes (a small
            // function such as `mov rax, cr3; pop rbp; ret`): the stub runs it in place, no
            // code after it is displaced, so no branch target can be cut. Anything else that
            // leaves the block would displace code that may be a branch target (or, for a jump,
            // land inside the patch).
            let ends_here =
                covered + insn.len() >= JMP_REL32_LEN && insn.flow_control() == FlowControl::Return;
            if insn.flow_control() != FlowControl::Next && !ends_here {
                return Err(PlanError::ControlFlow { offset: covered });
            }
            if is_padding(&insn) {
                return Err(PlanError::Padding { offset: covered });
            }
            covered += insn.len();
            displaced.push(insn);
        }
    }
    debug_assert!(covered <= MAX_PATCH_LEN);

    // One page, and no wrap-around at the top of the address space.
    let in_page = site.rip % PAGE_SIZE + covered as u64;
    if in_page > PAGE_SIZE || site.rip.checked_add(covered as u64).is_none() {
        return Err(PlanError::CrossesPage);
    }
    if stub >= site.rip && stub < site.rip + covered as u64 {
        return Err(PlanError::StubOverlapsSite);
    }
    let after_jmp = site.rip + JMP_REL32_LEN as u64;
    let rel = match site.bitness {
        Bitness::Bits64 => {
            // RIP arithmetic wraps modulo 2^64: low code reaches a stub at the top of the
            // address space (the DMP window) and the other way round.
            let rel = stub.wrapping_sub(after_jmp) as i64;
            i32::try_from(rel).map_err(|_| PlanError::StubOutOfRange)?
        }
        Bitness::Bits32 => {
            // EIP wraps at 4 GiB, so every 32-bit address is in reach.
            let stub = u32::try_from(stub).map_err(|_| PlanError::StubOutOfRange)?;
            stub.wrapping_sub(after_jmp as u32) as i32
        }
    };

    let expected = site.code[..covered].to_vec();
    let mut new = Vec::with_capacity(covered);
    new.push(JMP_REL32);
    new.extend_from_slice(&rel.to_le_bytes());
    new.resize(covered, INT3);
    Ok(PatchPlan {
        site: site.rip,
        stub,
        bitness: site.bitness,
        covered,
        expected,
        new,
        displaced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{classify, SiteKind};
    use abi::vm::Exit;
    use iced_x86::{Code, Decoder};

    const SITE: u64 = 0xffff_ffff_8100_0100;
    const STUB: u64 = 0xffff_ffff_8200_0000;

    fn site64(code: &[u8], rip: u64, reason: Exit) -> Site {
        let site = classify(code, rip, reason, Bitness::Bits64, true);
        assert!(site.is_patchable(), "{:?}", site.kind);
        site
    }

    /// The patched bytes decode to one `jmp` to the stub followed by int3s.
    fn check_new_bytes(plan: &PatchPlan) {
        let mut d = Decoder::with_ip(plan.bitness.bits(), &plan.new, plan.site, 0);
        let jmp = d.decode();
        assert!(matches!(
            jmp.code(),
            Code::Jmp_rel32_64 | Code::Jmp_rel32_32
        ));
        assert_eq!(jmp.near_branch_target(), plan.stub);
        assert_eq!(jmp.len(), JMP_REL32_LEN);
        assert!(plan.new[JMP_REL32_LEN..].iter().all(|&b| b == INT3));
        assert_eq!(plan.new.len(), plan.expected.len());
        assert_eq!(plan.new.len(), plan.covered);
    }

    #[test]
    fn one_displaced_instruction() {
        // mov [rdi+rcx*8+0x10], r9 is 5 bytes: exactly covered
        let code = [0x4c, 0x89, 0x4c, 0xcf, 0x10, 0xc3];
        let plan = plan_patch(&site64(&code, SITE, Exit::PageFault), STUB).unwrap();
        assert_eq!(plan.covered, 5);
        assert_eq!(plan.displaced.len(), 1);
        assert_eq!(plan.expected, &code[..5]);
        assert_eq!(plan.resume(), SITE + 5);
        check_new_bytes(&plan);
        // a 7-byte instruction: covered 7, two int3s
        let code = [0x48, 0x89, 0x05, 0, 1, 0, 0];
        let plan = plan_patch(&site64(&code, SITE, Exit::PageFault), STUB).unwrap();
        assert_eq!((plan.covered, plan.displaced.len()), (7, 1));
        assert_eq!(&plan.new[5..], &[INT3, INT3]);
        check_new_bytes(&plan);
    }

    #[test]
    fn two_displaced_instructions() {
        // mov rax, cr3 (3) ; mov rbx, rax (3) ; ret
        let code = [0x0f, 0x20, 0xd8, 0x48, 0x89, 0xc3, 0xc3];
        let plan = plan_patch(&site64(&code, SITE, Exit::ControlRegister), STUB).unwrap();
        assert_eq!(plan.covered, 6);
        assert_eq!(plan.displaced.len(), 2);
        assert_eq!(plan.displaced[1].ip(), SITE + 3);
        assert_eq!(plan.displaced[1].code(), Code::Mov_rm64_r64);
        check_new_bytes(&plan);
    }

    #[test]
    fn three_displaced_instructions() {
        // mov [rdi], eax (2) ; inc ecx (2) ; add eax, ebx (2) ; ...
        let code = [0x89, 0x07, 0xff, 0xc1, 0x01, 0xd8, 0xc3];
        let plan = plan_patch(&site64(&code, SITE, Exit::PageFault), STUB).unwrap();
        assert_eq!((plan.covered, plan.displaced.len()), (6, 3));
        assert_eq!(plan.expected, &code[..6]);
        assert_eq!(plan.new, &[0xe9, 0xfb, 0xfe, 0xff, 0x00, INT3]);
        check_new_bytes(&plan);
        // out dx, al (1) ; then four one-byte-ish instructions: 4 followers
        let code = [0xee, 0x50, 0x51, 0x52, 0x53, 0xc3];
        let plan = plan_patch(&site64(&code, SITE, Exit::Io), STUB).unwrap();
        assert_eq!((plan.covered, plan.displaced.len()), (5, 5));
        check_new_bytes(&plan);
    }

    #[test]
    fn stub_range() {
        let code = [0x0f, 0x01, 0x3f, 0x48, 0x89, 0xc3];
        let rip = 0xffff_fffe_0000_0100;
        let site = site64(&code, rip, Exit::Invlpg);
        // exactly +2 GiB - 1 and -2 GiB from the end of the jmp are reachable
        let end = rip + 5;
        for stub in [end + 0x7fff_ffff, end - 0x8000_0000, rip + 6, rip - 1] {
            let plan = plan_patch(&site, stub).unwrap();
            check_new_bytes(&plan);
        }
        for stub in [end + 0x8000_0000, end - 0x8000_0001, 0, u64::MAX] {
            assert_eq!(plan_patch(&site, stub), Err(PlanError::StubOutOfRange));
        }
        assert_eq!(plan_patch(&site, rip + 2), Err(PlanError::StubOverlapsSite));
        // 32-bit code: anything below 4 GiB, wrapping
        let site = classify(&code, 0xffff_f000, Exit::Invlpg, Bitness::Bits32, false);
        for stub in [0x1000, 0xffff_0000, 0x8000_0000] {
            let plan = plan_patch(&site, stub).unwrap();
            check_new_bytes(&plan);
        }
        assert_eq!(plan_patch(&site, 1 << 32), Err(PlanError::StubOutOfRange));
    }

    #[test]
    fn page_crossing() {
        let code = [0x48, 0x89, 0x05, 0, 1, 0, 0];
        // mov [rip+0x100], rax: 7 bytes, at 4089..4096: the last fits; one further crosses
        let page = 0xffff_ffff_8100_0000;
        let fits = site64(&code, page + 4089, Exit::PageFault);
        assert!(plan_patch(&fits, STUB).is_ok());
        let crosses = site64(&code, page + 4090, Exit::PageFault);
        assert_eq!(plan_patch(&crosses, STUB), Err(PlanError::CrossesPage));
        // the last page of the address space
        // the last page of the address space: ending at 2^64 - 1 fits, at 2^64 (resume would
        // wrap to 0) does not
        let top = site64(&code, u64::MAX - 7, Exit::PageFault);
        assert_eq!(
            plan_patch(&top, u64::MAX - 8192).unwrap().resume(),
            u64::MAX
        );
        let top = site64(&code, u64::MAX - 6, Exit::PageFault);
        assert_eq!(
            plan_patch(&top, u64::MAX - 8192),
            Err(PlanError::CrossesPage)
        );
    }

    #[test]
    fn a_ret_may_end_the_displaced_range() {
        // mov rax, cr3 ; pop rbp ; ret ; int3 (a small function): five bytes with the ret.
        let code = [0x0f, 0x20, 0xd8, 0x5d, 0xc3, 0xcc, 0xcc];
        let plan = plan_patch(&site64(&code, SITE, Exit::ControlRegister), STUB).unwrap();
        assert_eq!(plan.covered, 5);
        assert_eq!(plan.expected, code[..5]);
        // Shorter: mov rax, cr3 ; ret (four bytes) cannot be covered without the padding.
        let short = [0x0f, 0x20, 0xd8, 0xc3, 0xcc, 0xcc];
        assert_eq!(
            plan_patch(&site64(&short, SITE, Exit::ControlRegister), STUB),
            Err(PlanError::ControlFlow { offset: 3 })
        );
    }

    #[test]
    fn refusals_in_the_displaced_range() {
        let pf = |code: &[u8]| plan_patch(&site64(code, SITE, Exit::PageFault), STUB);
        // mov [rdi], rax ; ret / jmp / jcc / call / int3 / syscall
        assert_eq!(
            pf(&[0x48, 0x89, 0x07, 0xc3, 0, 0]),
            Err(PlanError::ControlFlow { offset: 3 })
        );
        assert_eq!(
            pf(&[0x48, 0x89, 0x07, 0xeb, 0xfe]),
            Err(PlanError::ControlFlow { offset: 3 })
        );
        assert_eq!(
            pf(&[0x48, 0x89, 0x07, 0x75, 0x10]),
            Err(PlanError::ControlFlow { offset: 3 })
        );
        assert_eq!(
            pf(&[0x48, 0x89, 0x07, 0xe8, 0, 0, 0, 0]),
            Err(PlanError::ControlFlow { offset: 3 })
        );
        assert_eq!(
            pf(&[0x48, 0x89, 0x07, 0xcc, 0xcc]),
            Err(PlanError::ControlFlow { offset: 3 })
        );
        assert_eq!(
            pf(&[0x48, 0x89, 0x07, 0x0f, 0x05]),
            Err(PlanError::ControlFlow { offset: 3 })
        );
        // a jcc after one plain instruction
        assert_eq!(
            pf(&[0x48, 0x89, 0x07, 0x50, 0x74, 0x00]),
            Err(PlanError::ControlFlow { offset: 4 })
        );
        // nop and multi-byte nop padding
        assert_eq!(
            pf(&[0x48, 0x89, 0x07, 0x90, 0x90]),
            Err(PlanError::Padding { offset: 3 })
        );
        assert_eq!(
            pf(&[0x48, 0x89, 0x07, 0x0f, 0x1f, 0x40, 0x00]),
            Err(PlanError::Padding { offset: 3 })
        );
        // truncated or invalid followers
        assert_eq!(pf(&[0x48, 0x89, 0x07]), Err(PlanError::NeedMoreCode));
        assert_eq!(pf(&[0x48, 0x89, 0x07, 0x48]), Err(PlanError::NeedMoreCode));
        assert_eq!(
            pf(&[0x48, 0x89, 0x07, 0x06, 0x06]),
            Err(PlanError::Undecodable { offset: 3 })
        );
        // an unpatchable site
        let locked = classify(
            &[0xf0, 0x09, 0x07, 0, 0],
            SITE,
            Exit::PageFault,
            Bitness::Bits64,
            true,
        );
        assert_eq!(
            plan_patch(&locked, STUB),
            Err(PlanError::Unpatchable(Unpatchable::Locked))
        );
        assert!(matches!(locked.kind, SiteKind::Unpatchable(_)));
    }
}
