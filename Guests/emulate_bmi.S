// BMI1/BMI2/ADX/CRC32 emulation test: runs andn, bextr, blsr, blsi, blsmsk, pdep, pext, shlx, sarx, shrx, rorx, mulx, adcx, adox and crc32 at CPL0 (where the VMM must emulate them), then the same at CPL3 (native), and prints one line per instruction, size and form comparing them; exits with status 0.
//
// Output ("\n" only; hex in upper case, fixed widths). When every CPL0 result equals the
// native CPL3 one, these 49 lines (48 groups, then "done"):
//   andn32 reg match
//   andn64 reg match
//   andn64 mem match
//   bextr32 reg match
//   bextr64 reg match
//   bextr64 mem match
//   blsr32 reg match
//   blsr64 reg match
//   blsr64 mem match
//   blsi32 reg match
//   blsi64 reg match
//   blsi64 mem match
//   blsmsk32 reg match
//   blsmsk64 reg match
//   blsmsk64 mem match
//   pdep32 reg match
//   pdep64 reg match
//   pdep64 mem match
//   pext32 reg match
//   pext64 reg match
//   pext64 mem match
//   shlx32 reg match
//   shlx64 reg match
//   shlx64 mem match
//   sarx32 reg match
//   sarx64 reg match
//   sarx64 mem match
//   shrx32 reg match
//   shrx64 reg match
//   shrx64 mem match
//   rorx32 reg match
//   rorx64 reg match
//   rorx64 mem match
//   mulx32 reg match
//   mulx64 reg match
//   mulx64 mem match
//   adcx32 reg match
//   adcx64 reg match
//   adcx64 mem match
//   adox32 reg match
//   adox64 reg match
//   adox64 mem match
//   crc32 8->32 reg match
//   crc32 16->32 reg match
//   crc32 32->32 reg match
//   crc32 8->64 reg match
//   crc32 64->64 reg match
//   crc32 64->64 mem match
//   done
// A group whose results differ prints, for its first differing case, instead of " match":
//   "<name> MISMATCH in=<A>[,<B>[,<F>]] cpl0=<result> cpl3=<result>"
// where A (16 hex) is the r/m operand (register or memory), B (16 hex) the other input
// (see the table below), F (3 hex) the RFLAGS loaded before the instruction (adcx/adox
// only), and a result is "<dest, 16 hex>/<flags, 3 hex>" ("<hi>:<lo>/<flags>" for mulx),
// or the event if the instruction faulted: "#UD", "#GP error=EEEE" or "vector=VV".
// The inputs are the whole 64-bit registers: 32-bit forms read their low 32 bits, the
// 8- and 16-bit crc32 sources their low byte or word (crc32 8->32 reg: CH, bits 15:8).
//
// How it runs. First, at CPL0: it loads its own GDT (the VMM's 0x08/0x10 descriptors at the
// same places, ring-3 data 0x18 and code 0x20, a 64-bit TSS at 0x28 whose RSP0 is a .bss
// stack and whose I/O bitmap allows ports 0-0x5FF) and an IDT, then runs every case at CPL0
// and stores what it saw. Then it drops to CPL3 once (iretq: CS 0x23, SS 0x1B, RFLAGS
// 0x3002: IOPL=3, IF=0, on the same stack), runs the same code with the same inputs
// natively, prints every line from CPL3 and writes status 0 to port 0x501 from CPL3.
// Nothing is printed until then: if the VM dies on a CPL0 instruction (status 122 from
// the VMM), its state dump names the instruction.
//
// One case: A goes into RCX, R14 and the memory operand mem_a; B into RBX, R15 and RDX
// (RDX is mulx's implicit source); RAX, R9 and R10 = 0x5555555555555555 (so that a 32-bit
// result that is not zero-extended shows); RFLAGS = F (popfq; 0x8D7 = CF PF AF ZF SF OF
// unless said otherwise); the instruction; pushfq. Stored: the destination(s), 64 bits, and
// RFLAGS masked to what the instruction defines:
//   andn, blsr, blsi, blsmsk: SF ZF OF CF (0x8C1); bextr: ZF OF CF (0x841); AF and PF
//   (and bextr's SF) are undefined for these.
//   pdep, pext, shlx, sarx, shrx, rorx, mulx, crc32: CF PF AF ZF SF OF (0x8D5), which they
//   leave unchanged (all set on input).
//   adcx, adox: also 0x8D5. adcx writes CF and adox OF; the SDM defines the other five as
//   unmodified, so they are compared too (an emulator that runs adcx as adc fails).
// adcx/adox and crc32 accumulate into their destination, so for them the destination is a
// B register (it starts as B) instead of a 0x5555555555555555 one.
//
// Inputs. V32 = 0, 1, 0xFFFFFFFF, 0x80000000, 0x0123456789ABCDEF, 0xFEDCBA9876543210;
// V64 = the same with 0xFFFFFFFFFFFFFFFF and 0x8000000000000000. "x" is every pair.
//   instruction          A (r/m)         B                                           cases
//   andn                 V x             V (vvvv: dest = ~B & A)                     36
//   bextr                V x             control 0x0408, 0x2010, 0xFF00, 0x00FF,     42
//                                        0x4000, 0x2020, 0xFFFFFFFFFFFF0810
//   blsr, blsi, blsmsk   V               (B = 0, not printed)                        6
//   pdep, pext           V (the mask) x  V (the source, vvvv)                        36
//   shlx, sarx, shrx     V x             count 0, 1, 31, 63, 64, 200                 36
//   rorx                 V x             the immediate 0, 1, 7, 63 (one encoding     24
//                                        each; B only records it)
//   mulx                 V x             V (RDX); dest hi:lo                         36
//   adcx                 V x             V (dest) x F = 0x8D7, 0x8D6 (CF clear)      72
//   adox                 V x             V (dest) x F = 0x8D7, 0x0D7 (OF clear)      72
//   crc32                V x             V (dest, the CRC so far)                    36
// 32-bit forms use V32, 64-bit forms V64 (crc32: the 64-bit destination forms, V64).
// The forms (AT&T operand order; the registers vary so that the emulator sees VEX.R, X, B,
// high vvvv, REX, a high-byte register and several addressing modes):
//   andn    "andnl %ecx,%ebx,%eax"     "andnq %r14,%r15,%r10"      "andnq mem_a(%rip),%rbx,%rax"
//   bextr   "bextrl %r15d,%r14d,%r9d"  "bextrq %rbx,%rcx,%rax"     "bextrq %r15,8(%rsi),%r9"
//   blsr    "blsrl %r14d,%eax"         "blsrq %rcx,%r9"            "blsrq (%rdi,%r8,8),%r10"
//   blsi    "blsil %ecx,%r10d"         "blsiq %r14,%rax"           "blsiq mem_a(%rip),%r9"
//   blsmsk  "blsmskl %r14d,%r9d"       "blsmskq %rcx,%r10"         "blsmskq 8(%rsi),%rax"
//   pdep    "pdepl %ecx,%ebx,%eax"     "pdepq %r14,%r15,%r9"       "pdepq (%rdi,%r8,8),%r15,%r10"
//   pext    "pextl %r14d,%edx,%r10d"   "pextq %rcx,%rbx,%rax"      "pextq mem_a(%rip),%rbx,%r9"
//   shlx    "shlxl %ebx,%ecx,%eax"     "shlxq %r15,%r14,%r10"      "shlxq %rbx,8(%rsi),%rax"
//   sarx    "sarxl %r15d,%r14d,%r9d"   "sarxq %rbx,%rcx,%rax"      "sarxq %r15,(%rdi,%r8,8),%r10"
//   shrx    "shrxl %edx,%ecx,%r10d"    "shrxq %r15,%r14,%r9"       "shrxq %rdx,mem_a(%rip),%rax"
//   rorx    "rorxl $N,%ecx,%eax"       "rorxq $N,%r14,%r10"        "rorxq $N,8(%rsi),%r9"
//   mulx    "mulxl %ecx,%eax,%r9d"     "mulxq %r14,%r10,%rax"      "mulxq (%rdi,%r8,8),%rax,%r9"
//           (AT&T: mulx src, lo, hi)
//   adcx    "adcxl %ecx,%ebx"          "adcxq %r14,%r15"           "adcxq mem_a(%rip),%rbx"
//   adox    "adoxl %r14d,%r15d"        "adoxq %rcx,%rbx"           "adoxq 8(%rsi),%r15"
//   crc32   8->32 "crc32b %ch,%ebx", 16->32 "crc32w %r14w,%r15d", 32->32 "crc32l %ecx,%ebx",
//           8->64 "crc32b %r14b,%r15" (REX.W), 64->64 "crc32q %rcx,%rbx",
//           64->64 mem "crc32q (%rdi,%r8,8),%r15"
// (8(%rsi) and (%rdi,%r8,8) are mem_a: RSI = mem_a - 8, RDI = mem_a - 16, R8 = 2.)
//
// Faults. Before each instruction the guest stores a continuation address in resume_rip and
// sets ev_vector to 0xFF ("none"). The #UD (6) and #GP (13) handlers, at CPL0 or CPL3,
// record the vector and error code, clear resume_rip, and resume at the continuation (iretq
// to the CPL the fault came from); the case's result is then that event. Any other vector,
// or #UD/#GP with no continuation armed, prints "unexpected vector VV at <RIP, 16 hex>"
// and ends the VM with status 99.
// Uses neither the boot-info block nor the command line.

