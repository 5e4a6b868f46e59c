// Writes 65,536 'z' bytes through the console-write hypercall (1), forever: the largest single console request a guest can make.

// For the stop-liveness test: with standard output on a pipe nobody reads, the VMM's
// write of one hypercall blocks, and a stop must still end the VM at once.

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    cld
    lea buffer(%rip), %rdi
    movl $65536, %ecx
    movb $'z', %al
    rep stosb
1:  movl $1, %eax           // console write
    lea buffer(%rip), %rbx  // address
    movl $65536, %ecx       // length
    movw $0x502, %dx
    outb %al, %dx
    jmp 1b
    .size _start, . - _start

    .section .bss
    .balign 4096
buffer:
    .skip 65536
