// SMP stress; needs the in-kernel irqchip. Starts every AP in 64-bit long mode, then, by command line: "cmpxchg16b N", every vCPU adds 1 N times at CPL3 to one 128-bit counter with lock cmpxchg16b, and the BSP reports the total; "nmi", every vCPU counts the NMIs it takes while halted, until the host sets a stop flag.
//
// Start-up (BSP, CPL0): reads the vCPU count C from the boot info, copies a 16-bit
// trampoline to 0x10000 with its own CR3 in it, software-enables its local APIC and sends
// INIT, SIPI, SIPI to all but itself (ICR shorthand, vector 0x10). Each AP: real mode ->
// (PAE, the BSP's CR3, EFER.LME, CR0.PE|PG) -> 64-bit code at CPL0 on its own stack, loads
// this guest's GDT and IDT, takes its initial APIC ID (CPUID.1:EBX[31:24], which is the vCPU
// index under SwiftVisor) as its index, sets up its stack and NMI counter by it, counts
// itself ready at 0x1F004 and goes on in the mode's code below. The BSP waits until C-1 APs are ready (at most about 2*10^10 TSC ticks; then "only K of C-1 APs started", status 1).
//
// "cmpxchg16b N": the 16-byte counter starts at 2^64 - N (low quadword -N, high 0), so
// the total carries into the high quadword. Each vCPU drops to CPL3 (IOPL=3, IF=0) on its
// own stack, waits there for the BSP's go flag (set once all APs are ready) and adds 1 to
// it N times, each time in a `lock cmpxchg16b` loop (a failed
// compare retries with the value it read), then `lock inc`s a done counter. The BSP waits
// for C, then writes to port 0x503, 4 bytes each: the counter's four 32-bit words from the
// lowest, then the failed compares of all vCPUs together (low 32 bits); then status 0 to
// port 0x501. With C vCPUs the counter ends at 2^64 + (C-1)*N: words N*(C-1) (mod 2^32),
// ..., high 1, 0.
//
// "nmi": every vCPU stays at CPL0 with interrupts off and executes hlt in a loop; its NMI
// handler adds 1 to the vCPU's own counter, a quadword at 0x1F100 + 8 * index (the BSP is
// index 0), and returns with iretq. Once all APs are up the BSP prints "ready". After each
// wake-up it checks the stop flag, a quadword at 0x1F0F0 (zeroed at start): when the host has
// set it (and sent the BSP an NMI to wake it), the BSP writes the C counters to port 0x503 (4
// bytes each, low 32 bits) and status 0 to port 0x501.
//
// Any exception: "unexpected vector", status 99. A command line that is neither: "bad
// command line", 254. Bad boot info: 3.

#define AP_TRAMPOLINE 0x10000
#define SIPI_VECTOR (AP_TRAMPOLINE >> 12)
#define AP_READY 0x1F004                // u32: APs ready (index, stack and NMI counter set)
#define NMI_STOP 0x1F0F0                // u64: the host's stop flag in "nmi" mode
#define NMI_COUNTS 0x1F100              // u64 per vCPU
#define MAX_CPUS 64
#define REPORT_PORT 0x503

#define MSR_APIC_BASE 0x1B
#define APIC_BASE_ENABLE (1 << 11)
#define LAPIC_BASE 0xFEE00000
#define LAPIC_SVR 0xF0
#define LAPIC_ICR_LOW 0x300
#define LAPIC_ICR_HIGH 0x310
#define ICR_ALL_BUT_SELF (3 << 18)
#define ICR_INIT_ASSERT 0x4500
#define ICR_STARTUP 0x4600
#define ICR_DELIVERY_PENDING (1 << 12)
#define WAIT_TSC_TICKS 20000000000

#define USER_DS (0x18 | 3)
#define USER_CS (0x20 | 3)
#define USER_RFLAGS 0x3002              // IOPL=3, IF=0
#define STACK_SIZE 4096

#define MODE_CMPXCHG16B 1
#define MODE_NMI 2

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    movq %rdi, %rbx
    call check_boot_info
    movl 32(%rbx), %eax
    cmpl $MAX_CPUS, %eax
    jbe 1f
    movl $MAX_CPUS, %eax