#define EXIT_UNEXPECTED_VECTOR 99
#define EV_NONE 0xFF
#define DEBUG_EXIT_PORT 0x501
#define DEST_IN 0x5555555555555555
#define FAULT_MARK 63               // a result's flags word: bit 63 | error << 16 | vector

#define FLAGS_IN 0x8D7              // CF PF AF ZF SF OF | bit 1
#define FLAGS_IN_NO_CF 0x8D6
#define FLAGS_IN_NO_OF 0x0D7
#define MASK_SZOC 0x8C1             // SF ZF OF CF
#define MASK_ZOC 0x841              // ZF OF CF
#define MASK_ARITH 0x8D5            // CF PF AF ZF SF OF

#define V32 0, 1, 0xFFFFFFFF, 0x80000000, 0x0123456789ABCDEF, 0xFEDCBA9876543210
#define V64 0, 1, 0xFFFFFFFFFFFFFFFF, 0x8000000000000000, 0x0123456789ABCDEF, 0xFEDCBA9876543210
#define BEXTR_CONTROLS 0x0408, 0x2010, 0xFF00, 0x00FF, 0x4000, 0x2020, 0xFFFFFFFFFFFF0810
#define SHIFT_COUNTS 0, 1, 31, 63, 64, 200

#define GROUP_ENTRY 40              // an entry of `groups`
#define RECORD 24                   // an input record (A, B, F) and a result (d1, d2, flags)
#define N_UN 6
#define N_BIN 36
#define N_BEXTR 42
#define N_SHIFT 36
#define N_RORX_IMM 6                // per immediate; 4 immediates
#define N_RORX 24
#define N_ADC 72
// andn 3x36, bextr 3x42, bls* 9x6, pdep/pext 6x36, shifts 9x36, rorx 3x24, mulx 3x36,
// adcx/adox 6x72, crc32 6x36
#define CASES (3 * N_BIN + 3 * N_BEXTR + 9 * N_UN + 6 * N_BIN + 9 * N_SHIFT + 3 * N_RORX + 3 * N_BIN + 6 * N_ADC + 6 * N_BIN)

