// Real-mode flat binary: prints "Hello from real mode" on COM1, then exits with status 42.
//
// Loaded at any 16-byte aligned address A and entered at CS:IP = (A >> 4):0 with
// DS = ES = SS = CS. Linked with -Ttext=0, so every address below is an offset from the
// start of the image, i.e. of the segment: the code works wherever it is loaded. No BIOS.

    .code16
    .text
    .globl _start
_start:
    movw $message, %si              // DS:SI -> the message (DS = CS)
1:  movb (%si), %bl
    testb %bl, %bl
    jz 3f
    movw $0x3FD, %dx                // COM1 LSR: wait for THRE (bit 5)
2:  inb %dx, %al
    testb $0x20, %al
    jz 2b
    movb %bl, %al
    movw $0x3F8, %dx                // COM1 THR
    outb %al, %dx
    incw %si
    jmp 1b
3:  movb $42, %al                   // status 42 through the debug-exit port
    movw $0x501, %dx
    outb %al, %dx
4:  hlt                             // not reached unless the VMM ignored the exit
    jmp 4b

message:
    .asciz "Hello from real mode\n"
