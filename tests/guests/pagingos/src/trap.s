/*
 * pagingos trap stubs and the way into ring 3.
 *
 * Each stub pushes a dummy error code when the CPU pushes none, then its vector, and jumps to
 * pg_trap_common, which looks at the saved CS:
 *
 * - from ring 3: the CPU switched to TSS.RSP0, which the kernel set to the end of the running
 *   process's context (arch::Ctx), so the frame already lies in it; the stub pushes the
 *   general-purpose registers (completing the context), restores the kernel stack and the
 *   callee-saved registers saved by pagingos_run_user and returns from that call;
 * - from ring 0: the registers are pushed on the current stack; pagingos_kernel_fault(frame)
 *   resumes an expected page fault (a kernel probe of a user address, see arch::probe_read)
 *   at its recovery address; any other trap is unexpected and pagingos_kernel_trap(frame)
 *   prints it and ends the guest.
 *
 * pagingos_run_user(ctx): saves the kernel's callee-saved registers and stack pointer, loads
 * every register from ctx and enters ring 3 with iretq.
 */
.section .text.pagingos_trap, "ax"
.code64

.macro pg_isr_noerr vector
.global pagingos_isr_\vector
pagingos_isr_\vector:
    push 0
    push \vector
    jmp pg_trap_common
.endm

.macro pg_isr_err vector
.global pagingos_isr_\vector
pagingos_isr_\vector:
    push \vector
    jmp pg_trap_common
.endm

pg_isr_noerr 0
pg_isr_noerr 1
pg_isr_noerr 2
pg_isr_noerr 3
pg_isr_noerr 4
pg_isr_noerr 5
pg_isr_noerr 6
pg_isr_noerr 7
pg_isr_err 8
pg_isr_noerr 9
pg_isr_err 10
pg_isr_err 11
pg_isr_err 12
pg_isr_err 13
pg_isr_err 14
pg_isr_noerr 15
pg_isr_noerr 16
pg_isr_err 17
pg_isr_noerr 18
pg_isr_noerr 19
pg_isr_noerr 20
pg_isr_err 21
pg_isr_noerr 22
pg_isr_noerr 23
pg_isr_noerr 24
pg_isr_noerr 25
pg_isr_noerr 26
pg_isr_noerr 27
pg_isr_noerr 28
pg_isr_err 29
pg_isr_err 30
pg_isr_noerr 31
pg_isr_noerr 128

pg_trap_common:
    /* vector at [rsp], error at +8, RIP at +16, CS at +24 */
    test byte ptr [rsp + 24], 3
    jz .Lpg_trap_kernel
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
    cld
    mov rsp, [rip + pg_kernel_rsp]
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret

.Lpg_trap_kernel:
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
    cld
    /* an expected kernel page fault (arch::probe_read/probe_write) resumes at its recovery
       address; anything else ends the guest */
    mov rdi, rsp
    mov rbx, rsp
    and rsp, -16
    call pagingos_kernel_fault
    mov rsp, rbx
    test al, al
    jz .Lpg_trap_fatal
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
.Lpg_trap_fatal:
    mov rdi, rsp
    and rsp, -16
    call pagingos_kernel_trap
    ud2

.global pagingos_run_user
pagingos_run_user:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov [rip + pg_kernel_rsp], rsp
    mov rsp, rdi
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

.section .rodata.pagingos_trap, "a"
.balign 8
.global pagingos_isr_table
pagingos_isr_table:
    .quad pagingos_isr_0, pagingos_isr_1, pagingos_isr_2, pagingos_isr_3, pagingos_isr_4, pagingos_isr_5, pagingos_isr_6, pagingos_isr_7
    .quad pagingos_isr_8, pagingos_isr_9, pagingos_isr_10, pagingos_isr_11, pagingos_isr_12, pagingos_isr_13, pagingos_isr_14, pagingos_isr_15
    .quad pagingos_isr_16, pagingos_isr_17, pagingos_isr_18, pagingos_isr_19, pagingos_isr_20, pagingos_isr_21, pagingos_isr_22, pagingos_isr_23
    .quad pagingos_isr_24, pagingos_isr_25, pagingos_isr_26, pagingos_isr_27, pagingos_isr_28, pagingos_isr_29, pagingos_isr_30, pagingos_isr_31

.section .bss.pagingos_trap, "aw", @nobits
.balign 8
pg_kernel_rsp:
    .skip 8
