// SMP bring-up: the BSP finds the CPUs and the IOAPIC in the MP table, then starts every AP with INIT + SIPI through its local APIC; each AP runs a 16-bit trampoline at 0x10000 that prints "AP <APIC ID> up" under a spin lock and counts itself; exits 0 once all are up.
//
// Needs the in-kernel interrupt controller (KVM_CREATE_IRQCHIP): local APICs at 0xFEE00000
// in xAPIC mode, APs waiting for SIPI. With one vCPU it touches no APIC at all.
//
// The BSP (64-bit, CPL0):
//   1. finds the CPUs and the IOAPIC in the Intel MultiProcessor Specification 1.4 table,
//      as a guest OS would (the boot-info vCPU count is not used):
//      a. searches for the floating pointer, "_MP_" on a 16-byte boundary whose 16 bytes sum
//         to 0 mod 256, in the last KiB of base memory (0x9FC00-0x9FFFF), then in the BIOS
//         ROM area (0xF0000-0xFFFFF); a "_MP_" with a bad checksum is skipped;
//      b. follows its pointer (+4, u32) to the configuration table, which must start with
//         "PCMP", have a base table length (+4, u16) of at least 44 and sum to 0 mod 256
//         over that length;
//      c. walks the entry count (+34, u16) entries after the 44-byte header, each inside the
//         base table: type 0 (processor, 20 bytes): if enabled (+3 bit 0), counts it in N and,
//         unless it is the bootstrap processor (+3 bit 1), keeps its APIC ID (+1) as an AP's;
//         type 2 (IOAPIC, 8 bytes): the first enabled one gives the IOAPIC's ID (+1) and
//         address (+4, u32); types 1, 3 and 4 (8 bytes) are skipped;
//      d. prints "MP table: <N> CPUs, IOAPIC id <ID> at 0x<address, 8 hex digits>".
//      No floating pointer, a null pointer or no "PCMP": "MP table: not found". Only "_MP_"s
//      with bad checksums, or a bad base table checksum: "MP table: bad checksum". A base
//      table shorter than its header, an entry of another type or past the base table,
//      not exactly one enabled bootstrap processor, more than 255 APs or no enabled IOAPIC:
//      "MP table: bad entries". Each of these ends the VM with status 2 through port 0x501.
//   2. prints "BSP: starting <N-1> APs";
//   3. if N > 1: zeroes the lock (0x1F000) and the counter (0x1F004), copies the trampoline
//      below to 0x10000, makes sure IA32_APIC_BASE (MSR 0x1B) has the global enable bit
//      (it writes 0xFEE00800 only if the bit is clear), and software-enables its local APIC
//      (SVR at 0xFEE000F0 |= 0x1FF: bit 8, spurious vector 0xFF);
//   4. for each AP's APIC ID from the table, in table order: ICR high (0xFEE00310) =
//      ID << 24, ICR low (0xFEE00300) = 0x4500 (INIT, level assert), then twice ICR low =
//      0x4610 (start-up, vector 0x10, so the AP starts at 0x1000:0000), waiting for ICR
//      delivery status (bit 12) to clear after each write (at most ICR_POLLS reads; KVM
//      clears it at once);
//   5. spins, for at most WAIT_TSC_TICKS time-stamp counter ticks (5-10 s at a TSC of 2-4
//      GHz, whether CPL0 code runs natively or is interpreted: a count of loop iterations
//      would last 2 s where it is interpreted and a millisecond where it runs natively, too
//      short for the APs' threads to be scheduled), until
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
//   MP table: 4 CPUs, IOAPIC id 4 at 0xFEC00000
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
#define MAX_APS 255                     // the room in ap_ids

// The MP table (Intel MultiProcessor Specification 1.4).
#define MP_SEARCH_BASE 0x9FC00          // the last KiB of base memory
#define MP_SEARCH_BASE_END 0xA0000
#define MP_SEARCH_ROM 0xF0000           // the BIOS ROM area
#define MP_SEARCH_ROM_END 0x100000
#define MP_FP_SIGNATURE 0x5F504D5F      // "_MP_", little-endian
#define MP_FP_SIZE 16
#define MP_FP_TABLE 4                   // u32: the configuration table's physical address
#define MP_CT_SIGNATURE 0x504D4350      // "PCMP", little-endian
#define MP_CT_LENGTH 4                  // u16: the base table's length in bytes
#define MP_CT_COUNT 34                  // u16: the base table's entry count
#define MP_CT_HEADER_SIZE 44
#define MP_ENTRY_PROCESSOR 0            // 20 bytes
#define MP_ENTRY_IOAPIC 2               // 8 bytes, like the other types 1-4
#define MP_ENTRY_LAST_TYPE 4
#define MP_PROCESSOR_SIZE 20
#define MP_ENTRY_SIZE 8
#define MP_ENTRY_ID 1                   // u8: a processor's local APIC ID, an IOAPIC's ID
#define MP_ENTRY_FLAGS 3                // u8: processor and IOAPIC flags
#define MP_FLAG_ENABLED 1
#define MP_FLAG_BSP 2                   // processors only
#define MP_IOAPIC_ADDRESS 4             // u32
#define EXIT_NO_MP_TABLE 2

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
#define WAIT_TSC_TICKS 20000000000

