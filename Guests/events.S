// Exception injection and hypercalls: installs a 64-bit IDT, then runs the mode its command line names (identity, print, unknown, inject, wait, softint or invalid); handlers for vectors 2, 6, 13, 14 and 0x40 print the event and exit 0.
//
// The IDT has 256 interrupt gates (selector 0x08, type 0x8E, IST 0). Vectors 2 (NMI),
// 6 (#UD), 13 (#GP), 14 (#PF) and 0x40 (external interrupt) each print one line
//   vector=VV error=EEEEEEEE cr2=CCCCCCCCCCCCCCCC
// (error is 0 for the vectors that push no error code; cr2 is CR2 as the handler finds it)
// and end the VM with status 0 through port 0x501. They never return. Any other vector
// prints "unexpected vector" and ends it with status 99.
//
// Hypercalls: RAX = number, RBX/RCX/RSI/RDI = arguments, then out dx, al with DX = 0x502;
// the result comes back in RAX (identity also sets RBX, RCX, RSI).
//
// The command line, compared as a whole:
//   identity  hypercall 0 (RBX = RCX = RSI = RDI = 0 going in), then prints
//             "identity rax=... rbx=... rcx=... rsi=..." (16 hex digits each); status 0.
//   print     hypercall 1 (console write) three times, printing "result=<16 hex of RAX>"
//             after each: (1) the 21-byte string "printed by hypercall\n"; (2) RBX = RAM
//             size - 4, RCX = 64 (past the end of RAM); (3) the string with RCX = 100000.
//             Then hypercall 2 (exit) with RBX = 7: the VM ends with status 7. If that
//             returns: prints "exit returned", status 1.
//   unknown   hypercall 0x1234: the VMM should inject #UD ("vector=06 ..."). If it returns:
//             prints "no #UD", status 1.
//   inject    sti, out al to port 0x530 (the VMM answers by injecting an event), a few nops,
//             cli. If no handler ran: prints "no event", status 1.
//   wait      masks both 8259 PICs (ports 0x21, 0xA1 <- 0xFF), software-enables the local
//             APIC (SVR at 0xFEE000F0 |= 0x1FF), prints "waiting", then sti and hlt in a
//             loop forever: for a VMM with an in-kernel irqchip, where hlt sleeps until an
//             event arrives. An NMI from the host (KVM_NMI, or an NMI IPI/MSI, which KVM
//             delivers only to a software-enabled APIC) ends it through the NMI handler
//             ("vector=02 ...", status 0).
//   softint   int 0x40 at CPL0, which the host's KVM cannot finish in long mode; the VMM
//             delivers it through the IDT ("vector=40 ..."). If it returns: prints
//             "no interrupt", status 1.
//   invalid   the byte 0x06 (PUSH ES, no instruction in 64-bit mode) at CPL0: the VMM
//             should inject #UD ("vector=06 ..."). If it returns: prints "no #UD", status 1.
//   other     prints "bad command line", status 254.
// A bad boot-info block prints "bad boot info ..." and ends with status 3.

#define HYPERCALL_PORT 0x502
#define INJECT_PORT 0x530
#define HC_IDENTITY 0
#define HC_CONSOLE_WRITE 1
#define HC_EXIT 2
#define HC_UNKNOWN 0x1234
#define EXIT_STATUS 7
#define EXIT_FALLTHROUGH 1
#define EXIT_BAD_COMMAND_LINE 254
#define KERNEL_CS 0x08
#define LAPIC_BASE 0xFEE00000
#define LAPIC_SVR 0xF0
#define SVR_ENABLE_SPURIOUS_FF 0x1FF    // APIC software enable (bit 8) | spurious vector 0xFF

// hypercall: the guest side of the ABI; the VMM reads RAX, RBX, RCX, RSI, RDI.
.macro hypercall
    movw $HYPERCALL_PORT, %dx
    outb %al, %dx
.endm

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    movq %rdi, %rbx
    call check_boot_info            // keeps every register when the block is valid
    movq %rbx, %r15                 // R15 = boot info, from here on
    leaq idt_unexpected_vector(%rip), %rdi  // common/idt.S: "unexpected vector", status 99,
    leaq idt_handlers(%rip), %rsi           // for every vector but those of idt_handlers
    call idt_install

    leaq mode_identity(%rip), %rsi
    call cmdline_is
    testl %eax, %eax
    jnz do_identity
    leaq mode_print(%rip), %rsi
    call cmdline_is
    testl %eax, %eax
    jnz do_print
    leaq mode_unknown(%rip), %rsi
    call cmdline_is
    testl %eax, %eax
    jnz do_unknown
    leaq mode_inject(%rip), %rsi
    call cmdline_is
    testl %eax, %eax
    jnz do_inject
    leaq mode_wait(%rip), %rsi
    call cmdline_is
    testl %eax, %eax
    jnz do_wait
    leaq mode_softint(%rip), %rsi
    call cmdline_is
    testl %eax, %eax
    jnz do_softint
    leaq mode_invalid(%rip), %rsi
    call cmdline_is
    testl %eax, %eax
    jnz do_invalid
    leaq text_bad_command_line(%rip), %rsi
    movb $EXIT_BAD_COMMAND_LINE, %r12b
    jmp fail
    .size _start, . - _start

