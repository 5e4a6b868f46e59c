// Multiboot guest: INT n through a 32-bit IDT and invalid opcode bytes at CPL0, the two instructions the host's KVM gives up on.
//
// Loads its own GDT and an IDT of 0x50 32-bit interrupt gates (limit 0x27F), then at CPL0:
//   int 0x40    interrupt gate, present, DPL 0, with IF set before: the handler must run
//               with IF clear, see the saved EIP just after the instruction and IF set in
//               the saved EFLAGS; it returns there. Prints "int 0x40 ok".
//   int 0x41    trap gate (0x8F): the handler runs with IF still set. "int 0x41 ok".
//   int 0x42    a gate that is not present: #NP with error code 0x212 (0x42 << 3 | 2), the
//               saved EIP at the instruction. "int 0x42 #NP ok".
//   int 0x80    past the IDT limit: #GP with error code 0x402. "int 0x80 #GP ok".
//   0F 04       bytes that are no instruction: #UD, the saved EIP at them. "invalid #UD ok".
// Then "soft_int ok". A failed check prints "FAIL <probe>: vector=V error=E eip=X flags=F"
// and goes on.
// multiboot-load: elf 0x100000
#include "mb.h"
#include "mb_idt.h"

#define IF_FLAG 0x200u

static bool failed;

static void fail(const char *probe) {
    failed = true;
    com1_puts("FAIL ");
    com1_puts(probe);
    com1_puts(": vector=");
    put_hex(mb_last_trap.vector);
    com1_puts(" error=");
    put_hex(mb_last_trap.error);
    com1_puts(" eip=");
    put_hex(mb_last_trap.eip);
    com1_puts(" flags=");
    put_hex(mb_last_trap.eflags);
    com1_puts(" handler_flags=");
    put_hex(mb_last_trap.handler_eflags);
    com1_putc('\n');
}

static void pass(const char *line) {
    com1_puts(line);
    com1_putc('\n');
}

void guest_main(uint32_t magic, const struct multiboot_info *info) {
    (void)info;
    if (magic != MULTIBOOT_BOOT_MAGIC) qemu_exit(QEMU_FAIL);
    mb_idt_setup(0x50 * 8 - 1);
    mb_set_gate_access(0x41, 0x8F);  // trap gate
    mb_set_gate_access(0x42, 0x0E);  // not present

    uint32_t count = mb_last_trap.count, after;
    __asm__ volatile("sti\n\t"
                     "int $0x40\n"
                     "1: cli\n\t"
                     "movl $1b, %0"
                     : "=r"(after)
                     :
                     : "memory");
    if (mb_last_trap.count == count + 1 && mb_last_trap.vector == 0x40 && mb_last_trap.eip == after &&
        mb_last_trap.cs == 0x08 && (mb_last_trap.eflags & IF_FLAG) && !(mb_last_trap.handler_eflags & IF_FLAG))
        pass("int 0x40 ok");
    else
        fail("int 0x40");

    count = mb_last_trap.count;
    __asm__ volatile("sti\n\t"
                     "int $0x41\n"
                     "1: cli\n\t"
                     "movl $1b, %0"
                     : "=r"(after)
                     :
                     : "memory");
    if (mb_last_trap.count == count + 1 && mb_last_trap.vector == 0x41 && mb_last_trap.eip == after &&
        (mb_last_trap.handler_eflags & IF_FLAG))
        pass("int 0x41 ok");
    else
        fail("int 0x41");

    uint32_t at;
    count = mb_last_trap.count;
    __asm__ volatile("movl $2f, mb_resume_eip\n\t"
                     "1: int $0x42\n"
                     "2: movl $1b, %0"
                     : "=r"(at)
                     :
                     : "memory");
    if (mb_last_trap.count == count + 1 && mb_last_trap.vector == 11 && mb_last_trap.error == (0x42u << 3 | 2) &&
        mb_last_trap.eip == at)
        pass("int 0x42 #NP ok");
    else
        fail("int 0x42 #NP");

    count = mb_last_trap.count;
    __asm__ volatile("movl $2f, mb_resume_eip\n\t"
                     "1: int $0x80\n"
                     "2: movl $1b, %0"
                     : "=r"(at)
                     :
                     : "memory");
    if (mb_last_trap.count == count + 1 && mb_last_trap.vector == 13 && mb_last_trap.error == (0x80u << 3 | 2) &&
        mb_last_trap.eip == at)
        pass("int 0x80 #GP ok");
    else
        fail("int 0x80 #GP");

    count = mb_last_trap.count;
    __asm__ volatile("movl $2f, mb_resume_eip\n\t"
                     "1: .byte 0x0f, 0x04\n"
                     "2: movl $1b, %0"
                     : "=r"(at)
                     :
                     : "memory");
    if (mb_last_trap.count == count + 1 && mb_last_trap.vector == 6 && mb_last_trap.eip == at)
        pass("invalid #UD ok");
    else
        fail("invalid #UD");

    if (failed) qemu_exit(QEMU_FAIL);
    pass("soft_int ok");
    qemu_exit(QEMU_PASS);
}
