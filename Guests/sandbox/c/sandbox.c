/* sandbox.c: the C guest SDK: the message format of ABI.md and sandbox_main for C guests. */
/*
 * Everything the host wrote is checked before use: the call area's header once at entry
 * (magic, version, both buffers inside the area, with overflow checks), the input length
 * against the input capacity on every read, and every field of a message against the
 * message's end. A malformed call is answered with SV_ERROR_BAD_MESSAGE, never trusted.
 */
#include "../include/swiftvisor_sandbox.h"
#include "../runtime/runtime.h"

#define AREA_MAGIC 0x42535653u
#define AREA_VERSION 1u
#define AREA_HEADER_SIZE 64u
#define MAX_EXPORTS 64
#define MAX_ARGUMENTS 32
#define MAX_MESSAGE 255

static volatile uint8_t *area_header;
static uint8_t *input_buffer, *output_buffer;
static uint32_t input_capacity, output_capacity;
static uint8_t *call_copy; /* the current call, copied out of the input buffer */

static struct {
    const char *name;
    uint32_t length;
    sv_function function;
} exports[MAX_EXPORTS];
static uint32_t export_count;

static char error_message[MAX_MESSAGE + 1];
static uint32_t error_length;

static uint32_t load32(const volatile uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static void store32(volatile uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* ---- Reading ---- */

typedef struct {
    const uint8_t *bytes;
    uint32_t length, position;
} reader;

static bool take(reader *r, uint32_t n, const uint8_t **out) {
    if (n > r->length - r->position) return false;
    *out = r->bytes + r->position;
    r->position += n;
    return true;
}
static bool read_u8(reader *r, uint8_t *v) {
    const uint8_t *p;
    if (!take(r, 1, &p)) return false;
    *v = p[0];
    return true;
}
static bool read_u16(reader *r, uint16_t *v) {
    const uint8_t *p;
    if (!take(r, 2, &p)) return false;
    *v = (uint16_t)(p[0] | p[1] << 8);
    return true;
}
static bool read_u32(reader *r, uint32_t *v) {
    const uint8_t *p;
    if (!take(r, 4, &p)) return false;
    *v = load32(p);
    return true;
}
static bool read_u64(reader *r, uint64_t *v) {
    uint32_t lo, hi;
    if (!read_u32(r, &lo) || !read_u32(r, &hi)) return false;
    *v = (uint64_t)hi << 32 | lo;
    return true;
}

static bool valid_utf8(const uint8_t *s, uint32_t n) {
    uint32_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        uint32_t extra;
        uint32_t code;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) { extra = 1; code = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { extra = 2; code = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { extra = 3; code = c & 0x07; }
        else return false;
        if (extra > n - i - 1) return false;
        for (uint32_t k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return false;
            code = code << 6 | (s[i + k] & 0x3F);
        }
        if ((extra == 2 && code < 0x800) || (extra == 3 && (code < 0x10000 || code > 0x10FFFF))) return false;
        if (code >= 0xD800 && code <= 0xDFFF) return false;
        i += extra + 1;
    }
    return true;
}

/* One payload of `tag` (no array tags); fills *v. */
static bool read_payload(reader *r, uint8_t tag, sv_value *v) {
    const uint8_t *p;
    uint32_t n;
    uint64_t wide;
    v->tag = tag;
    switch (tag) {
    case SV_VOID: return true;
    case SV_BOOL:
        if (!take(r, 1, &p) || p[0] > 1) return false;
        v->b = p[0] == 1;
        return true;
    case SV_INT32: case SV_UINT32: case SV_FLOAT:
        if (!read_u32(r, &n)) return false;
        v->u64 = 0;
        v->u32 = n;
        return true;
    case SV_INT64: case SV_UINT64: case SV_DOUBLE:
        if (!read_u64(r, &wide)) return false;
        v->u64 = wide;
        return true;
    case SV_STRING: case SV_BYTES:
        if (!read_u32(r, &n) || !take(r, n, &p)) return false;
        if (tag == SV_STRING && !valid_utf8(p, n)) return false;
        v->bytes.data = p;
        v->bytes.length = n;
        return true;
    default: return false;
    }
}

static bool read_value(reader *r, sv_value *v) {
    uint8_t tag;
    if (!read_u8(r, &tag)) return false;
    if ((tag & SV_ARRAY) == 0) return read_payload(r, tag, v);
    uint8_t element = tag & (uint8_t)~SV_ARRAY;
    if (element < SV_BOOL || element > SV_BYTES) return false;
    uint32_t count;
    if (!read_u32(r, &count)) return false;
    uint32_t start = r->position;
    for (uint32_t i = 0; i < count; i++) {
        sv_value item;
        if (!read_payload(r, element, &item)) return false;
    }
    v->tag = tag;
    v->array.data = r->bytes + start;
    v->array.length = r->position - start;
    v->array.count = count;
    return true;
}

static bool read_name(reader *r, const uint8_t **name, uint16_t *length) {
    if (!read_u16(r, length) || *length == 0 || *length > 255) return false;
    return take(r, *length, name) && valid_utf8(*name, *length);
}

/* ---- Writing ---- */

typedef struct {
    uint8_t *bytes;
    uint32_t capacity, position;
    bool overflow;
} writer;

static void put(writer *w, const void *data, uint32_t n) {
    if (w->overflow || n > w->capacity - w->position) {
        w->overflow = true;
        return;
    }
    memcpy(w->bytes + w->position, data, n);
    w->position += n;
}
static void put_u8(writer *w, uint8_t v) { put(w, &v, 1); }
static void put_u16(writer *w, uint16_t v) {
    uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    put(w, b, 2);
}
static void put_u32(writer *w, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(w, b, 4);
}
static void put_u64(writer *w, uint64_t v) {
    put_u32(w, (uint32_t)v);
    put_u32(w, (uint32_t)(v >> 32));
}

static bool put_value(writer *w, const sv_value *v) {
    put_u8(w, v->tag);
    if (v->tag & SV_ARRAY) {
        uint8_t element = v->tag & (uint8_t)~SV_ARRAY;
        if (element < SV_BOOL || element > SV_BYTES) return false;
        put_u32(w, v->array.count);
        put(w, v->array.data, v->array.length);
        return true;
    }
    switch (v->tag) {
    case SV_VOID: return true;
    case SV_BOOL: put_u8(w, v->b ? 1 : 0); return true;
    case SV_INT32: case SV_UINT32: case SV_FLOAT: put_u32(w, v->u32); return true;
    case SV_INT64: case SV_UINT64: case SV_DOUBLE: put_u64(w, v->u64); return true;
    case SV_STRING: case SV_BYTES:
        put_u32(w, v->bytes.length);
        put(w, v->bytes.data, v->bytes.length);
        return true;
    default: return false;
    }
}

static void put_name(writer *w, const char *name, uint32_t length) {
    put_u16(w, (uint16_t)length);
    put(w, name, length);
}

/* ---- Exports, errors, output ---- */

bool sv_export(const char *name, sv_function function) {
    uint32_t length = (uint32_t)strlen(name);
    if (export_count == MAX_EXPORTS || length == 0 || length > 255 || !function) return false;
    exports[export_count].name = name;
    exports[export_count].length = length;
    exports[export_count].function = function;
    export_count++;
    return true;
}

/* The longest prefix of the `length` bytes at `text`, at most `limit`, that does not end
   inside a UTF-8 character: a cut never leaves the receiver a broken character. Returns
   `limit` itself when even one character does not fit in it (text that is no UTF-8 at all). */
static uint32_t utf8_cut(const char *text, uint32_t length, uint32_t limit) {
    if (length <= limit) return length;
    uint32_t n = limit;
    while (n > 0 && ((uint8_t)text[n] & 0xC0) == 0x80 && limit - n < 3) n--;
    return n > 0 && ((uint8_t)text[n] & 0xC0) != 0x80 ? n : limit;
}

static void set_error(const char *message, uint32_t length) {
    length = utf8_cut(message, length, MAX_MESSAGE);
    memcpy(error_message, message, length);
    error_message[length] = 0;
    error_length = length;
}

int sv_fail(const char *message) {
    set_error(message, (uint32_t)strlen(message));
    return SV_ERROR_FAILED;
}

const char *sv_last_error(uint32_t *length) {
    if (length) *length = error_length;
    return error_message;
}

static void signal_output(uint32_t operation, uint32_t length) {
    store32(area_header + 28, length);
    sandbox_signal(operation);
}

void sv_print(const char *text, size_t length) {
    while (length > 0) {
        uint32_t chunk = length > output_capacity ? utf8_cut(text, output_capacity + 1, output_capacity) : (uint32_t)length;
        memcpy(output_buffer, text, chunk);
        signal_output(SANDBOX_OP_PRINT, chunk);
        text += chunk;
        length -= chunk;
    }
}

void sv_puts(const char *text) { sv_print(text, strlen(text)); }

void sv_abort(const char *message) {
    uint32_t length = utf8_cut(message, (uint32_t)strlen(message), output_capacity);
    memcpy(output_buffer, message, length);
    signal_output(SANDBOX_OP_ABORT, length);
    sandbox_trap();
}

volatile uint8_t *sv_call_area(void) { return area_header; }

uint8_t *sv_output_buffer(uint32_t *capacity) {
    if (capacity) *capacity = output_capacity;
    return output_buffer;
}

void sv_raw_signal(uint32_t operation, uint32_t output_length) { signal_output(operation, output_length); }

/* The input length the host wrote, checked against the input capacity. */
static bool input_length(uint32_t *length) {
    *length = load32(area_header + 24);
    return *length <= input_capacity;
}

/* ---- Host calls ---- */

int sv_host_call(const char *name, const sv_value *args, uint16_t count, sv_value *result) {
    uint32_t length = (uint32_t)strlen(name);
    error_length = 0;
    error_message[0] = 0;
    if (length == 0 || length > 255) return SV_ERROR_ARGUMENTS;
    writer w = {output_buffer, output_capacity, 0, false};
    put_u8(&w, 2);
    put_name(&w, name, length);
    put_u16(&w, count);
    for (uint16_t i = 0; i < count; i++) {
        if (!put_value(&w, &args[i])) return SV_ERROR_ARGUMENTS;
    }
    if (w.overflow) {
        set_error("host call too long for the output buffer", 40);
        return SV_ERROR_BAD_MESSAGE;
    }
    signal_output(SANDBOX_OP_HOST_CALL, w.position);

    uint32_t reply_length;
    if (!input_length(&reply_length)) return SV_ERROR_BAD_MESSAGE;
    reader r = {input_buffer, reply_length, 0};
    uint8_t status;
    if (!read_u8(&r, &status)) return SV_ERROR_BAD_MESSAGE;
    if (status == 0) {
        if (!read_value(&r, result) || r.position != r.length) return SV_ERROR_BAD_MESSAGE;
        return SV_OK;
    }
    uint16_t code, message_length;
    const uint8_t *message;
    if (status != 1 || !read_u16(&r, &code) || !read_u16(&r, &message_length) || !take(&r, message_length, &message) ||
        r.position != r.length || code == 0)
        return SV_ERROR_BAD_MESSAGE;
    set_error((const char *)message, message_length);
    return code;
}

/* ---- Serving calls ---- */

static void respond_error(uint16_t code, const char *message, uint32_t length) {
    writer w = {output_buffer, output_capacity, 0, false};
    length = utf8_cut(message, length, 1024);
    put_u8(&w, 1);
    put_u16(&w, code);
    put_name(&w, message, length);
    signal_output(SANDBOX_OP_RETURN, w.overflow ? 0 : w.position);
}

static void serve(uint32_t length) {
    memcpy(call_copy, input_buffer, length);
    reader r = {call_copy, length, 0};
    uint8_t kind;
    const uint8_t *name;
    uint16_t name_length, count;
    if (!read_u8(&r, &kind) || kind != 1 || !read_name(&r, &name, &name_length) || !read_u16(&r, &count)) {
        respond_error(SV_ERROR_BAD_MESSAGE, "malformed call", 14);
        return;
    }
    static sv_value args[MAX_ARGUMENTS];
    if (count > MAX_ARGUMENTS) {
        respond_error(SV_ERROR_ARGUMENTS, "too many arguments", 18);
        return;
    }
    for (uint16_t i = 0; i < count; i++) {
        if (!read_value(&r, &args[i])) {
            respond_error(SV_ERROR_BAD_MESSAGE, "malformed argument", 18);
            return;
        }
    }
    if (r.position != r.length) {
        respond_error(SV_ERROR_BAD_MESSAGE, "bytes after the arguments", 25);
        return;
    }
    for (uint32_t i = 0; i < export_count; i++) {
        if (exports[i].length != name_length || memcmp(exports[i].name, name, name_length) != 0) continue;
        sv_value result = sv_void();
        error_length = 0;
        int status = exports[i].function(args, count, &result);
        /* Only codes 1-4 are in the convention: any other failure is code 4. */
        if (status != SV_OK && (status < SV_ERROR_UNKNOWN_FUNCTION || status > SV_ERROR_FAILED)) status = SV_ERROR_FAILED;
        if (status != SV_OK) {
            if (error_length == 0) {
                const char *what = status == SV_ERROR_ARGUMENTS ? "wrong arguments" : "the function failed";
                set_error(what, (uint32_t)strlen(what));
            }
            respond_error((uint16_t)status, error_message, error_length);
            return;
        }
        writer w = {output_buffer, output_capacity, 0, false};
        put_u8(&w, 0);
        if (!put_value(&w, &result)) {
            respond_error(SV_ERROR_BAD_MESSAGE, "the result has a bad type tag", 29);
            return;
        }
        if (w.overflow) {
            respond_error(SV_ERROR_BAD_MESSAGE, "the result is too long for the output buffer", 44);
            return;
        }
        signal_output(SANDBOX_OP_RETURN, w.position);
        return;
    }
    respond_error(SV_ERROR_UNKNOWN_FUNCTION, (const char *)name, name_length);
}

void sandbox_main(void *area, uint64_t area_size, void *heap, uint64_t heap_size) {
    (void)heap;
    (void)heap_size;
    area_header = area;
    if (area_size < AREA_HEADER_SIZE || area_size > 0xFFFFFFFFu) sandbox_trap();
    if (load32(area_header) != AREA_MAGIC || (area_header[4] | area_header[5] << 8) != AREA_VERSION ||
        (area_header[6] | area_header[7] << 8) != AREA_HEADER_SIZE)
        sandbox_trap();
    uint64_t in_offset = load32(area_header + 8), in_cap = load32(area_header + 12);
    uint64_t out_offset = load32(area_header + 16), out_cap = load32(area_header + 20);
    if (in_offset < AREA_HEADER_SIZE || in_offset + in_cap > area_size || out_offset < AREA_HEADER_SIZE ||
        out_offset + out_cap > area_size || out_cap == 0)
        sandbox_trap();
    input_buffer = (uint8_t *)area + in_offset;
    output_buffer = (uint8_t *)area + out_offset;
    input_capacity = (uint32_t)in_cap;
    output_capacity = (uint32_t)out_cap;
    call_copy = malloc(input_capacity ? input_capacity : 1);
    if (!call_copy) sv_abort("no heap for the call buffer");

    sandbox_init();
    sandbox_signal(SANDBOX_OP_READY);
    for (;;) {
        uint32_t length;
        if (!input_length(&length))
            respond_error(SV_ERROR_BAD_MESSAGE, "input length beyond the input buffer", 36);
        else
            serve(length);
    }
}
