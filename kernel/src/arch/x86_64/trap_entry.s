/*
 * Trap entry stubs: every vector pushes a uniform frame (an error code, 0 where the CPU pushes
 * none, then the vector number and the general registers) and calls `trap_dispatch` with a
 * pointer to it. Generated as plain text so that each stub can be read; `trap_stub_table` lists
 * them in the order of `idt::STUB_VECTORS`.
 *
 * From user mode the CPU has switched to TSS.RSP0, which points just past the current thread's
 * register save area, so the whole frame lands in the thread object; the kernel then continues
 * on its own stack in `trap_from_user`, which never returns (it resumes some thread through
 * `return_to_user`).
 *
 * The user-mode entry and exit paths follow the stubs (one file, so the register macros are
 * defined once).
 */
.section .text
/* The general registers in `TrapFrame` order (RAX pushed first, so R15 lies lowest). */
.macro SAVE_GPRS
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
.endm
.macro RESTORE_GPRS
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
.endm

trap_common:
    SAVE_GPRS
    mov rdi, rsp
    cld
    test byte ptr [rsp + 144], 3              /* CS of the interrupted context */
    jz 1f
    lea rsp, [rip + boot_stack_top]
    call trap_from_user
    ud2
1:  call trap_dispatch
    RESTORE_GPRS
    add rsp, 16
    iretq

trap_stub_0:
    push 0
    push 0
    jmp trap_common
trap_stub_1:
    push 0
    push 1
    jmp trap_common
trap_stub_2:
    push 0
    push 2
    jmp trap_common
trap_stub_3:
    push 0
    push 3
    jmp trap_common
trap_stub_4:
    push 0
    push 4
    jmp trap_common
trap_stub_5:
    push 0
    push 5
    jmp trap_common
trap_stub_6:
    push 0
    push 6
    jmp trap_common
trap_stub_7:
    push 0
    push 7
    jmp trap_common
trap_stub_8:
    push 8
    jmp trap_common
trap_stub_9:
    push 0
    push 9
    jmp trap_common
trap_stub_10:
    push 10
    jmp trap_common
trap_stub_11:
    push 11
    jmp trap_common
trap_stub_12:
    push 12
    jmp trap_common
trap_stub_13:
    push 13
    jmp trap_common
trap_stub_14:
    push 14
    jmp trap_common
trap_stub_15:
    push 0
    push 15
    jmp trap_common
trap_stub_16:
    push 0
    push 16
    jmp trap_common
trap_stub_17:
    push 17
    jmp trap_common
trap_stub_18:
    push 0
    push 18
    jmp trap_common
trap_stub_19:
    push 0
    push 19
    jmp trap_common
trap_stub_20:
    push 0
    push 20
    jmp trap_common
trap_stub_21:
    push 21
    jmp trap_common
trap_stub_22:
    push 0
    push 22
    jmp trap_common
trap_stub_23:
    push 0
    push 23
    jmp trap_common
trap_stub_24:
    push 0
    push 24
    jmp trap_common
trap_stub_25:
    push 0
    push 25
    jmp trap_common
trap_stub_26:
    push 0
    push 26
    jmp trap_common
trap_stub_27:
    push 0
    push 27
    jmp trap_common
trap_stub_28:
    push 0
    push 28
    jmp trap_common
trap_stub_29:
    push 29
    jmp trap_common
trap_stub_30:
    push 30
    jmp trap_common
trap_stub_31:
    push 0
    push 31
    jmp trap_common
trap_stub_32:
    push 0
    push 32
    jmp trap_common
trap_stub_48:
    push 0
    push 48
    jmp trap_common
trap_stub_49:
    push 0
    push 49
    jmp trap_common
trap_stub_50:
    push 0
    push 50
    jmp trap_common
trap_stub_51:
    push 0
    push 51
    jmp trap_common
trap_stub_52:
    push 0
    push 52
    jmp trap_common
trap_stub_53:
    push 0
    push 53
    jmp trap_common
trap_stub_54:
    push 0
    push 54
    jmp trap_common
trap_stub_55:
    push 0
    push 55
    jmp trap_common
trap_stub_56:
    push 0
    push 56
    jmp trap_common
trap_stub_57:
    push 0
    push 57
    jmp trap_common
trap_stub_58:
    push 0
    push 58
    jmp trap_common
trap_stub_59:
    push 0
    push 59
    jmp trap_common
trap_stub_60:
    push 0
    push 60
    jmp trap_common
trap_stub_61:
    push 0
    push 61
    jmp trap_common
trap_stub_62:
    push 0
    push 62
    jmp trap_common
trap_stub_63:
    push 0
    push 63
    jmp trap_common
trap_stub_255:
    push 0
    push 255
    jmp trap_common

.section .rodata
.balign 8
.global trap_stub_table
trap_stub_table:
    .quad trap_stub_0
    .quad trap_stub_1
    .quad trap_stub_2
    .quad trap_stub_3
    .quad trap_stub_4
    .quad trap_stub_5
    .quad trap_stub_6
    .quad trap_stub_7
    .quad trap_stub_8
    .quad trap_stub_9
    .quad trap_stub_10
    .quad trap_stub_11
    .quad trap_stub_12
    .quad trap_stub_13
    .quad trap_stub_14
    .quad trap_stub_15
    .quad trap_stub_16
    .quad trap_stub_17
    .quad trap_stub_18
    .quad trap_stub_19
    .quad trap_stub_20
    .quad trap_stub_21
    .quad trap_stub_22
    .quad trap_stub_23
    .quad trap_stub_24
    .quad trap_stub_25
    .quad trap_stub_26
    .quad trap_stub_27
    .quad trap_stub_28
    .quad trap_stub_29
    .quad trap_stub_30
    .quad trap_stub_31
    .quad trap_stub_32
    .quad trap_stub_48
    .quad trap_stub_49
    .quad trap_stub_50
    .quad trap_stub_51
    .quad trap_stub_52
    .quad trap_stub_53
    .quad trap_stub_54
    .quad trap_stub_55
    .quad trap_stub_56
    .quad trap_stub_57
    .quad trap_stub_58
    .quad trap_stub_59
    .quad trap_stub_60
    .quad trap_stub_61
    .quad trap_stub_62
    .quad trap_stub_63
    .quad trap_stub_255

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
    SAVE_GPRS
    mov rdi, rsp
    cld
    lea rsp, [rip + boot_stack_top]
    call syscall_from_user
    ud2

.global return_to_user
return_to_user:
    mov rsp, rdi
    RESTORE_GPRS
    add rsp, 16
    iretq

.section .bss
.balign 8
.global current_regs_end
current_regs_end: .skip 8
user_rsp_scratch: .skip 8
