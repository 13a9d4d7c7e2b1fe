/*
 * The 32 exception entry points. Each pushes a dummy error code when the CPU pushes none, then
 * its vector, saves the general-purpose registers and calls grt_exception(frame) with a pointer
 * to them (the layout of `trap::Frame`). When grt_exception returns (an expected fault, with
 * the frame's RIP moved to the resume address), the registers are restored and iretq resumes.
 *
 * Stack alignment: the CPU aligns RSP to 16 before pushing its 5-word frame; with the error
 * code, the vector and 15 registers that is 22 words, so RSP is 16-aligned at the call.
 */
.section .text.grt_isr, "ax"
.code64

.macro grt_isr_noerr vector
grt_isr_\vector:
    push 0
    push \vector
    jmp grt_isr_common
.endm

.macro grt_isr_err vector
grt_isr_\vector:
    push \vector
    jmp grt_isr_common
.endm

grt_isr_noerr 0
grt_isr_noerr 1
grt_isr_noerr 2
grt_isr_noerr 3
grt_isr_noerr 4
grt_isr_noerr 5
grt_isr_noerr 6
grt_isr_noerr 7
grt_isr_err 8
grt_isr_noerr 9
grt_isr_err 10
grt_isr_err 11
grt_isr_err 12
grt_isr_err 13
grt_isr_err 14
grt_isr_noerr 15
grt_isr_noerr 16
grt_isr_err 17
grt_isr_noerr 18
grt_isr_noerr 19
grt_isr_noerr 20
grt_isr_err 21
grt_isr_noerr 22
grt_isr_noerr 23
grt_isr_noerr 24
grt_isr_noerr 25
grt_isr_noerr 26
grt_isr_noerr 27
grt_isr_noerr 28
grt_isr_err 29
grt_isr_err 30
grt_isr_noerr 31

grt_isr_common:
    push rax
    push rcx
    push rdx
    push rbx
    push rbp
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    cld
    call grt_exception
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rbp
    pop rbx
    pop rdx
    pop rcx
    pop rax
    add rsp, 16                               /* vector and error code */
    iretq

.section .rodata.grt_isr, "a"
.balign 8
.global grt_isr_table
grt_isr_table:
    .quad grt_isr_0, grt_isr_1, grt_isr_2, grt_isr_3, grt_isr_4, grt_isr_5, grt_isr_6, grt_isr_7
    .quad grt_isr_8, grt_isr_9, grt_isr_10, grt_isr_11, grt_isr_12, grt_isr_13, grt_isr_14
    .quad grt_isr_15, grt_isr_16, grt_isr_17, grt_isr_18, grt_isr_19, grt_isr_20, grt_isr_21
    .quad grt_isr_22, grt_isr_23, grt_isr_24, grt_isr_25, grt_isr_26, grt_isr_27, grt_isr_28
    .quad grt_isr_29, grt_isr_30, grt_isr_31
