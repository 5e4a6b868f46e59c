// Start-up probe: its first instruction is an exit (status 0 through the debug-exit port), so that the time to it is the VMM's alone.
//
// The start-up benchmark runs this guest to measure process start to first guest exit
// without the interpreted guest code that other guests run before their first exit.

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    xorl %eax, %eax
    movw $0x501, %dx
    outb %al, %dx
    hlt
    .size _start, . - _start
