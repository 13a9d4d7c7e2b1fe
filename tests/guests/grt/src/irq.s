/*
 * Entry points of the 224 interrupt vectors 32..255, 16 bytes apart from grt_irq_stubs: each
 * pushes its vector and jumps to the common part, which saves the caller-saved registers,
 * calls grt_irq(vector) and returns with iretq. Stack alignment: the CPU's 5-word frame, the
 * vector and 9 registers are 15 words; one more keeps RSP 16-aligned at the call.
 */
.section .text.grt_irq, "ax"
.code64
.balign 16
.global grt_irq_stubs
grt_irq_stubs:
.set grt_irq_vector, 32
.rept 224
    .balign 16
    push grt_irq_vector
    jmp grt_irq_common
    .set grt_irq_vector, grt_irq_vector + 1
.endr

grt_irq_common:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    mov rdi, [rsp + 72]
    sub rsp, 8
    cld
    call grt_irq
    add rsp, 8
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    add rsp, 8                                 /* the vector */
    iretq
