/*
 * Guest entry and exit for both backends. The kernel has one stack: an entry abandons whatever
 * the kernel had on it, and every exit starts afresh at `boot_stack_top` in `vm_exited`, like an
 * entry from user mode. The guest's general registers live in a `Gprs` block (RAX RCX RDX RBX
 * RSP RBP RSI RDI R8..R15, 8 bytes each); SVM keeps RAX and RSP in the VMCB, VMX keeps RSP in
 * the VMCS, so those slots are copied by Rust code around the run.
 */
.section .text

.macro LOAD_GUEST_GPRS base
    mov rcx, [\base + 8]
    mov rdx, [\base + 16]
    mov rbx, [\base + 24]
    mov rbp, [\base + 40]
    mov rsi, [\base + 48]
    mov rdi, [\base + 56]
    mov r8,  [\base + 64]
    mov r9,  [\base + 72]
    mov r10, [\base + 80]
    mov r11, [\base + 88]
    mov r12, [\base + 96]
    mov r13, [\base + 104]
    mov r14, [\base + 112]
    mov r15, [\base + 120]
.endm

.macro STORE_GUEST_GPRS base
    mov [\base + 8],   rcx
    mov [\base + 16],  rdx
    mov [\base + 24],  rbx
    mov [\base + 40],  rbp
    mov [\base + 48],  rsi
    mov [\base + 56],  rdi
    mov [\base + 64],  r8
    mov [\base + 72],  r9
    mov [\base + 80],  r10
    mov [\base + 88],  r11
    mov [\base + 96],  r12
    mov [\base + 104], r13
    mov [\base + 112], r14
    mov [\base + 120], r15
.endm

/*
 * svm_run(rdi = Gprs*, rsi = guest VMCB physical address, rdx = host VMCB physical address) -> !
 *
 * VMSAVE/VMLOAD switch the state VMRUN leaves alone (FS, GS, TR, LDTR, KernelGSBase, STAR,
 * LSTAR, CSTAR, SFMASK, SYSENTER_*): the host's goes to the host VMCB first and comes back
 * after the exit. CLGI before STI: physical interrupts stay held until VMRUN sets GIF, then
 * make the guest exit (V_INTR_MASKING), and after the exit wait in the APIC until the kernel
 * takes them.
 */
.global svm_run
svm_run:
    push rdi
    push rsi
    push rdx
    mov rax, rdx
    vmsave rax
    clgi
    sti
    mov rax, [rsp + 8]
    vmload rax
    mov rax, [rsp + 16]
    LOAD_GUEST_GPRS rax
    mov rax, [rsp + 8]
    vmrun rax
    push rax
    mov rax, [rsp + 24]
    STORE_GUEST_GPRS rax
    pop rax
    vmsave rax
    mov rax, [rsp]
    vmload rax
    cli
    stgi
    lea rsp, [rip + boot_stack_top]
    call vm_exited
    ud2

/*
 * vmx_run(rdi = Gprs*, rsi = 1 if the VMCS was launched) -> !
 *
 * The VMCS's host RSP is `boot_stack_top - 16` and host RIP `vmx_exit_stub`; the Gprs pointer
 * waits in `vmx_gprs`. A failed VMLAUNCH/VMRESUME falls through to `vmx_entry_failed`.
 */
.global vmx_run
vmx_run:
    mov [rip + vmx_gprs], rdi
    mov rax, rdi
    test rsi, rsi
    LOAD_GUEST_GPRS rax
    mov rax, [rax]
    jnz 1f
    vmlaunch
    jmp 2f
1:  vmresume
2:  lea rsp, [rip + boot_stack_top]
    call vmx_entry_failed
    ud2

.global vmx_exit_stub
vmx_exit_stub:
    push rax
    mov rax, [rip + vmx_gprs]
    STORE_GUEST_GPRS rax
    pop qword ptr [rax]
    lea rsp, [rip + boot_stack_top]
    call vm_exited
    ud2

.section .bss
.balign 8
vmx_gprs: .skip 8
