// SMP bring-up: the BSP starts every AP with INIT + SIPI through its local APIC; each AP runs a 16-bit trampoline at 0x10000 that prints "AP <APIC ID> up" under a spin lock and counts itself; exits 0 once all are up.
//
// Needs the in-kernel interrupt controller (KVM_CREATE_IRQCHIP): local APICs at 0xFEE00000
// in xAPIC mode, APs waiting for SIPI. With one vCPU it touches no APIC at all.
//
// The BSP (64-bit, CPL0):
//   1. reads N, the vCPU count, from the boot-info block (+32; 0 is taken as 1) and prints
//      "BSP: starting <N-1> APs";
//   2. if N > 1: zeroes the lock (0x1F000) and the counter (0x1F004), copies the trampoline
//      below to 0x10000, makes sure IA32_APIC_BASE (MSR 0x1B) has the global enable bit
//      (it writes 0xFEE00800 only if the bit is clear), and software-enables its local APIC
//      (SVR at 0xFEE000F0 |= 0x1FF: bit 8, spurious vector 0xFF);
//   3. for each APIC ID 1..N-1: ICR high (0xFEE00310) = ID << 24, ICR low (0xFEE00300) =
//      0x4500 (INIT, level assert), then twice ICR low = 0x4610 (start-up, vector 0x10, so
//      the AP starts at 0x1000:0000), waiting for ICR delivery status (bit 12) to clear
//      after each write (at most ICR_POLLS reads; KVM clears it at once);
//   4. spins, at most WAIT_ITERATIONS times (about 2 s where CPL0 code is interpreted), until
//      the 16-bit counter at 0x1F004 reaches N-1, then prints "BSP: all <N> CPUs up" and
//      ends the VM with status 0 through port 0x501. On timeout it prints
//      "BSP: only <K> of <N-1> APs started" and ends with status 1.
// Each AP (16-bit real mode, CS = 0x1000, IP = 0, interrupts off):
//   sets DS = SS = CS (0x1000), takes the spin lock at 0x1F000 (DS:0xF000) with xchg (a
//   locked read-modify-write), sets SP = 0xF000 (one stack for all APs, used only under the
//   lock), reads its initial APIC ID from CPUID leaf 1, EBX[31:24], prints
//   "AP <ID in decimal> up", releases the lock, increments the word at 0x1F004 (DS:0xF004)
//   with lock inc, and then executes cli; hlt in a loop.
// Output with N = 4 (the AP lines in whatever order the APs take the lock):
//   BSP: starting 3 APs
//   AP 1 up
//   AP 2 up
//   AP 3 up
//   BSP: all 4 CPUs up
// A bad boot-info block prints "bad boot info ..." and ends with status 3.

#define AP_TRAMPOLINE 0x10000           // in the guest's scratch area 0x10000-0x1FFFF
#define SIPI_VECTOR (AP_TRAMPOLINE >> 12)
#define AP_LOCK 0x1F000                 // u16: 0 free, 1 taken
#define AP_COUNT 0x1F004                // u16: APs that have printed their line
#define AP_LOCK_OFFSET (AP_LOCK - AP_TRAMPOLINE)    // the same, from the AP's DS = 0x1000
#define AP_COUNT_OFFSET (AP_COUNT - AP_TRAMPOLINE)
#define AP_STACK_TOP_OFFSET AP_LOCK_OFFSET          // SS:SP = 0x1000:0xF000, under the lock

#define MSR_APIC_BASE 0x1B
#define APIC_BASE_ENABLE (1 << 11)
#define APIC_BASE_X2APIC (1 << 10)
#define LAPIC_BASE 0xFEE00000
#define LAPIC_SVR 0xF0
#define LAPIC_ICR_LOW 0x300
#define LAPIC_ICR_HIGH 0x310
#define SVR_ENABLE_SPURIOUS_FF 0x1FF    // APIC software enable (bit 8) | spurious vector 0xFF
#define ICR_INIT_ASSERT 0x4500          // INIT (5 << 8), level assert (bit 14), edge
#define ICR_STARTUP 0x4600              // start-up (6 << 8), level assert
#define ICR_DELIVERY_PENDING (1 << 12)
#define ICR_POLLS 1000
#define WAIT_ITERATIONS 300000

