// Writes 4,096 'y' bytes to COM1 with one rep outsb, forever: each exit hands the VMM a whole KVM I/O page of console output.

// For the stop-liveness test: with standard output on a pipe nobody reads, the VMM's
// single write(2) of an exit blocks, and a stop must still end the VM at once.

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    cld
    lea buffer(%rip), %rdi
    movl $4096, %ecx
    movb $'y', %al
    rep stosb
1:  lea buffer(%rip), %rsi
    movl $4096, %ecx
    movw $0x3F8, %dx
    rep outsb
    jmp 1b
    .size _start, . - _start

    .section .bss
    .balign 4096
buffer:
    .skip 4096
