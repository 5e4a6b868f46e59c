// Decompression of Linux kernel payloads through Debian's codec libraries.
//
// Shape shared by every decoder below: the whole input is handed to the library at once;
// output goes to the caller's buffer until it is full, and from then on to a one-byte
// "probe". A stream that ends while only the probe is offered fits exactly; one that puts a
// byte into the probe would exceed `out_cap`, and decoding stops there. So no decoder ever
// writes past `out_cap`, and exactly-full outputs are told apart from overflowing ones.

#include "cdecompress.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lz4.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

/// Writes a one-line reason into `err` (if any) and returns `code`.
static int fail(int code, char *err, size_t err_len, const char *format, ...) {
    if (err != NULL && err_len > 0) {
        va_list args;
        va_start(args, format);
        vsnprintf(err, err_len, format, args);
        va_end(args);
    }
    return code;
}

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

// MARK: gzip (zlib)

static int gunzip(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap, size_t *out_len,
                  char *err, size_t err_len) {
    z_stream s;
    memset(&s, 0, sizeof s);
    // 16 + MAX_WBITS: expect a gzip wrapper and allow any window size up to 32 KiB.
    int zr = inflateInit2(&s, 16 + MAX_WBITS);
    if (zr == Z_MEM_ERROR) return fail(CDEC_ERR_NO_MEMORY, err, err_len, "zlib: out of memory");
    if (zr != Z_OK) return fail(CDEC_ERR_CORRUPT, err, err_len, "zlib: cannot start inflate (%d)", zr);

    size_t fed = 0;  // input bytes handed to zlib so far
    uint8_t probe;
    int result;
    for (;;) {
        // zlib counts in uInt, so hand over at most UINT_MAX bytes at a time.
        if (s.avail_in == 0 && fed < in_len) {
            size_t n = min_size(in_len - fed, UINT_MAX);
            s.next_in = (Bytef *)(in + fed);  // zlib only reads through next_in
            s.avail_in = (uInt)n;
            fed += n;
        }
        int probing = *out_len == out_cap;
        if (probing) {
            s.next_out = &probe;
            s.avail_out = 1;
        } else {
            s.next_out = out + *out_len;  // in bounds: *out_len < out_cap
            s.avail_out = (uInt)min_size(out_cap - *out_len, UINT_MAX);
        }
        uInt offered = s.avail_out;
        zr = inflate(&s, Z_NO_FLUSH);
        size_t produced = offered - s.avail_out;
        if (probing && produced > 0) {
            result = CDEC_ERR_OUTPUT_FULL;
            break;
        }
        *out_len += produced;
        if (zr == Z_STREAM_END) {
            result = CDEC_OK;
            break;
        }
        if (zr == Z_OK) continue;  // Z_OK means progress was made
        if (zr == Z_BUF_ERROR) {
            // No progress although output space was offered: the input ran out.
            result = (s.avail_in == 0 && fed == in_len)
                ? fail(CDEC_ERR_TRUNCATED, err, err_len, "gzip data ends before the end of the stream")
                : fail(CDEC_ERR_CORRUPT, err, err_len, "gzip decoder made no progress");
            break;
        }
        if (zr == Z_MEM_ERROR) {
            result = fail(CDEC_ERR_NO_MEMORY, err, err_len, "zlib: out of memory");
            break;
        }
        result = fail(CDEC_ERR_CORRUPT, err, err_len, "%s", s.msg != NULL ? s.msg : "invalid gzip data");
        break;
    }
    inflateEnd(&s);
    return result;
}

// MARK: xz and lzma (liblzma)

