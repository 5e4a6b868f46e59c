// com1_field.S: com1_field, which writes a label and then a value in hex on COM1 (for "name=XXXX" output).
//
// In its own section, like the routines in com1.S, so --gc-sections drops it from the guests
// that do not call it.

// com1_field: writes the NUL-terminated string at RSI, then the low ECX hex digits of RDI
// (most significant first, upper case). Clobbers RAX, RCX, RDX, RDI, RSI, R8, R9.
    .section .text.com1_field, "ax", @progbits
    .globl com1_field
    .type com1_field, @function
com1_field:
    movq %rdi, %r8              // com1_puts keeps RCX and R8
    call com1_puts
    movq %r8, %rdi
    jmp com1_puthex
    .size com1_field, . - com1_field
