// Interrupt-driven COM1 echo: routes the UART's IRQ 4 through the IOAPIC to vector 0x24, prints "echo ready", then sleeps in hlt and echoes every received byte from the interrupt handler; a "q" ends the VM with status 0.
//
// Needs the in-kernel interrupt controller (KVM_CREATE_IRQCHIP) and a UART that raises
// GSI 4 for its enabled interrupt conditions while MCR.OUT2 is set.
//
// Set-up, at CPL0 with interrupts off:
//   - an IDT of 256 64-bit interrupt gates (selector 0x08, type 0x8E): vector 0x24 is the
//     serial handler, vector 2 (NMI) prints "NMI" and ends the VM with status 0, every
//     other vector prints "unexpected vector" and ends it with status 99;
//   - both 8259 PICs masked (0xFF to ports 0x21 and 0xA1), so IRQ 4 arrives only through
//     the IOAPIC (not also through the PIC and LINT0's ExtINT virtual wire);
//   - the local APIC software-enabled: SVR (0xFEE000F0) |= 0x1FF (bit 8, spurious vector 0xFF);
//   - IOAPIC (0xFEC00000: IOREGSEL at +0x00, IOWIN at +0x10) redirection entry 4: high word
//     (register 0x19) = 0 (destination APIC ID 0), then low word (register 0x18) =
//     0x00000024 (vector 0x24, fixed, physical, active high, edge, unmasked);
//   - the UART: LCR = 0x03 (8N1, DLAB off), FCR = 0x07 (FIFOs on and cleared),
//     MCR = 0x0B (DTR, RTS, OUT2), IER = 0x01 (received data available only). Bytes that
//     arrived earlier stay in the UART: with IER.0 set and data ready, the UART is to raise
//     its line, and the handler echoes them once interrupts are on.
// Then it prints "echo ready" (polling LSR.THRE), executes sti and loops on hlt.
//
// The serial handler (vector 0x24) reads IIR (0x3FA), then, while LSR (0x3FD) bit 0 (data
// ready) is set, reads RBR (0x3F8) and writes the byte back to THR after polling THRE. If
// the byte is "q", it ends the VM with status 0 through port 0x501 right after echoing it.
// Otherwise it writes 0 to the local APIC's EOI register (0xFEE000B0) and returns with iretq.
// Output: "echo ready\n", then the input bytes as they arrive, up to and including the first
// "q". No status of its own until then (the host stops it, or an NMI does: "NMI\n", 0).
// Uses neither the boot-info block nor the command line.

#define SERIAL_VECTOR 0x24

#define PIC1_DATA 0x21
#define PIC2_DATA 0xA1

#define LAPIC_BASE 0xFEE00000
#define LAPIC_EOI 0xB0
#define LAPIC_SVR 0xF0
#define SVR_ENABLE_SPURIOUS_FF 0x1FF    // APIC software enable (bit 8) | spurious vector 0xFF

#define IOAPIC_BASE 0xFEC00000
#define IOAPIC_IOREGSEL 0x00
#define IOAPIC_IOWIN 0x10
#define IOAPIC_REDIR_LOW(pin) (0x10 + 2 * (pin))
#define IOAPIC_REDIR_HIGH(pin) (0x11 + 2 * (pin))
#define COM1_PIN 4