// arm CONT: a fault in the next probed instruction resumes at CONT. Clobbers R11 (no flags).
.macro arm cont
    leaq \cont(%rip), %r11
    movq %r11, resume_rip(%rip)
    movq $EV_NONE, ev_vector(%rip)
    movq $0, ev_error(%rip)
.endm

// disarm: no probe is armed any more. Touches no register or flag.
.macro disarm
    movq $0, resume_rip(%rip)
.endm

.macro puts text
    leaq \text(%rip), %rsi
    call com1_puts
.endm

// hex VALUE, DIGITS: prints the low DIGITS hex digits of VALUE (a register or memory).
.macro hex value, digits
    movq \value, %rdi
    movl $\digits, %ecx
    call com1_puthex
.endm

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    call install_gdt_tss            // common/ring3.S: GDT with ring-3 segments, TSS
    leaq vector_stubs(%rip), %rdi   // common/idt.S: gate N at stub N, then idt_handlers
    leaq idt_handlers(%rip), %rsi
    call idt_install_stubs
    leaq results_cpl0(%rip), %rbp
    call compute
    leaq ring3_main(%rip), %rdi
    jmp enter_ring3_here
    .size _start, . - _start

    .section .text.ring3, "ax", @progbits
// ring3_main: at CPL3 (IOPL=3): the same computations, then every line, then status 0.
ring3_main:
    leaq results_cpl3(%rip), %rbp
    call compute
    call print_all
    movw $DEBUG_EXIT_PORT, %dx
    xorl %eax, %eax
    outb %al, %dx
1:  hlt                             // #GP at CPL3: "unexpected vector 0D", status 99
    jmp 1b

// MARK: The computations, run at CPL0 and again at CPL3 by the same code

// run INSN, INPUTS, COUNT, D1, D2, MASK: for each of the COUNT records (A, B, F) from
// INPUTS on: RCX = R14 = mem_a = A, RBX = R15 = RDX = B, RAX = R9 = R10 = DEST_IN,
// RFLAGS = F, INSN; then stores D1, D2 and RFLAGS & MASK (or, if INSN faulted,
// bit 63 | error << 16 | vector) at (%rbp), 8(%rbp) and 16(%rbp), and advances RBP by 24.
// Keeps RSI, RDI and R8 (the memory forms' address registers).
.macro run insn, inputs, count, d1, d2, mask
    leaq \inputs(%rip), %r12
    movl $\count, %r13d
1:  movq (%r12), %rcx
    movq %rcx, %r14
    movq %rcx, mem_a(%rip)
    movq 8(%r12), %rbx
    movq %rbx, %r15
    movq %rbx, %rdx
    movabsq $DEST_IN, %rax
    movq %rax, %r9
    movq %rax, %r10
    arm 2f
    pushq 16(%r12)
    popfq
    \insn
2:  pushfq
    popq %r11
    disarm
    movq \d1, (%rbp)
    movq \d2, 8(%rbp)
    andl $\mask, %r11d
    cmpq $EV_NONE, ev_vector(%rip)
    je 3f
    movq ev_error(%rip), %r11
    shlq $16, %r11
    orq ev_vector(%rip), %r11
    btsq $FAULT_MARK, %r11
3:  movq %r11, 16(%rbp)
    addq $RECORD, %rbp
    addq $RECORD, %r12
    decl %r13d
    jnz 1b
.endm