// MARK: The modes

    .section .text.modes, "ax", @progbits
do_identity:
    xorl %ebx, %ebx
    xorl %ecx, %ecx
    xorl %esi, %esi
    xorl %edi, %edi
    movl $HC_IDENTITY, %eax
    hypercall
    movq %rax, %r12
    movq %rbx, %r13
    movq %rcx, %r14
    movq %rsi, %rbp
    leaq text_identity_rax(%rip), %rsi
    movq %r12, %rdi
    movl $16, %ecx
    call com1_field
    leaq text_identity_rbx(%rip), %rsi
    movq %r13, %rdi
    movl $16, %ecx
    call com1_field
    leaq text_identity_rcx(%rip), %rsi
    movq %r14, %rdi
    movl $16, %ecx
    call com1_field
    leaq text_identity_rsi(%rip), %rsi
    movq %rbp, %rdi
    movl $16, %ecx
    call com1_field
    leaq text_newline(%rip), %rsi
    call com1_puts
    xorl %eax, %eax
    jmp debug_exit

do_print:
    // (1) the whole string
    leaq text_printed(%rip), %rbx
    movl $text_printed_end - text_printed, %ecx
    xorl %esi, %esi
    xorl %edi, %edi
    movl $HC_CONSOLE_WRITE, %eax
    hypercall
    call print_result
    // (2) 64 bytes from 4 bytes before the end of RAM
    movq 8(%r15), %rbx
    subq $4, %rbx
    movl $64, %ecx
    xorl %esi, %esi
    xorl %edi, %edi
    movl $HC_CONSOLE_WRITE, %eax
    hypercall
    call print_result
    // (3) too long
    leaq text_printed(%rip), %rbx
    movl $100000, %ecx
    xorl %esi, %esi
    xorl %edi, %edi
    movl $HC_CONSOLE_WRITE, %eax
    hypercall
    call print_result
    // (4) exit with status 7
    movl $EXIT_STATUS, %ebx
    xorl %ecx, %ecx
    xorl %esi, %esi
    xorl %edi, %edi
    movl $HC_EXIT, %eax
    hypercall
    leaq text_exit_returned(%rip), %rsi
    movb $EXIT_FALLTHROUGH, %r12b
    jmp fail

do_unknown:
    xorl %ebx, %ebx
    xorl %ecx, %ecx
    xorl %esi, %esi
    xorl %edi, %edi
    movl $HC_UNKNOWN, %eax
    hypercall
    leaq text_no_ud(%rip), %rsi
    movb $EXIT_FALLTHROUGH, %r12b
    jmp fail

do_softint:
    int $0x40
    leaq text_no_interrupt(%rip), %rsi
    movb $EXIT_FALLTHROUGH, %r12b
    jmp fail

do_invalid:
    .byte 0x06
    leaq text_no_ud(%rip), %rsi
    movb $EXIT_FALLTHROUGH, %r12b
    jmp fail

do_inject:
    // Software-enable the local APIC (SVR bit 8, spurious vector 0xFF): with the in-kernel
    // interrupt controller an injected external interrupt arrives through it. Without one,
    // this is an ordinary unclaimed MMIO write.
    movl $0xFEE000F0, %ebx
    movl $0x1FF, (%rbx)
    movw $INJECT_PORT, %dx
    xorl %eax, %eax
    sti                             // the out is in sti's interrupt shadow; the nops are not
    outb %al, %dx
    nop
    nop
    nop
    nop
    cli
    leaq text_no_event(%rip), %rsi
    movb $EXIT_FALLTHROUGH, %r12b
    jmp fail

do_wait:
    movb $0xFF, %al                 // mask every PIC input: only the NMI should arrive
    outb %al, $0x21
    outb %al, $0xA1
    movl $LAPIC_BASE, %eax          // software-enable the local APIC (SVR |= 0x1FF), so
    movl LAPIC_SVR(%rax), %ecx      // that an NMI sent as an IPI or MSI reaches it as well
    orl $SVR_ENABLE_SPURIOUS_FF, %ecx   // as one from KVM_NMI
    movl %ecx, LAPIC_SVR(%rax)
    leaq text_waiting(%rip), %rsi
    call com1_puts
    sti
