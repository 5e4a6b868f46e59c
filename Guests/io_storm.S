// Hostile I/O storm: from the command line "SEED COUNT", runs COUNT random operations at CPL3 (in/out of 1, 2 or 4 bytes to random ports, rep ins/outs of 1-4096 elements, MMIO reads and writes of 1, 2, 4 or 8 bytes at random addresses in 0xD0000000-0xD00FFFFF), then reports COUNT and its PRNG state on port 0x503 and exits with status 0.
//
// The operations come from splitmix64 seeded with SEED; for each operation the guest draws
// two numbers, R and R2 (in that order), and decides:
//   kind   by R & 15: 0-4 in, 5-9 out, 10 rep ins, 11 rep outs, 12-13 MMIO read,
//          14-15 MMIO write (string operations are rarer: KVM turns every element of a
//          rep outs into an exit of its own)
//   width  W = (R >> 4) & 3: ports [1, 2, 4, 1][W] bytes, MMIO [1, 2, 4, 8][W] bytes
//   port   P = (R >> 8) & 0xFFFF, XORed with 0x1000 if P is one of the excluded ports below;
//          then, if the access would run past port 0xFFFF, P = 0x10000 - its width (the
//          I/O permission check faults on such an access here, even at IOPL 3)
//   count  C = (((R >> 24) & 0xFFF) >> ((R >> 36) & 31)) + 1, for rep ins/outs: 1-4096,
//          mostly small (DF = 0, buffer in guest RAM)
//   value  R2 for out (its low W bytes), R for an MMIO write
//   address 0xD0000000 + (R2 & 0xFFFFF), any alignment (an access across a page boundary
//          reaches the VMM as two exits)
// Excluded ports (every access, by its first port): the ones the in-kernel interrupt
// controller and PIT handle without an exit (0x20, 0x21, 0x40-0x43, 0x61, 0xA0, 0xA1, 0x4D0,
// 0x4D1), and the ones that could end the VM: the i8042 command port 0x64 (0xFE pulses reset,
// 0xD1 writes the output port), debug exit 0x501, hypercalls 0x502, this guest's report port
// 0x503, PM1a 0x601-0x605 (PM1a control, and the event block's ports from which a wide
// write reaches it; the PC platform's), the same at 0xB001-0xB005 (the minimal platform's)
// and the reset register 0xCF9. So every operation is at
// least one exit to the VMM, and only the final write ends the VM.
//
// At CPL0 it installs an IDT (any vector: "unexpected vector", status 99), its own GDT and a
// TSS whose I/O bitmap allows every port, then drops to CPL3 with IOPL=3 and IF=0. At the end
// it writes to port 0x503, 4 bytes each: the number of operations done, then the PRNG state's
// low and high halves; then 0 to port 0x501. A command line that is not two decimal numbers
// prints "bad command line" and exits 254; bad boot info: 3.

#define REPORT_PORT 0x503
#define MMIO_BASE 0xD0000000
#define MMIO_MASK 0xFFFFF
#define USER_DS (0x18 | 3)
#define USER_CS (0x20 | 3)
#define TSS_SELECTOR 0x28
#define USER_RFLAGS 0x3002          // IOPL=3, IF=0
#define TSS_DESCRIPTOR_FIXED 0x0000890000000000
#define TSS_SIZE 104
#define IOMAP_BYTES 8192            // one bit per port, all 65536 ports allowed
#define BUFFER_BYTES 16384          // 4096 elements of 4 bytes

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    movq %rdi, %rbx
    call check_boot_info
    call parse_two_numbers          // RAX = seed, RDX = count
    movq %rax, %r12                 // R12 = PRNG state
    movq %rdx, %r13                 // R13 = operations left

    leaq idt_unexpected_vector(%rip), %rdi
    leaq idt_handlers(%rip), %rsi
    call idt_install

    // The TSS (in .bss, zero): RSP0, the I/O-map base, the bitmap's terminator byte.
    leaq storm_tss(%rip), %rax
    leaq storm_kernel_stack_top(%rip), %rcx
    movq %rcx, 4(%rax)
    movw $TSS_SIZE, 102(%rax)
    movb $0xFF, TSS_SIZE + IOMAP_BYTES(%rax)
    // Its descriptor: base and limit.
    movl %eax, %ecx
    andl $0xFFFFFF, %ecx
    shlq $16, %rcx
    movq %rax, %rdx
    shrq $24, %rdx
    andl $0xFF, %edx
    shlq $56, %rdx
    orq %rdx, %rcx
    movabsq $TSS_DESCRIPTOR_FIXED, %rdx
    orq %rdx, %rcx
    orq $(TSS_SIZE + IOMAP_BYTES), %rcx   // limit: the terminator byte is the last one
    movq %rcx, storm_gdt_tss(%rip)
    shrq $32, %rax
    movq %rax, storm_gdt_tss + 8(%rip)
    lgdt storm_gdtr(%rip)
    movw $TSS_SELECTOR, %ax
    ltr %ax

    xorl %r14d, %r14d               // R14 = operations done
    leaq storm_buffer(%rip), %rbp   // RBP = the string buffer
    pushq $USER_DS
    leaq storm_user_stack_top(%rip), %rax
    pushq %rax
    pushq $USER_RFLAGS
    pushq $USER_CS
    leaq storm_loop(%rip), %rax
    pushq %rax
    iretq
    .size _start, . - _start