// compute: every case, in the order of `groups`, results from RBP on.
// Clobbers every general register but RSP.
compute:
    leaq mem_a - 8(%rip), %rsi      // 8(%rsi) = mem_a
    leaq mem_a - 16(%rip), %rdi     // (%rdi,%r8,8) = mem_a
    movl $2, %r8d

    run "andnl %ecx, %ebx, %eax", bin32, N_BIN, %rax, %rax, MASK_SZOC
    run "andnq %r14, %r15, %r10", bin64, N_BIN, %r10, %r10, MASK_SZOC
    run "andnq mem_a(%rip), %rbx, %rax", bin64, N_BIN, %rax, %rax, MASK_SZOC

    run "bextrl %r15d, %r14d, %r9d", bextr32, N_BEXTR, %r9, %r9, MASK_ZOC
    run "bextrq %rbx, %rcx, %rax", bextr64, N_BEXTR, %rax, %rax, MASK_ZOC
    run "bextrq %r15, 8(%rsi), %r9", bextr64, N_BEXTR, %r9, %r9, MASK_ZOC

    run "blsrl %r14d, %eax", un32, N_UN, %rax, %rax, MASK_SZOC
    run "blsrq %rcx, %r9", un64, N_UN, %r9, %r9, MASK_SZOC
    run "blsrq (%rdi,%r8,8), %r10", un64, N_UN, %r10, %r10, MASK_SZOC
    run "blsil %ecx, %r10d", un32, N_UN, %r10, %r10, MASK_SZOC
    run "blsiq %r14, %rax", un64, N_UN, %rax, %rax, MASK_SZOC
    run "blsiq mem_a(%rip), %r9", un64, N_UN, %r9, %r9, MASK_SZOC
    run "blsmskl %r14d, %r9d", un32, N_UN, %r9, %r9, MASK_SZOC
    run "blsmskq %rcx, %r10", un64, N_UN, %r10, %r10, MASK_SZOC
    run "blsmskq 8(%rsi), %rax", un64, N_UN, %rax, %rax, MASK_SZOC

    run "pdepl %ecx, %ebx, %eax", bin32, N_BIN, %rax, %rax, MASK_ARITH
    run "pdepq %r14, %r15, %r9", bin64, N_BIN, %r9, %r9, MASK_ARITH
    run "pdepq (%rdi,%r8,8), %r15, %r10", bin64, N_BIN, %r10, %r10, MASK_ARITH
    run "pextl %r14d, %edx, %r10d", bin32, N_BIN, %r10, %r10, MASK_ARITH
    run "pextq %rcx, %rbx, %rax", bin64, N_BIN, %rax, %rax, MASK_ARITH
    run "pextq mem_a(%rip), %rbx, %r9", bin64, N_BIN, %r9, %r9, MASK_ARITH

    run "shlxl %ebx, %ecx, %eax", shift32, N_SHIFT, %rax, %rax, MASK_ARITH
    run "shlxq %r15, %r14, %r10", shift64, N_SHIFT, %r10, %r10, MASK_ARITH
    run "shlxq %rbx, 8(%rsi), %rax", shift64, N_SHIFT, %rax, %rax, MASK_ARITH
    run "sarxl %r15d, %r14d, %r9d", shift32, N_SHIFT, %r9, %r9, MASK_ARITH
    run "sarxq %rbx, %rcx, %rax", shift64, N_SHIFT, %rax, %rax, MASK_ARITH
    run "sarxq %r15, (%rdi,%r8,8), %r10", shift64, N_SHIFT, %r10, %r10, MASK_ARITH
    run "shrxl %edx, %ecx, %r10d", shift32, N_SHIFT, %r10, %r10, MASK_ARITH
    run "shrxq %r15, %r14, %r9", shift64, N_SHIFT, %r9, %r9, MASK_ARITH
    run "shrxq %rdx, mem_a(%rip), %rax", shift64, N_SHIFT, %rax, %rax, MASK_ARITH

    // rorx: one encoding per immediate, over the consecutive parts of the rorx tables.
    run "rorxl $0, %ecx, %eax", rorx32, N_RORX_IMM, %rax, %rax, MASK_ARITH
    run "rorxl $1, %ecx, %eax", rorx32 + 1 * N_RORX_IMM * RECORD, N_RORX_IMM, %rax, %rax, MASK_ARITH
    run "rorxl $7, %ecx, %eax", rorx32 + 2 * N_RORX_IMM * RECORD, N_RORX_IMM, %rax, %rax, MASK_ARITH
    run "rorxl $63, %ecx, %eax", rorx32 + 3 * N_RORX_IMM * RECORD, N_RORX_IMM, %rax, %rax, MASK_ARITH
    run "rorxq $0, %r14, %r10", rorx64, N_RORX_IMM, %r10, %r10, MASK_ARITH
    run "rorxq $1, %r14, %r10", rorx64 + 1 * N_RORX_IMM * RECORD, N_RORX_IMM, %r10, %r10, MASK_ARITH
    run "rorxq $7, %r14, %r10", rorx64 + 2 * N_RORX_IMM * RECORD, N_RORX_IMM, %r10, %r10, MASK_ARITH
    run "rorxq $63, %r14, %r10", rorx64 + 3 * N_RORX_IMM * RECORD, N_RORX_IMM, %r10, %r10, MASK_ARITH
    run "rorxq $0, 8(%rsi), %r9", rorx64, N_RORX_IMM, %r9, %r9, MASK_ARITH
    run "rorxq $1, 8(%rsi), %r9", rorx64 + 1 * N_RORX_IMM * RECORD, N_RORX_IMM, %r9, %r9, MASK_ARITH
    run "rorxq $7, 8(%rsi), %r9", rorx64 + 2 * N_RORX_IMM * RECORD, N_RORX_IMM, %r9, %r9, MASK_ARITH
    run "rorxq $63, 8(%rsi), %r9", rorx64 + 3 * N_RORX_IMM * RECORD, N_RORX_IMM, %r9, %r9, MASK_ARITH

    // mulx src, lo, hi: stored hi, lo.
    run "mulxl %ecx, %eax, %r9d", bin32, N_BIN, %r9, %rax, MASK_ARITH
    run "mulxq %r14, %r10, %rax", bin64, N_BIN, %rax, %r10, MASK_ARITH
    run "mulxq (%rdi,%r8,8), %rax, %r9", bin64, N_BIN, %r9, %rax, MASK_ARITH

    run "adcxl %ecx, %ebx", adcx32, N_ADC, %rbx, %rbx, MASK_ARITH
    run "adcxq %r14, %r15", adcx64, N_ADC, %r15, %r15, MASK_ARITH
    run "adcxq mem_a(%rip), %rbx", adcx64, N_ADC, %rbx, %rbx, MASK_ARITH
    run "adoxl %r14d, %r15d", adox32, N_ADC, %r15, %r15, MASK_ARITH
    run "adoxq %rcx, %rbx", adox64, N_ADC, %rbx, %rbx, MASK_ARITH
    run "adoxq 8(%rsi), %r15", adox64, N_ADC, %r15, %r15, MASK_ARITH

    run "crc32b %ch, %ebx", bin32, N_BIN, %rbx, %rbx, MASK_ARITH
    run "crc32w %r14w, %r15d", bin32, N_BIN, %r15, %r15, MASK_ARITH
    run "crc32l %ecx, %ebx", bin32, N_BIN, %rbx, %rbx, MASK_ARITH
    run "crc32b %r14b, %r15", bin64, N_BIN, %r15, %r15, MASK_ARITH
    run "crc32q %rcx, %rbx", bin64, N_BIN, %rbx, %rbx, MASK_ARITH
    run "crc32q (%rdi,%r8,8), %r15", bin64, N_BIN, %r15, %r15, MASK_ARITH

    pushq $0x2
    popfq
    ret

