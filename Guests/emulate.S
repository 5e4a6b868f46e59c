// Instruction-emulation test: runs int3, popcnt, lzcnt/tzcnt, stac/clac, fwait, lock cmpxchg16b and xgetbv at CPL0 (where the host cannot run some of them and the VMM must finish them), then the same at CPL3 (native), and prints one line per probe comparing them; exits with status 0.
//
// Output ("\n" only; hex in upper case, fixed widths). When every instruction is finished
// correctly at CPL0, on a CPU with SMAP:
//   int3 vector=03 rip_after=ok rax=0000000000001234
//   popcnt16 reg match
//   popcnt16 mem match
//   popcnt32 reg match
//   popcnt32 mem match
//   popcnt64 reg match
//   popcnt64 mem match
//   lzcnt32 match
//   lzcnt64 match
//   tzcnt32 match
//   tzcnt64 match
//   smap=1 stac=1 clac=0
//   fwait ts=1 -> #NM
//   fwait ts=0 -> none
//   cmpxchg16b equal zf=1 mem=44444444444444443333333333333333 rdx:rax=22222222222222221111111111111111
//   cmpxchg16b differ zf=0 mem=44444444444444443333333333333333 rdx:rax=44444444444444443333333333333333
//   cmpxchg16b misaligned -> #GP error=0000
//   cmpxchg16b cpl3 match
//   xgetbv match
//   done
// (without SMAP: "smap=0 stac=#UD clac=#UD"; without XSAVE: "xgetbv unsupported").
//
// How it runs. First, at CPL0: it loads its own GDT (the VMM's 0x08/0x10 descriptors at the
// same places, ring-3 data 0x18 and code 0x20, a 64-bit TSS at 0x28 whose RSP0 is a .bss
// stack and whose I/O bitmap allows ports 0-0x5FF) and an IDT, then runs every probe at
// CPL0 and stores what it saw. Then it drops to CPL3 once (iretq: CS 0x23, SS 0x1B,
// RFLAGS 0x3002: IOPL=3, IF=0, on the same stack), runs the popcnt/lzcnt/tzcnt, cmpxchg16b
// and xgetbv computations again with the same code and inputs, prints every line from CPL3
// and writes status 0 to port 0x501 from CPL3. Nothing is printed until then: if the VM dies
// on a CPL0 instruction (status 122 from the VMM), its state dump names the instruction.
//
// Faults. Before each probed instruction the guest stores a continuation address in
// resume_rip and sets ev_vector to 0xFF ("none"). The handlers for #BP (3), #UD (6), #NM (7)
// and #GP (13), at CPL0 or CPL3, record the vector, the error code (0 for the vectors that
// push none) and the saved RIP in ev_vector/ev_error/ev_rip, clear resume_rip, and resume at
// the continuation with iretq (to the CPL the fault came from). A handled vector with no
// continuation armed, and any other vector, prints "unexpected vector VV" and ends the VM
// with status 99.
//
// The probes, in order:
// 1. int3 at CPL0 with RAX = 0x1234 (the continuation is the address right after it):
//    "int3 vector=<VV|none> rip_after=<ok|bad> rax=<RAX after, 16 hex>". ok: vector 3 and
//    the saved RIP is the address after the int3.
// 2. popcnt (F3 0F B8) at 16, 32 and 64 bits, register and memory source, inputs 0, 1,
//    all ones, 0x8000000000000001, 0xF0F0F0F0F0F0F0F0 (the source register and the
//    memory qword hold all 64 bits; the instruction reads its operand size of them). Before
//    each: destination = 0x5555555555555555, RFLAGS = 0x897 (CF PF AF SF OF; popfq).
//    After: the destination's 64 bits and RFLAGS bits 11:0 except IF (bit 9): CPL3 code on
//    the project's machines always reads IF=1 (and IOPL=0) with pushfq, whatever iretq or
//    popfq loaded, while CPL0 reads IF=0. One line per size and form:
//    "popcntNN <reg|mem> match", or for the first input that differs,
//    "popcntNN <reg|mem> MISMATCH input=<input truncated, 16 hex> cpl0=<dest>/<flags, 3 hex>
//    cpl3=<dest>/<flags>" (a side that faulted shows its event, e.g. "cpl0=#UD").
//    Forms: 16 reg "popcnt %cx,%ax", 16 mem "popcnt src(%rip),%ax", 32 reg
//    "popcnt %r14d,%r10d", 32 mem "popcnt 8(%rsi),%eax", 64 reg "popcnt %rcx,%r10",
//    64 mem "popcnt (%rdi,%r8,8),%r9".
// 3. lzcnt (F3 0F BD) and tzcnt (F3 0F BC), 32 and 64 bits, register source, inputs 0, 1,
//    0x80000000 (0x8000000000000000 for 64), 0xF0; otherwise as popcnt. Lines "lzcnt32 match",
//    "lzcnt64 match", "tzcnt32 match", "tzcnt64 match" (or MISMATCH, as above). Forms:
//    "lzcnt %ecx,%eax", "lzcnt %r14,%r10", "tzcnt %r14d,%eax", "tzcnt %rcx,%r9".
//    OF, SF, AF and PF are architecturally undefined after lzcnt/tzcnt; the comparison
//    includes them, so the emulator must do what this CPU does natively. (On the project's
//    AMD EPYC hosts: OF unchanged, SF AF PF cleared; CF = source was 0, ZF = result is 0.)
//    Measured on the project's machines: the host kernel's emulator runs F3 0F BD/BC at
//    CPL0 as bsr/bsf (it ignores the F3) with no exit to the VMM, e.g. lzcnt32 of 0 leaves
//    the destination 0x5555555555555555 and sets ZF: "lzcnt32 MISMATCH
//    input=0000000000000000 cpl0=5555555555555555/8D7 cpl3=0000000000000020/803".
// 4. stac/clac at CPL0: CPUID.(7,0):EBX[20] (SMAP); RFLAGS = 0x2, stac, pushfq; then
//    RFLAGS = 0x40002 (AC set, so clac has something to clear even if stac did nothing),
//    clac, pushfq. "smap=<0|1> stac=<AC after stac|event> clac=<AC after clac|event>".
// 5. fwait (9B) at CPL0 with CR0.MP and CR0.TS set: "fwait ts=1 -> <#NM|none|event>"; then
//    clts and fwait again: "fwait ts=0 -> <none|event>". (No CPL3 comparison: on the
//    project's machines native CPL3 code ignores the guest's CR0.TS, so fwait and x87
//    instructions there never raise #NM. #NM at CPL0 is what the SDM requires.)
// 6. lock cmpxchg16b on a 16-byte-aligned M = (lo 0x1111111111111111, hi 0x2222222222222222),
//    RCX:RBX = 0x4444444444444444:0x3333333333333333, at CPL0:
//    a. RDX:RAX = M (memory operand M(%rip)): "cmpxchg16b equal zf=Z mem=<hi><lo> rdx:rax=<rdx><rax>"
//    b. RDX:RAX = 0:0 (memory operand (%rsi)): "cmpxchg16b differ zf=Z mem=... rdx:rax=..."
//       (a faulting case prints "cmpxchg16b equal -> <event>" instead)
//    c. on M+8, RDX:RAX = RCX:RBX = 0: "cmpxchg16b misaligned -> <#GP error=EEEE|none|event>"
//    then at CPL3, M reset, a and b again: "cmpxchg16b cpl3 match" if ZF, RDX, RAX, M and the
//    event of both cases equal the CPL0 ones, else "cmpxchg16b cpl3 MISMATCH <equal|differ>
//    cpl0 <fields> cpl3 <fields>" for the first case that differs.
// 7. xgetbv with ECX = 0 (XCR0): if CPUID.1:ECX.XSAVE (bit 26) is clear, no xgetbv runs and
//    the line is "xgetbv unsupported". Else, at CPL0, CR4.OSXSAVE (bit 18) is set, XCR0 =
//    CPUID.(0xD,0):EDX:EAX (every component the CPU lists; xsetbv, a #GP ignored), then
//    RAX = RDX = 0x5555555555555555, ECX = 0, xgetbv; RDX, RAX and the event are stored. The
//    same at CPL3 (natively; CR4.OSXSAVE stays set). "xgetbv match" if RDX, RAX and the event
//    of both sides are equal, else "xgetbv MISMATCH cpl0=<rdx, 16 hex>:<rax, 16 hex>
//    cpl3=<rdx>:<rax>" (a side that faulted shows its event, e.g. "cpl0=#UD").
//    Why XCR0 is written: measured on the project's machines, native CPL3 code reads the
//    host's XCR0 (0x207 there) whatever the guest's XCR0 is (its reset value 1, or 3 after
//    xsetbv), as it ignores the guest's CR0.TS; CPUID.(0xD,0) lists the same 0x207, so with
//    XCR0 set to it both sides read the same value. A host may enable components KVM does
//    not offer the guest (AMX's tile state, bits 17-18: 0x602E7 against the guest's 0x2E7
//    on one of the project's machines), so the CPL3 value is masked with
//    CPUID.(0xD,0):EDX:EAX before the two are compared. The host kernel's emulator cannot run
//    xgetbv at CPL0 and the VMM finishes it from KVM_GET_XCRS: XCR0's low half in EAX, high
//    half in EDX, the upper halves of RAX and RDX zeroed, as natively.
// 8. "done", then status 0 through port 0x501 (from CPL3).
//
// Events print as "#BP", "#UD", "#NM", "#GP error=EEEE", "none" or "vector=VV".
// Uses neither the boot-info block nor the command line.

