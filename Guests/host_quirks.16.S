// Host-quirk probe (real mode): tests whether the host runs POPCNT at CPL0 itself, then answers CPUID queries through port 0x510, then exits with status 0.
//
// Linux boots use it to find what the host's KVM cannot do (see HostQuirks.swift):
//   1. It executes one POPCNT and writes its result to port 0x510. A host that interprets CPL0 code cannot run it and exits to
//      the VMM with an emulation failure; the VMM notes that, finishes the instruction and
//      the guest goes on. A host that runs CPL0 natively never exits here.
//   2. It reads (leaf, subleaf) pairs from port 0x510 (two 32-bit INs) until the leaf is
//      0xFFFFFFFF, and for each executes CPUID and writes EAX, EBX, ECX, EDX to port 0x510
//      (four 32-bit OUTs), so the VMM sees exactly the CPUID values the guest sees.
//   3. It writes 0 to the debug-exit port 0x501.
// Loaded at any 16-byte aligned address, entered with CS = DS = ES = SS; no stack is used.

    .code16
    .text
    .globl _start
_start:
    movl $0xF0F0, %ebx
    popcntl %ebx, %eax              // 8: the VMM may check the result in EAX
    movw $0x510, %dx
    outl %eax, %dx                  // report it: the VMM compares with 8
1:  inl %dx, %eax                   // leaf
    cmpl $0xFFFFFFFF, %eax
    je 2f
    movl %eax, %esi
    inl %dx, %eax                   // subleaf
    movl %eax, %ecx
    movl %esi, %eax
    cpuid                           // overwrites EAX, EBX, ECX and EDX (so the port too)
    movl %edx, %edi
    movw $0x510, %dx
    outl %eax, %dx
    movl %ebx, %eax
    outl %eax, %dx
    movl %ecx, %eax
    outl %eax, %dx
    movl %edi, %eax
    outl %eax, %dx
    jmp 1b
2:  xorb %al, %al
    movw $0x501, %dx
    outb %al, %dx
3:  hlt
    jmp 3b
