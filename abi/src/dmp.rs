//! The protocol between a vmm-server and the DMP service (`dmp-service`, issue #6).
//!
//! A vmm-server whose guest is declared with `dmp = true` calls the service's `attach` portal
//! once, before the guest runs: label [`ATTACH`], words [`attach`], and its Vm capability
//! attached with READ and PATCH (what `VmRead`, `VmPatch` and `VmWindow`-based stubs need; the
//! service gets nothing else of the guest). The reply's word 0 is a [`crate::Status`]; with `Ok`
//! it carries a portal capability of the service, which the vmm-server installs as the vCPU's
//! profile portal (`exit_base + Exit::Profile`): from then on the kernel sends the guest's exit
//! profiles straight to the service, which patches hot sites and replies with mask 0.

/// Label of an attach call.
pub const ATTACH: u64 = 0xd3a0;

/// Words of an attach call.
pub mod attach {
    /// Guest-linear address of the Vm's DMP window (`VmWindow`).
    pub const WINDOW_LINEAR: usize = 0;
    /// Guest-physical address of its first page.
    pub const WINDOW_PHYSICAL: usize = 1;
    /// Its pages.
    pub const WINDOW_PAGES: usize = 2;
    /// Words in the call.
    pub const COUNT: usize = 3;
}

/// Bytes at the start of the window the kernel and the protocol reserve: bytes 0..48 hold the
/// kernel's words (`abi::vm::WINDOW_CR3` and the others), bytes 48..64 the VMM's ([`uart`]);
/// stubs go after them.
pub const WINDOW_RESERVED: u64 = 64;

/// Pages at the end of the window the guest kernel may write (`VmDmp`
/// [`SCRATCH`](crate::vm::dmp_op::SCRATCH)): the vmm-server of a `dmp = true` guest makes the
/// last page writable for the UART ring ([`uart`]). Stubs never go there: the stub area is
/// `WINDOW_RESERVED .. (pages - WINDOW_SCRATCH_PAGES) * 4096` of the window.
pub const WINDOW_SCRATCH_PAGES: u64 = 1;

/// The hypercall a UART stub makes to have the VMM drain the ring ([`uart`]): RAX = this number
/// (the first of the numbers the kernel hands to the VMM as `Exit::Hypercall`), no arguments. The
/// VMM answers RAX = `abi::vm::hypercall::OK` and changes no other register; it advances RIP past
/// the VMCALL/VMMCALL.
pub const UART_FLUSH: u64 = crate::vm::hypercall::VMM_FIRST;

/// Patched UART port I/O (issue #6, port I/O): what the vmm-server keeps in the DMP window for
/// the 16550 at COM1 and what the DMP service's UART stubs (`dmp::uart`) may rely on.
///
/// **Window words** (bytes 48..64 of the window, the VMM's; bytes 0..48 are the kernel's): two
/// little-endian 64-bit words whose low byte is a UART register; the other bytes are zero.
///
/// - [`WINDOW_UART_LSR`]: the line status register as a read of port `base + 5` would return it
///   now. A patched `in al, dx` of the LSR loads this byte instead of exiting. (The model's LSR
///   never changes on its own: it changes only when the guest accesses the UART, and every such
///   access that is not a ring append is a real exit after which the VMM rewrites the word.)
/// - [`WINDOW_UART_LCR`]: the line control register; bit 7 ([`LCR_DLAB`]) set means a write of
///   port `base + 0` is *not* plain output, so a patched `out dx, al` must execute the real
///   instruction (and exit). The VMM sets bit 7 also while the model is in loopback (MCR bit 4),
///   where a THR write is received data, not output.
///
/// The VMM writes both words when the guest starts and after every UART port access it handles;
/// a guest that overwrites them (the window's linear pages are read-only but its guest-physical
/// pages are ordinary RAM the guest may map) only misleads its own stubs: the VMM never reads
/// them.
///
/// **Output ring** (the window's last page, writable by the guest kernel, never executable):
///
/// | bytes of the page | holds |
/// |---|---|
/// | [`RING_COUNT`] (8) | little-endian byte count, 0 ..= [`RING_CAPACITY`] |
/// | [`RING_DATA`] .. + [`RING_CAPACITY`] | the bytes, in the order the guest wrote them to THR |
///
/// A patched `out dx, al` to THR with DLAB clear appends AL at `RING_DATA + (count mod
/// RING_CAPACITY)` (a stub never writes outside the ring, whatever the count says), increments
/// the count and makes hypercall [`UART_FLUSH`] when the byte is `\n` or the ring is full. The
/// VMM then reads `min(count, RING_CAPACITY)` bytes (a hostile count is clamped), feeds them to
/// its UART model exactly as if they had been written to THR one by one (same line splitting,
/// same `[<guest>]` prefix, same output), and sets the count to 0. It drains the ring the same way
/// before it handles any port I/O exit (the UART's or another port's) and when the guest ends, so
/// that output keeps its order.
pub mod uart {
    /// Byte offset in the window of the LSR word.
    pub const WINDOW_UART_LSR: u64 = 48;
    /// Byte offset in the window of the LCR word.
    pub const WINDOW_UART_LCR: u64 = 56;
    /// LCR bit 7: divisor latch access (also set by the VMM while the UART loops back).
    pub const LCR_DLAB: u8 = 0x80;
    /// Byte offset in the ring page of the count word.
    pub const RING_COUNT: u64 = 0;
    /// Byte offset in the ring page of the first byte.
    pub const RING_DATA: u64 = 8;
    /// Bytes the ring holds (a power of two: stubs mask the count with `RING_CAPACITY - 1`).
    pub const RING_CAPACITY: u64 = 2048;
    /// Byte offset in the window of the ring page, for a window of `pages` pages.
    pub const fn ring_offset(pages: u64) -> u64 {
        pages.saturating_sub(super::WINDOW_SCRATCH_PAGES) * 4096
    }
}

/// Byte offset in the window's scratch page of the word the DMP fault stub keeps: the address
/// of the last page fault it handed to the guest (what CR2 must read after hidden faults).
pub const SCRATCH_LAST_FAULT: u64 = 4096 - 8;
/// The DMP fault stub's own stack in the scratch page: `[SCRATCH_STACK_TOP - SCRATCH_STACK_SIZE,
/// SCRATCH_STACK_TOP)`, between the UART ring and the last-fault word.
pub const SCRATCH_STACK_TOP: u64 = 4096 - 16;
pub const SCRATCH_STACK_SIZE: u64 = 1024;

// The scratch page holds the UART ring, then the fault stub's stack and last-fault word.
const _: () = assert!(
    uart::RING_DATA + uart::RING_CAPACITY <= SCRATCH_STACK_TOP - SCRATCH_STACK_SIZE
        && SCRATCH_STACK_TOP <= SCRATCH_LAST_FAULT
);
