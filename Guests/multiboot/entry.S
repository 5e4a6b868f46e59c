// entry.S: the multiboot header and 32-bit entry of the multiboot guests; calls guest_main(EAX, EBX).
//
// Entry state (the multiboot contract): 32-bit protected mode, paging off, flat segments,
// EAX = 0x2BADB002, EBX = the multiboot information, interrupts off, ESP undefined.
// Built with -DMB_FLAT the header also carries the address fields (flag bit 16), and the
// image is linked as a flat binary the loader places by them.

#define MB_MAGIC 0x1BADB002
#ifdef MB_FLAT
#define MB_FLAGS 0x00010003         // page-align modules, memory info, address fields
#else
#define MB_FLAGS 0x00000003         // page-align modules, memory info
#endif

    .section .text._start, "ax", @progbits
    .code32
    .globl _start
    .type _start, @function
_start:
    jmp 1f
    .p2align 2
mb_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
#ifdef MB_FLAT
    .long mb_header                 // header_addr
    .long __load_start              // load_addr
    .long __load_end                // load_end_addr
    .long __bss_end                 // bss_end_addr
    .long _start                    // entry_addr
#endif
1:  movl $stack_top, %esp
    xorl %ebp, %ebp
    pushl %ebx                      // guest_main(magic, info)
    pushl %eax
    call guest_main
    // guest_main returned: report failure through QEMU's debug-exit (status 3).
    movl $1, %eax
    outl %eax, $0xf4
2:  hlt
    jmp 2b
    .size _start, . - _start

    .section .bss.stack, "aw", @nobits
    .p2align 4
stack:
    .skip 4096
stack_top:
