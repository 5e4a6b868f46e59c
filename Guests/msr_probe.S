// MSR and XCR0 probe: installs an IDT whose #GP handler skips the faulting instruction, then runs rdmsr/wrmsr on MSRs 0x8B, 0x79, 0x3A, 0x480, 0x4B564D99 and 0x40001000-0x40001002 and xsetbv with XCR0 = 3, 7, 0x207, 0xE7 and the command line's value, if any, printing each value, "ok" or "#GP" on COM1; exits with status 0.
//
// Output, one line per probe ("\n" only; hex in upper case; a value is EDX:EAX, 16 digits):
//   rdmsr 0000008B=<value|#GP>          IA32_BIOS_SIGN_ID
//   wrmsr 0000008B <ok|#GP>             writes 0
//   rdmsr 0000008B=<value|#GP>          again
//   wrmsr 00000079 <ok|#GP>             IA32_BIOS_UPDT_TRIG, writes 0
//   rdmsr 0000003A=<value|#GP>          IA32_FEATURE_CONTROL
//   rdmsr 00000480=<value|#GP>          IA32_VMX_BASIC
//   rdmsr 4B564D99=<value|#GP>          an MSR nobody knows
//   wrmsr 4B564D99 <ok|#GP>             writes 5
//   rdmsr 40001000=<value|#GP>          (a test configures a constant)
//   wrmsr 40001001 <ok|#GP>             writes 0x1122334455667788
//   rdmsr 40001001=<value|#GP>          (a test configures "record the last write")
//   rdmsr 40001002=<value|#GP>          (a test configures a handler)
// then, if CPUID.1:ECX.XSAVE (bit 26) is clear, the single line
//   xsetbv unsupported
// else it sets CR4.OSXSAVE (bit 18) and, for XCR0 = 0x3, 0x7, 0x207 and 0xE7 in turn,
// executes xsetbv (ECX = 0, EDX:EAX = the value) and prints
//   xsetbv XXXXXXXXXXXXXXXX <ok|#GP>
// then, if the command line holds a decimal number other than 0, the same line for XCR0 =
// that number (a test picks it at run time from the XCR0 bits the host lacks).
// XCR0 is not restored in between, so it ends up as the last value that was accepted.
// Finally it executes xgetbv (ECX = 0) and prints "xgetbv=<16 hex digits>" (or "xgetbv #GP"),
// then ends the VM with status 0 through the debug-exit port 0x501.
//
// xgetbv runs at CPL3. xgetbv is legal at any CPL, and on the project's machines CPL0 code
// is interpreted by the host kernel, whose emulator cannot run xgetbv (KVM internal error,
// suberror 1, "instruction emulation failed": status 122), while CPL3 code runs natively.
// So after the xsetbv probes the guest loads its own GDT (the VMM's 0x08/0x10 descriptors at
// the same places, ring-3 data 0x18 and code 0x20, a 64-bit TSS at 0x28 whose RSP0 is a
// .bss stack and whose I/O bitmap allows ports 0-0x5FF: install_gdt_tss in common/ring3.S), loads TR, and drops to CPL3 with iretq (CS 0x23, SS 0x1B, RFLAGS 0x3002:
// IOPL=3, IF=0), keeping its stack. The CPL3 code prints the xgetbv line and writes
// status 0 to port 0x501 itself. A fault at CPL3 reaches the same handlers through the TSS.
// rdmsr, wrmsr, xsetbv and mov to CR4 all run at CPL0 (KVM emulates them there).
//
// Each line's text up to "=" or the space before the result is printed BEFORE the probed
// instruction runs, so if the VM dies on one (a KVM internal error, say), the partial
// line on COM1 names it.
//
// Faults: the IDT has 256 64-bit interrupt gates (selector 0x08, type 0x8E). Before each
// probed instruction the guest stores its address and length (rdmsr 0F 32 and wrmsr 0F 30:
// 2 bytes; xsetbv 0F 01 D1 and xgetbv 0F 01 D0: 3 bytes) and clears a "faulted" flag. The
// #GP handler (vector 13), if the saved RIP is that address, sets the flag, adds the length
// to the saved RIP, drops the error code and returns with iretq: the guest goes on after
// the instruction and prints "#GP". Any other #GP prints
// "unexpected #GP rip=XXXXXXXXXXXXXXXX error=XXXXXXXX" and ends the VM with status 98.
// #UD (vector 6) prints "#UD" and ends it with status 97 (this can land in the middle of
// a line, after its prefix). Any other vector prints "unexpected vector" and ends it with
// status 99. Reads only the command line from the boot-info block (RDI at entry); a command
// line that is not a decimal number prints "bad command line" and ends the VM with status 254.

