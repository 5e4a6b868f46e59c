// A sandbox guest in C with a few exports (arithmetic, strings, floating point, a host call).
#include <swiftvisor_sandbox.h>
#include "../runtime/runtime.h"

static int add(const sv_value *args, uint16_t count, sv_value *result) {
    if (count != 2 || args[0].tag != SV_INT64 || args[1].tag != SV_INT64) return SV_ERROR_ARGUMENTS;
    *result = sv_int64((int64_t)((uint64_t)args[0].i64 + (uint64_t)args[1].i64));
    return SV_OK;
}

static int scale(const sv_value *args, uint16_t count, sv_value *result) {
    if (count != 2 || args[0].tag != SV_DOUBLE || args[1].tag != SV_DOUBLE) return SV_ERROR_ARGUMENTS;
    *result = sv_double(args[0].f64 * args[1].f64);
    return SV_OK;
}

static char upper_buffer[4096];

/* ASCII upper case of a string argument. */
static int upper(const sv_value *args, uint16_t count, sv_value *result) {
    if (count != 1 || args[0].tag != SV_STRING) return SV_ERROR_ARGUMENTS;
    uint32_t n = args[0].bytes.length;
    if (n > sizeof upper_buffer) return sv_fail("string too long");
    for (uint32_t i = 0; i < n; i++) {
        uint8_t c = args[0].bytes.data[i];
        upper_buffer[i] = (char)(c >= 'a' && c <= 'z' ? c - 32 : c);
    }
    *result = sv_string(upper_buffer, n);
    return SV_OK;
}

/* Sum of an [Int64] argument. */
static int sum(const sv_value *args, uint16_t count, sv_value *result) {
    if (count != 1 || args[0].tag != (SV_ARRAY | SV_INT64)) return SV_ERROR_ARGUMENTS;
    int64_t total = 0;
    for (uint32_t i = 0; i < args[0].array.count; i++) {
        int64_t x;
        memcpy(&x, args[0].array.data + 8 * i, 8);
        total += x;
    }
    *result = sv_int64(total);
    return SV_OK;
}

/* Calls host function "double" with its argument and adds one to the host's answer. */
static int via_host(const sv_value *args, uint16_t count, sv_value *result) {
    if (count != 1 || args[0].tag != SV_INT64) return SV_ERROR_ARGUMENTS;
    sv_value reply;
    int status = sv_host_call("double", args, 1, &reply);
    if (status != SV_OK) {
        uint32_t n;
        const char *why = sv_last_error(&n);
        (void)n;
        return sv_fail(why);
    }
    if (reply.tag != SV_INT64) return sv_fail("host returned a non-Int64");
    *result = sv_int64(reply.i64 + 1);
    return SV_OK;
}

/* Calls host function "greet" with a string and returns its string answer. */
static int greet(const sv_value *args, uint16_t count, sv_value *result) {
    if (count != 1 || args[0].tag != SV_STRING) return SV_ERROR_ARGUMENTS;
    sv_value reply;
    if (sv_host_call("greet", args, 1, &reply) != SV_OK) return sv_fail(sv_last_error(0));
    if (reply.tag != SV_STRING || reply.bytes.length > sizeof upper_buffer) return sv_fail("bad reply");
    memcpy(upper_buffer, reply.bytes.data, reply.bytes.length);
    *result = sv_string(upper_buffer, reply.bytes.length);
    return SV_OK;
}

/* Writes `pages` pages of a static buffer (for the reset benchmark) and returns the count. */
static uint8_t scratch[256 * 4096] __attribute__((aligned(4096)));
static int touch(const sv_value *args, uint16_t count, sv_value *result) {
    if (count != 1 || args[0].tag != SV_INT64 || args[0].i64 < 0 || args[0].i64 > 256) return SV_ERROR_ARGUMENTS;
    for (int64_t i = 0; i < args[0].i64; i++) scratch[i * 4096] += 1;
    *result = sv_int64(args[0].i64);
    return SV_OK;
}

/* Returns how many times it was called since the last reset (state that a reset clears). */
static int64_t counter;
static int bump(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args;
    if (count != 0) return SV_ERROR_ARGUMENTS;
    *result = sv_int64(++counter);
    return SV_OK;
}

