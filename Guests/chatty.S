// Writes 'x' to COM1 forever (without polling LSR), to test a VMM whose standard output stops draining.
//
// The CLI test pipes its output into a pipe nobody reads; once the pipe is full the vCPU
// blocks in write(2), and a SIGINT must still stop the VM.

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    movw $0x3F8, %dx
    movb $'x', %al
1:  outb %al, %dx
    jmp 1b
    .size _start, . - _start
