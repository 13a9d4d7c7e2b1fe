/*
 * Multiboot2 entry: GRUB starts us in 32-bit protected mode with paging off, EAX = the Multiboot2
 * magic and EBX = the physical address of the boot information. This stub checks both the magic
 * and long-mode support (each failure gets a serial message and a failure power-off, never a
 * triple fault), maps the first 4 GiB identity, at the direct-map base and at the kernel base with
 * 2 MiB pages, enters long mode and calls `multiboot2_main(magic, info_phys)` in the higher half.
 *
 * Everything runs before the kernel's own mappings exist, so every symbol is used at its physical
 * address: `sym - KERNEL_OFFSET`.
 */
.set KERNEL_OFFSET, 0xffffffff80000000
.set MB2_MAGIC, 0xe85250d6
.set MB2_HEADER_LEN, mb2_header_end - mb2_header
.set COM1, 0x3f8

.section .multiboot2_header, "a"
.balign 8
mb2_header:
    .long MB2_MAGIC
    .long 0                                   /* architecture: i386 protected mode */
    .long MB2_HEADER_LEN
    .long 0x100000000 - (MB2_MAGIC + MB2_HEADER_LEN)
    .balign 8
    .short 3, 0                               /* entry address tag */
    .long 12
    .long _start32 - KERNEL_OFFSET
    .balign 8
    .short 0, 0                               /* end tag */
    .long 8
mb2_header_end:

.section .text.boot32, "ax"
.code32
.global _start32
_start32:
    cli
    cld
    mov edi, eax                              /* keep magic and info pointer for Rust */
    mov esi, ebx
    mov esp, offset boot_stack_top - KERNEL_OFFSET

    cmp edi, 0x36d76289
    jne .Lbad_magic

    /* Long mode needs CPUID leaf 0x80000001 EDX bit 29. */
    mov eax, 0x80000000
    cpuid
    cmp eax, 0x80000001
    jb .Lno_long_mode
    mov eax, 0x80000001
    cpuid
    test edx, 1 << 29
    jz .Lno_long_mode

    /* Four page directories of 2 MiB pages cover physical 0..4 GiB. */
    mov ecx, 0
1:  mov eax, ecx
    shl eax, 21                               /* low half of physical address */
    or eax, 0x83                              /* present, writable, 2 MiB */
    mov ebx, ecx
    shr ebx, 11                               /* high half: (index * 2 MiB) >> 32 */
    mov [boot_pd - KERNEL_OFFSET + ecx * 8], eax
    mov [boot_pd - KERNEL_OFFSET + ecx * 8 + 4], ebx
    inc ecx
    cmp ecx, 2048
    jne 1b

    /* Low PDPT: entries 0..3 point at the four directories. */
    mov ecx, 0
2:  mov eax, ecx
    shl eax, 12
    add eax, offset boot_pd - KERNEL_OFFSET
    or eax, 0x3
    mov [boot_pdpt_low - KERNEL_OFFSET + ecx * 8], eax
    inc ecx
    cmp ecx, 4
    jne 2b

    /* High PDPT entry 510 (0xffffffff80000000) maps physical 0..1 GiB for the kernel image. */
    mov eax, offset boot_pd - KERNEL_OFFSET
    or eax, 0x3
    mov [boot_pdpt_high - KERNEL_OFFSET + 510 * 8], eax

    /* PML4: identity (0), direct map (256, 0xffff800000000000), kernel (511). */
    mov eax, offset boot_pdpt_low - KERNEL_OFFSET
    or eax, 0x3
    mov [boot_pml4 - KERNEL_OFFSET], eax
    mov [boot_pml4 - KERNEL_OFFSET + 256 * 8], eax
    mov eax, offset boot_pdpt_high - KERNEL_OFFSET
    or eax, 0x3
    mov [boot_pml4 - KERNEL_OFFSET + 511 * 8], eax

    mov eax, offset boot_pml4 - KERNEL_OFFSET
    mov cr3, eax
    mov eax, cr4
    or eax, 1 << 5                            /* PAE */
    mov cr4, eax
    mov ecx, 0xc0000080                       /* EFER: long mode enable */
    rdmsr
    or eax, 1 << 8
    wrmsr
    mov eax, cr0
    or eax, (1 << 31) | (1 << 16) | 1         /* PG, WP, PE */
    mov cr0, eax

    lgdt [boot_gdt_ptr - KERNEL_OFFSET]
    push 0x08
    /* push imm32, spelled out: the assembler would otherwise pick a 16-bit push. */
    .byte 0x68
    .long long_mode_low - KERNEL_OFFSET
    retf

.Lbad_magic:
    mov ebx, offset msg_bad_magic - KERNEL_OFFSET
    jmp .Lfail
.Lno_long_mode:
    mov ebx, offset msg_no_long_mode - KERNEL_OFFSET
.Lfail:
    mov dx, COM1
3:  mov al, [ebx]
    test al, al
    jz 4f
    out dx, al
    inc ebx
    jmp 3b
    /* isa-debug-exit (QEMU) with the failure value, then "Shutdown" to Bochs's port 0x8900. */
4:  mov dx, 0xf4
    mov eax, 0x11
    out dx, eax
    mov dx, 0x8900
    mov ebx, offset msg_shutdown - KERNEL_OFFSET
5:  mov al, [ebx]
    test al, al
    jz 6f
    out dx, al
    inc ebx
    jmp 5b
6:  cli
    hlt
    jmp 6b

.code64
long_mode_low:
    /* Still at a physical address; jump to the higher half. */
    movabs rax, offset long_mode_high
    jmp rax

.section .text, "ax"
long_mode_high:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    lea rsp, [rip + boot_stack_top]
    xor ebp, ebp
    /* edi = magic, esi = info physical address (upper halves are zero after 32-bit moves). */
    call multiboot2_main
    ud2

.section .rodata
.balign 8
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff                  /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff                  /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .short boot_gdt_end - boot_gdt - 1
    .long boot_gdt - KERNEL_OFFSET
msg_bad_magic:
    .asciz "\r\nFATAL: no Multiboot2 boot information (bad magic in EAX); boot with a Multiboot2 or Limine loader\r\npoweroff: failure bad boot magic\r\n"
msg_no_long_mode:
    .asciz "\r\nFATAL: this CPU has no long mode (x86-64); the kernel cannot run\r\npoweroff: failure no long mode\r\n"
msg_shutdown:
    .asciz "Shutdown"

.section .bss.boot_tables, "aw", @nobits
.balign 4096
boot_pml4:      .skip 4096
boot_pdpt_low:  .skip 4096
boot_pdpt_high: .skip 4096
boot_pd:        .skip 4 * 4096