#define COM1_THR 0x3F8
#define COM1_LSR 0x3FD
#define LSR_THRE 0x20
#define EXIT_TIMEOUT 1

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    movq %rdi, %rbx
    call check_boot_info            // keeps every register when the block is valid
    movl 32(%rbx), %r15d            // R15D = N, the vCPU count
    testl %r15d, %r15d
    jnz 1f
    movl $1, %r15d
1:  leal -1(%r15), %r14d            // R14D = N - 1, the APs

    leaq text_starting(%rip), %rsi  // "BSP: starting <N-1> APs"
    call com1_puts
    movl %r14d, %edi
    call com1_decimal
    leaq text_aps(%rip), %rsi
    call com1_puts
    testl %r14d, %r14d
    jz all_up                       // one vCPU: no APIC, no APs

    // The lock and the counter, then the trampoline (padded to whole quadwords).
    movl $0, AP_LOCK
    movl $0, AP_COUNT
    leaq trampoline_start(%rip), %rsi
    leaq trampoline_end(%rip), %rcx
    movl $AP_TRAMPOLINE, %edi
2:  movq (%rsi), %rax
    movq %rax, (%rdi)
    addq $8, %rsi
    addq $8, %rdi
    cmpq %rcx, %rsi
    jb 2b

    // The local APIC: globally enabled (KVM's reset state; a VMM could have cleared it),
    // then software-enabled.
    movl $MSR_APIC_BASE, %ecx
    rdmsr
    testl $APIC_BASE_ENABLE, %eax
    jnz 3f
    andl $0x100, %eax               // keep the BSP flag (bit 8), x2APIC off
    orl $(LAPIC_BASE | APIC_BASE_ENABLE), %eax
    xorl %edx, %edx
    wrmsr
3:  movl $LAPIC_BASE, %r12d         // R12 = the local APIC (zero-extended: 0xFEE00000)
    movl LAPIC_SVR(%r12), %eax
    orl $SVR_ENABLE_SPURIOUS_FF, %eax
    movl %eax, LAPIC_SVR(%r12)

    // INIT, SIPI, SIPI to each AP in turn.
    movl $1, %r13d                  // R13D = the AP's APIC ID
4:  movl $ICR_INIT_ASSERT, %eax
    call send_ipi
    movl $(ICR_STARTUP | SIPI_VECTOR), %eax
    call send_ipi
    movl $(ICR_STARTUP | SIPI_VECTOR), %eax
    call send_ipi
    incl %r13d
    cmpl %r15d, %r13d
    jb 4b

    // Wait for the counter to reach N - 1.
    movl $WAIT_ITERATIONS, %ecx
5:  movzwl AP_COUNT, %eax
    cmpl %r14d, %eax
    jae all_up
    decl %ecx
    jnz 5b

    // Timeout: "BSP: only <K> of <N-1> APs started", status 1.
    leaq text_only(%rip), %rsi
    call com1_puts
    movzwl AP_COUNT, %edi
    call com1_decimal
    leaq text_of(%rip), %rsi
    call com1_puts
    movl %r14d, %edi
    call com1_decimal
    leaq text_started(%rip), %rsi
    call com1_puts
    movb $EXIT_TIMEOUT, %al
    jmp debug_exit

// "BSP: all <N> CPUs up", status 0.
all_up:
    leaq text_all(%rip), %rsi
    call com1_puts
    movl %r15d, %edi
    call com1_decimal
    leaq text_cpus_up(%rip), %rsi
    call com1_puts
    xorl %eax, %eax
    jmp debug_exit
    .size _start, . - _start

// send_ipi: sends the IPI whose ICR low word is EAX to APIC ID R13D through the local APIC
// at R12, then waits (at most ICR_POLLS reads) for the delivery status to clear.
// Clobbers RAX, RCX, RDX.
    .section .text.send_ipi, "ax", @progbits