#define EXIT_UD 97
#define EXIT_UNEXPECTED_GP 98
#define CPUID1_ECX_XSAVE (1 << 26)
#define CR4_OSXSAVE (1 << 18)
#define DEBUG_EXIT_PORT 0x501

// arm_probe LABEL, LENGTH: the next probed instruction is at LABEL and is LENGTH bytes
// long; clears the "faulted" flag. Clobbers RAX.
.macro arm_probe label, length
    leaq \label(%rip), %rax
    movq %rax, probe_rip(%rip)
    movq $\length, probe_len(%rip)
    movb $0, faulted(%rip)
.endm

// disarm_probe: after the probed instruction; touches no register or flag.
.macro disarm_probe
    movq $0, probe_rip(%rip)
.endm

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    movq %rdi, boot_info(%rip)      // for the command line, read after the fixed probes
    leaq idt_unexpected_vector(%rip), %rdi  // common/idt.S: "unexpected vector", status 99,
    leaq idt_handlers(%rip), %rsi           // for every vector but those of idt_handlers
    call idt_install

    movl $0x8B, %ecx                // IA32_BIOS_SIGN_ID
    call rdmsr_line
    movl $0x8B, %ecx
    xorl %edi, %edi
    call wrmsr_line
    movl $0x8B, %ecx
    call rdmsr_line
    movl $0x79, %ecx                // IA32_BIOS_UPDT_TRIG
    xorl %edi, %edi
    call wrmsr_line
    movl $0x3A, %ecx                // IA32_FEATURE_CONTROL
    call rdmsr_line
    movl $0x480, %ecx               // IA32_VMX_BASIC
    call rdmsr_line
    movl $0x4B564D99, %ecx          // unknown
    call rdmsr_line
    movl $0x4B564D99, %ecx
    movl $5, %edi
    call wrmsr_line
    movl $0x40001000, %ecx          // configurable: a constant
    call rdmsr_line
    movl $0x40001001, %ecx          // configurable: records the last write
    movabsq $0x1122334455667788, %rdi
    call wrmsr_line
    movl $0x40001001, %ecx
    call rdmsr_line
    movl $0x40001002, %ecx          // configurable: a handler
    call rdmsr_line

    movl $1, %eax
    xorl %ecx, %ecx
    cpuid
    testl $CPUID1_ECX_XSAVE, %ecx
    jnz 1f
    leaq text_xsetbv_unsupported(%rip), %rsi
    call com1_puts
    jmp 2f
1:  movq %cr4, %rax
    orq $CR4_OSXSAVE, %rax
    movq %rax, %cr4
    movl $0x3, %edi                 // x87 | SSE
    call xsetbv_line
    movl $0x7, %edi                 // | AVX
    call xsetbv_line
    movl $0x207, %edi               // | PKRU
    call xsetbv_line
    movl $0xE7, %edi                // | opmask | ZMM_Hi256 | Hi16_ZMM
    call xsetbv_line
    movq boot_info(%rip), %rdi      // one more value, from the command line
    call check_boot_info            // common/bootinfo.S: status 3 if it is not one
    xorl %esi, %esi                 // an empty command line gives 0: no probe
    call cmdline_number             // common/bootinfo.S: status 254 if not a number
    testq %rax, %rax
    jz 3f
    movq %rax, %rdi
    call xsetbv_line