// next: R12 = the splitmix64 state; returns the next output in RAX. Clobbers RCX.
    .section .text.storm_next, "ax", @progbits
storm_next:
    movabsq $0x9E3779B97F4A7C15, %rax
    addq %rax, %r12
    movq %r12, %rax
    movq %rax, %rcx
    shrq $30, %rcx
    xorq %rcx, %rax
    movabsq $0xBF58476D1CE4E5B9, %rcx
    imulq %rcx, %rax
    movq %rax, %rcx
    shrq $27, %rcx
    xorq %rcx, %rax
    movabsq $0x94D049BB133111EB, %rcx
    imulq %rcx, %rax
    movq %rax, %rcx
    shrq $31, %rcx
    xorq %rcx, %rax
    ret

// CPL3 from here on.
    .section .text.storm_loop, "ax", @progbits
    .type storm_loop, @function
storm_loop:
    testq %r13, %r13
    jz storm_done
    call storm_next
    movq %rax, %rbx                 // RBX = R
    call storm_next
    movq %rax, %r15                 // R15 = R2

    // The port, with the excluded ones moved up by 0x1000.
    movq %rbx, %rdx
    shrq $8, %rdx
    andl $0xFFFF, %edx
    leaq excluded_ports(%rip), %rsi
1:  movzwl (%rsi), %eax             // the first port of an excluded range
    movzwl 2(%rsi), %ecx            // its last port
    testl %ecx, %ecx
    jz 3f                           // the table ends with 0, 0
    cmpl %eax, %edx
    jb 2f
    cmpl %ecx, %edx
    ja 2f
    xorl $0x1000, %edx
    jmp 3f
2:  addq $4, %rsi
    jmp 1b
3:  // EDX = the port. The width selector W in R8D, the count C in R9.
    movl %ebx, %r8d
    shrl $4, %r8d
    andl $3, %r8d
    // An access past port 0xFFFF would fault: it starts at 0x10000 - width instead.
    movl $1, %r10d                  // R10D = the port width, [1, 2, 4, 1][W]
    cmpl $1, %r8d
    jne 31f
    movl $2, %r10d
31: cmpl $2, %r8d
    jne 32f
    movl $4, %r10d
32: leal (%edx,%r10d), %ecx
    cmpl $0x10000, %ecx
    jbe 33f
    movl $0x10000, %edx
    subl %r10d, %edx
33:
    movq %rbx, %r9
    shrq $24, %r9
    andl $0xFFF, %r9d
    movq %rbx, %rcx
    shrq $36, %rcx
    andl $31, %ecx
    shrl %cl, %r9d
    incl %r9d
    movl %ebx, %eax
    andl $15, %eax
    cmpl $5, %eax
    jb op_in
    cmpl $10, %eax
    jb op_out
    je op_ins
    cmpl $11, %eax
    je op_outs
    // MMIO: the address in RDI.
    movq %r15, %rdi
    andl $MMIO_MASK, %edi
    movl $MMIO_BASE, %ecx
    addq %rcx, %rdi
    cmpl $14, %eax
    jb op_mmio_read
    jmp op_mmio_write

op_in:
    cmpl $1, %r8d
    je 1f
    cmpl $2, %r8d
    je 2f
    inb %dx, %al
    jmp next_op
1:  inw %dx, %ax
    jmp next_op
2:  inl %dx, %eax
    jmp next_op

op_out:
    movq %r15, %rax
    cmpl $1, %r8d
    je 1f
    cmpl $2, %r8d
    je 2f
    outb %al, %dx
    jmp next_op
1:  outw %ax, %dx
    jmp next_op
2:  outl %eax, %dx
    jmp next_op

op_ins:
    movq %rbp, %rdi
    movq %r9, %rcx
    cmpl $1, %r8d
    je 1f
    cmpl $2, %r8d
    je 2f
    rep insb
    jmp next_op
1:  rep insw
    jmp next_op
2:  rep insl
    jmp next_op

op_outs:
    movq %rbp, %rsi
    movq %r9, %rcx
    cmpl $1, %r8d
    je 1f
    cmpl $2, %r8d
    je 2f
    rep outsb
    jmp next_op
1:  rep outsw
    jmp next_op
2:  rep outsl
    jmp next_op

op_mmio_read:
    cmpl $1, %r8d
    je 1f
    cmpl $2, %r8d
    je 2f
    cmpl $3, %r8d
    je 3f
    movb (%rdi), %al
    jmp next_op
1:  movw (%rdi), %ax
    jmp next_op