static int unlzma(int alone, const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap,
                  size_t *out_len, char *err, size_t err_len) {
    const char *name = alone ? "lzma" : "xz";
    lzma_stream s = LZMA_STREAM_INIT;
    // No LZMA_CONCATENATED: decoding stops at the end of the first stream, so the size the
    // kernel build appends is left unread instead of being parsed as another stream.
    lzma_ret r = alone ? lzma_alone_decoder(&s, CDEC_DECODER_MEMORY_LIMIT)
                       : lzma_stream_decoder(&s, CDEC_DECODER_MEMORY_LIMIT, 0);
    if (r == LZMA_MEM_ERROR) return fail(CDEC_ERR_NO_MEMORY, err, err_len, "liblzma: out of memory");
    if (r != LZMA_OK) return fail(CDEC_ERR_CORRUPT, err, err_len, "liblzma: cannot start the %s decoder (%d)", name, (int)r);

    s.next_in = in;
    s.avail_in = in_len;
    uint8_t probe;
    int stalls = 0;
    int result;
    for (;;) {
        int probing = *out_len == out_cap;
        if (probing) {
            s.next_out = &probe;
            s.avail_out = 1;
        } else {
            s.next_out = out + *out_len;  // in bounds: *out_len < out_cap
            s.avail_out = out_cap - *out_len;
        }
        size_t offered = s.avail_out, unread = s.avail_in;
        // All input is present from the start, so LZMA_FINISH: a cut stream is reported
        // as LZMA_BUF_ERROR rather than waited on.
        r = lzma_code(&s, LZMA_FINISH);
        size_t produced = offered - s.avail_out;
        if (probing && produced > 0) {
            result = CDEC_ERR_OUTPUT_FULL;
            break;
        }
        *out_len += produced;
        if (r == LZMA_STREAM_END) {
            result = CDEC_OK;
            break;
        }
        if (r == LZMA_OK) {
            // liblzma reports a lack of progress as LZMA_BUF_ERROR only on the second
            // call in a row; count stalls so a stuck decoder cannot loop forever.
            stalls = (produced == 0 && s.avail_in == unread) ? stalls + 1 : 0;
            if (stalls < 3) continue;
            r = LZMA_BUF_ERROR;
        }
        switch (r) {
        case LZMA_BUF_ERROR:
            result = s.avail_in == 0
                ? fail(CDEC_ERR_TRUNCATED, err, err_len, "%s data ends before the end of the stream", name)
                : fail(CDEC_ERR_CORRUPT, err, err_len, "%s decoder made no progress", name);
            break;
        case LZMA_MEM_ERROR:
            result = fail(CDEC_ERR_NO_MEMORY, err, err_len, "liblzma: out of memory");
            break;
        case LZMA_MEMLIMIT_ERROR:
            result = fail(CDEC_ERR_CORRUPT, err, err_len, "%s stream needs %llu MiB of decoder memory, more than the %llu MiB allowed",
                          name, (unsigned long long)(lzma_memusage(&s) >> 20),
                          (unsigned long long)(CDEC_DECODER_MEMORY_LIMIT >> 20));
            break;
        case LZMA_FORMAT_ERROR:
            result = fail(CDEC_ERR_CORRUPT, err, err_len, "not a valid %s stream header", name);
            break;
        case LZMA_OPTIONS_ERROR:
            result = fail(CDEC_ERR_CORRUPT, err, err_len, "%s stream uses unsupported options", name);
            break;
        case LZMA_DATA_ERROR:
            result = fail(CDEC_ERR_CORRUPT, err, err_len, "%s data is corrupt", name);
            break;
        default:
            result = fail(CDEC_ERR_CORRUPT, err, err_len, "liblzma error %d", (int)r);
            break;
        }
        break;
    }
    lzma_end(&s);
    return result;
}

// MARK: LZ4 legacy frame (liblz4)