1:  movl %eax, cpu_count(%rip)
    call parse_mode                 // sets mode and iterations

    leaq idt_unexpected_vector(%rip), %rdi
    leaq storm_handlers(%rip), %rsi
    call idt_install
    lgdt smp_gdtr(%rip)

    movl $0, AP_READY
    movq $0, NMI_STOP
    movl $NMI_COUNTS, %edi
    xorl %eax, %eax
    movl $MAX_CPUS, %ecx
    rep stosq

    // The 128-bit counter: 2^64 - N.
    movq iterations(%rip), %rax
    negq %rax
    movq %rax, counter128(%rip)
    movq $0, counter128 + 8(%rip)

    cmpl $1, cpu_count(%rip)
    jbe 5f

    // The trampoline, with the BSP's CR3 in it.
    movq %cr3, %rax
    movl %eax, trampoline_cr3(%rip)
    leaq trampoline_start(%rip), %rsi
    leaq trampoline_end(%rip), %rcx
    movl $AP_TRAMPOLINE, %edi
2:  movq (%rsi), %rax
    movq %rax, (%rdi)
    addq $8, %rsi
    addq $8, %rdi
    cmpq %rcx, %rsi
    jb 2b

    movl $MSR_APIC_BASE, %ecx
    rdmsr
    testl $APIC_BASE_ENABLE, %eax
    jnz 3f
    andl $0x100, %eax
    orl $(LAPIC_BASE | APIC_BASE_ENABLE), %eax
    xorl %edx, %edx
    wrmsr
3:  movl $LAPIC_BASE, %r12d
    movl LAPIC_SVR(%r12), %eax
    orl $0x1FF, %eax
    movl %eax, LAPIC_SVR(%r12)
    movl $(ICR_ALL_BUT_SELF | ICR_INIT_ASSERT), %eax
    call send_ipi_all
    movl $(ICR_ALL_BUT_SELF | ICR_STARTUP | SIPI_VECTOR), %eax
    call send_ipi_all
    movl $(ICR_ALL_BUT_SELF | ICR_STARTUP | SIPI_VECTOR), %eax
    call send_ipi_all

    // Wait for C-1 APs.
    rdtsc
    shlq $32, %rdx
    orq %rax, %rdx
    movq %rdx, %r9
    movabsq $WAIT_TSC_TICKS, %r10
    movl cpu_count(%rip), %r11d
    decl %r11d
4:  cmpl %r11d, AP_READY
    jae 5f
    pause
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    subq %r9, %rax
    cmpq %r10, %rax
    jb 4b
    leaq text_only(%rip), %rsi
    call com1_puts
    movl AP_READY, %edi
    call storm_decimal
    leaq text_of(%rip), %rsi
    call com1_puts
    movl %r11d, %edi
    call storm_decimal
    leaq text_started(%rip), %rsi
    call com1_puts
    movb $1, %al
    jmp debug_exit

5:  xorl %ebx, %ebx                 // the BSP is index 0
    movl $NMI_COUNTS, %r15d
    cmpl $MODE_NMI, mode(%rip)
    jne cpu_cmpxchg16b
    leaq text_ready(%rip), %rsi
    call com1_puts
    jmp cpu_nmi
    .size _start, . - _start

// ap_main: 64-bit, CPL0, interrupts off, on the trampoline's GDT. Loads this guest's GDT
// and IDT, takes its index (its APIC ID) and its stack, and continues in the mode's code with EBX = index.
    .section .text.ap_main, "ax", @progbits
ap_main:
    lgdt smp_gdtr(%rip)
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    lidt smp_idtr(%rip)
    movl $1, %eax
    cpuid
    shrl $24, %ebx                  // EBX = the initial APIC ID: the vCPU index
    cmpl $MAX_CPUS, %ebx
    jb 1f
2:  cli                             // no room for it: sleep
    hlt
    jmp 2b
1:  movl %ebx, %eax
    incl %eax
    shll $12, %eax                  // (index + 1) * STACK_SIZE
    leaq kernel_stacks(%rip), %rsp
    addq %rax, %rsp
    leaq NMI_COUNTS(,%rbx,8), %r15  // R15 = this vCPU's NMI counter
    lock incl AP_READY
    cmpl $MODE_NMI, mode(%rip)
    je cpu_nmi
    jmp cpu_cmpxchg16b

// cpu_nmi: EBX = index, R15 = its NMI counter. Halts forever with interrupts off; the BSP
// checks the stop flag after each wake-up.
    .section .text.cpu_nmi, "ax", @progbits
cpu_nmi:
1:  hlt
    testl %ebx, %ebx
    jnz 1b
    cmpq $0, NMI_STOP
    je 1b
    // The BSP: report every vCPU's count, then exit.
    movl $REPORT_PORT, %edx
    xorl %ecx, %ecx
