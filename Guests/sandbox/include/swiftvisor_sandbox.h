/* swiftvisor_sandbox.h: the sandbox calling convention (ABI.md) for guests written in C. */
/*
 * A C sandbox guest (Guests/sandbox/NAME.sandbox.c) defines
 *
 *     void sandbox_init(void);
 *
 * which registers the guest's functions with sv_export(); the SDK (c/sandbox.c) then signals
 * READY and serves calls. An exported function gets its arguments, already decoded and
 * checked, and writes its result:
 *
 *     static int add(const sv_value *args, uint16_t count, sv_value *result) {
 *         if (count != 2 || args[0].tag != SV_INT64 || args[1].tag != SV_INT64) return SV_ERROR_ARGUMENTS;
 *         *result = sv_int64(args[0].i64 + args[1].i64);
 *         return SV_OK;
 *     }
 *
 * Strings, byte arrays and arrays point into a copy of the call message, valid until the
 * function returns; a host call's result points into the input buffer, valid until the
 * next host call or the function's return.
 */
#ifndef SWIFTVISOR_SANDBOX_H
#define SWIFTVISOR_SANDBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Value tags (ABI.md, "Messages"). An array of T is SV_ARRAY | T. */
enum {
    SV_VOID = 0x00,
    SV_BOOL = 0x01,
    SV_INT32 = 0x02,
    SV_INT64 = 0x03,
    SV_UINT32 = 0x04,
    SV_UINT64 = 0x05,
    SV_FLOAT = 0x06,
    SV_DOUBLE = 0x07,
    SV_STRING = 0x08,
    SV_BYTES = 0x09,
    SV_ARRAY = 0x40,
};

/* Results of an exported function and of sv_host_call. Positive values are the ABI's error
 * codes. */
enum {
    SV_OK = 0,
    SV_ERROR_UNKNOWN_FUNCTION = 1,
    SV_ERROR_ARGUMENTS = 2,
    SV_ERROR_BAD_MESSAGE = 3,
    SV_ERROR_FAILED = 4,
};

typedef struct sv_value {
    uint8_t tag;
    union {
        bool b;
        int32_t i32;
        int64_t i64;
        uint32_t u32;
        uint64_t u64;
        float f32;
        double f64;
        /* SV_STRING (UTF-8, not NUL-terminated) and SV_BYTES. */
        struct {
            const uint8_t *data;
            uint32_t length;
        } bytes;
        /* SV_ARRAY | T: `count` elements, each T's payload without its tag, packed at `data`
         * (`length` bytes in all; little-endian, unaligned). For strings and bytes each
         * element is a u32 length and its bytes. */
        struct {
            const uint8_t *data;
            uint32_t length;
            uint32_t count;
        } array;
    };
} sv_value;

/* An exported function: returns SV_OK with *result set, or an error code (SV_ERROR_FAILED
 * after sv_fail() sets the message). */
typedef int (*sv_function)(const sv_value *args, uint16_t count, sv_value *result);

/* Defined by the guest: registers its functions. Called once, before READY. */
void sandbox_init(void);

/* Registers `function` under `name` (1-255 bytes, kept by pointer). Returns false when the
 * table (64 functions) is full or the name is invalid. */
bool sv_export(const char *name, sv_function function);

/* Calls host function `name`. On SV_OK, *result holds its result (strings point into the
 * input buffer: see above). On an error, sv_last_error() holds the host's message. */
int sv_host_call(const char *name, const sv_value *args, uint16_t count, sv_value *result);

/* The message of the last failed host call (or ""), and its length. */
const char *sv_last_error(uint32_t *length);

/* Sets the message of an SV_ERROR_FAILED return (copied, cut to at most 255 bytes at a
 * UTF-8 character boundary); returns
 * SV_ERROR_FAILED. */
int sv_fail(const char *message);

/* Prints `length` bytes of text through the host (counts toward its output limit). */
void sv_print(const char *text, size_t length);
void sv_puts(const char *text);

/* Gives up: the call fails with SandboxError.guestAbort(message). Never returns. */
void sv_abort(const char *message) __attribute__((noreturn));

/* Raw access, for guests that test the host's checks: the call area, the output buffer
 * and its capacity, and a signal with a given output length. */
volatile uint8_t *sv_call_area(void);
uint8_t *sv_output_buffer(uint32_t *capacity);
void sv_raw_signal(uint32_t operation, uint32_t output_length);

/* Value constructors. */
static inline sv_value sv_void(void) { sv_value v = {.tag = SV_VOID}; return v; }
static inline sv_value sv_bool(bool x) { sv_value v = {.tag = SV_BOOL}; v.b = x; return v; }
static inline sv_value sv_int32(int32_t x) { sv_value v = {.tag = SV_INT32}; v.i32 = x; return v; }
static inline sv_value sv_int64(int64_t x) { sv_value v = {.tag = SV_INT64}; v.i64 = x; return v; }
static inline sv_value sv_uint32(uint32_t x) { sv_value v = {.tag = SV_UINT32}; v.u32 = x; return v; }
static inline sv_value sv_uint64(uint64_t x) { sv_value v = {.tag = SV_UINT64}; v.u64 = x; return v; }
static inline sv_value sv_float(float x) { sv_value v = {.tag = SV_FLOAT}; v.f32 = x; return v; }
static inline sv_value sv_double(double x) { sv_value v = {.tag = SV_DOUBLE}; v.f64 = x; return v; }
static inline sv_value sv_string(const char *text, uint32_t length) {
    sv_value v = {.tag = SV_STRING};
    v.bytes.data = (const uint8_t *)text;
    v.bytes.length = length;
    return v;
}
static inline sv_value sv_bytes(const void *data, uint32_t length) {
    sv_value v = {.tag = SV_BYTES};
    v.bytes.data = (const uint8_t *)data;
    v.bytes.length = length;
    return v;
}
/* An array of `count` elements of `element_tag` whose packed payloads are `length` bytes at `data`. */
static inline sv_value sv_array(uint8_t element_tag, const void *data, uint32_t length, uint32_t count) {
    sv_value v = {.tag = (uint8_t)(SV_ARRAY | element_tag)};
    v.array.data = (const uint8_t *)data;
    v.array.length = length;
    v.array.count = count;
    return v;
}

#endif
