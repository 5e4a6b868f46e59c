// Prints "ready", waits for one byte on COM1 and echoes it on its own line, then resets the machine through port 0xCF9; a 'q' instead ends the VM with status 0 through port 0x501.

// For the reset-loop test of `swiftvisor boot --on-reboot restart`, which boots this ELF as
// a vmlinux (64-bit boot protocol: long mode, identity-mapped) on the PC platform, so the
// reset control register at 0xCF9 and, with --debug-exit-port, port 0x501 are there.
// Polls LSR (0x3FD) bit 0 for input and bit 5 before each byte it sends.

#define COM1 0x3F8
#define LSR  (COM1 + 5)

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    lea ready(%rip), %rsi
    call puts
    movw $LSR, %dx
1:  inb %dx, %al            // wait for input
    testb $1, %al
    jz 1b
    movw $COM1, %dx
    inb %dx, %al
    movb %al, %bl
    cmpb $'q', %al
    je quit
    call putc
    movb $'\n', %al
    call putc
    movw $0xCF9, %dx        // RST_CPU | SYS_RST: a hard reset
    movb $0x06, %al
    outb %al, %dx
2:  hlt                     // not reached when the VMM resets
    jmp 2b
quit:
    movw $0x501, %dx
    xorl %eax, %eax
    outb %al, %dx
3:  hlt
    jmp 3b
    .size _start, . - _start

// putc: sends AL once THR is empty.
putc:
    movb %al, %cl
    movw $LSR, %dx
1:  inb %dx, %al
    testb $0x20, %al
    jz 1b
    movw $COM1, %dx
    movb %cl, %al
    outb %al, %dx
    ret

// puts: sends the NUL-terminated string at RSI.
puts:
    lodsb
    testb %al, %al
    jz 1f
    call putc
    jmp puts
1:  ret

    .section .rodata
ready:
    .asciz "ready\n"