#define LZ4_LEGACY_MAGIC 0x184C2102u
#define LZ4_LEGACY_BLOCK ((size_t)8 << 20)  // each block decompresses to at most 8 MiB

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int unlz4_legacy(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap, size_t *out_len,
                        char *err, size_t err_len) {
    if (in_len < 4) return fail(CDEC_ERR_TRUNCATED, err, err_len, "lz4 data is shorter than its magic number");
    if (le32(in) != LZ4_LEGACY_MAGIC) return fail(CDEC_ERR_CORRUPT, err, err_len, "not an LZ4 legacy frame (wrong magic number)");
    const size_t max_block = (size_t)LZ4_COMPRESSBOUND((int)LZ4_LEGACY_BLOCK);
    uint8_t *scratch = NULL;
    size_t pos = 4, blocks = 0;  // blocks: for messages
    int result = CDEC_OK;
    while (pos < in_len) {
        size_t left = in_len - pos;
        if (left < 4) {
            result = fail(CDEC_ERR_TRUNCATED, err, err_len, "lz4 data ends inside a block header");
            break;
        }
        uint32_t block = le32(in + pos);
        if (block == LZ4_LEGACY_MAGIC) {  // another legacy frame follows: keep going
            pos += 4;
            continue;
        }
        if (left == 4) {
            // The last 4 bytes after whole blocks: the kernel build's size trailer, which
            // must match what was produced, or else a block whose data is missing.
            if (block == (uint32_t)*out_len) break;
            result = fail(CDEC_ERR_TRUNCATED, err, err_len, "lz4 data ends after a block header (%u bytes missing)", block);
            break;
        }
        pos += 4;
        left -= 4;
        if (block == 0 || block > max_block) {
            result = fail(CDEC_ERR_CORRUPT, err, err_len, "lz4 block size %u is invalid (at most %zu)", block, max_block);
            break;
        }
        if (block > left) {
            result = fail(CDEC_ERR_TRUNCATED, err, err_len, "lz4 block of %u bytes is cut off after %zu bytes", block, left);
            break;
        }
        size_t room = out_cap - *out_len;
        int n;
        if (room >= LZ4_LEGACY_BLOCK) {
            // SAFETY: LZ4_decompress_safe writes at most LZ4_LEGACY_BLOCK bytes, which fit in
            // the caller's buffer after *out_len; it reads exactly `block` bytes from in + pos.
            n = LZ4_decompress_safe((const char *)(in + pos), (char *)(out + *out_len), (int)block, (int)LZ4_LEGACY_BLOCK);
            if (n < 0) {
                result = fail(CDEC_ERR_CORRUPT, err, err_len, "lz4 block %zu is corrupt", blocks);
                break;
            }
        } else {
            // Less room than a full block: decode into scratch space first, so that a block
            // too large for the room is told apart from a corrupt one.
            if (scratch == NULL && (scratch = malloc(LZ4_LEGACY_BLOCK)) == NULL) {
                result = fail(CDEC_ERR_NO_MEMORY, err, err_len, "out of memory for an lz4 block");
                break;
            }
            n = LZ4_decompress_safe((const char *)(in + pos), (char *)scratch, (int)block, (int)LZ4_LEGACY_BLOCK);
            if (n < 0) {
                result = fail(CDEC_ERR_CORRUPT, err, err_len, "lz4 block %zu is corrupt", blocks);
                break;
            }
            if ((size_t)n > room) {
                result = CDEC_ERR_OUTPUT_FULL;
                break;
            }
            if (n > 0) memcpy(out + *out_len, scratch, (size_t)n);  // n <= room
        }
        *out_len += (size_t)n;
        pos += block;
        blocks += 1;
    }
    free(scratch);
    return result;
}

// MARK: zstd (libzstd)

/// Whether `p` (4 readable bytes) starts a zstd frame or a skippable frame.
static int zstd_frame_follows(const uint8_t *p) {
    uint32_t magic = le32(p);
    return magic == ZSTD_MAGICNUMBER || (magic & 0xFFFFFFF0u) == ZSTD_MAGIC_SKIPPABLE_START;
}

