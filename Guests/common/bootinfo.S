// bootinfo.S: boot-info checks and command-line parsing for the assembly guests.
//
// The boot-info block (at the address the VMM passes in RDI):
//   +0 u32 magic 0x49425653 ("SVBI"), +4 u32 version 1, +8 u64 RAM bytes,
//   +16 u64 command-line address, +24 u64 command-line length, +32 u32 vCPUs, +36 u32 0.

#define BI_MAGIC 0x49425653
#define BI_VERSION 1
#define EXIT_BAD_BOOT_INFO 3
#define EXIT_BAD_COMMAND_LINE 254

// check_boot_info: returns if RDI points at a valid boot-info block (magic and version);
// otherwise prints "bad boot info" on COM1 and ends the VM with status 3.
// Clobbers nothing when the block is valid.
    .section .text.check_boot_info, "ax", @progbits
    .globl check_boot_info
    .type check_boot_info, @function
check_boot_info:
    cmpl $BI_MAGIC, 0(%rdi)
    jne 1f
    cmpl $BI_VERSION, 4(%rdi)
    jne 1f
    ret
1:  leaq bad_boot_info_message(%rip), %rsi
    call com1_puts
    movb $EXIT_BAD_BOOT_INFO, %al
    jmp debug_exit
    .size check_boot_info, . - check_boot_info

// cmdline_number: parses the command line of the boot-info block at RDI as an unsigned
// decimal number of at most 18 digits, with optional spaces around it.
// Returns it in RAX; returns RSI if the command line is empty (length 0 or a NUL first).
// If the command line is anything else, prints "bad command line" on COM1 and ends the VM
// with status 254. Clobbers RAX, RCX, RDX, RSI, RDI, R8, R9.
    .section .text.cmdline_number, "ax", @progbits
    .globl cmdline_number
    .type cmdline_number, @function
cmdline_number:
    movq 24(%rdi), %rcx         // length
    movq 16(%rdi), %rdi         // address
    testq %rcx, %rcx
    jz 8f
    testq %rdi, %rdi
    jz 8f
    cmpb $0, (%rdi)
    je 8f
    xorl %eax, %eax             // value
    xorl %r8d, %r8d             // digits seen
    xorl %edx, %edx             // 0: leading spaces, 1: digits, 2: trailing spaces
1:  movzbl (%rdi), %r9d
    testl %r9d, %r9d
    jz 6f                       // a NUL inside the stated length ends the line
    cmpl $' ', %r9d
    jne 3f
    testl %edx, %edx            // a space: skip it before the digits, end them after
    jz 5f
    movl $2, %edx
    jmp 5f
3:  cmpl $2, %edx               // a digit after the trailing spaces is an error
    je 9f
    subl $'0', %r9d
    cmpl $9, %r9d
    ja 9f                       // not a digit
    movl $1, %edx
    incl %r8d
    cmpl $18, %r8d
    ja 9f                       // too many digits
    imulq $10, %rax, %rax
    addq %r9, %rax
5:  incq %rdi
    decq %rcx
    jnz 1b
6:  testl %r8d, %r8d
    jz 9f                       // spaces only: not a number
    ret
8:  movq %rsi, %rax             // empty command line: the caller's default
    ret
9:  leaq bad_command_line_message(%rip), %rsi
    call com1_puts
    movb $EXIT_BAD_COMMAND_LINE, %al
    jmp debug_exit
    .size cmdline_number, . - cmdline_number

// debug_exit: ends the VM with status AL through the debug-exit port 0x501. Does not
// return: if the VMM lets the guest go on anyway, it halts (interrupts are off).
// Usable at CPL0 only (CPL3 code writes port 0x501 itself: hlt would fault there).
    .section .text.debug_exit, "ax", @progbits
    .globl debug_exit
    .type debug_exit, @function
debug_exit:
    movw $0x501, %dx
    outb %al, %dx
1:  hlt
    jmp 1b
    .size debug_exit, . - debug_exit

    .section .rodata.bootinfo_messages, "a", @progbits
bad_boot_info_message:
    .asciz "bad boot info (expected magic 0x49425653, version 1)\n"
bad_command_line_message:
    .asciz "bad command line\n"
