/* runtime.h: what the sandbox runtime (start.S, libc.c) gives both guest SDKs. */
#ifndef SWIFTVISOR_SANDBOX_RUNTIME_H
#define SWIFTVISOR_SANDBOX_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

/* The port and the operations of ABI.md ("Signals"). */
#define SANDBOX_PORT 0x5B0
#define SANDBOX_OP_READY 0u
#define SANDBOX_OP_RETURN 1u
#define SANDBOX_OP_HOST_CALL 2u
#define SANDBOX_OP_PRINT 3u
#define SANDBOX_OP_ABORT 4u

/* Defined by the SDK (the C one in c/sandbox.c, or the Swift one): the runtime's _start calls
 * it once with the entry registers, after the heap is set up. It must never return. */
void sandbox_main(void *area, uint64_t area_size, void *heap, uint64_t heap_size) __attribute__((noreturn));

/* One `out` of `operation` to port 0x5B0: a single exit to the host. */
void sandbox_signal(uint32_t operation);

/* Called by _start before sandbox_main; sets the range malloc hands out. */
void sandbox_heap_init(void *heap, uint64_t heap_size);

/* Ends the call with #UD (a guest trap the host reports); for broken invariants. */
void sandbox_trap(void) __attribute__((noreturn));

void *memcpy(void *restrict dst, const void *restrict src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
void *malloc(size_t size);
void free(void *pointer);
void *calloc(size_t count, size_t size);
void *realloc(void *pointer, size_t size);
int posix_memalign(void **result, size_t alignment, size_t size);
void *aligned_alloc(size_t alignment, size_t size);

#endif