static int unzstd(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap, size_t *out_len,
                  char *err, size_t err_len) {
    ZSTD_DCtx *d = ZSTD_createDCtx();
    if (d == NULL) return fail(CDEC_ERR_NO_MEMORY, err, err_len, "libzstd: out of memory");
    // Windows up to 128 MiB (zstd's own default ceiling, stated here so it cannot drift).
    ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, 27);
    ZSTD_inBuffer source = {in, in_len, 0};
    uint8_t probe;
    int stalls = 0;
    int result;
    for (;;) {
        int probing = *out_len == out_cap;
        ZSTD_outBuffer sink = probing ? (ZSTD_outBuffer){&probe, 1, 0}
                                      : (ZSTD_outBuffer){out + *out_len, out_cap - *out_len, 0};
        size_t consumed_before = source.pos;
        size_t r = ZSTD_decompressStream(d, &sink, &source);
        if (ZSTD_isError(r)) {
            result = ZSTD_getErrorCode(r) == ZSTD_error_memory_allocation
                ? fail(CDEC_ERR_NO_MEMORY, err, err_len, "libzstd: out of memory")
                : fail(CDEC_ERR_CORRUPT, err, err_len, "zstd: %s", ZSTD_getErrorName(r));
            break;
        }
        if (probing && sink.pos > 0) {
            result = CDEC_ERR_OUTPUT_FULL;
            break;
        }
        *out_len += sink.pos;
        if (r == 0) {
            // A frame ended and everything is flushed. Continue only into another frame;
            // anything else (such as the kernel's size trailer) is not ours to read.
            if (in_len - source.pos >= 4 && zstd_frame_follows(in + source.pos)) continue;
            result = CDEC_OK;
            break;
        }
        stalls = (sink.pos == 0 && source.pos == consumed_before) ? stalls + 1 : 0;
        if (stalls == 0) continue;
        if (source.pos == in_len) {
            result = fail(CDEC_ERR_TRUNCATED, err, err_len, "zstd data ends before the end of the frame");
            break;
        }
        if (stalls >= 3) {
            result = fail(CDEC_ERR_CORRUPT, err, err_len, "zstd decoder made no progress");
            break;
        }
    }
    ZSTD_freeDCtx(d);
    return result;
}

// MARK: Entry points

int cdecompress(int codec, const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap,
                size_t *out_len, char *err, size_t err_len) {
    if (err != NULL && err_len > 0) err[0] = 0;
    if (out_len == NULL || (in == NULL && in_len > 0) || (out == NULL && out_cap > 0)) {
        return fail(CDEC_ERR_ARGUMENT, err, err_len, "cdecompress: NULL buffer");
    }
    *out_len = 0;
    static const uint8_t empty = 0;
    if (in == NULL) in = &empty;  // in_len is 0: never read, but libraries want a pointer
    switch (codec) {
    case CDEC_CODEC_GZIP: return gunzip(in, in_len, out, out_cap, out_len, err, err_len);
    case CDEC_CODEC_XZ: return unlzma(0, in, in_len, out, out_cap, out_len, err, err_len);
    case CDEC_CODEC_LZMA: return unlzma(1, in, in_len, out, out_cap, out_len, err, err_len);
    case CDEC_CODEC_LZ4_LEGACY: return unlz4_legacy(in, in_len, out, out_cap, out_len, err, err_len);
    case CDEC_CODEC_ZSTD: return unzstd(in, in_len, out, out_cap, out_len, err, err_len);
    default: return fail(CDEC_ERR_ARGUMENT, err, err_len, "cdecompress: unknown codec %d", codec);
    }
}

// MARK: Compression, for tests and fuzzing

size_t cdecompress_compress_bound(int codec, size_t in_len) {
    if (in_len > (SIZE_MAX >> 2)) return 0;
    switch (codec) {
    case CDEC_CODEC_GZIP:
        return (size_t)compressBound((uLong)in_len) + 32;  // zlib bound plus gzip header and trailer
    case CDEC_CODEC_XZ:
        return lzma_stream_buffer_bound(in_len);
    case CDEC_CODEC_LZMA:
        return lzma_stream_buffer_bound(in_len) + 64;  // raw LZMA plus the 13-byte header
    case CDEC_CODEC_LZ4_LEGACY: {
        size_t full = in_len / LZ4_LEGACY_BLOCK, rest = in_len % LZ4_LEGACY_BLOCK;
        size_t bound = 4 + full * (4 + (size_t)LZ4_COMPRESSBOUND((int)LZ4_LEGACY_BLOCK));
        if (rest > 0) bound += 4 + (size_t)LZ4_COMPRESSBOUND((int)rest);
        return bound;
    }
    case CDEC_CODEC_ZSTD:
        return ZSTD_compressBound(in_len);
    default:
        return 0;
    }
}