// MARK: Printing (at CPL3)

// print_all: one line per entry of `groups`, then "done".
print_all:
    leaq groups(%rip), %rbx
    leaq results_cpl0(%rip), %r12
    leaq results_cpl3(%rip), %r13
1:  movq (%rbx), %rsi               // the name; 0 ends the table
    testq %rsi, %rsi
    jz 2f
    call com1_puts
    call print_group
    addq $GROUP_ENTRY, %rbx
    jmp 1b
2:  puts text_done
    ret

// print_group: the rest of a group's line (its name is out): " match\n", or
// " MISMATCH in=... cpl0=... cpl3=...\n" for its first differing case. RBX = the group's
// entry (name, inputs, count, input fields, destinations), R12/R13 = its first CPL0/CPL3
// result; advances R12 and R13 past the group. Keeps RBX.
print_group:
    movq 16(%rbx), %r15             // cases left
    movq 8(%rbx), %r14              // the input record
1:  movq (%r12), %rax
    cmpq (%r13), %rax
    jne 3f
    movq 8(%r12), %rax
    cmpq 8(%r13), %rax
    jne 3f
    movq 16(%r12), %rax
    cmpq 16(%r13), %rax
    jne 3f
    addq $RECORD, %r12
    addq $RECORD, %r13
    addq $RECORD, %r14
    decq %r15
    jnz 1b
    puts text_match
    ret
3:  puts text_mismatch_in
    hex (%r14), 16
    cmpq $2, 24(%rbx)
    jb 4f
    puts text_comma
    hex 8(%r14), 16
    cmpq $3, 24(%rbx)
    jb 4f
    puts text_comma
    hex 16(%r14), 3
4:  puts text_cpl0
    movq %r12, %rbp
    call print_result
    puts text_cpl3
    movq %r13, %rbp
    call print_result
    puts text_newline
    imulq $RECORD, %r15             // skip the rest of the group
    addq %r15, %r12
    addq %r15, %r13
    ret

// print_result: "<d1>/<flags>" ("<d1>:<d2>/<flags>" for a group with two destinations)
// or the event, for the result at RBP of the group at RBX.
print_result:
    movq 16(%rbp), %rax
    btq $FAULT_MARK, %rax
    jc 2f
    hex (%rbp), 16
    cmpq $2, 32(%rbx)
    jb 1f
    puts text_colon
    hex 8(%rbp), 16
1:  puts text_slash
    hex 16(%rbp), 3
    ret
2:  movzbl %al, %edi                // the vector
    movq %rax, %rsi
    shrq $16, %rsi
    movl %esi, %esi                 // the error code
    jmp print_event

