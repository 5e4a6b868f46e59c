/*
 * The whole of an init that never makes a system call, for Linux guests on
 * machines where a system call from ring 3 is broken (see README.md). The
 * kernel execs it (exec needs no system call from the process), and it then
 * spins at CPL3 with interrupts on, so the kernel stays up: it takes
 * interrupts, runs timers, answers the network and writes disks until the
 * VMM stops the machine. `pause` keeps the spin cheap for a sibling
 * hyperthread. There is no exit: init must never return.
 *
 * Built by make-guest-images.sh:
 *   gcc -nostdlib -static -s -Wl,--build-id=none -o init spin-init.S
 */
	.text
	.globl	_start
	.type	_start, @function
_start:
1:	pause
	jmp	1b
	.size	_start, . - _start

	/* No executable stack. */
	.section .note.GNU-stack, "", @progbits