#define EXIT_UNEXPECTED_VECTOR 99
#define EV_NONE 0xFF
#define DEBUG_EXIT_PORT 0x501
#define FLAGS_IN 0x897              // CF | PF | AF | SF | OF | bit 1
#define FLAGS_OUT_MASK 0xDFF        // RFLAGS bits 11:0 without IF (bit 9): see the header
#define DEST_IN 0x5555555555555555
#define RFLAGS_AC (1 << 18)
#define CR0_MP_TS 0xA               // CR0.MP (bit 1) | CR0.TS (bit 3)
#define CR4_OSXSAVE (1 << 18)
#define CPUID1_ECX_XSAVE 26
#define CX16_LO 0x1111111111111111
#define CX16_HI 0x2222222222222222
#define CX16_NEW_LO 0x3333333333333333
#define CX16_NEW_HI 0x4444444444444444
#define BIT_CASES 46                // 6 popcnt groups of 5 inputs, 4 lzcnt/tzcnt groups of 4
#define CX16_RECORD 48              // zf, rdx, rax, mem hi, mem lo, event
#define XGETBV_RECORD 32            // rdx, rax, event vector, event error
#define FAULT_MARK 63               // a result's flags word: bit 63 | error << 16 | vector

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

    // 1. int3 with RAX = 0x1234; the #BP handler resumes right after it.
    arm int3_after
    movl $0x1234, %eax
    int3
int3_after:
    disarm
    movq %rax, int3_rax(%rip)
    movq ev_vector(%rip), %rax
    movq %rax, int3_vector(%rip)
    movq ev_rip(%rip), %rax
    movq %rax, int3_rip(%rip)

    // 2, 3. popcnt, lzcnt, tzcnt.
    leaq bits_cpl0(%rip), %rbx
    call compute_bits

    // 4. stac and clac.
    movl $7, %eax
    xorl %ecx, %ecx
    cpuid
    shrl $20, %ebx
    andl $1, %ebx
    movq %rbx, smap_bit(%rip)
    pushq $0x2                      // AC clear
    popfq
    arm 1f
    stac
1:  pushfq
    popq %rax
    disarm
    shrq $18, %rax
    andl $1, %eax
    movq %rax, stac_ac(%rip)
    movq ev_vector(%rip), %rax
    movq %rax, stac_vector(%rip)
    movq ev_error(%rip), %rax
    movq %rax, stac_error(%rip)
    pushq $(RFLAGS_AC | 0x2)        // AC set
    popfq
    arm 2f
    clac
2:  pushfq
    popq %rax
    disarm
    shrq $18, %rax
    andl $1, %eax
    movq %rax, clac_ac(%rip)
    movq ev_vector(%rip), %rax
    movq %rax, clac_vector(%rip)
    movq ev_error(%rip), %rax
    movq %rax, clac_error(%rip)
    pushq $0x2
    popfq

    // 5. fwait with CR0.MP = CR0.TS = 1, then with TS = 0.
    movq %cr0, %rax
    orq $CR0_MP_TS, %rax
    movq %rax, %cr0
    arm 1f
    fwait
1:  disarm
    movq ev_vector(%rip), %rax
    movq %rax, fwait1_vector(%rip)
    movq ev_error(%rip), %rax
    movq %rax, fwait1_error(%rip)
    clts
    arm 2f
    fwait
2:  disarm
    movq ev_vector(%rip), %rax
    movq %rax, fwait0_vector(%rip)
    movq ev_error(%rip), %rax
    movq %rax, fwait0_error(%rip)

    // 6. lock cmpxchg16b: a and b, then c (misaligned).
    leaq cx16_cpl0(%rip), %r12
    call compute_cx16
    leaq cx16_mem(%rip), %rsi
    xorl %eax, %eax
    xorl %edx, %edx
    xorl %ebx, %ebx
    xorl %ecx, %ecx
    arm 1f
    lock cmpxchg16b 8(%rsi)
1:  disarm
    movq ev_vector(%rip), %rax
    movq %rax, misaligned_vector(%rip)
    movq ev_error(%rip), %rax
    movq %rax, misaligned_error(%rip)

    // 7. xgetbv, if CPUID.1:ECX.XSAVE: CR4.OSXSAVE and XCR0 first (see the header).
    movl $1, %eax
    xorl %ecx, %ecx
    cpuid
    btl $CPUID1_ECX_XSAVE, %ecx
    jnc 1f
    movq %cr4, %rax
    orq $CR4_OSXSAVE, %rax
    movq %rax, %cr4
    movq $1, xgetbv_supported(%rip)
    movl $0xD, %eax                 // XCR0 = every component CPUID.(0xD,0):EDX:EAX lists
    xorl %ecx, %ecx
    cpuid
    xorl %ecx, %ecx
    arm 2f
    xsetbv