#define COM1_THR 0x3F8
#define COM1_LSR 0x3FD
#define LSR_THRE 0x20
#define EXIT_TIMEOUT 1

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    call check_boot_info            // the block itself is not used any further

    // 1a. The floating pointer: the last KiB of base memory, then the BIOS ROM area.
    xorl %r8d, %r8d                 // R8D = 1 once a "_MP_" with a bad checksum was seen
    movl $MP_SEARCH_BASE, %esi
    movl $MP_SEARCH_BASE_END, %ecx
    call mp_scan
    testq %rax, %rax
    jnz 1f
    movl $MP_SEARCH_ROM, %esi
    movl $MP_SEARCH_ROM_END, %ecx
    call mp_scan
    testq %rax, %rax
    jnz 1f
    testl %r8d, %r8d
    jnz mp_bad_checksum
    jmp mp_not_found

    // 1b. The configuration table: "PCMP", a whole header, the base table checksum.
1:  movl MP_FP_TABLE(%rax), %r12d   // R12 = the configuration table (zero-extended)
    testl %r12d, %r12d
    jz mp_not_found                 // 0 would mean a default configuration: not handled
    cmpl $MP_CT_SIGNATURE, (%r12)
    jne mp_not_found
    movzwl MP_CT_LENGTH(%r12), %ecx
    cmpl $MP_CT_HEADER_SIZE, %ecx
    jb mp_bad_entries
    movq %r12, %rsi
    call mp_sum
    testb %al, %al
    jnz mp_bad_checksum

    // 1c. The entries.
    movzwl MP_CT_LENGTH(%r12), %r9d
    addq %r12, %r9                  // R9 = the end of the base table
    leaq MP_CT_HEADER_SIZE(%r12), %rsi  // RSI = the entry
    movzwl MP_CT_COUNT(%r12), %ecx  // ECX = entries left
    leaq ap_ids(%rip), %rdi         // RDI = the APs' APIC IDs
    xorl %r15d, %r15d               // R15D = N, the enabled processors
    xorl %r14d, %r14d               // R14D = the APs among them
    xorl %ebx, %ebx                 // EBX = enabled bootstrap processors
    movl $-1, %r13d                 // R13D = the IOAPIC's ID, -1 until one is found
    xorl %r10d, %r10d               // R10D = the IOAPIC's address
2:  testl %ecx, %ecx
    jz 6f
    movzbl (%rsi), %eax             // the entry type
    cmpl $MP_ENTRY_LAST_TYPE, %eax
    ja mp_bad_entries
    movl $MP_ENTRY_SIZE, %edx
    testl %eax, %eax
    jnz 3f
    movl $MP_PROCESSOR_SIZE, %edx
3:  leaq (%rsi,%rdx), %r11          // R11 = the next entry
    cmpq %r9, %r11
    ja mp_bad_entries               // runs past the base table
    cmpl $MP_ENTRY_PROCESSOR, %eax
    jne 4f
    testb $MP_FLAG_ENABLED, MP_ENTRY_FLAGS(%rsi)
    jz 5f
    incl %r15d
    testb $MP_FLAG_BSP, MP_ENTRY_FLAGS(%rsi)
    jz 31f
    incl %ebx                       // the bootstrap processor: this one, not started
    jmp 5f
31: cmpl $MAX_APS, %r14d
    jae mp_bad_entries
    movzbl MP_ENTRY_ID(%rsi), %eax
    movb %al, (%rdi,%r14)
    incl %r14d
    jmp 5f
4:  cmpl $MP_ENTRY_IOAPIC, %eax
    jne 5f
    testb $MP_FLAG_ENABLED, MP_ENTRY_FLAGS(%rsi)
    jz 5f
    cmpl $-1, %r13d
    jne 5f                          // only the first enabled IOAPIC
    movzbl MP_ENTRY_ID(%rsi), %r13d
    movl MP_IOAPIC_ADDRESS(%rsi), %r10d
5:  movq %r11, %rsi
    decl %ecx
    jmp 2b
6:  cmpl $1, %ebx
    jne mp_bad_entries              // exactly one bootstrap processor, so N = APs + 1
    cmpl $-1, %r13d
    je mp_bad_entries

    // 1d. "MP table: <N> CPUs, IOAPIC id <ID> at 0x<address>"
    leaq text_mp(%rip), %rsi
    call com1_puts
    movl %r15d, %edi
    call com1_decimal
    leaq text_mp_cpus(%rip), %rsi
    call com1_puts
    movl %r13d, %edi
    call com1_decimal
    leaq text_mp_at(%rip), %rsi
    call com1_puts
    movl %r10d, %edi
    movl $8, %ecx
    call com1_puthex
    movl $0x0A, %edi                // '\n'
    call com1_putc

    // 2. "BSP: starting <N-1> APs"
    leaq text_starting(%rip), %rsi
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

    // INIT, SIPI, SIPI to each AP in turn, by the APIC IDs from the MP table.
    xorl %ebx, %ebx                 // EBX = the index in ap_ids
4:  leaq ap_ids(%rip), %rax
    movzbl (%rax,%rbx), %r13d       // R13D = the AP's APIC ID
    movl $ICR_INIT_ASSERT, %eax
    call send_ipi
    movl $(ICR_STARTUP | SIPI_VECTOR), %eax
    call send_ipi
    movl $(ICR_STARTUP | SIPI_VECTOR), %eax
    call send_ipi
    incl %ebx
    cmpl %r14d, %ebx
    jb 4b

    // Wait for the counter to reach N - 1, or WAIT_TSC_TICKS to pass.
    rdtsc
    shlq $32, %rdx
    orq %rax, %rdx
    movq %rdx, %r9                  // R9 = the TSC at the start
    movabsq $WAIT_TSC_TICKS, %r10
5:  movzwl AP_COUNT, %eax
    cmpl %r14d, %eax
    jae all_up
    pause
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    subq %r9, %rax
    cmpq %r10, %rax
    jb 5b

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

// The MP table is missing or malformed: a message, then status 2.
mp_not_found:
    leaq text_mp_not_found(%rip), %rsi
    jmp 1f
mp_bad_checksum:
    leaq text_mp_bad_checksum(%rip), %rsi
    jmp 1f
mp_bad_entries:
    leaq text_mp_bad_entries(%rip), %rsi
1:  call com1_puts
    movb $EXIT_NO_MP_TABLE, %al
    jmp debug_exit
    .size _start, . - _start

// mp_scan: searches [RSI, RCX) on 16-byte boundaries (RSI 16-byte aligned) for an MP
// floating pointer: "_MP_" whose 16 bytes sum to 0 mod 256. Returns its address in RAX, or
// 0. A "_MP_" with a bad checksum sets R8D to 1 and the search goes on past it.
// Clobbers RAX, RSI, RDX.
    .section .text.mp_scan, "ax", @progbits
mp_scan:
1:  cmpl $MP_FP_SIGNATURE, (%rsi)
    jne 3f
    xorl %eax, %eax                 // AL = the sum
    xorl %edx, %edx
2:  addb (%rsi,%rdx), %al
    incl %edx
    cmpl $MP_FP_SIZE, %edx
    jb 2b
    testb %al, %al
    jz 4f
    movl $1, %r8d
3:  addq $MP_FP_SIZE, %rsi
    cmpq %rcx, %rsi
    jb 1b
    xorl %eax, %eax
    ret
4:  movq %rsi, %rax
    ret

// mp_sum: returns in AL the sum mod 256 of the ECX (> 0) bytes at RSI.
// Clobbers RAX, RCX, RSI.
    .section .text.mp_sum, "ax", @progbits
mp_sum:
    xorl %eax, %eax
1:  addb (%rsi), %al
    incq %rsi
    decl %ecx
    jnz 1b
    ret

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
text_mp:        .asciz "MP table: "
text_mp_cpus:   .asciz " CPUs, IOAPIC id "
text_mp_at:     .asciz " at 0x"
text_mp_not_found:    .asciz "MP table: not found\n"
text_mp_bad_checksum: .asciz "MP table: bad checksum\n"
text_mp_bad_entries:  .asciz "MP table: bad entries\n"
text_starting:  .asciz "BSP: starting "
text_aps:       .asciz " APs\n"
text_all:       .asciz "BSP: all "
text_cpus_up:   .asciz " CPUs up\n"
text_only:      .asciz "BSP: only "
text_of:        .asciz " of "
text_started:   .asciz " APs started\n"

    .section .bss.smp, "aw", @nobits
ap_ids:         .skip MAX_APS + 1   // the APs' APIC IDs, in MP table order

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
