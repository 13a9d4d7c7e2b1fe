/*
 * The guests' way into 64-bit Rust.
 *
 * grt_start32: for Multiboot 1 and 2 kernels. The loader starts us in 32-bit protected mode with
 * paging off and flat segments, EAX = its magic and EBX = the boot information's physical
 * address. We check for long mode (a message and exit status 2 if it is missing), identity-map
 * the first 4 GiB with 2 MiB pages, enable long mode and continue at grt_start64.
 *
 * grt_start64: in 64-bit mode with the first 4 GiB identity-mapped (ours, or the loader's for a
 * plain ELF64 guest), EDI = boot magic, ESI = boot information. Loads our own GDT (the loader's
 * may live in memory we do not know about), sets the stack and calls
 * grt_rust_entry(magic, info), which never returns.
 *
 * Everything is linked at its physical address (tests/guests/link.ld), so absolute addresses
 * work before paging is on.
 */
.set GRT_COM1, 0x3f8
.set GRT_EXIT_PORT, 0xf4

.section .text.grt32, "ax"
.code32
.global grt_start32
grt_start32:
    cli
    cld
    mov edi, eax                              /* magic and info pointer, kept for Rust */
    mov esi, ebx
    mov esp, offset grt_stack_top

    /* Long mode needs CPUID leaf 0x80000001 EDX bit 29. */
    mov eax, 0x80000000
    cpuid
    cmp eax, 0x80000001
    jb .Lgrt_no_long_mode
    mov eax, 0x80000001
    cpuid
    test edx, 1 << 29
    jz .Lgrt_no_long_mode

    /* Clear the PML4 and the PDPT (.bss is normally zeroed by the loader; do not rely on it). */
    xor ecx, ecx
1:  mov dword ptr [grt_pml4 + ecx * 4], 0
    mov dword ptr [grt_pdpt + ecx * 4], 0
    inc ecx
    cmp ecx, 1024
    jne 1b

    /* Four page directories of 2 MiB pages map physical 0..4 GiB. */
    xor ecx, ecx
2:  mov eax, ecx
    shl eax, 21                               /* low half of index * 2 MiB */
    or eax, 0x83                              /* present, writable, 2 MiB page */
    mov ebx, ecx
    shr ebx, 11                               /* high half: (index * 2 MiB) >> 32 */
    mov [grt_pd + ecx * 8], eax
    mov [grt_pd + ecx * 8 + 4], ebx
    inc ecx
    cmp ecx, 2048
    jne 2b

    /* PDPT entries 0..3 point at the four directories, PML4 entry 0 at the PDPT. */
    xor ecx, ecx
3:  mov eax, ecx
    shl eax, 12
    add eax, offset grt_pd
    or eax, 0x3
    mov [grt_pdpt + ecx * 8], eax
    inc ecx
    cmp ecx, 4
    jne 3b
    mov eax, offset grt_pdpt
    or eax, 0x3
    mov [grt_pml4], eax

    mov eax, offset grt_pml4
    mov cr3, eax
    mov eax, cr4
    or eax, 1 << 5                            /* PAE */
    mov cr4, eax
    mov ecx, 0xc0000080                       /* EFER.LME */
    rdmsr
    or eax, 1 << 8
    wrmsr
    mov eax, cr0
    or eax, (1 << 31) | (1 << 16) | 1         /* PG, WP, PE */
    mov cr0, eax

    lgdt [grt_gdt_ptr]
    push 0x08
    /* push imm32, spelled out: the assembler would otherwise pick a shorter encoding. */
    .byte 0x68
    .long grt_start64
    retf

.Lgrt_no_long_mode:
    mov ebx, offset grt_msg_no_long_mode
    mov dx, GRT_COM1
4:  mov al, [ebx]
    test al, al
    jz 5f
    out dx, al
    inc ebx
    jmp 4b
5:  mov al, 2
    out GRT_EXIT_PORT, al
6:  cli
    hlt
    jmp 6b

.code64
.section .text.grt64, "ax"
.global grt_start64
grt_start64:
    cli
    cld
    lgdt [rip + grt_gdt_ptr]
    lea rsp, [rip + grt_stack_top]
    push 0x08
    lea rax, [rip + 7f]
    push rax
    retfq
7:  mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    xor ebp, ebp
    /* edi = magic, esi = info (32-bit values; grt_rust_entry takes u32s). */
    call grt_rust_entry
    ud2

.section .rodata.grt, "a"
.balign 8
grt_gdt:
    .quad 0
    .quad 0x00af9a000000ffff                  /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff                  /* 0x10: data */
grt_gdt_end:
/* 10 bytes: a 64-bit lgdt reads all of them, a 32-bit one the first 6. */
grt_gdt_ptr:
    .short grt_gdt_end - grt_gdt - 1
    .quad grt_gdt
grt_msg_no_long_mode:
    .asciz "grt: this CPU has no long mode; a 64-bit guest cannot run\n"

.section .bss.grt, "aw", @nobits
.balign 4096
grt_pml4:   .skip 4096
grt_pdpt:   .skip 4096
grt_pd:     .skip 4 * 4096
grt_stack:  .skip 64 * 1024
.global grt_stack_top
grt_stack_top:
