// idt.S: a 256-entry IDT of 64-bit interrupt gates, and the routines that fill and load it, for the assembly guests that take exceptions or interrupts.
//
// Every gate is a ring-0 64-bit interrupt gate: type 0x8E (present, DPL 0, so `int N` at
// CPL3 is a #GP), selector 0x08 (the VMM's ring-0 code, which common/ring3.S's GDT keeps at
// the same place), IST 0. The CPU clears IF on entry. A handler entered from CPL3 runs on
// the TSS's RSP0 stack (see install_gdt_tss in common/ring3.S).
//
// A guest usually calls idt_install (or idt_install_stubs) once, with a table of
// (vector, handler) quadword pairs in its .rodata that ends with a pair whose handler is 0:
//
//     leaq idt_unexpected_vector(%rip), %rdi
//     leaq idt_handlers(%rip), %rsi
//     call idt_install
//     ...
//   idt_handlers:
//     .quad 2, nmi_handler
//     .quad 0, 0
//
// Each routine has its own section, so --gc-sections drops what a guest does not use.

#define GATE_LOW_FIXED 0x00008E0000080000   // type 0x8E (P, DPL 0, 64-bit interrupt gate) << 40 | selector 0x08 << 16
#define IDT_VECTORS 256
#define STUB_SIZE 16
#define EXIT_UNEXPECTED_VECTOR 99

// idt_install: points all 256 gates at the handler RDI, then each vector of the table at RSI
// at its handler, and loads the IDT (limit 256 * 16 - 1).
// idt_install_stubs: the same, but gate N points at RDI + 16 * N (a block of 256 stubs of
// 16 bytes each, say ".balign 16; pushq $N; jmp ...").
// Both clobber RAX, RCX, RDX, RSI, RDI, R8-R11.
    .section .text.idt_install, "ax", @progbits
    .globl idt_install, idt_install_stubs
    .type idt_install, @function
    .type idt_install_stubs, @function
idt_install_stubs:
    movl $STUB_SIZE, %r11d          // the distance from one vector's handler to the next
    jmp 1f
idt_install:
    xorl %r11d, %r11d               // one handler for every vector
1:  xorl %r10d, %r10d               // the vector
2:  movl %r10d, %ecx
    movq %rdi, %rax
    call idt_set_gate
    addq %r11, %rdi
    incl %r10d
    cmpl $IDT_VECTORS, %r10d
    jb 2b
3:  movq 8(%rsi), %rax              // the table's handler; 0 ends it
    testq %rax, %rax
    jz 4f
    movl (%rsi), %ecx               // the table's vector
    call idt_set_gate
    addq $16, %rsi
    jmp 3b
4:  lidt idtr(%rip)
    ret
    .size idt_install, . - idt_install
    .size idt_install_stubs, . - idt_install_stubs

// idt_set_gate: makes gate ECX (0-255) of idt a ring-0 64-bit interrupt gate to RAX.
// Loads nothing. Clobbers RCX, RDX, R8, R9.
    .section .text.idt_set_gate, "ax", @progbits
    .globl idt_set_gate
    .type idt_set_gate, @function
idt_set_gate:
    leaq idt(%rip), %rdx
    andl $0xFF, %ecx
    shll $4, %ecx
    addq %rcx, %rdx                 // the gate's address
    movl %eax, %r8d
    andl $0xFFFF, %r8d              // bits 0-15: offset 15:0
    movl %eax, %r9d
    shrl $16, %r9d
    shlq $48, %r9                   // bits 48-63: offset 31:16
    orq %r9, %r8
    movabsq $GATE_LOW_FIXED, %r9    // selector, IST 0, type
    orq %r9, %r8
    movq %r8, (%rdx)
    movq %rax, %r9
    shrq $32, %r9                   // bits 64-95: offset 63:32; 96-127 reserved (0)
    movq %r9, 8(%rdx)
    ret
    .size idt_set_gate, . - idt_set_gate

    .section .data.idtr, "aw", @progbits
    .balign 8
    .skip 6                         // so that the 64-bit base below is 8-byte aligned
idtr:
    .word IDT_VECTORS * 16 - 1      // limit
    .quad idt                       // base

// idt: the 256 gates, 16 bytes each. Global so that a guest that loads only part of it
// (with its own lidt and a smaller limit) can point its IDTR here.
    .section .bss.idt, "aw", @nobits
    .balign 16
    .globl idt
idt:
    .skip IDT_VECTORS * 16

// idt_unexpected_vector: a default handler for idt_install: prints "unexpected vector" on
// COM1 and ends the VM with status 99. Never returns.
    .section .text.idt_unexpected_vector, "ax", @progbits
    .globl idt_unexpected_vector
    .type idt_unexpected_vector, @function
idt_unexpected_vector:
    leaq unexpected_vector_message(%rip), %rsi
    call com1_puts
    movb $EXIT_UNEXPECTED_VECTOR, %al
    jmp debug_exit
    .size idt_unexpected_vector, . - idt_unexpected_vector

    .section .rodata.idt_unexpected_vector, "a", @progbits
unexpected_vector_message:
    .asciz "unexpected vector\n"
