// ring3.S: a GDT with ring-3 segments and a TSS slot, enter_ring3 and enter_ring3_here, which drop the guest to CPL3 with IOPL=3, and install_gdt_tss, for guests that take faults at CPL3.
//
// Why: on the project's machines CPL0 code is interpreted by the host kernel (about 0.3 M
// instructions/s) while CPL3 code runs natively, so the benchmark guests run their hot
// loops at CPL3. IOPL=3 lets CPL3 code use in/out, so the loop and the final write to
// the debug-exit port need no way back to CPL0.
//
// Two ways to use it:
//   - enter_ring3 alone (the benchmarks): interrupts stay off and there is no IDT or TSS, so
//     a fault at CPL3 simply triple-faults. The TSS slot in the GDT stays empty.
//   - install_gdt_tss at CPL0 (together with an IDT, see common/idt.S), then later
//     enter_ring3_here: a fault at CPL3 reaches the CPL0 handlers on the TSS's RSP0 stack,
//     and the TSS's I/O bitmap allows ports 0-0x5FF (COM1, 0x501) at CPL3.

#define KERNEL_CS 0x08
#define KERNEL_DS 0x10
#define USER_DS (0x18 | 3)          // RPL 3
#define USER_CS (0x20 | 3)          // RPL 3
#define TSS_SELECTOR 0x28
#define USER_RFLAGS 0x3002          // IOPL=3 (bits 12-13), IF=0, bit 1 (always 1)
#define TSS_DESCRIPTOR_FIXED 0x0000890000000000 // type 0x89 (P, DPL 0, available 64-bit TSS) << 40
#define IOMAP_PORTS 0x600           // the TSS's I/O bitmap allows ports 0-0x5FF (COM1, 0x501)

    .section .data.gdt, "aw", @progbits
    .balign 16
gdt:
    // Flat descriptors; the accessed bit (type bit 0) is preset so that loading a selector
    // never makes the CPU (or the host's emulator) write into the table (ltr does write: it
    // marks the TSS descriptor busy).
    .quad 0                         // 0x00 null
    .quad 0x00AF9B000000FFFF        // 0x08 ring-0 code: P, DPL 0, code exec/read, L=1 (64-bit), G
    .quad 0x00CF93000000FFFF        // 0x10 ring-0 data: P, DPL 0, data read/write, D/B, G
    .quad 0x00CFF3000000FFFF        // 0x18 ring-3 data: P, DPL 3, data read/write, D/B, G
    .quad 0x00AFFB000000FFFF        // 0x20 ring-3 code: P, DPL 3, code exec/read, L=1 (64-bit), G
gdt_tss:
    .quad 0, 0                      // 0x28 the TSS (16 bytes): empty until install_gdt_tss
gdt_end:
    // The 10-byte operand of lgdt: limit, then base.
    .balign 8
    .skip 6                         // so that the 64-bit base below is 8-byte aligned
gdtr:
    .word gdt_end - gdt - 1
    .quad gdt

    .section .bss.user_stack, "aw", @nobits
    .balign 16
    .globl user_stack_top
user_stack:
    .skip 4096
user_stack_top:

// enter_ring3: loads the GDT above and continues at RDI at CPL3 (CS = 0x23, SS = 0x1B) with
// RSP = user_stack_top and RFLAGS = 0x3002. Does not return. Keeps every general-purpose
// register except RSP (so the caller can pass values to its CPL3 code in them).
// The GDT keeps the VMM's ring-0 selectors (0x08 code, 0x10 data) at the same places, so
// nothing needs reloading before the iretq. DS/ES/FS/GS still hold 0x10 (DPL 0); the iretq
// to CPL3 loads them with null, which 64-bit mode allows.
    .section .text.enter_ring3, "ax", @progbits
    .globl enter_ring3
    .type enter_ring3, @function
enter_ring3:
    lgdt gdtr(%rip)
    // The iretq frame, pushed in reverse of the order iretq pops it (RIP, CS, RFLAGS, RSP, SS).
    pushq $USER_DS                  // SS
    pushq $user_stack_top           // RSP
    pushq $USER_RFLAGS              // RFLAGS
    pushq $USER_CS                  // CS
    pushq %rdi                      // RIP
    iretq
    .size enter_ring3, . - enter_ring3

// enter_ring3_here: continues at RDI at CPL3 (CS 0x23, SS 0x1B, RFLAGS 0x3002) on the
// current stack, with the GDT that is loaded (install_gdt_tss's: it loads no GDT itself).
// Does not return (jump to it). Keeps every general-purpose register but RAX.
    .section .text.enter_ring3_here, "ax", @progbits
    .globl enter_ring3_here
    .type enter_ring3_here, @function
enter_ring3_here:
    movq %rsp, %rax
    pushq $USER_DS                  // SS
    pushq %rax                      // RSP: the stack as it is
    pushq $USER_RFLAGS              // RFLAGS
    pushq $USER_CS                  // CS
    pushq %rdi                      // RIP
    iretq
    .size enter_ring3_here, . - enter_ring3_here

// install_gdt_tss: fills in the TSS descriptor (base = tss), sets the TSS's RSP0 to the top
// of kernel_stack, loads the GDT above and TR = 0x28. CS (0x08) and SS/DS/ES/FS/GS (0x10)
// need no reload: the GDT has the same descriptors there. Call it once (ltr marks the
// descriptor busy, and loading a busy TSS faults). Clobbers RAX, RCX, RDX.
    .section .text.install_gdt_tss, "ax", @progbits
    .globl install_gdt_tss
    .type install_gdt_tss, @function
install_gdt_tss:
    leaq tss(%rip), %rax
    movl %eax, %ecx
    andl $0xFFFFFF, %ecx
    shlq $16, %rcx                  // bits 16-39: base 23:0
    movq %rax, %rdx
    shrq $24, %rdx
    andl $0xFF, %edx
    shlq $56, %rdx                  // bits 56-63: base 31:24
    orq %rdx, %rcx
    movabsq $TSS_DESCRIPTOR_FIXED, %rdx
    orq %rdx, %rcx
    orq $(tss_end - tss - 1), %rcx  // bits 0-15: limit 15:0 (under 64 KiB)
    movq %rcx, gdt_tss(%rip)
    movq %rax, %rdx
    shrq $32, %rdx                  // bits 64-95: base 63:32; 96-127 reserved (0)
    movq %rdx, gdt_tss + 8(%rip)
    leaq kernel_stack_top(%rip), %rax
    movq %rax, tss + 4(%rip)        // RSP0
    lgdt gdtr(%rip)
    movw $TSS_SELECTOR, %ax
    ltr %ax
    ret
    .size install_gdt_tss, . - install_gdt_tss

    // The 64-bit TSS: RSP0 (offset 4, set at run time), then an I/O bitmap that allows ports
    // 0-0x5FF. IOPL=3 should make the bitmap irrelevant at CPL3, but on the project's machines
    // CPL3 "in" faults (#GP, error 0) with no bitmap even at IOPL=3, so the bitmap is there.
    .section .data.tss, "aw", @progbits
    .balign 16
tss:
    .skip 102
    .word tss_iomap - tss           // I/O-map base: right after the 104-byte TSS
tss_iomap:
    .skip IOMAP_PORTS / 8           // one bit per port, 0 = allowed
    .byte 0xFF                      // the terminator the CPU may read past the last port
tss_end:

    // The stack the CPU switches to when a fault or interrupt at CPL3 enters a CPL0 handler.
    .section .bss.kernel_stack, "aw", @nobits
    .balign 16
kernel_stack:
    .skip 4096
kernel_stack_top:
