// Single-instruction probe: runs the one instruction its command line names (popcnt, xsave, movaps, ...) once at CPL0 with safe operands; status 0 = no exception, 0x40 + vector = that exception (an IDT for vectors 0-31), 254 = unknown name.
//
// For `swiftvisor probe-emulation`, which boots this guest once per instruction name (a
// fresh VM each time) and classifies the outcome from the VMM side: on the project's
// machines CPL0 code is interpreted by the host kernel, whose emulator fails on some
// instructions (KVM_EXIT_INTERNAL_ERROR); the VMM then finishes the instruction itself or
// stops the VM (status 122). This guest only reports what it saw:
//   0           the instruction completed without an exception (natively, emulated by KVM
//               or finished by the VMM)
//   0x40 + V    exception V (0-31) was delivered: 0x43 #BP, 0x46 #UD, 0x47 #NM, 0x4D #GP,
//               0x4E #PF, ... (every vector 0-31 has a gate; the handlers ignore any error
//               code and never return)
//   254         the command line is not a name in the table (it must match exactly;
//               the command line ends at its stated length or at a NUL, whichever is first)
//   3           bad boot-info block (check_boot_info)
// Nothing is printed.
//
// Set-up, before the lookup, with plain integer instructions (plus cpuid, mov to CR4,
// lidt and, when XSAVE exists, one xsetbv):
// - the IDT (32 64-bit interrupt gates, selector 0x08, type 0x8E, limit 32 * 16 - 1);
// - if CPUID.1:ECX.XSAVE (bit 26): CR4.OSXSAVE (bit 18), then XCR0 = 0x7 if
//   CPUID.(0xD,0):EAX has bits 0-2 all set, else 0x3 (xsetbv, ECX = 0, EDX = 0). The value
//   is kept in xcr0_value for the xsetbv probe (3 if XSAVE is absent: that probe then #UDs);
// - scratch: 4 KiB in .bss, 64-byte aligned, zeroed by the loader; the guest stores the
//   x87 control word 0x037F at +0 and MXCSR 0x1F80 at +24, which makes it a valid FXSAVE
//   image for fxrstor and, with its zero XSAVE header (XSTATE_BV = XCOMP_BV = 0), a valid
//   standard-form XSAVE image for xrstor. ldmxcsr reads +24 (0x1F80).
// Then, right before jumping to the snippet, the registers: RAX = 3, RDX = 0 (EDX:EAX = 3,
// the xsave/xrstor/xsaveopt component mask), RBX = 0x1234, RCX = 0 (xgetbv/xsetbv XCR 0,
// cpuid subleaf 0), RSI = RDI = scratch, R8-R15 = 0, RFLAGS = 0x2. XMM/YMM registers hold
// whatever the reset state left (zeros). A snippet sets any other register it needs with
// plain movs, executes its one instruction and jumps to ok (status 0). Exceptions: wrmsr
// first reads the TSC MSR with rdmsr (it writes back the value just read).
// fxrstor restores the prepared image above (no fxsave first, so that its result is
// fxrstor's alone); xrstor restores the zeroed XSAVE area.
//
// Every memory operand is scratch(%rip). The table (.rodata, probe_table) is pairs of
// .quad (name, snippet) in the order of the probes below, ending with (0, 0).

#define DEBUG_EXIT_PORT 0x501
#define EXIT_UNKNOWN_NAME 254
#define EXCEPTION_BASE 0x40
#define CPUID1_ECX_XSAVE 26
#define CR4_OSXSAVE (1 << 18)
#define FCW_INIT 0x037F
#define MXCSR_INIT 0x1F80
#define MXCSR_OFFSET 24             // in an FXSAVE image (and the XSAVE legacy region)

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    movq %rdi, %rbx
    call check_boot_info            // keeps every register when the block is valid
    movq %rbx, %r15                 // R15 = boot info
    call install_idt

    // XSAVE state: CR4.OSXSAVE and XCR0 = 7 or 3.
    movl $1, %eax
    xorl %ecx, %ecx
    cpuid
    btl $CPUID1_ECX_XSAVE, %ecx
    jnc 2f
    movq %cr4, %rax
    orq $CR4_OSXSAVE, %rax
    movq %rax, %cr4
    movl $0xD, %eax
    xorl %ecx, %ecx
    cpuid
    andl $7, %eax
    cmpl $7, %eax
    je 1f
    movl $3, %eax
1:  movl %eax, xcr0_value(%rip)
    xorl %edx, %edx
    xorl %ecx, %ecx
    xsetbv