send_ipi:
    movl %r13d, %edx
    shll $24, %edx
    movl %edx, LAPIC_ICR_HIGH(%r12) // destination
    movl %eax, LAPIC_ICR_LOW(%r12)  // writing the low word sends it
    movl $ICR_POLLS, %ecx
1:  testl $ICR_DELIVERY_PENDING, LAPIC_ICR_LOW(%r12)
    jz 2f
    decl %ecx
    jnz 1b
2:  ret

// com1_decimal: writes EDI as an unsigned decimal number. Clobbers RAX, RCX, RDX, RDI, R8.
    .section .text.com1_decimal, "ax", @progbits
com1_decimal:
    movl %edi, %eax
    xorl %ecx, %ecx                 // digits pushed
    movl $10, %r8d
1:  xorl %edx, %edx
    divl %r8d
    addl $'0', %edx
    pushq %rdx
    incl %ecx
    testl %eax, %eax
    jnz 1b
2:  popq %rdi
    call com1_putc                  // clobbers RAX and RDX only
    decl %ecx
    jnz 2b
    ret

    .section .rodata.smp, "a", @progbits
text_starting:  .asciz "BSP: starting "
text_aps:       .asciz " APs\n"
text_all:       .asciz "BSP: all "
text_cpus_up:   .asciz " CPUs up\n"
text_only:      .asciz "BSP: only "
text_of:        .asciz " of "
text_started:   .asciz " APs started\n"

// MARK: The AP trampoline: 16-bit real-mode code, copied to 0x10000 and entered at
// 0x1000:0000. Linked inside the ELF image (somewhere above 0x100000) but never run there:
// every address it uses is an offset from trampoline_start, which is offset 0 of its
// segment once copied, or a fixed *_OFFSET. Jumps and calls are IP-relative.

    .section .text.trampoline, "ax", @progbits
    .balign 8
    .code16
trampoline_start:
    cli
    movw %cs, %ax
    movw %ax, %ds                   // DS = 0x1000: the trampoline, the lock and the counter
    movw %ax, %ss

    // Take the lock: xchg with memory is locked even without the prefix.
1:  movw $1, %ax
    xchgw %ax, AP_LOCK_OFFSET
    testw %ax, %ax
    jz 3f
2:  cmpw $0, AP_LOCK_OFFSET         // taken: wait until it looks free, then try again
    jne 2b
    jmp 1b
3:  movw $AP_STACK_TOP_OFFSET, %sp  // the stack is ours while we hold the lock

    // "AP <initial APIC ID> up"
    movl $1, %eax
    cpuid
    shrl $24, %ebx                  // BX = CPUID.1:EBX[31:24]
    movw %bx, %bp
    movw $(ap_text_ap - trampoline_start), %si
    call ap_puts
    movw %bp, %ax                   // the ID in decimal: push the digits, then print them
    xorw %cx, %cx
    movw $10, %bx
4:  xorw %dx, %dx
    divw %bx
    addb $'0', %dl
    pushw %dx
    incw %cx
    testw %ax, %ax
    jnz 4b
5:  popw %ax
    call ap_putc
    decw %cx
    jnz 5b
    movw $(ap_text_up - trampoline_start), %si
    call ap_puts

    movw $0, AP_LOCK_OFFSET         // release the lock (done with the stack)
    lock incw AP_COUNT_OFFSET       // count this AP
6:  cli
    hlt
    jmp 6b

// ap_puts: writes the NUL-terminated string at DS:SI. Clobbers AX, DX, SI.
ap_puts:
1:  movb (%si), %al
    testb %al, %al
    jz 2f
    call ap_putc
    incw %si
    jmp 1b
2:  ret

// ap_putc: writes AL to COM1 once THRE is set. Clobbers AX, DX.
ap_putc:
    movb %al, %ah
    movw $COM1_LSR, %dx
1:  inb %dx, %al
    testb $LSR_THRE, %al
    jz 1b
    movb %ah, %al
    movw $COM1_THR, %dx
    outb %al, %dx
    ret

ap_text_ap:     .asciz "AP "
ap_text_up:     .asciz " up\n"
    .balign 8                       // the BSP copies whole quadwords
trampoline_end:
    .code64