#define COM1_RBR 0x3F8                  // receive buffer (read, DLAB 0)
#define COM1_THR 0x3F8                  // transmit holding register (write, DLAB 0)
#define COM1_IER 0x3F9                  // interrupt enable (DLAB 0)
#define COM1_IIR 0x3FA                  // interrupt identification (read)
#define COM1_FCR 0x3FA                  // FIFO control (write)
#define COM1_LCR 0x3FB
#define COM1_MCR 0x3FC
#define COM1_LSR 0x3FD
#define COM1_MSR 0x3FE
#define LSR_DR 0x01
#define LSR_THRE 0x20
#define LCR_8N1 0x03
#define FCR_ENABLE_CLEAR 0x07
#define MCR_DTR_RTS_OUT2 0x0B
#define IER_RDA 0x01

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    leaq idt_unexpected_vector(%rip), %rdi  // common/idt.S: "unexpected vector", status 99,
    leaq idt_handlers(%rip), %rsi           // for every vector but those of idt_handlers
    call idt_install

    // Both PICs masked.
    movb $0xFF, %al
    outb %al, $PIC1_DATA
    outb %al, $PIC2_DATA

    // The local APIC, software-enabled.
    movl $LAPIC_BASE, %r12d         // R12 = the local APIC (zero-extended)
    movl LAPIC_SVR(%r12), %eax
    orl $SVR_ENABLE_SPURIOUS_FF, %eax
    movl %eax, LAPIC_SVR(%r12)

    // IOAPIC pin 4 -> vector 0x24 on APIC 0: the high word first, so the entry is complete
    // when the low word unmasks it.
    movl $IOAPIC_BASE, %r13d        // R13 = the IOAPIC
    movl $IOAPIC_REDIR_HIGH(COM1_PIN), IOAPIC_IOREGSEL(%r13)
    movl $0, IOAPIC_IOWIN(%r13)
    movl $IOAPIC_REDIR_LOW(COM1_PIN), IOAPIC_IOREGSEL(%r13)
    movl $SERIAL_VECTOR, IOAPIC_IOWIN(%r13)

    // The UART, receive interrupts on.
    movw $COM1_LCR, %dx
    movb $LCR_8N1, %al
    outb %al, %dx
    movw $COM1_FCR, %dx
    movb $FCR_ENABLE_CLEAR, %al
    outb %al, %dx
    movw $COM1_MCR, %dx
    movb $MCR_DTR_RTS_OUT2, %al
    outb %al, %dx
    movw $COM1_IER, %dx
    movb $IER_RDA, %al
    outb %al, %dx

    leaq text_ready(%rip), %rsi
    call com1_puts
    sti
1:  hlt                             // sleeps in the kernel until an interrupt
    jmp 1b
    .size _start, . - _start

// MARK: The handlers

// idt_handlers: the gates that do not go to idt_unexpected_vector, as (vector, handler)
// pairs for idt_install.
    .section .rodata.idt_handlers, "a", @progbits
    .balign 8
idt_handlers:
    .quad 2, nmi_handler
    .quad SERIAL_VECTOR, serial_handler
    .quad 0, 0                      // the end

// serial_handler: vector 0x24. Echoes every byte the UART holds; "q" ends the VM.
// Keeps every register (it interrupts the hlt loop, but could interrupt anything).
    .section .text.serial_handler, "ax", @progbits
serial_handler:
    pushq %rax
    pushq %rcx
    pushq %rdx
    movw $COM1_IIR, %dx             // identify the interrupt, as a driver would
    inb %dx, %al
1:  movw $COM1_LSR, %dx
    inb %dx, %al
    testb $LSR_DR, %al
    jz 3f                           // nothing (more) received
    movw $COM1_RBR, %dx
    inb %dx, %al
    movb %al, %cl                   // the byte
    movw $COM1_LSR, %dx
2:  inb %dx, %al
    testb $LSR_THRE, %al
    jz 2b
    movb %cl, %al
    movw $COM1_THR, %dx
    outb %al, %dx
    cmpb $'q', %cl
    jne 1b
    xorl %eax, %eax                 // "q": status 0
    jmp debug_exit
3:  movl $LAPIC_BASE, %eax
    movl $0, LAPIC_EOI(%rax)        // end of interrupt
    popq %rdx
    popq %rcx
    popq %rax
    iretq

nmi_handler:
    leaq text_nmi(%rip), %rsi
    call com1_puts
    xorl %eax, %eax
    jmp debug_exit

// MARK: Data

    .section .rodata.serial_echo, "a", @progbits
text_ready:             .asciz "echo ready\n"
text_nmi:               .asciz "NMI\n"
