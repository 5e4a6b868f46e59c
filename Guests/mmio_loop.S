// Benchmark: drops to CPL3 and writes a byte to MMIO address 0xD0000000 N times (N from the command line, default 100000), then exits with status 0.
//
// Each write is one MMIO exit (KVM_EXIT_MMIO, write, address 0xD0000000, 1 byte, the value
// 0): the VMM's page tables map that address but no RAM backs it. The loop runs at CPL3
// (native speed even where CPL0 code is interpreted) with IOPL=3, and ends the VM from
// there by writing 0 to the debug-exit port 0x501.
// A command line that is not a decimal number prints "bad command line" and exits 254.

#define MMIO_ADDRESS 0xD0000000
#define DEFAULT_ITERATIONS 100000

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    movq %rdi, %rbx                 // boot-info address
    call check_boot_info
    movq %rbx, %rdi
    movl $DEFAULT_ITERATIONS, %esi
    call cmdline_number
    movq %rax, %rbx                 // N, kept in RBX across the iretq
    leaq user_loop(%rip), %rdi
    jmp enter_ring3
    .size _start, . - _start

// CPL3 from here on: the pages are user-accessible, and out to 0x501 is allowed by IOPL=3.
    .section .text.user_loop, "ax", @progbits
    .type user_loop, @function
user_loop:
    xorl %eax, %eax                 // the byte written each time
    movl $MMIO_ADDRESS, %ecx        // zero-extended: the address is 0x00000000D0000000
    testq %rbx, %rbx
    jz 2f
1:  movb %al, (%rcx)
    decq %rbx
    jnz 1b
2:  movl $0x501, %edx               // status 0 through the debug-exit port
    xorl %eax, %eax
    outb %al, %dx
    ud2                             // not reached; if the VMM goes on, triple-fault rather than spin
    .size user_loop, . - user_loop
