/* libc.c: the sandbox runtime's memory and string functions and its heap allocator. */
/*
 * The heap is [heap, heap + heap_size) from the entry registers. Every block has a 16-byte
 * header (its payload size and a magic word that says whether it is in use); free blocks
 * are kept on one first-fit list and split when large, the rest of the heap is handed out
 * from a bump pointer. Every size is checked for overflow and every pointer given to free or
 * realloc is checked to lie in the heap and carry a live header: anything else is a guest
 * bug and ends the call with a trap. The host restores the whole heap with the rest of RAM
 * after an error or on reset, so fragmentation never outlives a sandbox's reset.
 */
#include "runtime.h"

#define ERRNO_ENOMEM 12
#define ERRNO_EINVAL 22

void sandbox_trap(void) {
    for (;;) __asm__ volatile("ud2");
}

void *memcpy(void *restrict dst, const void *restrict src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
    return dst;
}

void *memmove(void *dst, const void *src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (d == s || n == 0) return dst;
    if (d < s || d >= s + n) return memcpy(dst, src, n);
    /* Overlapping with dst above src: copy backwards. */
    d += n - 1;
    s += n - 1;
    __asm__ volatile("std\n\trep movsb\n\tcld" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
    return dst;
}

void *memset(void *dst, int c, size_t n) {
    unsigned char *d = dst;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return dst;
}

int memcmp(const void *a, const void *b, size_t n) {
    const unsigned char *x = a, *y = b;
    for (size_t i = 0; i < n; i++) {
        if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
    }
    return 0;
}

size_t strlen(const char *s) {
    size_t n = 0;
    while (s[n] != 0) n++;
    return n;
}

/* ---- The heap ---- */

#define BLOCK_USED 0x55534544424C4B31ull  /* "1KLBDESU" */
#define BLOCK_FREE 0x45455246424C4B31ull  /* "1KLBFREE" */
#define BLOCK_ALIGNED 0x4E47494C41424B31ull /* an aligned payload inside a used block */

struct block {
    uint64_t size;  /* payload bytes (a multiple of 16); for BLOCK_ALIGNED, the offset back to the block's payload */
    uint64_t magic;
};

static uintptr_t heap_start, heap_end, heap_bump;
static struct block *free_list_head; /* free blocks, linked through the first 8 payload bytes */

void sandbox_heap_init(void *heap, uint64_t heap_size) {
    uintptr_t start = ((uintptr_t)heap + 15) & ~(uintptr_t)15;
    uintptr_t end = (uintptr_t)heap + heap_size;
    if (end < (uintptr_t)heap || end < start) end = start; /* wrapped: an empty heap */
    heap_start = start;
    heap_end = end & ~(uintptr_t)15;
    heap_bump = heap_start;
    free_list_head = 0;
}

static int in_heap(uintptr_t p) { return p >= heap_start + sizeof(struct block) && p < heap_bump; }

static struct block *header_of(void *pointer) {
    uintptr_t p = (uintptr_t)pointer;
    if ((p & 15) != 0 || !in_heap(p)) sandbox_trap();
    struct block *b = (struct block *)(p - sizeof(struct block));
    if (b->magic == BLOCK_ALIGNED) {
        uintptr_t payload = p - b->size;
        if (b->size > p || (payload & 15) != 0 || !in_heap(payload)) sandbox_trap();
        b = (struct block *)(payload - sizeof(struct block));
    }
    if (b->magic != BLOCK_USED) sandbox_trap(); /* a double free or a wild pointer */
    uintptr_t payload_end = (uintptr_t)(b + 1) + b->size;
    if (payload_end < (uintptr_t)(b + 1) || payload_end > heap_bump) sandbox_trap();
    return b;
}

static void **next_free(struct block *b) { return (void **)(b + 1); }

void *malloc(size_t size) {
    if (size == 0) size = 1;
    if (size > (size_t)-1 - 64) return 0;
    size_t rounded = (size + 15) & ~(size_t)15;
    /* First fit on the free list; split off the rest when it can hold a block of its own. */
    struct block **link = &free_list_head;
    while (*link) {
        struct block *b = *link;
        if (b->magic != BLOCK_FREE) sandbox_trap();
        if (b->size >= rounded) {
            *link = *next_free(b);
            if (b->size >= rounded + sizeof(struct block) + 16) {
                struct block *rest = (struct block *)((uintptr_t)(b + 1) + rounded);
                rest->size = b->size - rounded - sizeof(struct block);
                rest->magic = BLOCK_FREE;
                *next_free(rest) = free_list_head;
                free_list_head = rest;
                b->size = rounded;
            }
            b->magic = BLOCK_USED;
            return b + 1;
        }
        link = (struct block **)next_free(b);
    }
    /* The bump pointer: header + payload must fit before heap_end. */
    if (heap_end - heap_bump < sizeof(struct block) || heap_end - heap_bump - sizeof(struct block) < rounded) return 0;
    struct block *b = (struct block *)heap_bump;
    b->size = rounded;
    b->magic = BLOCK_USED;
    heap_bump += sizeof(struct block) + rounded;
    return b + 1;
}

void free(void *pointer) {
    if (!pointer) return;
    struct block *b = header_of(pointer);
    b->magic = BLOCK_FREE;
    *next_free(b) = free_list_head;
    free_list_head = b;
}

void *calloc(size_t count, size_t size) {
    if (size != 0 && count > (size_t)-1 / size) return 0;
    void *p = malloc(count * size);
    if (p) memset(p, 0, count * size);
    return p;
}

void *realloc(void *pointer, size_t size) {
    if (!pointer) return malloc(size);
    struct block *b = header_of(pointer);
    uintptr_t payload_end = (uintptr_t)(b + 1) + b->size;
    size_t available = payload_end - (uintptr_t)pointer; /* less than b->size for an aligned payload */
    if (size <= available) return pointer;
    void *fresh = malloc(size);
    if (!fresh) return 0;
    memcpy(fresh, pointer, available);
    free(pointer);
    return fresh;
}

int posix_memalign(void **result, size_t alignment, size_t size) {
    if (alignment < sizeof(void *) || (alignment & (alignment - 1)) != 0) return ERRNO_EINVAL;
    if (alignment <= 16) {
        void *p = malloc(size);
        if (!p) return ERRNO_ENOMEM;
        *result = p;
        return 0;
    }
    /* Room for the payload at an aligned address with an aligned-marker header before it. */
    if (size > (size_t)-1 - alignment - sizeof(struct block)) return ERRNO_ENOMEM;
    void *raw = malloc(size + alignment + sizeof(struct block));
    if (!raw) return ERRNO_ENOMEM;
    uintptr_t p = ((uintptr_t)raw + sizeof(struct block) + alignment - 1) & ~(uintptr_t)(alignment - 1);
    struct block *marker = (struct block *)(p - sizeof(struct block));
    marker->size = p - (uintptr_t)raw;
    marker->magic = BLOCK_ALIGNED;
    *result = (void *)p;
    return 0;
}

void *aligned_alloc(size_t alignment, size_t size) {
    void *p = 0;
    return posix_memalign(&p, alignment, size) == 0 ? p : 0;
}

int bcmp(const void *a, const void *b, size_t n);
int bcmp(const void *a, const void *b, size_t n) { return memcmp(a, b, n); }