2:  disarm
    leaq xgetbv_cpl0(%rip), %r12
    call compute_xgetbv
1:
    // The CPL3 side, which also prints everything.
    leaq ring3_main(%rip), %rdi
    jmp enter_ring3_here
    .size _start, . - _start

    .section .text.ring3, "ax", @progbits
// ring3_main: at CPL3 (IOPL=3): the same computations, then every line, then status 0.
ring3_main:
    leaq bits_cpl3(%rip), %rbx
    call compute_bits
    leaq cx16_cpl3(%rip), %r12
    call compute_cx16
    cmpq $0, xgetbv_supported(%rip)
    je 1f
    leaq xgetbv_cpl3(%rip), %r12
    call compute_xgetbv
    movl $0xD, %eax                 // keep only the components the guest's CPUID lists
    xorl %ecx, %ecx                 // (see the header: native CPL3 reads the host's XCR0)
    cpuid
    andq %rdx, 0(%r12)
    andq %rax, 8(%r12)
1:  call print_all
    movw $DEBUG_EXIT_PORT, %dx
    xorl %eax, %eax
    outb %al, %dx
1:  hlt                             // #GP at CPL3: "unexpected vector 0D", status 99
    jmp 1b

// MARK: The computations, run at CPL0 and again at CPL3 by the same code

// bitop INSN, DEST, INPUTS, COUNT: for each of the COUNT qwords at INPUTS: RCX = R14 =
// src_mem = the input, RAX = R9 = R10 = DEST_IN, RFLAGS = FLAGS_IN, INSN; then stores
// DEST (the destination, 64 bits) and RFLAGS & 0xDFF (or, if INSN faulted, bit 63 |
// error << 16 | vector) at (%rbx) and 8(%rbx), and advances RBX by 16.
// Keeps RSI, RDI and R8 (the memory forms' address registers).
.macro bitop insn, dest, inputs, count
    leaq \inputs(%rip), %r12
    movl $\count, %r13d
1:  movq (%r12), %rcx
    movq %rcx, %r14
    movq %rcx, src_mem(%rip)
    movabsq $DEST_IN, %rax
    movq %rax, %r9
    movq %rax, %r10
    arm 2f
    pushq $FLAGS_IN
    popfq
    \insn
2:  pushfq
    popq %rdx
    disarm
    movq \dest, (%rbx)
    andl $FLAGS_OUT_MASK, %edx
    cmpq $EV_NONE, ev_vector(%rip)
    je 3f
    movq ev_error(%rip), %rdx
    shlq $16, %rdx
    orq ev_vector(%rip), %rdx
    btsq $FAULT_MARK, %rdx
3:  movq %rdx, 8(%rbx)
    addq $16, %rbx
    addq $8, %r12
    decl %r13d
    jnz 1b
.endm

// compute_bits: the 46 popcnt/lzcnt/tzcnt cases, results (16 bytes each) from RBX on, in
// the order of bit_groups. Clobbers RAX, RBX, RCX, RDX, RSI, RDI, R8-R14.
compute_bits:
    leaq src_mem - 8(%rip), %rsi    // 8(%rsi) = src_mem
    leaq src_mem - 16(%rip), %rdi   // (%rdi,%r8,8) = src_mem
    movl $2, %r8d
    bitop "popcnt %cx, %ax", %rax, popcnt_inputs, 5
    bitop "popcnt src_mem(%rip), %ax", %rax, popcnt_inputs, 5
    bitop "popcnt %r14d, %r10d", %r10, popcnt_inputs, 5
    bitop "popcnt 8(%rsi), %eax", %rax, popcnt_inputs, 5
    bitop "popcnt %rcx, %r10", %r10, popcnt_inputs, 5
    bitop "popcnt (%rdi,%r8,8), %r9", %r9, popcnt_inputs, 5
    bitop "lzcnt %ecx, %eax", %rax, inputs32, 4
    bitop "lzcnt %r14, %r10", %r10, inputs64, 4
    bitop "tzcnt %r14d, %eax", %rax, inputs32, 4
    bitop "tzcnt %rcx, %r9", %r9, inputs64, 4
    pushq $0x2
    popfq
    ret

// cx16_case RAX, RDX, MEM: RDX:RAX = the values, RCX:RBX = CX16_NEW_HI:CX16_NEW_LO,
// lock cmpxchg16b MEM (which is cx16_mem); stores ZF, RDX, RAX, cx16_mem's hi and lo
// qwords and the event (vector, 0xFF none) at (%r12) and advances R12 by CX16_RECORD.
.macro cx16_case rax_value, rdx_value, mem
    leaq cx16_mem(%rip), %rsi
    movabsq $\rax_value, %rax
    movabsq $\rdx_value, %rdx
    movabsq $CX16_NEW_LO, %rbx
    movabsq $CX16_NEW_HI, %rcx
    arm 1f
    lock cmpxchg16b \mem
