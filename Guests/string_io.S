// String port I/O: rep outsb (1 byte, 5000 bytes, 16 bytes with DF=1) to ports 0x520-0x522, rep insw/insb from 0x523/0x526 with the results echoed to 0x524/0x525/0x527, then exits with status 0.
//
// Prints nothing. Every step is port I/O, in this order:
//   a. rep outsb, RCX=1: the byte 0x5A to port 0x520.
//   b. rep outsb, RCX=5000, DF=0: bytes i = (i*7+3) & 0xFF (i = 0..4999; 03 0A 11 18 ...)
//      from a .bss buffer to port 0x521.
//   c. rep outsb, RCX=16, DF=1 (std), RSI = the last byte of a buffer holding 00..0F: the
//      port sees 0F 0E ... 00. Then cld.
//   d. rep insw, RCX=1500, DF=0: 1500 words from port 0x523 into a 3000-byte .bss buffer.
//      Then out dx, eax to port 0x524: the 32-bit sum of the 1500 words; and two
//      out dx, ax to port 0x525: the first word, then the last word.
//      A device that answers 1, 2, 3, ... gives sum 1125750 (0x00112D76), first 0x0001,
//      last 0x05DC. Unclaimed (all ones): 0x05DBFA24, 0xFFFF, 0xFFFF.
//   e. rep insb, RCX=1: a byte from port 0x526 into memory (which held 0); then
//      out dx, al of that byte to port 0x527.
//   f. status 0 through the debug-exit port 0x501.
// The buffers' addresses (and so where a string operation crosses a page) are whatever
// the link gives; each rep instruction may reach the VMM as several exits.

#define PORT_SINGLE 0x520
#define PORT_BULK 0x521
#define PORT_BACKWARD 0x522
#define PORT_WORDS_IN 0x523
#define PORT_WORD_SUM 0x524
#define PORT_WORD_ENDS 0x525
#define PORT_BYTE_IN 0x526
#define PORT_BYTE_ECHO 0x527
#define BULK_COUNT 5000
#define WORD_COUNT 1500

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    cld                             // DF=0 already (RFLAGS=0x2); say so

    // a. one byte, 0x5A, to port 0x520
    leaq single_byte(%rip), %rsi
    movl $1, %ecx
    movl $PORT_SINGLE, %edx
    rep outsb (%rsi), %dx

    // b. fill bulk[i] = (i*7+3) & 0xFF, then 5000 bytes to port 0x521
    leaq bulk(%rip), %rdi
    xorl %ecx, %ecx
    movb $3, %al                    // (i*7+3) & 0xFF for i = 0
1:  movb %al, (%rdi,%rcx)
    addb $7, %al                    // wraps mod 256
    incl %ecx
    cmpl $BULK_COUNT, %ecx
    jb 1b
    leaq bulk(%rip), %rsi
    movl $BULK_COUNT, %ecx
    movl $PORT_BULK, %edx
    rep outsb (%rsi), %dx

    // c. 16 bytes backwards (DF=1) from the last byte of 00..0F to port 0x522
    leaq ramp+15(%rip), %rsi
    movl $16, %ecx
    movl $PORT_BACKWARD, %edx
    std
    rep outsb (%rsi), %dx
    cld

    // d. 1500 words from port 0x523, then their sum and the first and last words
    leaq words(%rip), %rdi
    movl $WORD_COUNT, %ecx
    movl $PORT_WORDS_IN, %edx
    rep insw %dx, (%rdi)
    leaq words(%rip), %rsi
    xorl %eax, %eax                 // the sum
    xorl %ecx, %ecx                 // the index
2:  movzwl (%rsi,%rcx,2), %r8d
    addl %r8d, %eax
    incl %ecx
    cmpl $WORD_COUNT, %ecx
    jb 2b
    movl $PORT_WORD_SUM, %edx
    outl %eax, %dx
    movl $PORT_WORD_ENDS, %edx
    movzwl words(%rip), %eax
    outw %ax, %dx                   // the first word
    movzwl words+2*(WORD_COUNT-1)(%rip), %eax
    outw %ax, %dx                   // the last word

    // e. one byte from port 0x526 into memory, echoed to port 0x527
    leaq in_byte(%rip), %rdi
    movl $1, %ecx
    movl $PORT_BYTE_IN, %edx
    rep insb %dx, (%rdi)
    movzbl in_byte(%rip), %eax
    movl $PORT_BYTE_ECHO, %edx
    outb %al, %dx

    // f. status 0
    xorl %eax, %eax
    jmp debug_exit
    .size _start, . - _start

    .section .rodata.string_io, "a", @progbits
single_byte:
    .byte 0x5A
ramp:
    .byte 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
    .byte 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F

    .section .bss.string_io, "aw", @nobits
    .balign 16
bulk:
    .skip BULK_COUNT
    .balign 16
words:
    .skip 2 * WORD_COUNT
in_byte:
    .skip 1