2:  movl NMI_COUNTS(,%rcx,8), %eax
    outl %eax, %dx
    incl %ecx
    cmpl cpu_count(%rip), %ecx
    jb 2b
    xorl %eax, %eax
    jmp debug_exit

    .section .text.nmi_handler, "ax", @progbits
nmi_handler:
    lock incq (%r15)
    iretq

// cpu_cmpxchg16b: EBX = index. Drops to CPL3 on the index's user stack.
    .section .text.cpu_cmpxchg16b, "ax", @progbits
cpu_cmpxchg16b:
    movl %ebx, %eax
    incl %eax
    shll $12, %eax
    leaq user_stacks(%rip), %rcx
    addq %rax, %rcx
    pushq $USER_DS
    pushq %rcx
    pushq $USER_RFLAGS
    pushq $USER_CS
    leaq user_add(%rip), %rax
    pushq %rax
    iretq

// CPL3: adds 1 to counter128 N times; R12 = the index, R13 = left, R14 = failed compares.
    .section .text.user_add, "ax", @progbits
user_add:
    movl %ebx, %r12d
    movq iterations(%rip), %r13
    xorl %r14d, %r14d
    leaq counter128(%rip), %rsi
    testl %r12d, %r12d              // the BSP, last to get here, starts everyone at once
    jnz 8f
    movl $1, go(%rip)
8:  cmpl $0, go(%rip)
    jne 9f
    pause
    jmp 8b
9:  testq %r13, %r13
    jz 3f
1:  movq (%rsi), %rax
    movq 8(%rsi), %rdx
2:  movq %rax, %rbx
    movq %rdx, %rcx
    addq $1, %rbx
    adcq $0, %rcx
    lock cmpxchg16b (%rsi)
    je 21f
    incq %r14                       // RDX:RAX now holds the value seen: retry with it
    jmp 2b
21: decq %r13
    jnz 1b
3:  lock addq %r14, failures(%rip)
    lock incl done(%rip)
    testl %r12d, %r12d
    jz 4f
5:  pause                           // an AP: done, spins at CPL3 without exits
    jmp 5b
4:  movl cpu_count(%rip), %eax      // the BSP: wait for all
6:  cmpl %eax, done(%rip)
    jae 7f
    pause
    jmp 6b
7:  movl $REPORT_PORT, %edx
    movl counter128(%rip), %eax
    outl %eax, %dx
    movl counter128 + 4(%rip), %eax
    outl %eax, %dx
    movl counter128 + 8(%rip), %eax
    outl %eax, %dx
    movl counter128 + 12(%rip), %eax
    outl %eax, %dx
    movl failures(%rip), %eax
    outl %eax, %dx
    movl $0x501, %edx
    xorl %eax, %eax
    outb %al, %dx
    ud2

// send_ipi_all: writes EAX to ICR low (destination by shorthand), then waits for delivery.
// Clobbers RCX.
    .section .text.send_ipi_all, "ax", @progbits
send_ipi_all:
    movl $0, LAPIC_ICR_HIGH(%r12)
    movl %eax, LAPIC_ICR_LOW(%r12)
    movl $1000, %ecx
1:  testl $ICR_DELIVERY_PENDING, LAPIC_ICR_LOW(%r12)
    jz 2f
    decl %ecx
    jnz 1b
2:  ret

// parse_mode: the command line at the boot info RBX: "nmi" or "cmpxchg16b N" (N decimal,
// 1-18 digits). Sets mode and iterations. Anything else: "bad command line", 254.
    .section .text.parse_mode, "ax", @progbits
parse_mode:
    movq 16(%rbx), %rsi
    movq 24(%rbx), %rcx
    testq %rsi, %rsi
    jz 9f
    leaq text_nmi(%rip), %rdi
    call prefix
    jne 1f
    cmpq $3, %rcx
    jne 9f
    movl $MODE_NMI, mode(%rip)
    ret
1:  leaq text_cmpxchg16b(%rip), %rdi
    call prefix
    jne 9f
    cmpq $12, %rcx                  // "cmpxchg16b " and at least one digit
    jb 9f
    addq $11, %rsi
    subq $11, %rcx
    xorl %eax, %eax
    xorl %r8d, %r8d