1:  pushfq
    popq %r8
    disarm
    shrq $6, %r8                    // ZF
    andl $1, %r8d
    movq %r8, 0(%r12)
    movq %rdx, 8(%r12)
    movq %rax, 16(%r12)
    movq cx16_mem + 8(%rip), %r8
    movq %r8, 24(%r12)
    movq cx16_mem(%rip), %r8
    movq %r8, 32(%r12)
    movq ev_vector(%rip), %r8
    movq %r8, 40(%r12)
    addq $CX16_RECORD, %r12
.endm

// compute_cx16: sets M = (CX16_LO, CX16_HI), then case a (RDX:RAX = M, on M(%rip)) and
// case b (RDX:RAX = 0, on (%rsi)); two records from R12 on.
// Clobbers RAX, RBX, RCX, RDX, RSI, R8, R11, R12.
compute_cx16:
    movabsq $CX16_LO, %rax
    movq %rax, cx16_mem(%rip)
    movabsq $CX16_HI, %rax
    movq %rax, cx16_mem + 8(%rip)
    cx16_case CX16_LO, CX16_HI, "cx16_mem(%rip)"
    cx16_case 0, 0, "(%rsi)"
    ret

// compute_xgetbv: RAX = RDX = DEST_IN, ECX = 0, xgetbv; stores RDX, RAX, the event's
// vector (EV_NONE: none) and error code at (%r12) (XGETBV_RECORD bytes).
// Clobbers RAX, RCX, RDX, R11.
compute_xgetbv:
    movabsq $DEST_IN, %rax
    movq %rax, %rdx
    xorl %ecx, %ecx
    arm 1f
    xgetbv
1:  disarm
    movq %rdx, 0(%r12)
    movq %rax, 8(%r12)
    movq ev_vector(%rip), %rax
    movq %rax, 16(%r12)
    movq ev_error(%rip), %rax
    movq %rax, 24(%r12)
    ret

// MARK: Printing (at CPL3)

// print_all: every line, from "int3" to "done".
print_all:
    // 1. int3
    puts text_int3_vector
    cmpq $EV_NONE, int3_vector(%rip)
    jne 1f
    puts text_none
    jmp 2f
1:  hex int3_vector(%rip), 2
2:  puts text_rip_after
    leaq text_bad(%rip), %rsi
    cmpq $3, int3_vector(%rip)
    jne 3f
    leaq int3_after(%rip), %rax
    cmpq int3_rip(%rip), %rax
    jne 3f
    leaq text_ok(%rip), %rsi
3:  call com1_puts
    puts text_rax
    hex int3_rax(%rip), 16
    puts text_newline

    // 2, 3. one line per group of bit_groups
    leaq bit_groups(%rip), %rbx
    leaq bits_cpl0(%rip), %r12
    leaq bits_cpl3(%rip), %r13
4:  movq (%rbx), %rsi               // the name; 0 ends the table
    testq %rsi, %rsi
    jz 5f
    call com1_puts
    call print_bit_group
    addq $32, %rbx
    jmp 4b

    // 4. stac/clac
5:  puts text_smap
    hex smap_bit(%rip), 1
    puts text_stac
    movq stac_ac(%rip), %rax
    movq stac_vector(%rip), %rdi
    movq stac_error(%rip), %rsi
    call print_ac_or_event
    puts text_clac
    movq clac_ac(%rip), %rax
    movq clac_vector(%rip), %rdi
    movq clac_error(%rip), %rsi
    call print_ac_or_event
    puts text_newline

    // 5. fwait
    puts text_fwait_ts1
    movq fwait1_vector(%rip), %rdi
    movq fwait1_error(%rip), %rsi
    call print_event
    puts text_newline
    puts text_fwait_ts0
    movq fwait0_vector(%rip), %rdi
    movq fwait0_error(%rip), %rsi
    call print_event
    puts text_newline

    // 6. cmpxchg16b
    puts text_cx16_equal
    leaq cx16_cpl0(%rip), %rbx
    call print_cx16_record
    puts text_newline
    puts text_cx16_differ
    leaq cx16_cpl0 + CX16_RECORD(%rip), %rbx
    call print_cx16_record
    puts text_newline
    puts text_cx16_misaligned
    movq misaligned_vector(%rip), %rdi
    movq misaligned_error(%rip), %rsi
    call print_event
    puts text_newline
    puts text_cx16_cpl3
    leaq text_cx16_case_equal(%rip), %rbp
    leaq cx16_cpl0(%rip), %r12
    leaq cx16_cpl3(%rip), %r13
    movl $CX16_RECORD / 8, %ecx
    call same_qwords
    jne 6f
    leaq text_cx16_case_differ(%rip), %rbp
    addq $CX16_RECORD, %r12
    addq $CX16_RECORD, %r13
    movl $CX16_RECORD / 8, %ecx
    call same_qwords
    jne 6f
    puts text_match
    jmp 7f
