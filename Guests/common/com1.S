// com1.S: COM1 output for the assembly guests (polls LSR.THRE before every byte).
//
// Register use: arguments in RDI/RSI/RCX as listed; each routine says what it clobbers
// and keeps every other register. Each routine has its own section, so the link's
// --gc-sections drops the ones a guest does not call.

#define COM1_THR 0x3F8          // transmit holding register
#define COM1_LSR 0x3FD          // line status register
#define LSR_THRE 0x20           // transmitter holding register empty

// com1_putc: writes the byte in DIL. Clobbers RAX, RDX.
    .section .text.com1_putc, "ax", @progbits
    .globl com1_putc
    .type com1_putc, @function
com1_putc:
    movw $COM1_LSR, %dx
1:  inb %dx, %al
    testb $LSR_THRE, %al
    jz 1b
    movl %edi, %eax
    movw $COM1_THR, %dx
    outb %al, %dx
    ret
    .size com1_putc, . - com1_putc

// com1_puts: writes the NUL-terminated string at RSI. Clobbers RAX, RDX, RDI, RSI.
    .section .text.com1_puts, "ax", @progbits
    .globl com1_puts
    .type com1_puts, @function
com1_puts:
1:  movzbl (%rsi), %edi
    testl %edi, %edi
    jz 2f
    call com1_putc
    incq %rsi
    jmp 1b
2:  ret
    .size com1_puts, . - com1_puts

// com1_puthex: writes the low ECX hex digits of RDI, most significant first, in upper case.
// Clobbers RAX, RCX, RDX, RDI, R8, R9.
    .section .text.com1_puthex, "ax", @progbits
    .globl com1_puthex
    .type com1_puthex, @function
com1_puthex:
    movq %rdi, %r8              // the value
    movl %ecx, %r9d             // digits still to write
1:  testl %r9d, %r9d
    jz 3f
    decl %r9d
    leal (,%r9,4), %ecx         // shift = 4 * digit index
    movq %r8, %rdi
    shrq %cl, %rdi
    andl $0xF, %edi
    cmpl $10, %edi
    jb 2f
    addl $('A' - '0' - 10), %edi
2:  addl $'0', %edi
    call com1_putc
    jmp 1b
3:  ret
    .size com1_puthex, . - com1_puthex
