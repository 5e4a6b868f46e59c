// Counts in memory at CPL3 and reports each step on COM1 and in COM1's scratch register, for the snapshot tests.
//
// Output: "counting\n", then 256 lines "n=XXXXXXXX\n" (n = 1 ... 0x100, 8 hex digits). The
// guest drops to CPL3 (common/ring3.S, IOPL=3) and increments a quadword in its own memory;
// every 2^22 increments it reports n = counter >> 22. Before each report it reads COM1's
// scratch register (port 0x3FF), which must hold the low byte of the previous n (0 before
// the first), and then writes n's low byte there: a snapshot restored without the UART's
// state, or with the wrong memory or registers, breaks the sequence or the check.
// The 2^30 increments take a second or two natively.

#define COM1_SCR 0x3FF
#define REPORT_SHIFT 22
#define REPORTS 256

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    leaq text_counting(%rip), %rsi
    call com1_puts
    leaq user_count(%rip), %rdi
    jmp enter_ring3
    .size _start, . - _start

// CPL3 from here on.
    .section .text.user_count, "ax", @progbits
    .type user_count, @function
user_count:
1:  incq counter(%rip)
    movq counter(%rip), %rax
    testl $((1 << REPORT_SHIFT) - 1), %eax
    jnz 1b
    movq %rax, %rbx
    shrq $REPORT_SHIFT, %rbx        // n, kept in RBX across the calls (they do not touch it)
    leal -1(%rbx), %ecx             // the previous n's low byte, in CL
    movw $COM1_SCR, %dx
    inb %dx, %al
    cmpb %cl, %al
    jne 3f
    movl %ebx, %eax
    outb %al, %dx
    leaq text_n(%rip), %rsi
    call com1_puts
    movq %rbx, %rdi
    movl $8, %ecx
    call com1_puthex
    movl $'\n', %edi
    call com1_putc
    cmpq $REPORTS, %rbx
    jb 1b
    xorl %eax, %eax                 // status 0 through the debug-exit port
    jmp 4f
3:  leaq text_mismatch(%rip), %rsi
    call com1_puts
    movl $1, %eax                   // status 1: the scratch register lost its value
4:  movw $0x501, %dx
    outb %al, %dx
5:  jmp 5b
    .size user_count, . - user_count

    .section .data.counter, "aw", @progbits
    .balign 8
counter:
    .quad 0

    .section .rodata.counter, "a", @progbits
text_counting:
    .asciz "counting\n"
text_n:
    .asciz "n="
text_mismatch:
    .asciz "scratch register mismatch\n"