1:  hlt                             // sleeps in the kernel until an event; the NMI handler exits
    jmp 1b

// fail: prints the string at RSI and ends the VM with status R12B.
fail:
    call com1_puts
    movb %r12b, %al
    jmp debug_exit

// print_result: prints "result=<16 hex digits of RAX>\n". Clobbers RAX, RCX, RDX, RDI,
// RSI, R8, R9.
print_result:
    movq %rax, %rdi
    leaq text_result(%rip), %rsi
    movl $16, %ecx
    call com1_field
    leaq text_newline(%rip), %rsi
    jmp com1_puts

// cmdline_is: EAX = 1 if the command line (boot info at R15) is exactly the NUL-terminated
// string at RSI, else 0. Clobbers RAX, RCX, RSI, RDI.
cmdline_is:
    movq 16(%r15), %rdi             // the command line's address
    movq 24(%r15), %rcx             // its length
1:  movzbl (%rsi), %eax
    testl %eax, %eax
    jz 2f                           // end of the mode name
    testq %rcx, %rcx
    jz 3f                           // the command line is shorter
    cmpb %al, (%rdi)
    jne 3f
    incq %rsi
    incq %rdi
    decq %rcx
    jmp 1b
2:  testq %rcx, %rcx
    jnz 3f                          // the command line is longer
    movl $1, %eax
    ret
3:  xorl %eax, %eax
    ret

// MARK: The handlers. None returns. The CPU pushed SS, RSP, RFLAGS, CS, RIP and, for #GP
// and #PF, an error code below them (at (%rsp)).

// idt_handlers: the gates that do not go to idt_unexpected_vector, as (vector, handler)
// pairs for idt_install.
    .section .rodata.idt_handlers, "a", @progbits
    .balign 8
idt_handlers:
    .quad 2, nmi_handler
    .quad 6, ud_handler
    .quad 13, gp_handler
    .quad 14, pf_handler
    .quad 0x40, irq40_handler
    .quad 0, 0                      // the end

    .section .text.handlers, "ax", @progbits
nmi_handler:
    movl $2, %ebx
    xorl %r12d, %r12d
    jmp report_event
ud_handler:
    movl $6, %ebx
    xorl %r12d, %r12d
    jmp report_event
gp_handler:
    movl $13, %ebx
    movl (%rsp), %r12d              // the error code
    jmp report_event
pf_handler:
    movl $14, %ebx
    movl (%rsp), %r12d              // the error code
    jmp report_event
irq40_handler:
    movl $0x40, %ebx
    xorl %r12d, %r12d
    jmp report_event

// report_event: prints "vector=<BL> error=<R12D> cr2=<CR2>" and ends with status 0.
report_event:
    movq %cr2, %r13
    leaq text_vector(%rip), %rsi
    movq %rbx, %rdi
    movl $2, %ecx
    call com1_field
    leaq text_error(%rip), %rsi
    movq %r12, %rdi
    movl $8, %ecx
    call com1_field
    leaq text_cr2(%rip), %rsi
    movq %r13, %rdi
    movl $16, %ecx
    call com1_field
    leaq text_newline(%rip), %rsi
    call com1_puts
    xorl %eax, %eax
    jmp debug_exit

// MARK: Data

    .section .rodata.events, "a", @progbits
mode_identity:          .asciz "identity"
mode_print:             .asciz "print"
mode_unknown:           .asciz "unknown"
mode_inject:            .asciz "inject"
mode_wait:              .asciz "wait"
mode_softint:           .asciz "softint"
mode_invalid:           .asciz "invalid"
text_waiting:           .asciz "waiting\n"
text_identity_rax:      .asciz "identity rax="
text_identity_rbx:      .asciz " rbx="
text_identity_rcx:      .asciz " rcx="
text_identity_rsi:      .asciz " rsi="
text_result:            .asciz "result="
text_exit_returned:     .asciz "exit returned\n"
text_no_ud:             .asciz "no #UD\n"
text_no_event:          .asciz "no event\n"
text_no_interrupt:      .asciz "no interrupt\n"
text_bad_command_line:  .asciz "bad command line\n"
text_vector:            .asciz "vector="
text_error:             .asciz " error="
text_cr2:               .asciz " cr2="
text_newline:           .asciz "\n"
text_printed:           .ascii "printed by hypercall\n"
text_printed_end:
    .byte 0
