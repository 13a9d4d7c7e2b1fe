//! The out-of-line code a patched site jumps to.
//!
//! A stub is, in order: the replacement for the hot instruction (any sequence; see
//! [`crate::replacement`]), the other displaced instructions, and a jump back to the first
//! instruction after the displaced range ([`PatchPlan::resume`]). iced-x86's block encoder
//! encodes it at the stub's guest-linear address, so a displaced instruction's RIP-relative
//! operand still reaches the same absolute address (an error if that is beyond ±2 GiB of the
//! stub), and the jump back is a `rel32` (or shorter) branch.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use iced_x86::{BlockEncoder, BlockEncoderOptions, Code, Instruction, InstructionBlock};

use crate::classify::Bitness;
use crate::plan::PatchPlan;

/// Why no stub was built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StubError {
    /// The stub does not fit its slot.
    TooLong { len: usize, slot: usize },
    /// iced-x86 could not encode it (e.g. a RIP-relative target beyond ±2 GiB of the stub).
    Encode(String),
}

impl fmt::Display for StubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StubError::TooLong { len, slot } => {
                write!(f, "stub of {len} bytes does not fit a {slot}-byte slot")
            }
            StubError::Encode(e) => write!(f, "encoding: {e}"),
        }
    }
}

/// An encoded stub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stub {
    /// Guest-linear address the code must be placed at ([`PatchPlan::stub`]).
    pub address: u64,
    pub code: Vec<u8>,
    /// Where the stub's last instruction jumps to ([`PatchPlan::resume`]).
    pub resume: u64,
    /// Offsets in `code` of the relocated displaced instructions (after the hot one), then of the
    /// jump back; `None` where the block encoder rewrote an instruction into several (a branch
    /// out of `rel32` reach becomes an indirect jump through a constant).
    pub offsets: Vec<Option<usize>>,
}

/// Encode the stub of `plan`, with `replacement` in place of the hot instruction, for a slot of
/// `slot_len` bytes at [`PatchPlan::stub`].
pub fn build_stub(
    plan: &PatchPlan,
    replacement: &[Instruction],
    slot_len: usize,
) -> Result<Stub, StubError> {
    let jmp = match plan.bitness {
        Bitness::Bits64 => Code::Jmp_rel32_64,
        Bitness::Bits32 => Code::Jmp_rel32_32,
    };
    let resume = plan.resume();
    let back =
        Instruction::with_branch(jmp, resume).map_err(|e| StubError::Encode(e.to_string()))?;
    let mut insns = Vec::with_capacity(replacement.len() + plan.displaced.len() + 1);
    insns.extend_from_slice(replacement);
    insns.extend(plan.displaced.iter().skip(1).copied());
    insns.push(back);
    let result = BlockEncoder::encode(
        plan.bitness.bits(),
        InstructionBlock::new(&insns, plan.stub),
        BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )
    .map_err(|e| StubError::Encode(e.to_string()))?;
    let code = result.code_buffer;
    if code.len() > slot_len {
        return Err(StubError::TooLong {
            len: code.len(),
            slot: slot_len,
        });
    }
    let offsets = result.new_instruction_offsets[replacement.len()..]
        .iter()
        .map(|&o| (o != u32::MAX).then_some(o as usize))
        .collect();
    Ok(Stub {
        address: plan.stub,
        code,
        resume,
        offsets,
    })
}