2:  movl (%rdi), %eax
    jmp next_op
3:  movq (%rdi), %rax
    jmp next_op

op_mmio_write:
    cmpl $1, %r8d
    je 1f
    cmpl $2, %r8d
    je 2f
    cmpl $3, %r8d
    je 3f
    movb %bl, (%rdi)
    jmp next_op
1:  movw %bx, (%rdi)
    jmp next_op
2:  movl %ebx, (%rdi)
    jmp next_op
3:  movq %rbx, (%rdi)

next_op:
    incq %r14
    decq %r13
    jmp storm_loop

storm_done:
    movl $REPORT_PORT, %edx
    movl %r14d, %eax
    outl %eax, %dx
    movl %r12d, %eax
    outl %eax, %dx
    movq %r12, %rax
    shrq $32, %rax
    outl %eax, %dx
    movl $0x501, %edx
    xorl %eax, %eax
    outb %al, %dx
    ud2
    .size storm_loop, . - storm_loop

// parse_two_numbers: parses the command line of the boot-info block at RBX as two unsigned
// decimal numbers (at most 19 digits each) separated by spaces, with optional spaces
// around them. Returns them in RAX and RDX; anything else prints "bad command line" and
// ends the VM with status 254. Clobbers RCX, RSI, RDI, R8-R11.
    .section .text.parse_two_numbers, "ax", @progbits
parse_two_numbers:
    movq 24(%rbx), %rcx             // length
    movq 16(%rbx), %rsi             // address
    testq %rsi, %rsi
    jz 9f
    leaq (%rsi,%rcx), %rdi          // RDI = the end
    call parse_number
    movq %rax, %r10
    call parse_number
    movq %rax, %rdx
1:  cmpq %rdi, %rsi                 // only spaces (or a NUL) may follow
    jae 2f
    movzbl (%rsi), %ecx
    testl %ecx, %ecx
    jz 2f
    cmpl $' ', %ecx
    jne 9f
    incq %rsi
    jmp 1b
2:  movq %r10, %rax
    ret
9:  jmp storm_bad_cmdline

// parse_number: skips spaces from RSI (below RDI), then reads 1-19 digits; returns the value
// in RAX with RSI past it. No digits: jumps to parse_two_numbers' error. Clobbers RCX, R8, R9.
parse_number:
1:  cmpq %rdi, %rsi
    jae 9f
    cmpb $' ', (%rsi)
    jne 2f
    incq %rsi
    jmp 1b
2:  xorl %eax, %eax
    xorl %r8d, %r8d                 // digits
3:  cmpq %rdi, %rsi
    jae 4f
    movzbl (%rsi), %ecx
    subl $'0', %ecx
    cmpl $9, %ecx
    ja 4f
    incl %r8d
    cmpl $19, %r8d
    ja 9f
    imulq $10, %rax, %rax
    addq %rcx, %rax
    incq %rsi
    jmp 3b
4:  testl %r8d, %r8d
    jz 9f
    ret
9:  jmp storm_bad_cmdline

// storm_bad_cmdline: prints "bad command line" and ends the VM with status 254.
storm_bad_cmdline:
    leaq storm_bad_command_line(%rip), %rsi
    call com1_puts
    movb $254, %al
    jmp debug_exit

    .section .rodata.io_storm, "a", @progbits
    .balign 8
idt_handlers:
    .quad 0, 0
// Excluded ports: (first, last) pairs of 16-bit ports, ending with 0, 0.
excluded_ports:
    .word 0x20, 0x21
    .word 0x40, 0x43
    .word 0x61, 0x61
    .word 0x64, 0x64
    .word 0xA0, 0xA1
    .word 0x4D0, 0x4D1
    .word 0x501, 0x503
    .word 0x601, 0x605
    .word 0xB001, 0xB005
    .word 0xCF9, 0xCF9
    .word 0, 0
storm_bad_command_line:
    .asciz "bad command line\n"

    .section .data.io_storm_gdt, "aw", @progbits
    .balign 16
storm_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF        // 0x08 ring-0 code
    .quad 0x00CF93000000FFFF        // 0x10 ring-0 data
    .quad 0x00CFF3000000FFFF        // 0x18 ring-3 data
    .quad 0x00AFFB000000FFFF        // 0x20 ring-3 code
storm_gdt_tss:
    .quad 0, 0                      // 0x28 the TSS, filled in at run time
storm_gdt_end:
    .balign 8
    .skip 6
storm_gdtr:
    .word storm_gdt_end - storm_gdt - 1
    .quad storm_gdt

    .section .bss.io_storm, "aw", @nobits
    .balign 16
storm_tss:
    .skip TSS_SIZE + IOMAP_BYTES + 1
    .balign 16
storm_kernel_stack:
    .skip 4096
storm_kernel_stack_top:
storm_user_stack:
    .skip 4096
storm_user_stack_top:
    .balign 4096
storm_buffer:
    .skip BUFFER_BYTES
