/*
 * Limine entry: Limine starts us in long mode, in the higher half, on a stack in
 * bootloader-reclaimable memory. Move to the kernel's own boot stack first so that nothing we
 * keep lives in memory the kernel may later reuse.
 */
.section .text
.global limine_entry
limine_entry:
    cli
    cld
    lea rsp, [rip + boot_stack_top]
    xor ebp, ebp
    call limine_main
    ud2