6:  puts text_mismatch
    movq %rbp, %rsi
    call com1_puts
    puts text_cx16_cpl0_side
    movq %r12, %rbx
    call print_cx16_record
    puts text_cx16_cpl3_side
    movq %r13, %rbx
    call print_cx16_record
    puts text_newline

    // 7. xgetbv
7:  puts text_xgetbv
    cmpq $0, xgetbv_supported(%rip)
    jne 8f
    puts text_unsupported
    jmp 9f
8:  leaq xgetbv_cpl0(%rip), %r12
    leaq xgetbv_cpl3(%rip), %r13
    movl $XGETBV_RECORD / 8, %ecx
    call same_qwords
    jne 1f
    puts text_match
    jmp 9f
1:  puts text_xgetbv_mismatch
    movq %r12, %rbx
    call print_xgetbv_record
    puts text_cpl3
    movq %r13, %rbx
    call print_xgetbv_record
    puts text_newline

    // 8.
9:  puts text_done
    ret

// same_qwords: ZF = 1 if the ECX qwords at R12 and R13 are equal. Clobbers RAX, RCX, RDX.
same_qwords:
    xorl %edx, %edx
1:  movq (%r12,%rdx,8), %rax
    cmpq (%r13,%rdx,8), %rax
    jne 2f
    incl %edx
    cmpl %ecx, %edx
    jb 1b
    xorl %eax, %eax                 // ZF = 1
2:  ret

// print_bit_group: the rest of a group's line (its name is out): " match\n", or
// " MISMATCH input=... cpl0=... cpl3=...\n" for its first differing case. RBX = the
// group's bit_groups entry (name, inputs, count, mask), R12/R13 = its first CPL0/CPL3
// result; advances R12 and R13 past the group. Keeps RBX.
print_bit_group:
    pushq %rbx
    movq 16(%rbx), %r15             // cases left
    movq 8(%rbx), %r14              // the input
1:  movq (%r12), %rax
    cmpq (%r13), %rax
    jne 3f
    movq 8(%r12), %rax
    cmpq 8(%r13), %rax
    jne 3f
    addq $16, %r12
    addq $16, %r13
    addq $8, %r14
    decq %r15
    jnz 1b
    puts text_match
    popq %rbx
    ret
3:  puts text_mismatch_input
    movq (%r14), %rdi
    andq 24(%rbx), %rdi
    movl $16, %ecx
    call com1_puthex
    puts text_cpl0
    movq %r12, %rbx
    call print_bit_result
    puts text_cpl3
    movq %r13, %rbx
    call print_bit_result
    puts text_newline
    shlq $4, %r15                   // skip the rest of the group
    addq %r15, %r12
    addq %r15, %r13
    popq %rbx
    ret

// print_bit_result: "<dest, 16 hex>/<flags, 3 hex>" or the event, for the result at RBX.
print_bit_result:
    movq 8(%rbx), %rax
    btq $FAULT_MARK, %rax
    jc 1f
    hex (%rbx), 16
    puts text_slash
    hex 8(%rbx), 3
    ret
1:  movzbl %al, %edi                // the vector
    movq %rax, %rsi
    shrq $16, %rsi
    movl %esi, %esi                 // the error code
    jmp print_event

// print_cx16_record: for the cmpxchg16b record at RBX, " zf=Z mem=<hi><lo> rdx:rax=<rdx><rax>",
// or " -> <event>" if it faulted.
print_cx16_record:
    cmpq $EV_NONE, 40(%rbx)
    je 1f
    puts text_arrow
    movq 40(%rbx), %rdi
    xorl %esi, %esi
    jmp print_event
1:  puts text_zf
    hex (%rbx), 1
    puts text_mem
    hex 24(%rbx), 16
    hex 32(%rbx), 16
    puts text_rdx_rax
    hex 8(%rbx), 16
    hex 16(%rbx), 16
    ret

// print_xgetbv_record: for the xgetbv record at RBX, "<rdx, 16 hex>:<rax, 16 hex>", or the
// event if it faulted. Keeps RBX, R12, R13.
print_xgetbv_record:
    cmpq $EV_NONE, 16(%rbx)
    je 1f
    movq 16(%rbx), %rdi
    movq 24(%rbx), %rsi
    jmp print_event