3:
    call install_gdt_tss            // common/ring3.S: GDT with ring-3 segments, TSS
    leaq ring3_tail(%rip), %rdi
    jmp enter_ring3_here
2:  xorl %eax, %eax
    jmp debug_exit                  // status 0
    .size _start, . - _start

// ring3_tail: the end of the run, at CPL3: the xgetbv line, then status 0 through port
// 0x501 (IOPL=3 allows the out). If the VMM goes on anyway, hlt faults (#GP at CPL3) and
// the #GP handler reports it.
ring3_tail:
    call xgetbv_line
    movw $DEBUG_EXIT_PORT, %dx
    xorl %eax, %eax
    outb %al, %dx
1:  hlt
    jmp 1b

// MARK: The probes. Each clobbers RAX, RCX, RDX, RDI, RSI, R8, R9 and keeps the rest.

    .section .text.probes, "ax", @progbits

// rdmsr_line: prints "rdmsr <ECX, 8 hex>=", reads MSR ECX, then prints the value
// (EDX:EAX, 16 hex) or "#GP", and "\n".
rdmsr_line:
    pushq %rbx
    movl %ecx, %ebx                 // the MSR
    leaq text_rdmsr(%rip), %rsi
    movl %ebx, %edi
    movl $8, %ecx
    call com1_field
    leaq text_equals(%rip), %rsi
    call com1_puts
    arm_probe rdmsr_insn, 2
    movl %ebx, %ecx
    xorl %eax, %eax
    xorl %edx, %edx
rdmsr_insn:
    rdmsr                           // 0F 32
    disarm_probe
    cmpb $0, faulted(%rip)
    jne 1f
    shlq $32, %rdx
    movl %eax, %eax
    orq %rdx, %rax
    movq %rax, %rdi
    movl $16, %ecx
    call com1_puthex
    jmp 2f
1:  leaq text_gp(%rip), %rsi
    call com1_puts
2:  leaq text_newline(%rip), %rsi
    call com1_puts
    popq %rbx
    ret

// wrmsr_line: prints "wrmsr <ECX, 8 hex> ", writes RDI to MSR ECX, then prints "ok" or
// "#GP", and "\n".
wrmsr_line:
    pushq %rbx
    pushq %r12
    movl %ecx, %ebx                 // the MSR
    movq %rdi, %r12                 // the value
    leaq text_wrmsr(%rip), %rsi
    movl %ebx, %edi
    movl $8, %ecx
    call com1_field
    leaq text_space(%rip), %rsi
    call com1_puts
    arm_probe wrmsr_insn, 2
    movl %ebx, %ecx
    movl %r12d, %eax
    movq %r12, %rdx
    shrq $32, %rdx
wrmsr_insn:
    wrmsr                           // 0F 30
    disarm_probe
    call print_ok_or_gp
    popq %r12
    popq %rbx
    ret

// xsetbv_line: prints "xsetbv <RDI, 16 hex> ", sets XCR0 to RDI, then prints "ok" or
// "#GP", and "\n".
xsetbv_line:
    pushq %r12
    movq %rdi, %r12                 // the value
    leaq text_xsetbv(%rip), %rsi
    movl $16, %ecx
    call com1_field
    leaq text_space(%rip), %rsi
    call com1_puts
    arm_probe xsetbv_insn, 3
    xorl %ecx, %ecx                 // XCR0
    movl %r12d, %eax
    movq %r12, %rdx
    shrq $32, %rdx
xsetbv_insn:
    xsetbv                          // 0F 01 D1
    disarm_probe
    call print_ok_or_gp
    popq %r12
    ret

// xgetbv_line: prints "xgetbv", reads XCR0, then prints "=<16 hex>" or " #GP", and "\n".
xgetbv_line:
    leaq text_xgetbv(%rip), %rsi
    call com1_puts
    arm_probe xgetbv_insn, 3
    xorl %ecx, %ecx                 // XCR0
    xorl %eax, %eax
    xorl %edx, %edx
