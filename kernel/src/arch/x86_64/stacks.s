/*
 * The kernel's static stacks, each above a guard page. The kernel's page tables leave every guard
 * page unmapped (see `arch::stacks::guard_pages`), so running off the bottom of a stack faults
 * instead of corrupting memory; the double-fault handler runs on its own stack and says so.
 */
.section .bss.stacks, "aw", @nobits
.balign 4096
.global boot_stack_guard
boot_stack_guard:       .skip 4096
boot_stack_bottom:      .skip 64 * 1024
.global boot_stack_top
boot_stack_top:
.global ist_double_fault_guard
ist_double_fault_guard: .skip 4096
                        .skip 16 * 1024
.global ist_double_fault_top
ist_double_fault_top:
.global ist_nmi_guard
ist_nmi_guard:          .skip 4096
                        .skip 16 * 1024
.global ist_nmi_top
ist_nmi_top:
.global ist_machine_check_guard
ist_machine_check_guard: .skip 4096
                        .skip 16 * 1024
.global ist_machine_check_top
ist_machine_check_top:
