// Halts with interrupts off at once: ends the VM without the interrupt controller, sleeps until stopped with it.
//
// Used to test HLT handling: with --no-irqchip, KVM_EXIT_HLT ends the VM with status 0;
// with the in-kernel interrupt controller the vCPU sleeps in the kernel until the host
// stops the VM.

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    cli
1:  hlt
    jmp 1b
    .size _start, . - _start
