// Runs forever: prints "spinning", drops to CPL3 (IF=0) and spins in a jmp-to-itself loop with no exits, until the host stops it.
//
// Output: "spinning\n". Then the guest loads the GDT of common/ring3.S and enters CPL3 with
// iretq (CS 0x23, SS 0x1B, RFLAGS 0x3002: IOPL=3, IF=0), where it executes `1: jmp 1b`
// forever. CPL3 code runs natively on the project's machines (CPL0 code would be
// interpreted), and the loop makes no port I/O, MMIO or hlt exits and takes no
// interrupts, so the only way out is the host: a signal that kicks the vCPU out of
// KVM_RUN (immediate_exit), a timeout, and so on. There is no status of its own.
// Uses neither the boot-info block nor the command line.

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    leaq text_spinning(%rip), %rsi
    call com1_puts
    leaq user_spin(%rip), %rdi
    jmp enter_ring3
    .size _start, . - _start

// CPL3 from here on.
    .section .text.user_spin, "ax", @progbits
    .type user_spin, @function
user_spin:
1:  jmp 1b
    .size user_spin, . - user_spin

    .section .rodata.spin, "a", @progbits
text_spinning:
    .asciz "spinning\n"
