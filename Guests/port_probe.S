// Reads 8, 16 and 32 bits from the unclaimed port 0x600 and prints the values and the whole RAX after each read on COM1, then exits with status 0.
//
// With a VMM that answers unclaimed reads with all ones, the output is
//   in8=FF in16=FFFF in32=FFFFFFFF
//   rax8=11223344556677FF rax16=112233445566FFFF rax32=00000000FFFFFFFF
// RAX is 0x1122334455667788 before each read: in al/ax keep the upper bits of RAX, while
// in eax zero-extends into the upper 32 bits.

#define PROBE_PORT 0x600
#define PATTERN 0x1122334455667788

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    movl $PROBE_PORT, %edx
    movabsq $PATTERN, %rax
    inb %dx, %al
    movq %rax, %r12                 // RAX after the 8-bit read
    movabsq $PATTERN, %rax
    inw %dx, %ax
    movq %rax, %r13                 // ... the 16-bit read
    movabsq $PATTERN, %rax
    inl %dx, %eax
    movq %rax, %r14                 // ... the 32-bit read

    leaq text_in8(%rip), %rsi
    call com1_puts
    movq %r12, %rdi
    movl $2, %ecx
    call com1_puthex
    leaq text_in16(%rip), %rsi
    call com1_puts
    movq %r13, %rdi
    movl $4, %ecx
    call com1_puthex
    leaq text_in32(%rip), %rsi
    call com1_puts
    movq %r14, %rdi
    movl $8, %ecx
    call com1_puthex

    leaq text_rax8(%rip), %rsi
    call com1_puts
    movq %r12, %rdi
    movl $16, %ecx
    call com1_puthex
    leaq text_rax16(%rip), %rsi
    call com1_puts
    movq %r13, %rdi
    movl $16, %ecx
    call com1_puthex
    leaq text_rax32(%rip), %rsi
    call com1_puts
    movq %r14, %rdi
    movl $16, %ecx
    call com1_puthex
    leaq text_newline(%rip), %rsi
    call com1_puts

    xorl %eax, %eax
    jmp debug_exit                  // status 0
    .size _start, . - _start

    .section .rodata.text, "a", @progbits
text_in8:     .asciz "in8="
text_in16:    .asciz " in16="
text_in32:    .asciz " in32="
text_rax8:    .asciz "\nrax8="
text_rax16:   .asciz " rax16="
text_rax32:   .asciz " rax32="
text_newline: .asciz "\n"
