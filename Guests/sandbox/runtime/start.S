// start.S: the sandbox runtime's entry point; sets up the heap and calls sandbox_main.
//
// Entry state (ABI.md): 64-bit mode at CPL 3, RDI = call area, RSI = its size, RDX = heap
// base, RCX = heap size, RSP = stack top - 8 (as after a call), RFLAGS = 0x2.

    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    xorl %ebp, %ebp             // end of the frame chain
    andq $-16, %rsp             // 16-byte aligned before the calls below
    pushq %rdi                  // keep the four entry values across the heap's set-up
    pushq %rsi
    pushq %rdx
    pushq %rcx
    movq %rdx, %rdi             // sandbox_heap_init(heap, heap_size)
    movq %rcx, %rsi
    call sandbox_heap_init
    popq %rcx
    popq %rdx
    popq %rsi
    popq %rdi
    call sandbox_main           // sandbox_main(area, area_size, heap, heap_size): never returns
1:  ud2                         // if it did: #UD ends the call as a guest trap
    jmp 1b
    .size _start, . - _start

// void sandbox_signal(uint32_t operation): one `out` to port 0x5B0, the sandbox's only port.
    .section .text.sandbox_signal, "ax", @progbits
    .globl sandbox_signal
    .type sandbox_signal, @function
sandbox_signal:
    movl %edi, %eax
    movw $0x5B0, %dx
    outl %eax, %dx
    ret
    .size sandbox_signal, . - sandbox_signal