static int lzma_encode(lzma_stream *s, const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap,
                       size_t *out_len) {
    s->next_in = in;
    s->avail_in = in_len;
    s->next_out = out;
    s->avail_out = out_cap;
    lzma_ret r;
    do {
        r = lzma_code(s, LZMA_FINISH);
    } while (r == LZMA_OK && s->avail_out > 0);
    *out_len = out_cap - s->avail_out;
    lzma_end(s);
    if (r == LZMA_STREAM_END) return CDEC_OK;
    if (r == LZMA_OK || r == LZMA_BUF_ERROR) return CDEC_ERR_OUTPUT_FULL;
    return r == LZMA_MEM_ERROR ? CDEC_ERR_NO_MEMORY : CDEC_ERR_ARGUMENT;
}

int cdecompress_compress(int codec, const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap,
                         size_t *out_len) {
    if (out_len == NULL || (in == NULL && in_len > 0) || out == NULL) return CDEC_ERR_ARGUMENT;
    *out_len = 0;
    static const uint8_t empty = 0;
    if (in == NULL) in = &empty;  // in_len is 0: never read, but libraries want a pointer
    switch (codec) {
    case CDEC_CODEC_GZIP: {
        if (in_len > UINT_MAX) return CDEC_ERR_ARGUMENT;
        z_stream s;
        memset(&s, 0, sizeof s);
        if (deflateInit2(&s, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK) return CDEC_ERR_NO_MEMORY;
        s.next_in = (Bytef *)in;  // deflate only reads through next_in
        s.avail_in = (uInt)in_len;
        s.next_out = out;
        s.avail_out = (uInt)min_size(out_cap, UINT_MAX);
        int zr = deflate(&s, Z_FINISH);
        *out_len = (size_t)s.total_out;
        deflateEnd(&s);
        return zr == Z_STREAM_END ? CDEC_OK : CDEC_ERR_OUTPUT_FULL;
    }
    case CDEC_CODEC_XZ: {
        lzma_stream s = LZMA_STREAM_INIT;
        if (lzma_easy_encoder(&s, 1, LZMA_CHECK_CRC32) != LZMA_OK) return CDEC_ERR_NO_MEMORY;
        return lzma_encode(&s, in, in_len, out, out_cap, out_len);
    }
    case CDEC_CODEC_LZMA: {
        lzma_options_lzma options;
        if (lzma_lzma_preset(&options, 1)) return CDEC_ERR_ARGUMENT;
        lzma_stream s = LZMA_STREAM_INIT;
        if (lzma_alone_encoder(&s, &options) != LZMA_OK) return CDEC_ERR_NO_MEMORY;
        return lzma_encode(&s, in, in_len, out, out_cap, out_len);
    }
    case CDEC_CODEC_LZ4_LEGACY: {
        if (out_cap < 4) return CDEC_ERR_OUTPUT_FULL;
        uint32_t magic = LZ4_LEGACY_MAGIC;
        for (int i = 0; i < 4; i++) out[i] = (uint8_t)(magic >> (8 * i));
        size_t pos = 4;
        for (size_t at = 0; at < in_len; at += LZ4_LEGACY_BLOCK) {
            size_t chunk = min_size(in_len - at, LZ4_LEGACY_BLOCK);
            if (out_cap - pos < 4) return CDEC_ERR_OUTPUT_FULL;
            size_t room = min_size(out_cap - pos - 4, INT_MAX);
            // SAFETY: reads `chunk` bytes at in + at (at + chunk <= in_len) and writes at most
            // `room` bytes at out + pos + 4 (room <= out_cap - pos - 4).
            int n = LZ4_compress_default((const char *)(in + at), (char *)(out + pos + 4), (int)chunk, (int)room);
            if (n <= 0) return CDEC_ERR_OUTPUT_FULL;
            for (int i = 0; i < 4; i++) out[pos + i] = (uint8_t)((uint32_t)n >> (8 * i));
            pos += 4 + (size_t)n;
        }
        *out_len = pos;
        return CDEC_OK;
    }
    case CDEC_CODEC_ZSTD: {
        size_t r = ZSTD_compress(out, out_cap, in, in_len, 3);
        if (ZSTD_isError(r)) return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall ? CDEC_ERR_OUTPUT_FULL : CDEC_ERR_ARGUMENT;
        *out_len = r;
        return CDEC_OK;
    }
    default:
        return CDEC_ERR_ARGUMENT;
    }
}
