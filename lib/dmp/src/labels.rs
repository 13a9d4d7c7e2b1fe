//! Instruction lists with labels, for stubs with internal branches: a label is a made-up address
//! (1, 2, ...) given to the instruction bound to it, which iced-x86's block encoder turns into the
//! real one (as its `CodeAssembler` does, which this crate does not enable). Callers make sure no
//! guest instruction they mix in lies that low.

use alloc::vec::Vec;
use iced_x86::{Code, IcedError, Instruction};

#[derive(Default)]
pub(crate) struct Labeled {
    pub insns: Vec<Instruction>,
    labels: u64,
    pending: Option<u64>,
}

impl Labeled {
    /// A fresh label.
    pub fn label(&mut self) -> u64 {
        self.labels += 1;
        self.labels
    }

    /// Binds `label` to the next instruction.
    pub fn bind(&mut self, label: u64) {
        self.pending = Some(label);
    }

    pub fn op(&mut self, mut insn: Instruction) {
        if let Some(label) = self.pending.take() {
            insn.set_ip(label);
        }
        self.insns.push(insn);
    }

    /// A branch `code` to `label`.
    pub fn jump(&mut self, code: Code, label: u64) -> Result<(), IcedError> {
        self.op(Instruction::with_branch(code, label)?);
        Ok(())
    }
}
