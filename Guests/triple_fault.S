// Prints "about to triple-fault" on COM1, then executes ud2 with no IDT (#UD, then #DF, then a triple fault).
//
// The VMM sees a shutdown (KVM_EXIT_SHUTDOWN) right after the line is printed.

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    leaq message(%rip), %rsi
    call com1_puts
    // The IDTR limit is 0, so delivering #UD faults (#GP), delivering that is a double
    // fault, and delivering the #DF fails too: the CPU shuts down.
    ud2
    .size _start, . - _start

    .section .rodata.message, "a", @progbits
message:
    .asciz "about to triple-fault\n"