/* Exercises the runtime's heap and memory functions; returns the number of failed checks. */
static int heap_check(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args;
    if (count != 0) return SV_ERROR_ARGUMENTS;
    int64_t failures = 0;
    uint8_t *blocks[64];
    for (int i = 0; i < 64; i++) {
        blocks[i] = malloc((size_t)(i * 37 + 1));
        if (!blocks[i] || ((uintptr_t)blocks[i] & 15) != 0) failures++;
        else memset(blocks[i], i, (size_t)(i * 37 + 1));
    }
    for (int i = 0; i < 64; i++) {
        if (!blocks[i]) continue;
        for (int k = 0; k < i * 37 + 1; k++)
            if (blocks[i][k] != (uint8_t)i) { failures++; break; }
    }
    for (int i = 0; i < 64; i += 2) free(blocks[i]);
    for (int i = 0; i < 32; i++) { /* reuses the freed blocks */
        uint8_t *p = malloc(16);
        if (!p) failures++;
        free(p);
    }
    uint8_t *grown = realloc(blocks[1], 10000);
    if (!grown || grown[0] != 1 || grown[37] != 1) failures++;
    free(grown);
    void *aligned = 0;
    if (posix_memalign(&aligned, 4096, 100) != 0 || ((uintptr_t)aligned & 4095) != 0) failures++;
    else memset(aligned, 0xAB, 100);
    free(aligned);
    if (posix_memalign(&aligned, 3, 8) == 0) failures++; /* not a power of two */
    void *a64 = aligned_alloc(64, 64);
    if (!a64 || ((uintptr_t)a64 & 63) != 0) failures++;
    free(a64);
    if (calloc((size_t)-1 / 2, 4) != 0) failures++; /* overflow */
    if (malloc((size_t)-1) != 0) failures++;
    if (malloc((size_t)1 << 40) != 0) failures++; /* more than the heap */
    uint8_t *zeroed = calloc(100, 10);
    if (!zeroed) failures++;
    else
        for (int k = 0; k < 1000; k++)
            if (zeroed[k] != 0) { failures++; break; }
    char text[16] = "abcdefghij";
    memmove(text + 2, text, 8);
    if (memcmp(text, "ababcdefgh", 10) != 0) failures++;
    memmove(text, text + 2, 8);
    if (memcmp(text, "abcdefghgh", 10) != 0) failures++;
    if (strlen("sandbox") != 7 || memcmp("a", "b", 1) >= 0) failures++;
    *result = sv_int64(failures);
    return SV_OK;
}

static int hello(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args;
    (void)count;
    sv_puts("hello from the sandbox\n");
    *result = sv_void();
    return SV_OK;
}

/* Fails with the status its argument gives and no message: the SDK maps a status outside
   1-4 to 4. */
static int odd_status(const sv_value *args, uint16_t count, sv_value *result) {
    (void)result;
    if (count != 1 || args[0].tag != SV_INT64) return SV_ERROR_ARGUMENTS;
    return (int)args[0].i64;
}

static char wide_buffer[40001];

/* Fills wide_buffer with `prefix` ASCII bytes, then two-byte characters (U+00E9). */
static uint32_t fill_wide(uint32_t prefix, uint32_t length) {
    uint32_t n = 0;
    while (n < prefix && n < length) wide_buffer[n++] = 'a';
    while (n + 2 <= length) {
        wide_buffer[n++] = (char)0xC3;
        wide_buffer[n++] = (char)0xA9;
    }
    return n;
}

/* Fails with a message of one ASCII byte and 200 two-byte characters: the 255-byte cut
   falls inside a character unless the SDK backs up. */
static int long_error(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args;
    (void)count;
    (void)result;
    uint32_t n = fill_wide(1, 401);
    wide_buffer[n] = 0;
    return sv_fail(wide_buffer);
}

/* Prints one ASCII byte and then two-byte characters, 40001 bytes in all: more than the
   output buffer, split where a chunk boundary would fall inside a character. */
static int print_wide(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args;
    (void)count;
    sv_print(wide_buffer, fill_wide(1, sizeof wide_buffer));
    *result = sv_void();
    return SV_OK;
}

void sandbox_init(void) {
    sv_export("odd_status", odd_status);
    sv_export("long_error", long_error);
    sv_export("print_wide", print_wide);
    sv_export("add", add);
    sv_export("scale", scale);
    sv_export("upper", upper);
    sv_export("sum", sum);
    sv_export("via_host", via_host);
    sv_export("greet", greet);
    sv_export("touch", touch);
    sv_export("bump", bump);
    sv_export("hello", hello);
    sv_export("heap_check", heap_check);
}
