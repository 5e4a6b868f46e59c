// MMIO at every width: writes 1, 2, 4 and 8 bytes to 0xD0000000+0x00/0x10/0x20/0x30, reads 1, 2, 4 and 8 bytes from +0x40/0x48/0x50/0x58 and from the unmapped 0xE0000000, prints what it read, exits 0.
//
// The writes, in order (each one MMIO exit):
//   1 byte  0x11               at 0xD0000000
//   2 bytes 0x2222             at 0xD0000010
//   4 bytes 0x33333333         at 0xD0000020
//   8 bytes 0x4444444444444444 at 0xD0000030
// Then the reads: movzbl 0xD0000040, movzwl 0xD0000048, movl 0xD0000050, movq 0xD0000058,
// printed as one line (upper-case hex, fixed width; zero-extended, so nothing but what the
// device answered shows):
//   r8=XX r16=XXXX r32=XXXXXXXX r64=XXXXXXXXXXXXXXXX
// Then 8 bytes from 0xE0000000 and 1 byte from 0xE0000010, where no device is, printed as
//   unmapped64=XXXXXXXXXXXXXXXX unmapped8=XX
// A VMM that answers unclaimed MMIO reads with all ones gives
//   unmapped64=FFFFFFFFFFFFFFFF unmapped8=FF
// and ends with status 0 through the debug-exit port 0x501.
// The addresses do not fit a sign-extended 32-bit displacement, so they go through RBX
// (movl zero-extends: RBX = 0x00000000D0000000).

#define DEVICE_BASE 0xD0000000
#define UNMAPPED_BASE 0xE0000000

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    movl $DEVICE_BASE, %ebx

    // a. writes at every width
    movb $0x11, 0x00(%rbx)
    movw $0x2222, 0x10(%rbx)
    movl $0x33333333, 0x20(%rbx)
    movabsq $0x4444444444444444, %rax
    movq %rax, 0x30(%rbx)

    // b. reads at every width
    movzbl 0x40(%rbx), %r12d
    movzwl 0x48(%rbx), %r13d
    movl 0x50(%rbx), %r14d
    movq 0x58(%rbx), %r15

    leaq text_r8(%rip), %rsi
    movq %r12, %rdi
    movl $2, %ecx
    call com1_field
    leaq text_r16(%rip), %rsi
    movq %r13, %rdi
    movl $4, %ecx
    call com1_field
    leaq text_r32(%rip), %rsi
    movq %r14, %rdi
    movl $8, %ecx
    call com1_field
    leaq text_r64(%rip), %rsi
    movq %r15, %rdi
    movl $16, %ecx
    call com1_field
    leaq text_newline(%rip), %rsi
    call com1_puts

    // c. reads where no device is
    movl $UNMAPPED_BASE, %ebx
    movq 0x00(%rbx), %r12
    movzbl 0x10(%rbx), %r13d

    leaq text_unmapped64(%rip), %rsi
    movq %r12, %rdi
    movl $16, %ecx
    call com1_field
    leaq text_unmapped8(%rip), %rsi
    movq %r13, %rdi
    movl $2, %ecx
    call com1_field
    leaq text_newline(%rip), %rsi
    call com1_puts

    // d. status 0
    xorl %eax, %eax
    jmp debug_exit
    .size _start, . - _start

    .section .rodata.mmio_widths, "a", @progbits
text_r8:          .asciz "r8="
text_r16:         .asciz " r16="
text_r32:         .asciz " r32="
text_r64:         .asciz " r64="
text_unmapped64:  .asciz "unmapped64="
text_unmapped8:   .asciz " unmapped8="
text_newline:     .asciz "\n"
