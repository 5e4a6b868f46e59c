// CPUID probe: runs CPUID for leaves 0, 1, 7, 0xA, 0xB (subleaves 0-2), 0xD (subleaves 0-1), 0x40000000 and 0x40000001 and prints "cpuid LLLLLLLL.SS eax=... ebx=... ecx=... edx=..." for each on COM1, then exits with status 0.
//
// For each (leaf, subleaf) of the table below, in order, it executes CPUID with EAX = leaf
// and ECX = subleaf and prints one line
//   cpuid LLLLLLLL.SS eax=XXXXXXXX ebx=XXXXXXXX ecx=XXXXXXXX edx=XXXXXXXX
// (leaf: 8 hex digits, subleaf: 2, registers: 8 each; upper case; "\n" only). Then it ends
// the VM with status 0 through the debug-exit port 0x501. No IDT: CPUID does not fault.
// Uses neither the boot-info block nor the command line.

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    leaq cpuid_table(%rip), %rbp    // RBP = the next (leaf, subleaf) pair
1:  leaq cpuid_table_end(%rip), %rax
    cmpq %rax, %rbp
    jae 2f
    movl 0(%rbp), %eax              // leaf
    movl 4(%rbp), %ecx              // subleaf
    cpuid
    movl %eax, %r12d
    movl %ebx, %r13d
    movl %ecx, %r14d
    movl %edx, %r15d

    leaq text_cpuid(%rip), %rsi
    movl 0(%rbp), %edi
    movl $8, %ecx
    call com1_field
    leaq text_dot(%rip), %rsi
    movl 4(%rbp), %edi
    movl $2, %ecx
    call com1_field
    leaq text_eax(%rip), %rsi
    movl %r12d, %edi
    movl $8, %ecx
    call com1_field
    leaq text_ebx(%rip), %rsi
    movl %r13d, %edi
    movl $8, %ecx
    call com1_field
    leaq text_ecx(%rip), %rsi
    movl %r14d, %edi
    movl $8, %ecx
    call com1_field
    leaq text_edx(%rip), %rsi
    movl %r15d, %edi
    movl $8, %ecx
    call com1_field
    leaq text_newline(%rip), %rsi
    call com1_puts

    addq $8, %rbp
    jmp 1b
2:  xorl %eax, %eax
    jmp debug_exit                  // status 0
    .size _start, . - _start

    .section .rodata.cpuid_table, "a", @progbits
    .balign 4
cpuid_table:                        // (leaf, subleaf), 32 bits each
    .long 0x00000000, 0
    .long 0x00000001, 0
    .long 0x00000007, 0
    .long 0x0000000A, 0
    .long 0x0000000B, 0
    .long 0x0000000B, 1
    .long 0x0000000B, 2
    .long 0x0000000D, 0
    .long 0x0000000D, 1
    .long 0x40000000, 0
    .long 0x40000001, 0
cpuid_table_end:

    .section .rodata.cpuid_text, "a", @progbits
text_cpuid:   .asciz "cpuid "
text_dot:     .asciz "."
text_eax:     .asciz " eax="
text_ebx:     .asciz " ebx="
text_ecx:     .asciz " ecx="
text_edx:     .asciz " edx="
text_newline: .asciz "\n"