// print_event: the event with vector RDI and error code RSI: "#UD", "#GP error=<low 16
// bits, 4 hex>" or "vector=VV". Clobbers RAX, RCX, RDX, RDI, RSI, R8, R9, R10.
print_event:
    movq %rsi, %r10
    cmpq $6, %rdi
    je 1f
    cmpq $13, %rdi
    je 2f
    leaq text_vector(%rip), %rsi
    movl $2, %ecx
    jmp com1_field
1:  leaq text_ud(%rip), %rsi
    jmp com1_puts
2:  leaq text_gp_error(%rip), %rsi
    movq %r10, %rdi
    movl $4, %ecx
    jmp com1_field

// MARK: The handlers

// idt_handlers: the gates that go to a probe handler instead of a stub, as (vector,
// handler) pairs for idt_install_stubs.
    .section .rodata.idt_handlers, "a", @progbits
    .balign 8
idt_handlers:
    .quad 6, ud_handler
    .quad 13, gp_handler
    .quad 0, 0                      // the end

    .section .text.handlers, "ax", @progbits

// Every handler leaves the vector, then an error code (0 for the vectors whose CPU push
// has none), then RIP, CS, RFLAGS, RSP, SS on the stack.
ud_handler:
    pushq $0
    pushq $6
    jmp probe_event
gp_handler:
    pushq $13                       // the CPU pushed the error code
    jmp probe_event

// probe_event: records vector and error, and resumes at resume_rip (disarming it). Keeps
// every register; iretq restores RFLAGS.
probe_event:
    cmpq $0, resume_rip(%rip)
    je unexpected_vector            // nothing armed
    pushq %rax                      // now: RAX, vector, error, RIP, ...
    movq 8(%rsp), %rax
    movq %rax, ev_vector(%rip)
    movq 16(%rsp), %rax
    movq %rax, ev_error(%rip)
    movq resume_rip(%rip), %rax
    movq %rax, 24(%rsp)             // resume at the continuation
    movq $0, resume_rip(%rip)
    popq %rax
    addq $16, %rsp                  // drop the vector and the error code
    iretq

// unexpected_vector: (%rsp) = vector, 8(%rsp) = error, 16(%rsp) = RIP. Prints
// "unexpected vector VV at RRRRRRRRRRRRRRRR", status 99 (at CPL0: handlers run there).
unexpected_vector:
    movq (%rsp), %rdi
    leaq text_unexpected_vector(%rip), %rsi
    movl $2, %ecx
    call com1_field
    movq 16(%rsp), %rdi
    leaq text_at(%rip), %rsi
    movl $16, %ecx
    call com1_field
    leaq text_newline(%rip), %rsi
    call com1_puts
    movb $EXIT_UNEXPECTED_VECTOR, %al
    jmp debug_exit

// vector_stubs: 256 stubs of 16 bytes; stub N pushes a 0 error code unless the CPU pushed
// one (vectors 8, 10-14, 17, 21, 29, 30), then N, and goes to unexpected_vector.
    .balign 16
vector_stubs:
    .set stub_vector, 0
    .rept 256
    .balign 16
    .if (stub_vector == 8) || ((stub_vector >= 10) && (stub_vector <= 14)) || (stub_vector == 17) || (stub_vector == 21) || (stub_vector == 29) || (stub_vector == 30)
    .else
    pushq $0
    .endif
    pushq $stub_vector
    jmp unexpected_vector
    .set stub_vector, stub_vector + 1
    .endr

// MARK: Data

    .section .rodata.emulate_bmi, "a", @progbits
    .balign 8
// The input records: A, B, RFLAGS before the instruction.
un32:
    .irp a, V32
    .quad \a, 0, FLAGS_IN
    .endr
un64:
    .irp a, V64
    .quad \a, 0, FLAGS_IN
    .endr
bin32:
    .irp a, V32
    .irp b, V32
    .quad \a, \b, FLAGS_IN
    .endr
    .endr
bin64:
    .irp a, V64
    .irp b, V64
    .quad \a, \b, FLAGS_IN
    .endr
    .endr
bextr32:
    .irp a, V32
    .irp b, BEXTR_CONTROLS
    .quad \a, \b, FLAGS_IN
    .endr
    .endr
bextr64:
    .irp a, V64
    .irp b, BEXTR_CONTROLS
    .quad \a, \b, FLAGS_IN
    .endr
    .endr
shift32:
    .irp a, V32
    .irp b, SHIFT_COUNTS
    .quad \a, \b, FLAGS_IN
    .endr
    .endr
shift64:
    .irp a, V64
    .irp b, SHIFT_COUNTS
    .quad \a, \b, FLAGS_IN
    .endr
    .endr
rorx32:                             // 4 parts of N_RORX_IMM, one per immediate (B)
    .irp b, 0, 1, 7, 63
    .irp a, V32
    .quad \a, \b, FLAGS_IN
    .endr
    .endr
rorx64:
    .irp b, 0, 1, 7, 63
    .irp a, V64
    .quad \a, \b, FLAGS_IN
    .endr
    .endr