2:
    // The scratch buffer's FXSAVE/XSAVE legacy fields.
    movw $FCW_INIT, scratch(%rip)
    movl $MXCSR_INIT, scratch + MXCSR_OFFSET(%rip)

    // The command line: R12 = its address, R13 = its length up to the first NUL.
    movq 16(%r15), %r12
    movq 24(%r15), %rcx
    xorl %r13d, %r13d
    testq %r12, %r12
    jz unknown
3:  cmpq %rcx, %r13
    je 4f
    cmpb $0, (%r12,%r13)
    je 4f
    incq %r13
    jmp 3b
4:
    // Look it up: R14 walks the table.
    leaq probe_table(%rip), %r14
5:  movq (%r14), %rsi               // the name; 0 ends the table
    testq %rsi, %rsi
    jz unknown
    xorl %ecx, %ecx
6:  cmpq %r13, %rcx
    je 7f                           // the whole command line matched
    movzbl (%rsi,%rcx), %eax
    testl %eax, %eax
    jz 8f                           // the name is shorter
    cmpb %al, (%r12,%rcx)
    jne 8f
    incq %rcx
    jmp 6b
7:  cmpb $0, (%rsi,%rcx)
    je run                          // and the name ends there too
8:  addq $16, %r14
    jmp 5b

run:
    movq 8(%r14), %r11              // the snippet
    leaq scratch(%rip), %rsi
    movq %rsi, %rdi
    movl $3, %eax
    movl $0x1234, %ebx
    xorl %ecx, %ecx
    xorl %edx, %edx
    xorl %r8d, %r8d
    xorl %r9d, %r9d
    xorl %r10d, %r10d
    xorl %r12d, %r12d
    xorl %r13d, %r13d
    xorl %r14d, %r14d
    xorl %r15d, %r15d
    pushq $0x2
    popfq
    jmp *%r11

unknown:
    movb $EXIT_UNKNOWN_NAME, %al
    jmp exit_al
    .size _start, . - _start

// ok: every snippet ends here: status 0.
    .section .text.exit, "ax", @progbits
ok:
    xorl %eax, %eax
// exit_al: ends the VM with status AL through port 0x501 (then halts, interrupts off).
exit_al:
    movw $DEBUG_EXIT_PORT, %dx
    outb %al, %dx
1:  hlt
    jmp 1b

// MARK: The IDT: vectors 0-31, each handler writes 0x40 + its vector to port 0x501.

// install_idt: fills the first 32 gates of common/idt.S's idt from vector_stubs and loads
// the IDT with a limit that covers those 32 only. Clobbers RAX, RCX, RDX, R8, R9, R10.
install_idt:
    xorl %r10d, %r10d               // the vector
1:  leaq vector_stubs(%rip), %rax
    movq (%rax,%r10,8), %rax        // the handler's address
    movl %r10d, %ecx
    call idt_set_gate
    incl %r10d
    cmpl $32, %r10d
    jb 1b
    lidt idtr(%rip)
    ret

    .section .text.vectors, "ax", @progbits
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
vector_\v:
    movb $(EXCEPTION_BASE + \v), %al
    jmp exit_al
.endr

    .section .rodata.vector_stubs, "a", @progbits
    .balign 8
vector_stubs:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad vector_\v
.endr

// MARK: The probes

// probe NAME: starts the snippet for NAME (in .text.probes) and adds (NAME, snippet) to
// probe_table. The snippet follows the macro and ends with "jmp ok".
.macro probe name
    .pushsection .rodata.probe_names, "a", @progbits
probe_name_\name:
    .asciz "\name"
    .popsection
    .pushsection .rodata.probe_table, "a", @progbits
    .quad probe_name_\name, probe_\name
    .popsection
probe_\name:
.endm

    .section .rodata.probe_table, "a", @progbits
    .balign 8
probe_table:

    .section .text.probes, "ax", @progbits
probe int3
    int3
    jmp ok
probe popcnt
    popcnt %rbx, %rax
    jmp ok
probe lzcnt
    lzcnt %rbx, %rax
    jmp ok
probe tzcnt
    tzcnt %rbx, %rax
    jmp ok
probe clac
    clac
    jmp ok
probe stac
    stac
    jmp ok
probe fwait
    fwait
    jmp ok
probe cmpxchg16b
    lock cmpxchg16b scratch(%rip)
    jmp ok
probe xgetbv
    xgetbv                          // ECX = 0
    jmp ok
probe xsetbv
    movl xcr0_value(%rip), %eax     // ECX = EDX = 0
    xsetbv
    jmp ok
