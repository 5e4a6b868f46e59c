// ring3.S: a GDT with ring-3 segments, and enter_ring3, which drops the guest to CPL3 with IOPL=3.
//
// Why: on the project's machines CPL0 code is interpreted by the host kernel (about 0.3 M
// instructions/s) while CPL3 code runs natively, so the benchmark guests run their hot
// loops at CPL3. IOPL=3 lets CPL3 code use in/out, so the loop and the final write to
// the debug-exit port need no way back to CPL0. Interrupts stay off, so no IDT or TSS is
// needed: a fault at CPL3 simply triple-faults.

#define KERNEL_CS 0x08
#define KERNEL_DS 0x10
#define USER_DS (0x18 | 3)          // RPL 3
#define USER_CS (0x20 | 3)          // RPL 3
#define USER_RFLAGS 0x3002          // IOPL=3 (bits 12-13), IF=0, bit 1 (always 1)

    .section .data.gdt, "aw", @progbits
    .balign 16
gdt:
    // Flat descriptors; the accessed bit (type bit 0) is preset so that loading a selector
    // never makes the CPU (or the host's emulator) write into the table.
    .quad 0                         // 0x00 null
    .quad 0x00AF9B000000FFFF        // 0x08 ring-0 code: P, DPL 0, code exec/read, L=1 (64-bit), G
    .quad 0x00CF93000000FFFF        // 0x10 ring-0 data: P, DPL 0, data read/write, D/B, G
    .quad 0x00CFF3000000FFFF        // 0x18 ring-3 data: P, DPL 3, data read/write, D/B, G
    .quad 0x00AFFB000000FFFF        // 0x20 ring-3 code: P, DPL 3, code exec/read, L=1 (64-bit), G
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