xgetbv_insn:
    xgetbv                          // 0F 01 D0
    disarm_probe
    cmpb $0, faulted(%rip)
    jne 1f
    shlq $32, %rdx
    movl %eax, %eax
    orq %rdx, %rax
    movq %rax, %rdi
    leaq text_equals(%rip), %rsi
    movl $16, %ecx
    call com1_field
    jmp 2f
1:  leaq text_space_gp(%rip), %rsi
    call com1_puts
2:  leaq text_newline(%rip), %rsi
    jmp com1_puts

// print_ok_or_gp: prints "ok\n" if the last probe did not fault, else "#GP\n".
print_ok_or_gp:
    leaq text_ok(%rip), %rsi
    cmpb $0, faulted(%rip)
    je 1f
    leaq text_gp_newline(%rip), %rsi
1:  jmp com1_puts

// MARK: The handlers

// idt_handlers: the gates that do not go to idt_unexpected_vector, as (vector, handler)
// pairs for idt_install.
    .section .rodata.idt_handlers, "a", @progbits
    .balign 8
idt_handlers:
    .quad 6, ud_handler
    .quad 13, gp_handler
    .quad 0, 0                      // the end

    .section .text.handlers, "ax", @progbits

// gp_handler: the CPU pushed SS, RSP, RFLAGS, CS, RIP and the error code (at (%rsp)).
// Resumes after the armed probe (at CPL0 or CPL3: iretq returns to the CS and SS in the
// frame); any other #GP ends the VM. Keeps every register (iretq restores RFLAGS).
gp_handler:
    pushq %rax                      // now: RAX, error code, RIP, CS, RFLAGS, RSP, SS
    movq 16(%rsp), %rax             // the faulting RIP
    cmpq probe_rip(%rip), %rax
    jne 1f
    addq probe_len(%rip), %rax
    movq %rax, 16(%rsp)             // resume after the instruction
    movb $1, faulted(%rip)
    movq $0, probe_rip(%rip)        // a second #GP there is unexpected
    popq %rax
    addq $8, %rsp                   // drop the error code
    iretq
1:  movq 16(%rsp), %rbx             // the RIP
    movl 8(%rsp), %r12d             // the error code
    leaq text_unexpected_gp_rip(%rip), %rsi
    movq %rbx, %rdi
    movl $16, %ecx
    call com1_field
    leaq text_unexpected_gp_error(%rip), %rsi
    movq %r12, %rdi
    movl $8, %ecx
    call com1_field
    leaq text_newline(%rip), %rsi
    call com1_puts
    movb $EXIT_UNEXPECTED_GP, %al
    jmp debug_exit

ud_handler:
    leaq text_ud(%rip), %rsi
    call com1_puts
    movb $EXIT_UD, %al
    jmp debug_exit

// MARK: Data

    .section .data.probe, "aw", @progbits
    .balign 8
boot_info:  .quad 0                 // RDI at entry
probe_rip:  .quad 0                 // the armed probe's address; 0 when none is armed
probe_len:  .quad 0                 // its length in bytes
faulted:    .byte 0                 // set by gp_handler

    .section .rodata.msr_probe, "a", @progbits
text_rdmsr:                 .asciz "rdmsr "
text_wrmsr:                 .asciz "wrmsr "
text_xsetbv:                .asciz "xsetbv "
text_xgetbv:                .asciz "xgetbv"
text_xsetbv_unsupported:    .asciz "xsetbv unsupported\n"
text_equals:                .asciz "="
text_space:                 .asciz " "
text_gp:                    .asciz "#GP"
text_space_gp:              .asciz " #GP"
text_ok:                    .asciz "ok\n"
text_gp_newline:            .asciz "#GP\n"
text_ud:                    .asciz "#UD\n"
text_unexpected_gp_rip:     .asciz "unexpected #GP rip="
text_unexpected_gp_error:   .asciz " error="
text_newline:               .asciz "\n"
