//! The `realmode` test guest: a flat binary started in real mode at 0000:7c00 that prints
//! `hello from real mode` through the COM1 UART and exits 0 through port 0xf4.
//!
//! It is 16-bit assembly only, written position-independently (data is found relative to the
//! instruction pointer and addressed through DS = CS), so it runs wherever it is loaded even
//! though link.ld links every guest at 1 MiB. The build tool turns the ELF into the flat file by
//! taking its only PT_LOAD segment (`.text`; the program has no data of its own elsewhere).
#![no_std]
#![no_main]

core::arch::global_asm!(
    ".section .text.entry, \"ax\"",
    ".code16",
    ".global _start",
    "_start:",
    "    cli",
    "    cld",
    "    xor ax, ax",
    "    mov ss, ax",
    "    mov sp, 0x7c00",
    "    push cs",
    "    pop ds",
    // A near call over the message pushes the message's offset within CS (whatever CS:IP the
    // loader chose). Spelled out as E8 rel16: the assembler would pick a 32-bit call.
    "    .byte 0xe8",
    "    .short .Lrm_after_message - .Lrm_message",
    ".Lrm_message:",
    "    .asciz \"hello from real mode\\n\"",
    ".Lrm_after_message:",
    "    pop si",
    "2:  mov bl, byte ptr [si]",
    "    test bl, bl",
    "    jz 4f",
    "    mov dx, 0x3fd",
    // Wait for LSR bit 5 (transmit holding register empty), then write the byte.
    "5:  in al, dx",
    "    test al, 0x20",
    "    jz 5b",
    "    mov dx, 0x3f8",
    "    mov al, bl",
    "    out dx, al",
    "    inc si",
    "    jmp 2b",
    "4:  xor al, al",
    "    out 0xf4, al",
    "6:  cli",
    "    hlt",
    "    jmp 6b",
    ".code64",
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
