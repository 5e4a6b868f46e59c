// A sandbox guest in C whose exports misbehave, one way each, to test that the host survives.
#include <swiftvisor_sandbox.h>
#include "../runtime/runtime.h"

static int ok(sv_value *result) {
    *result = sv_int64(1);
    return SV_OK;
}

static int spin(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args, (void)count, (void)result;
    for (;;) __asm__ volatile("");
}

static int write_null(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args, (void)count;
    *(volatile uint64_t *)(uintptr_t)0x10 = 1;
    return ok(result);
}

/* Writes to the address in its Int64 argument (read-only pages, supervisor pages, ...). */
static int write_at(const sv_value *args, uint16_t count, sv_value *result) {
    if (count != 1 || args[0].tag != SV_INT64) return SV_ERROR_ARGUMENTS;
    *(volatile uint64_t *)(uintptr_t)args[0].i64 = 0x5A5A5A5A;
    return ok(result);
}

static int read_at(const sv_value *args, uint16_t count, sv_value *result) {
    if (count != 1 || args[0].tag != SV_INT64) return SV_ERROR_ARGUMENTS;
    *result = sv_int64((int64_t)*(volatile uint64_t *)(uintptr_t)args[0].i64);
    return SV_OK;
}

/* Writes over its own code. */
static int write_text(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args, (void)count;
    *(volatile uint8_t *)(uintptr_t)&spin = 0xC3;
    return ok(result);
}

static uint64_t recurse(uint64_t depth) {
    volatile uint8_t frame[256];
    frame[0] = (uint8_t)depth;
    if (depth == (uint64_t)-1) return 0; /* never: the stack ends first */
    return recurse(depth + 1) + frame[0];
}

static int stack_overflow(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args, (void)count;
    *result = sv_int64((int64_t)recurse(0));
    return SV_OK;
}

static int do_hlt(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args, (void)count;
    __asm__ volatile("hlt");
    return ok(result);
}

static int do_cli(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args, (void)count;
    __asm__ volatile("cli");
    return ok(result);
}

static int do_wrcr3(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args, (void)count;
    __asm__ volatile("mov %0, %%cr3" : : "r"((uint64_t)0));
    return ok(result);
}

static int do_int(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args, (void)count;
    __asm__ volatile("int $0x21");
    return ok(result);
}

static int do_int3(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args, (void)count;
    __asm__ volatile("int3");
    return ok(result);
}

static int do_port(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args, (void)count;
    __asm__ volatile("outb %%al, %%dx" : : "a"(0), "d"(0x80));
    return ok(result);
}

static int divide(const sv_value *args, uint16_t count, sv_value *result) {
    if (count != 2 || args[0].tag != SV_INT64 || args[1].tag != SV_INT64) return SV_ERROR_ARGUMENTS;
    *result = sv_int64(args[0].i64 / args[1].i64);
    return SV_OK;
}

static int unknown_host(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args, (void)count, (void)result;
    sv_value reply;
    int status = sv_host_call("no_such_function", 0, 0, &reply);
    if (status == SV_OK) return sv_fail("the host answered a call of an unknown function");
    uint32_t n;
    const char *message = sv_last_error(&n);
    (void)message;
    return status; /* passes the host's error code (1) on as the response */
}

/* A HOST_CALL whose output length is beyond the output buffer (and the area). */
static int long_host_call(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args, (void)count, (void)result;
    uint32_t capacity;
    sv_output_buffer(&capacity);
    sv_raw_signal(SANDBOX_OP_HOST_CALL, capacity + 4096);
    return sv_fail("the host resumed after a host call beyond the area");
}

/* Prints its Int64 argument's count of 1 KiB lines. */
static char line[1024];
static int flood(const sv_value *args, uint16_t count, sv_value *result) {
    if (count != 1 || args[0].tag != SV_INT64) return SV_ERROR_ARGUMENTS;
    memset(line, 'x', sizeof line - 1);
    line[sizeof line - 1] = '\n';
    for (int64_t i = 0; i < args[0].i64; i++) sv_print(line, sizeof line);
    return ok(result);
}

/* A response that claims a String of 0xFFFFFFF0 bytes in a 10-byte message. */
static int garbage_string(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args, (void)count, (void)result;
    uint8_t *out = sv_output_buffer(0);
    uint8_t response[] = {0, SV_STRING, 0xF0, 0xFF, 0xFF, 0xFF, 'a', 'b', 'c', 'd'};
    memcpy(out, response, sizeof response);
    sv_raw_signal(SANDBOX_OP_RETURN, sizeof response);
    for (;;) sandbox_trap();
}

/* A response that is a String of invalid UTF-8. */
static int bad_utf8(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args, (void)count;
    static const char bad[] = {'o', 'k', (char)0xC3, (char)0x28, (char)0xFF};
    *result = sv_string(bad, sizeof bad);
    return SV_OK;
}

/* Overwrites the whole call-area header (magic, offsets, lengths) with 0xFF, then answers
 * with an output length far beyond the buffer. */
static int scribble(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args, (void)count, (void)result;
    volatile uint8_t *area = sv_call_area();
    for (int i = 0; i < 64; i++) area[i] = 0xFF;
    sandbox_signal(SANDBOX_OP_RETURN);
    for (;;) sandbox_trap();
}

/* Aborts with a message. */
static int give_up(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args, (void)count, (void)result;
    sv_abort("nothing left to try");
}

/* An `in` from the sandbox port, and a byte-wide `out` to it: not signals. */
static int port_in(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args, (void)count;
    uint32_t value;
    __asm__ volatile("inl %%dx, %%eax" : "=a"(value) : "d"(0x5B0));
    *result = sv_int64(value);
    return SV_OK;
}

static int unknown_op(const sv_value *args, uint16_t count, sv_value *result) {
    (void)args, (void)count, (void)result;
    sandbox_signal(77);
    for (;;) sandbox_trap();
}

static int64_t state;
/* Returns the state before setting it to its argument: shows what a reset restores. */
static int swap_state(const sv_value *args, uint16_t count, sv_value *result) {
    if (count != 1 || args[0].tag != SV_INT64) return SV_ERROR_ARGUMENTS;
    *result = sv_int64(state);
    state = args[0].i64;
    return SV_OK;
}

void sandbox_init(void) {
    sv_export("spin", spin);
    sv_export("write_null", write_null);
    sv_export("write_at", write_at);
    sv_export("read_at", read_at);
    sv_export("write_text", write_text);
    sv_export("stack_overflow", stack_overflow);
    sv_export("hlt", do_hlt);
    sv_export("cli", do_cli);
    sv_export("write_cr3", do_wrcr3);
    sv_export("int", do_int);
    sv_export("int3", do_int3);
    sv_export("port", do_port);
    sv_export("divide", divide);
    sv_export("unknown_host", unknown_host);
    sv_export("long_host_call", long_host_call);
    sv_export("flood", flood);
    sv_export("garbage_string", garbage_string);
    sv_export("bad_utf8", bad_utf8);
    sv_export("scribble", scribble);
    sv_export("give_up", give_up);
    sv_export("port_in", port_in);
    sv_export("unknown_op", unknown_op);
    sv_export("swap_state", swap_state);
}
