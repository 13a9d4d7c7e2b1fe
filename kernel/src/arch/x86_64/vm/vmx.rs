//! Intel VMX: VMXON, one VMCS per vCPU, EPT, VPID. (Being built; until then `init` reports
//! that guests are unavailable on VMX machines.)

use abi::vm::word;

use super::{BadState, Gprs, HwExit};

pub fn init() -> Result<(), &'static str> {
    Err("the VMX backend is not built yet")
}

pub fn after_exit() {}

pub fn note_entry_failure() {}

pub fn other_kind(_raw: u64) -> u64 {
    abi::vm::other::UNKNOWN
}

/// One vCPU's VMCS.
pub struct Vmcs {
    _frame: u64,
}

impl Vmcs {
    pub fn new(_nested_root: u64, _vpid: u16) -> Option<Vmcs> {
        None
    }
    pub fn free(self) {}
    pub fn read(&self, _gprs: &Gprs, _mask: u64, _out: &mut [u64; word::COUNT]) {}
    pub fn write(&mut self, _gprs: &mut Gprs, _mask: u64, _w: &[u64; word::COUNT]) {}
    pub fn inject(&mut self, _event: u64, _error: u64) {}
    pub fn request_window(&mut self, _on: bool) {}
    pub fn flush_on_entry(&mut self) {}
    pub fn entered(&mut self) {}
    pub fn interrupted_event(&self) -> Option<(u64, u64)> {
        None
    }
    pub fn check(&self, _mask: u64, _w: &[u64; word::COUNT]) -> Result<(), BadState> {
        Err(BadState("VMX not built"))
    }
    pub fn exit(&self, _gprs: &Gprs) -> HwExit {
        HwExit {
            exit: virt::exit::Exit::Unknown { reason: 0 },
            raw: 0,
            info1: 0,
            info2: 0,
            instruction_len: 0,
            exception: 0,
        }
    }
    /// # Safety
    /// Never called: `new` makes no VMCS yet.
    pub unsafe fn run(&mut self, _gprs: &mut Gprs) -> ! {
        panic!("VMX backend not built")
    }
}