adcx32:
    .irp f, FLAGS_IN, FLAGS_IN_NO_CF
    .irp a, V32
    .irp b, V32
    .quad \a, \b, \f
    .endr
    .endr
    .endr
adcx64:
    .irp f, FLAGS_IN, FLAGS_IN_NO_CF
    .irp a, V64
    .irp b, V64
    .quad \a, \b, \f
    .endr
    .endr
    .endr
adox32:
    .irp f, FLAGS_IN, FLAGS_IN_NO_OF
    .irp a, V32
    .irp b, V32
    .quad \a, \b, \f
    .endr
    .endr
    .endr
adox64:
    .irp f, FLAGS_IN, FLAGS_IN_NO_OF
    .irp a, V64
    .irp b, V64
    .quad \a, \b, \f
    .endr
    .endr
    .endr
inputs_end:

// groups: name, inputs, count, input fields printed (1: A, 2: A,B, 3: A,B,F),
// destinations (1 or 2), in compute's order; a 0 name ends it (GROUP_ENTRY bytes each).
groups:
    .quad text_andn32_reg, bin32, N_BIN, 2, 1
    .quad text_andn64_reg, bin64, N_BIN, 2, 1
    .quad text_andn64_mem, bin64, N_BIN, 2, 1
    .quad text_bextr32_reg, bextr32, N_BEXTR, 2, 1
    .quad text_bextr64_reg, bextr64, N_BEXTR, 2, 1
    .quad text_bextr64_mem, bextr64, N_BEXTR, 2, 1
    .quad text_blsr32_reg, un32, N_UN, 1, 1
    .quad text_blsr64_reg, un64, N_UN, 1, 1
    .quad text_blsr64_mem, un64, N_UN, 1, 1
    .quad text_blsi32_reg, un32, N_UN, 1, 1
    .quad text_blsi64_reg, un64, N_UN, 1, 1
    .quad text_blsi64_mem, un64, N_UN, 1, 1
    .quad text_blsmsk32_reg, un32, N_UN, 1, 1
    .quad text_blsmsk64_reg, un64, N_UN, 1, 1
    .quad text_blsmsk64_mem, un64, N_UN, 1, 1
    .quad text_pdep32_reg, bin32, N_BIN, 2, 1
    .quad text_pdep64_reg, bin64, N_BIN, 2, 1
    .quad text_pdep64_mem, bin64, N_BIN, 2, 1
    .quad text_pext32_reg, bin32, N_BIN, 2, 1
    .quad text_pext64_reg, bin64, N_BIN, 2, 1
    .quad text_pext64_mem, bin64, N_BIN, 2, 1
    .quad text_shlx32_reg, shift32, N_SHIFT, 2, 1
    .quad text_shlx64_reg, shift64, N_SHIFT, 2, 1
    .quad text_shlx64_mem, shift64, N_SHIFT, 2, 1
    .quad text_sarx32_reg, shift32, N_SHIFT, 2, 1
    .quad text_sarx64_reg, shift64, N_SHIFT, 2, 1
    .quad text_sarx64_mem, shift64, N_SHIFT, 2, 1
    .quad text_shrx32_reg, shift32, N_SHIFT, 2, 1
    .quad text_shrx64_reg, shift64, N_SHIFT, 2, 1
    .quad text_shrx64_mem, shift64, N_SHIFT, 2, 1
    .quad text_rorx32_reg, rorx32, N_RORX, 2, 1
    .quad text_rorx64_reg, rorx64, N_RORX, 2, 1
    .quad text_rorx64_mem, rorx64, N_RORX, 2, 1
    .quad text_mulx32_reg, bin32, N_BIN, 2, 2
    .quad text_mulx64_reg, bin64, N_BIN, 2, 2
    .quad text_mulx64_mem, bin64, N_BIN, 2, 2
    .quad text_adcx32_reg, adcx32, N_ADC, 3, 1
    .quad text_adcx64_reg, adcx64, N_ADC, 3, 1
    .quad text_adcx64_mem, adcx64, N_ADC, 3, 1
    .quad text_adox32_reg, adox32, N_ADC, 3, 1
    .quad text_adox64_reg, adox64, N_ADC, 3, 1
    .quad text_adox64_mem, adox64, N_ADC, 3, 1
    .quad text_crc32_8_32_reg, bin32, N_BIN, 2, 1
    .quad text_crc32_16_32_reg, bin32, N_BIN, 2, 1
    .quad text_crc32_32_32_reg, bin32, N_BIN, 2, 1
    .quad text_crc32_8_64_reg, bin64, N_BIN, 2, 1
    .quad text_crc32_64_64_reg, bin64, N_BIN, 2, 1
    .quad text_crc32_64_64_mem, bin64, N_BIN, 2, 1
    .quad 0

