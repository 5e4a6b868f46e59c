// Signals Firecracker's boot timer (the byte 123 to port 0x3F0), then resets the machine through port 0xCF9.

// For the boot-timer test of `swiftvisor firecracker --boot-timer`, which boots this ELF
// as a vmlinux (64-bit boot protocol: long mode, identity-mapped) on the PC platform. A
// second signal follows the first: only the first may count.

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    movw $0x3F0, %dx
    movb $123, %al
    outb %al, %dx
    outb %al, %dx           // a second signal, to be ignored
    movw $0xCF9, %dx        // RST_CPU | SYS_RST: a hard reset ends the VM
    movb $0x06, %al
    outb %al, %dx
1:  hlt                     // not reached when the VMM resets
    jmp 1b
    .size _start, . - _start
