// crt0.S: the entry point of the C guests; calls guest_main(boot info) and ends the VM with its result.
//
// Entry state (the VMM's contract): 64-bit mode at CPL0, RSP = 0x100000 (16-byte aligned),
// RDI = boot-info address, interrupts off, no IDT.

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    xorl %ebp, %ebp             // end of the frame chain for debuggers
    // RDI already holds the boot-info address: it is guest_main's first argument. RSP is
    // 16-byte aligned here, so after the call pushes the return address the callee sees the
    // alignment the System V ABI promises.
    call guest_main
    testl %eax, %eax
    jnz 1f
    hlt                         // status 0: hlt with interrupts off ends the VM
    jmp 2f
1:  movw $0x501, %dx            // status V & 0xFF through the debug-exit port
    outb %al, %dx
2:  hlt                         // not reached unless the VMM ignored the exit
    jmp 2b
    .size _start, . - _start