2:  movzbl (%rsi), %edx
    subl $'0', %edx
    cmpl $9, %edx
    ja 9f
    incl %r8d
    cmpl $18, %r8d
    ja 9f
    imulq $10, %rax, %rax
    addq %rdx, %rax
    incq %rsi
    decq %rcx
    jnz 2b
    movq %rax, iterations(%rip)
    movl $MODE_CMPXCHG16B, mode(%rip)
    ret
9:  leaq text_bad_command_line(%rip), %rsi
    call com1_puts
    movb $254, %al
    jmp debug_exit

// prefix: ZF set if the NUL-terminated string at RDI is a prefix of the RCX bytes at RSI.
// Clobbers RAX, RDX.
prefix:
    xorl %edx, %edx
1:  movzbl (%rdi,%rdx), %eax
    testl %eax, %eax
    jz 2f                           // ZF set: the whole string matched
    cmpq %rcx, %rdx
    jae 3f
    cmpb %al, (%rsi,%rdx)
    jne 3f
    incq %rdx
    jmp 1b
2:  ret
3:  cmpl $-1, %edx                  // ZF clear (EDX is never -1)
    ret

// storm_decimal: writes EDI in decimal. Clobbers RAX, RCX, RDX, RDI, R8.
    .section .text.storm_decimal, "ax", @progbits
storm_decimal:
    movl %edi, %eax
    xorl %ecx, %ecx
    movl $10, %r8d
1:  xorl %edx, %edx
    divl %r8d
    addl $'0', %edx
    pushq %rdx
    incl %ecx
    testl %eax, %eax
    jnz 1b
2:  popq %rdi
    call com1_putc
    decl %ecx
    jnz 2b
    ret

    .section .rodata.smp_storm, "a", @progbits
    .balign 8
storm_handlers:
    .quad 2, nmi_handler
    .quad 0, 0
text_nmi:       .asciz "nmi"
text_cmpxchg16b: .asciz "cmpxchg16b "
text_ready:     .asciz "ready\n"
text_only:      .asciz "only "
text_of:        .asciz " of "
text_started:   .asciz " APs started\n"
text_bad_command_line: .asciz "bad command line\n"

    .section .data.smp_storm, "aw", @progbits
    .balign 16
smp_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF        // 0x08 ring-0 code, 64-bit
    .quad 0x00CF93000000FFFF        // 0x10 ring-0 data
    .quad 0x00CFF3000000FFFF        // 0x18 ring-3 data
    .quad 0x00AFFB000000FFFF        // 0x20 ring-3 code, 64-bit
smp_gdt_end:
    .balign 8
    .skip 6
smp_gdtr:
    .word smp_gdt_end - smp_gdt - 1
    .quad smp_gdt
    .balign 8
    .skip 6
smp_idtr:
    .word 256 * 16 - 1
    .quad idt
    .balign 4
cpu_count:  .long 1
mode:       .long 0
done:       .long 0
go:         .long 0
    .balign 8
iterations: .quad 0
failures:   .quad 0
    .balign 16
counter128: .quad 0, 0

    .section .bss.smp_storm, "aw", @nobits
    .balign 4096
kernel_stacks:
    .skip STACK_SIZE * (MAX_CPUS + 1)
user_stacks:
    .skip STACK_SIZE * (MAX_CPUS + 1)

// The AP trampoline: 16-bit code copied to 0x10000 and entered at 0x1000:0000. Every
// address in it is AP_TRAMPOLINE + (label - trampoline_start).
    .section .text.smp_trampoline, "ax", @progbits
    .balign 8
    .code16
trampoline_start:
    cli
    movw %cs, %ax
    movw %ax, %ds
    lgdtl (trampoline_gdtr - trampoline_start)
    movl %cr4, %eax
    orl $0x20, %eax                 // PAE
    movl %eax, %cr4
    movl (trampoline_cr3 - trampoline_start), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx          // EFER.LME
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    andl $0x9FFFFFFF, %eax          // CD and NW off
    orl $0x80000001, %eax           // PG and PE: long mode (compatibility mode until the jump)
    movl %eax, %cr0
    ljmpl $0x08, $(AP_TRAMPOLINE + trampoline_64 - trampoline_start)
    .code64
trampoline_64:
    movabsq $ap_main, %rax
    jmp *%rax
    .balign 8
trampoline_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF        // 0x08 ring-0 code, 64-bit
trampoline_gdt_end:
trampoline_gdtr:
    .word trampoline_gdt_end - trampoline_gdt - 1
    .long AP_TRAMPOLINE + trampoline_gdt - trampoline_start
trampoline_cr3:
    .long 0
    .balign 8
trampoline_end:
