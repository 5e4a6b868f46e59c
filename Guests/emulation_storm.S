// Emulation-failure storm: at CPL0, N times (N from the command line, default 1000) runs popcnt and int3, each of which the host's KVM here cannot emulate; its #BP handler resumes. Then writes the popcnt sum and the #BP count to port 0x503 and exits with status 0.
//
// Iteration i (N down to 1): RAX = i, `popcnt %rax, %rcx`, the sum += RCX, then `int3`,
// whose handler counts itself in R14 and returns with iretq to the next instruction. So the
// sum is popcount(1) + ... + popcount(N) and the count is N. Where CPL0 code is interpreted
// (the project's machines), each popcnt and int3 is a KVM_EXIT_INTERNAL_ERROR (emulation
// failure) that the VMM must finish: 2N of them. Where CPL0 code runs natively, none.
// At the end it writes to port 0x503, 4 bytes each: the sum, then the count; then status 0
// to port 0x501. Any vector but 3: "unexpected vector", status 99. A command line that is
// not a decimal number: "bad command line", 254. Bad boot info: 3.

#define REPORT_PORT 0x503

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    movq %rdi, %rbx
    call check_boot_info
    movq %rbx, %rdi
    movl $1000, %esi
    call cmdline_number
    movq %rax, %r12                 // R12 = iterations left
    leaq idt_unexpected_vector(%rip), %rdi
    leaq emulation_storm_handlers(%rip), %rsi
    call idt_install
    xorl %r13d, %r13d               // R13 = the popcnt sum
    xorl %r14d, %r14d               // R14 = #BP count
    testq %r12, %r12
    jz 2f
1:  movq %r12, %rax
    popcnt %rax, %rcx
    addq %rcx, %r13
    int3
    decq %r12
    jnz 1b
2:  movl $REPORT_PORT, %edx
    movl %r13d, %eax
    outl %eax, %dx
    movl %r14d, %eax
    outl %eax, %dx
    xorl %eax, %eax
    jmp debug_exit
    .size _start, . - _start

    .section .text.emulation_storm_bp, "ax", @progbits
emulation_storm_bp:
    incq %r14
    iretq

    .section .rodata.emulation_storm, "a", @progbits
    .balign 8
emulation_storm_handlers:
    .quad 3, emulation_storm_bp
    .quad 0, 0