1:  hex (%rbx), 16
    puts text_colon
    hex 8(%rbx), 16
    ret

// print_ac_or_event: the AC bit in RAX (one digit) if RDI (the vector) is EV_NONE, else the
// event (vector RDI, error RSI).
print_ac_or_event:
    cmpq $EV_NONE, %rdi
    jne print_event
    hex %rax, 1
    ret

// print_event: the event with vector RDI and error code RSI: "none" (vector 0xFF), "#BP",
// "#UD", "#NM", "#GP error=<low 16 bits, 4 hex>" or "vector=VV".
// Clobbers RAX, RCX, RDX, RDI, RSI, R8, R9, R10.
print_event:
    movq %rsi, %r10
    leaq text_none(%rip), %rsi
    cmpq $EV_NONE, %rdi
    je 1f
    leaq text_bp(%rip), %rsi
    cmpq $3, %rdi
    je 1f
    leaq text_ud(%rip), %rsi
    cmpq $6, %rdi
    je 1f
    leaq text_nm(%rip), %rsi
    cmpq $7, %rdi
    je 1f
    cmpq $13, %rdi
    je 2f
    leaq text_vector(%rip), %rsi
    movl $2, %ecx
    jmp com1_field
1:  jmp com1_puts
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
    .quad 3, bp_handler
    .quad 6, ud_handler
    .quad 7, nm_handler
    .quad 13, gp_handler
    .quad 0, 0                      // the end

    .section .text.handlers, "ax", @progbits

// The probe handlers push an error code where the CPU pushed none, then the vector.
bp_handler:
    pushq $0
    pushq $3
    jmp probe_event
ud_handler:
    pushq $0
    pushq $6
    jmp probe_event
nm_handler:
    pushq $0
    pushq $7
    jmp probe_event
gp_handler:
    pushq $13                       // the CPU pushed the error code
    jmp probe_event

// probe_event: the stack holds the vector, the error code, then RIP, CS, RFLAGS, RSP, SS.
// Records vector, error and RIP, and resumes at resume_rip (disarming it). Keeps every
// register; iretq restores RFLAGS.
probe_event:
    cmpq $0, resume_rip(%rip)
    je unexpected_vector            // nothing armed
    pushq %rax                      // now: RAX, vector, error, RIP, ...
    movq 8(%rsp), %rax
    movq %rax, ev_vector(%rip)
    movq 16(%rsp), %rax
    movq %rax, ev_error(%rip)
    movq 24(%rsp), %rax
    movq %rax, ev_rip(%rip)
    movq resume_rip(%rip), %rax
    movq %rax, 24(%rsp)             // resume at the continuation
    movq $0, resume_rip(%rip)
    popq %rax
    addq $16, %rsp                  // drop the vector and the error code
    iretq

// unexpected_vector: the vector is at (%rsp). Prints "unexpected vector VV", status 99.
unexpected_vector:
    movq (%rsp), %rdi
    leaq text_unexpected_vector(%rip), %rsi
    movl $2, %ecx
    call com1_field
    leaq text_newline(%rip), %rsi
    call com1_puts
    movb $EXIT_UNEXPECTED_VECTOR, %al
    jmp debug_exit

// vector_stubs: 256 stubs of 16 bytes, stub N pushes N and goes to unexpected_vector.
    .balign 16
vector_stubs:
    .set stub_vector, 0
    .rept 256
    .balign 16
    pushq $stub_vector
    jmp unexpected_vector
    .set stub_vector, stub_vector + 1
    .endr

// MARK: Data

    .section .rodata.emulate, "a", @progbits
    .balign 8
popcnt_inputs:
    .quad 0, 1, 0xFFFFFFFFFFFFFFFF, 0x8000000000000001, 0xF0F0F0F0F0F0F0F0
inputs32:
    .quad 0, 1, 0x80000000, 0xF0
inputs64:
    .quad 0, 1, 0x8000000000000000, 0xF0

// bit_groups: name, inputs, count, input mask (for printing), in compute_bits' order;
// a 0 name ends it.
bit_groups:
    .quad text_popcnt16_reg, popcnt_inputs, 5, 0xFFFF
    .quad text_popcnt16_mem, popcnt_inputs, 5, 0xFFFF
    .quad text_popcnt32_reg, popcnt_inputs, 5, 0xFFFFFFFF
    .quad text_popcnt32_mem, popcnt_inputs, 5, 0xFFFFFFFF
    .quad text_popcnt64_reg, popcnt_inputs, 5, 0xFFFFFFFFFFFFFFFF
    .quad text_popcnt64_mem, popcnt_inputs, 5, 0xFFFFFFFFFFFFFFFF
    .quad text_lzcnt32, inputs32, 4, 0xFFFFFFFF
    .quad text_lzcnt64, inputs64, 4, 0xFFFFFFFFFFFFFFFF
    .quad text_tzcnt32, inputs32, 4, 0xFFFFFFFF
    .quad text_tzcnt64, inputs64, 4, 0xFFFFFFFFFFFFFFFF
    .quad 0