// The table sizes the code assumes.
    .if (un64 - un32) != N_UN * RECORD || (bin32 - un64) != N_UN * RECORD || (bin64 - bin32) != N_BIN * RECORD || (bextr32 - bin64) != N_BIN * RECORD
    .error "an input table does not have the size its N_ constant says"
    .endif
    .if (bextr64 - bextr32) != N_BEXTR * RECORD || (shift32 - bextr64) != N_BEXTR * RECORD || (shift64 - shift32) != N_SHIFT * RECORD || (rorx32 - shift64) != N_SHIFT * RECORD
    .error "an input table does not have the size its N_ constant says"
    .endif
    .if (rorx64 - rorx32) != N_RORX * RECORD || (adcx32 - rorx64) != N_RORX * RECORD || (adcx64 - adcx32) != N_ADC * RECORD || (adox32 - adcx64) != N_ADC * RECORD
    .error "an input table does not have the size its N_ constant says"
    .endif
    .if (adox64 - adox32) != N_ADC * RECORD || (inputs_end - adox64) != N_ADC * RECORD
    .error "an input table does not have the size its N_ constant says"
    .endif

text_andn32_reg:        .asciz "andn32 reg"
text_andn64_reg:        .asciz "andn64 reg"
text_andn64_mem:        .asciz "andn64 mem"
text_bextr32_reg:       .asciz "bextr32 reg"
text_bextr64_reg:       .asciz "bextr64 reg"
text_bextr64_mem:       .asciz "bextr64 mem"
text_blsr32_reg:        .asciz "blsr32 reg"
text_blsr64_reg:        .asciz "blsr64 reg"
text_blsr64_mem:        .asciz "blsr64 mem"
text_blsi32_reg:        .asciz "blsi32 reg"
text_blsi64_reg:        .asciz "blsi64 reg"
text_blsi64_mem:        .asciz "blsi64 mem"
text_blsmsk32_reg:      .asciz "blsmsk32 reg"
text_blsmsk64_reg:      .asciz "blsmsk64 reg"
text_blsmsk64_mem:      .asciz "blsmsk64 mem"
text_pdep32_reg:        .asciz "pdep32 reg"
text_pdep64_reg:        .asciz "pdep64 reg"
text_pdep64_mem:        .asciz "pdep64 mem"
text_pext32_reg:        .asciz "pext32 reg"
text_pext64_reg:        .asciz "pext64 reg"
text_pext64_mem:        .asciz "pext64 mem"
text_shlx32_reg:        .asciz "shlx32 reg"
text_shlx64_reg:        .asciz "shlx64 reg"
text_shlx64_mem:        .asciz "shlx64 mem"
text_sarx32_reg:        .asciz "sarx32 reg"
text_sarx64_reg:        .asciz "sarx64 reg"
text_sarx64_mem:        .asciz "sarx64 mem"
text_shrx32_reg:        .asciz "shrx32 reg"
text_shrx64_reg:        .asciz "shrx64 reg"
text_shrx64_mem:        .asciz "shrx64 mem"
text_rorx32_reg:        .asciz "rorx32 reg"
text_rorx64_reg:        .asciz "rorx64 reg"
text_rorx64_mem:        .asciz "rorx64 mem"
text_mulx32_reg:        .asciz "mulx32 reg"
text_mulx64_reg:        .asciz "mulx64 reg"
text_mulx64_mem:        .asciz "mulx64 mem"
text_adcx32_reg:        .asciz "adcx32 reg"
text_adcx64_reg:        .asciz "adcx64 reg"
text_adcx64_mem:        .asciz "adcx64 mem"
text_adox32_reg:        .asciz "adox32 reg"
text_adox64_reg:        .asciz "adox64 reg"
text_adox64_mem:        .asciz "adox64 mem"
text_crc32_8_32_reg:    .asciz "crc32 8->32 reg"
text_crc32_16_32_reg:   .asciz "crc32 16->32 reg"
text_crc32_32_32_reg:   .asciz "crc32 32->32 reg"
text_crc32_8_64_reg:    .asciz "crc32 8->64 reg"
text_crc32_64_64_reg:   .asciz "crc32 64->64 reg"
text_crc32_64_64_mem:   .asciz "crc32 64->64 mem"
text_match:             .asciz " match\n"
text_mismatch_in:       .asciz " MISMATCH in="
text_comma:             .asciz ","
text_colon:             .asciz ":"
text_slash:             .asciz "/"
text_cpl0:              .asciz " cpl0="
text_cpl3:              .asciz " cpl3="
text_ud:                .asciz "#UD"
text_gp_error:          .asciz "#GP error="
text_vector:            .asciz "vector="
text_done:              .asciz "done\n"
text_unexpected_vector: .asciz "unexpected vector "
text_at:                .asciz " at "
text_newline:           .asciz "\n"

    .section .data.emulate_bmi, "aw", @progbits
    .balign 8
mem_a:              .quad 0         // the memory operand of the memory forms (A)
resume_rip:         .quad 0         // the armed continuation; 0 when none is armed
ev_vector:          .quad EV_NONE   // the last event's vector (EV_NONE: none since arm)
ev_error:           .quad 0

    .section .bss.emulate_bmi, "aw", @nobits
    .balign 16
results_cpl0:                       // compute's results at CPL0: d1, d2, flags per case
    .skip CASES * RECORD
results_cpl3:
    .skip CASES * RECORD
