// mb_idt.h: a GDT and a 32-bit IDT for the multiboot guests; every vector records its frame in mb_last_trap.
//
// mb_idt_setup(limit) loads a flat GDT (code 0x08, data 0x10) and an IDT of 256 32-bit
// interrupt gates (selector 0x08, DPL 0, present) with the given IDTR limit. Each vector's
// stub pushes a 0 in place of an error code where the processor pushes none (every vector
// but 8, 10-14, 17, 21, 29 and 30), then the common handler records the vector, error
// code, saved EIP, CS and EFLAGS, and EFLAGS inside the handler, and counts the event.
// When mb_resume_eip is set, the handler returns there (once) instead of to the saved EIP:
// that is how a probe of a fault goes on after it. A vector below 32 with no resume point
// set prints "unexpected vector N at EIP" and ends the VM through QEMU's debug-exit (1).
// Other vectors return to the saved EIP, with POPF and RET rather than IRET (see below).
#ifndef SWIFTVISOR_MB_IDT_H
#define SWIFTVISOR_MB_IDT_H

#include "mb.h"

struct mb_trap {
    uint32_t vector, error, eip, cs, eflags, handler_eflags, count;
};

volatile struct mb_trap mb_last_trap;
volatile uint32_t mb_resume_eip;

static uint64_t mb_gdt[3] = {0, 0x00CF9A000000FFFFull, 0x00CF92000000FFFFull};
static uint64_t mb_idt[256];

__attribute__((used, noreturn)) void mb_trap_unexpected(uint32_t vector, uint32_t eip) {
    com1_puts("unexpected vector ");
    put_dec(vector);
    com1_puts(" at ");
    put_hex(eip);
    com1_putc('\n');
    qemu_exit(QEMU_FAIL);
}

__asm__(".pushsection .text.mb_idt, \"ax\", @progbits\n"
        ".p2align 4\n"
        "mb_trap_stubs:\n"
        ".set mb_vector, 0\n"
        ".rept 256\n"
        ".if (mb_vector == 8) || ((mb_vector >= 10) && (mb_vector <= 14)) || (mb_vector == 17) || (mb_vector == 21) || (mb_vector == 29) || (mb_vector == 30)\n"
        "  pushl $mb_vector\n"
        ".else\n"
        "  pushl $0\n"
        "  pushl $mb_vector\n"
        ".endif\n"
        "  jmp mb_trap_common\n"
        "  .p2align 4\n"
        ".set mb_vector, mb_vector + 1\n"
        ".endr\n"
        "mb_trap_common:\n"
        // The stack: EAX, vector, error, EIP, CS, EFLAGS.
        "  pushl %eax\n"
        "  incl mb_last_trap+24\n"
        "  movl 4(%esp), %eax\n"
        "  movl %eax, mb_last_trap\n"
        "  movl 8(%esp), %eax\n"
        "  movl %eax, mb_last_trap+4\n"
        "  movl 12(%esp), %eax\n"
        "  movl %eax, mb_last_trap+8\n"
        "  movl 16(%esp), %eax\n"
        "  movl %eax, mb_last_trap+12\n"
        "  movl 20(%esp), %eax\n"
        "  movl %eax, mb_last_trap+16\n"
        "  pushfl\n"
        "  popl %eax\n"
        "  movl %eax, mb_last_trap+20\n"
        "  movl mb_resume_eip, %eax\n"
        "  testl %eax, %eax\n"
        "  jz 1f\n"
        "  movl %eax, 12(%esp)\n"
        "  movl $0, mb_resume_eip\n"
        "  jmp 2f\n"
        "1:cmpl $32, 4(%esp)\n"
        "  jae 2f\n"
        "  pushl 12(%esp)\n"
        "  pushl 8(%esp)\n"
        "  call mb_trap_unexpected\n"
        // Return without IRET, which the host's KVM cannot emulate in protected mode at
        // CPL0: the same privilege level, so the frame is EIP, CS, EFLAGS and no stack
        // switch. Rearranged into EFLAGS, EIP for POPF and RET.
        "2:movl 12(%esp), %eax\n"
        "  xchgl %eax, 20(%esp)\n"
        "  movl %eax, 16(%esp)\n"
        "  popl %eax\n"
        "  addl $12, %esp\n"
        "  popfl\n"
        "  ret\n"
        ".popsection\n");

extern char mb_trap_stubs[];

// Sets gate `vector`'s byte 5 (P, DPL, type) and keeps its handler.
__attribute__((unused)) static void mb_set_gate_access(uint8_t vector, uint8_t access) {
    mb_idt[vector] = (mb_idt[vector] & ~(0xFFull << 40)) | (uint64_t)access << 40;
}

__attribute__((unused)) static void mb_idt_setup(uint16_t limit) {
    struct __attribute__((packed)) {
        uint16_t limit;
        uint32_t base;
    } gdtr = {sizeof mb_gdt - 1, (uint32_t)(uintptr_t)mb_gdt}, idtr = {limit, (uint32_t)(uintptr_t)mb_idt};
    for (int v = 0; v < 256; v++) {
        uint32_t handler = (uint32_t)(uintptr_t)mb_trap_stubs + 16u * (uint32_t)v;
        mb_idt[v] = (handler & 0xFFFFu) | 0x08u << 16 | (uint64_t)0x8E << 40 | (uint64_t)(handler >> 16) << 48;
    }
    __asm__ volatile("lgdt %0\n\t"
                     "ljmp $0x08, $1f\n"
                     "1: movw $0x10, %%ax\n\t"
                     "movw %%ax, %%ds\n\t"
                     "movw %%ax, %%es\n\t"
                     "movw %%ax, %%ss\n\t"
                     "movw %%ax, %%fs\n\t"
                     "movw %%ax, %%gs\n\t"
                     "lidt %1"
                     :
                     : "m"(gdtr), "m"(idtr)
                     : "eax", "memory");
}

#endif