probe xsave
    xsave scratch(%rip)             // EDX:EAX = 3
    jmp ok
probe xrstor
    xrstor scratch(%rip)
    jmp ok
probe xsaveopt
    xsaveopt scratch(%rip)
    jmp ok
probe fxsave
    fxsave scratch(%rip)
    jmp ok
probe fxrstor
    fxrstor scratch(%rip)
    jmp ok
probe movbe
    movbe scratch(%rip), %eax
    jmp ok
probe crc32
    crc32q %rbx, %rax
    jmp ok
probe andn
    andn %rbx, %rcx, %rax
    jmp ok
probe bextr
    bextr %rcx, %rbx, %rax
    jmp ok
probe blsr
    blsr %rbx, %rax
    jmp ok
probe pdep
    pdep %rcx, %rbx, %rax
    jmp ok
probe pext
    pext %rcx, %rbx, %rax
    jmp ok
probe shlx
    shlx %rcx, %rbx, %rax
    jmp ok
probe sarx
    sarx %rcx, %rbx, %rax
    jmp ok
probe rorx
    rorx $3, %rbx, %rax
    jmp ok
probe mulx
    mulx %rbx, %rcx, %rax           // RDX = 0
    jmp ok
probe adcx
    adcx %rbx, %rax
    jmp ok
probe adox
    adox %rbx, %rax
    jmp ok
probe rdrand
    rdrand %rax
    jmp ok
probe rdseed
    rdseed %rax
    jmp ok
probe rdtsc
    rdtsc
    jmp ok
probe rdtscp
    rdtscp
    jmp ok
probe rdpid
    rdpid %rax
    jmp ok
probe cpuid
    xorl %eax, %eax                 // leaf 0, ECX = 0
    cpuid
    jmp ok
probe pause
    pause
    jmp ok
probe lfence
    lfence
    jmp ok
probe sfence
    sfence
    jmp ok
probe mfence
    mfence
    jmp ok
probe clflush
    clflush scratch(%rip)
    jmp ok
probe prefetcht0
    prefetcht0 scratch(%rip)
    jmp ok
probe movaps
    movaps scratch(%rip), %xmm0
    jmp ok
probe movdqa
    movdqa scratch(%rip), %xmm0
    jmp ok
probe pxor
    pxor %xmm1, %xmm0
    jmp ok
probe paddd
    paddd %xmm1, %xmm0
    jmp ok
probe pshufb
    pshufb %xmm1, %xmm0
    jmp ok
probe ptest
    ptest %xmm1, %xmm0
    jmp ok
probe pclmulqdq
    pclmulqdq $0, %xmm1, %xmm0
    jmp ok
probe aesenc
    aesenc %xmm1, %xmm0
    jmp ok
probe ldmxcsr
    ldmxcsr scratch + MXCSR_OFFSET(%rip)    // 0x1F80
    jmp ok
probe stmxcsr
    stmxcsr scratch(%rip)
    jmp ok
probe movd
    movd %eax, %xmm0
    jmp ok
probe vpxor
    vpxor %xmm1, %xmm1, %xmm0
    jmp ok
probe vmovdqa
    vmovdqa scratch(%rip), %ymm0
    jmp ok
probe fld1
    fld1
    jmp ok
probe fnop
    fnop
    jmp ok
probe fninit
    fninit
    jmp ok
probe emms
    emms
    jmp ok
probe wbinvd
    wbinvd
    jmp ok
probe invlpg
    invlpg scratch(%rip)
    jmp ok
probe rdmsr
    movl $0x10, %ecx                // IA32_TIME_STAMP_COUNTER
    rdmsr
    jmp ok
probe wrmsr
    movl $0x10, %ecx                // IA32_TIME_STAMP_COUNTER: writes back what it reads
    rdmsr
    wrmsr
    jmp ok

    .section .rodata.probe_table, "a", @progbits
    .quad 0, 0                      // the end of the table

// MARK: Data

    .section .data.probe, "aw", @progbits
    .balign 8
xcr0_value:
    .long 3                         // what the set-up wrote to XCR0 (3 if it did not)
    .long 0
    .skip 6                         // so that the 64-bit base below is 8-byte aligned
idtr:
    .word 32 * 16 - 1               // limit: vectors 0-31
    .quad idt                       // base: common/idt.S's table

    .section .bss.probe, "aw", @nobits
    .balign 64
scratch:                            // memory operands (64-byte aligned, 4 KiB)
    .skip 4096
