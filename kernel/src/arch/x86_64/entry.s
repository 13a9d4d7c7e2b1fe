/*
 * User-mode entry and exit.
 *
 * `syscall_entry` is the SYSCALL target. It builds the same frame a trap from user mode would
 * (SS, RSP, RFLAGS, CS, RIP, error 0, vector 0x100, the general registers) in the current
 * thread's register save area, whose end `current_regs_end` holds, then continues on the kernel
 * stack in `syscall_from_user`, which never returns.
 *
 * `return_to_user(regs)` loads a thread's saved frame and returns to it with IRETQ (also after a
 * syscall: IRETQ restores every register and has no SYSRET non-canonical-RIP pitfall).
 */
.section .text
.global syscall_entry
syscall_entry:
    mov [rip + user_rsp_scratch], rsp
    mov rsp, [rip + current_regs_end]
    push 0x1b                                 /* user SS */
    push qword ptr [rip + user_rsp_scratch]
    push r11                                  /* user RFLAGS */
    push 0x23                                 /* user CS */
    push rcx                                  /* user RIP */
    push 0
    push 0x100
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
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
    lea rsp, [rip + boot_stack_top]
    call syscall_from_user
    ud2

.global return_to_user
return_to_user:
    mov rsp, rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq

.section .bss
.balign 8
.global current_regs_end
current_regs_end: .skip 8
user_rsp_scratch: .skip 8