text_popcnt16_reg:      .asciz "popcnt16 reg"
text_popcnt16_mem:      .asciz "popcnt16 mem"
text_popcnt32_reg:      .asciz "popcnt32 reg"
text_popcnt32_mem:      .asciz "popcnt32 mem"
text_popcnt64_reg:      .asciz "popcnt64 reg"
text_popcnt64_mem:      .asciz "popcnt64 mem"
text_lzcnt32:           .asciz "lzcnt32"
text_lzcnt64:           .asciz "lzcnt64"
text_tzcnt32:           .asciz "tzcnt32"
text_tzcnt64:           .asciz "tzcnt64"
text_int3_vector:       .asciz "int3 vector="
text_rip_after:         .asciz " rip_after="
text_ok:                .asciz "ok"
text_bad:               .asciz "bad"
text_rax:               .asciz " rax="
text_match:             .asciz " match\n"
text_mismatch:          .asciz " MISMATCH "
text_mismatch_input:    .asciz " MISMATCH input="
text_cpl0:              .asciz " cpl0="
text_cpl3:              .asciz " cpl3="
text_slash:             .asciz "/"
text_smap:              .asciz "smap="
text_stac:              .asciz " stac="
text_clac:              .asciz " clac="
text_fwait_ts1:         .asciz "fwait ts=1 -> "
text_fwait_ts0:         .asciz "fwait ts=0 -> "
text_cx16_equal:        .asciz "cmpxchg16b equal"
text_cx16_differ:       .asciz "cmpxchg16b differ"
text_cx16_misaligned:   .asciz "cmpxchg16b misaligned -> "
text_cx16_cpl3:         .asciz "cmpxchg16b cpl3"
text_cx16_case_equal:   .asciz "equal"
text_cx16_case_differ:  .asciz "differ"
text_cx16_cpl0_side:    .asciz " cpl0"
text_cx16_cpl3_side:    .asciz " cpl3"
text_arrow:             .asciz " -> "
text_xgetbv:            .asciz "xgetbv"
text_unsupported:       .asciz " unsupported\n"
text_colon:             .asciz ":"
text_xgetbv_mismatch:   .asciz " MISMATCH cpl0="
text_zf:                .asciz " zf="
text_mem:               .asciz " mem="
text_rdx_rax:           .asciz " rdx:rax="
text_none:              .asciz "none"
text_bp:                .asciz "#BP"
text_ud:                .asciz "#UD"
text_nm:                .asciz "#NM"
text_gp_error:          .asciz "#GP error="
text_vector:            .asciz "vector="
text_done:              .asciz "done\n"
text_unexpected_vector: .asciz "unexpected vector "
text_newline:           .asciz "\n"

    .section .data.emulate, "aw", @progbits
    .balign 16
cx16_mem:                           // M at +0 (16-byte aligned); M+8 is the misaligned case
    .quad 0, 0, 0, 0
resume_rip:         .quad 0         // the armed continuation; 0 when none is armed
ev_vector:          .quad EV_NONE   // the last event's vector (EV_NONE: none since arm)
ev_error:           .quad 0
ev_rip:             .quad 0
src_mem:            .quad 0         // the memory operand of the popcnt memory forms
int3_vector:        .quad EV_NONE
int3_rip:           .quad 0
int3_rax:           .quad 0
smap_bit:           .quad 0
stac_ac:            .quad 0
stac_vector:        .quad EV_NONE
stac_error:         .quad 0
clac_ac:            .quad 0
clac_vector:        .quad EV_NONE
clac_error:         .quad 0
fwait1_vector:      .quad EV_NONE
fwait1_error:       .quad 0
fwait0_vector:      .quad EV_NONE
fwait0_error:       .quad 0
misaligned_vector:  .quad EV_NONE
misaligned_error:   .quad 0
xgetbv_supported:   .quad 0         // 1 if CPUID.1:ECX.XSAVE (the xgetbv probe ran)

    .section .bss.emulate, "aw", @nobits
    .balign 16
bits_cpl0:                          // compute_bits' results at CPL0: value, flags per case
    .skip BIT_CASES * 16
bits_cpl3:
    .skip BIT_CASES * 16
cx16_cpl0:                          // compute_cx16's two records at CPL0
    .skip 2 * CX16_RECORD
cx16_cpl3:
    .skip 2 * CX16_RECORD
xgetbv_cpl0:                        // compute_xgetbv's record at CPL0
    .skip XGETBV_RECORD
xgetbv_cpl3:
    .skip XGETBV_RECORD
