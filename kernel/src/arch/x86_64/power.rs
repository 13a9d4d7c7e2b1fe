//! Ending the system: a last serial line in the form of [`abi::exit`], then QEMU's isa-debug-exit,
//! then Bochs's shutdown port, then a halt loop for machines that have neither.

use core::fmt;

use abi::exit;
use x86::io::{outb, outl};

use crate::println;

/// Reports success and powers off.
pub fn succeed() -> ! {
    println!("{}", exit::SUCCESS_LINE);
    off(exit::DEBUG_EXIT_SUCCESS)
}

/// Reports failure with a reason and powers off.
pub fn fail(reason: fmt::Arguments) -> ! {
    crate::klog::force_unlock();
    println!("FATAL: {reason}");
    println!("{} {reason}", exit::FAILURE_LINE);
    off(exit::DEBUG_EXIT_FAILURE)
}

fn off(debug_exit_value: u32) -> ! {
    super::serial::flush();
    // SAFETY: writes to the two emulator exit ports; on a machine without these devices the ports
    // are unclaimed and the writes do nothing. Interrupts are disabled so that nothing runs after.
    unsafe {
        x86::irq::disable();
        outl(exit::DEBUG_EXIT_PORT, debug_exit_value);
        for byte in b"Shutdown" {
            outb(exit::BOCHS_SHUTDOWN_PORT, *byte);
        }
    }
    loop {
        // SAFETY: interrupts are off; `hlt` parks the CPU for good.
        unsafe { x86::halt() };
    }
}
