// CDecompress: a small C face over Debian's zlib, liblzma, liblz4 and libzstd for the
// compressed payloads inside Linux bzImages.
//
// Every function works on caller-owned buffers, keeps no global state and is safe to call
// from several threads at once. Decompression never writes past `out_cap` and never
// trusts a size stored in the input for allocation.
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// The codecs SwiftVisor decompresses on the host.
enum {
    CDEC_CODEC_GZIP = 1,        ///< gzip member (RFC 1952), one member
    CDEC_CODEC_XZ = 2,          ///< .xz stream, one stream
    CDEC_CODEC_LZMA = 3,        ///< legacy .lzma ("lzma-alone") stream
    CDEC_CODEC_LZ4_LEGACY = 4,  ///< LZ4 legacy frame (magic 0x184C2102), as `lz4 -l` writes
    CDEC_CODEC_ZSTD = 5,        ///< one or more zstd frames
};

/// Results of `cdecompress`.
enum {
    CDEC_OK = 0,
    CDEC_ERR_CORRUPT = 1,      ///< the data is not valid for the codec; `err` says why
    CDEC_ERR_TRUNCATED = 2,    ///< the input ends before the compressed stream does
    CDEC_ERR_OUTPUT_FULL = 3,  ///< the stream decompresses to more than `out_cap` bytes
    CDEC_ERR_NO_MEMORY = 4,    ///< the library could not allocate its working memory
    CDEC_ERR_ARGUMENT = 5,     ///< unknown codec or NULL pointer
};

/// The decoders' working-memory ceiling (dictionary and window), so a hostile header
/// cannot make a decoder allocate gigabytes.
#define CDEC_DECODER_MEMORY_LIMIT ((uint64_t)256 << 20)

/// Decompresses `in[0..<in_len]` with `codec` into `out[0..<out_cap]`.
///
/// On CDEC_OK, `*out_len` is the number of bytes produced. Bytes after the end of the
/// compressed stream (such as the 4-byte size the kernel build appends) are ignored. On
/// any error, `err` (if not NULL) receives a NUL-terminated one-line reason, truncated to
/// `err_len` bytes, and `*out_len` holds how much was produced before the error. `out` may
/// be NULL only when `out_cap` is 0.
int cdecompress(int codec, const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap,
                size_t *out_len, char *err, size_t err_len);

/// For tests and fuzzing only: compresses `in` with `codec` into `out[0..<out_cap]` in the
/// format `cdecompress` reads (gzip member, .xz stream, .lzma stream, LZ4 legacy frame with
/// 8 MiB blocks, zstd frame). Returns CDEC_OK and sets `*out_len`, or CDEC_ERR_OUTPUT_FULL
/// when `out_cap` is too small, or another CDEC_ERR_* code.
int cdecompress_compress(int codec, const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap,
                         size_t *out_len);

/// For tests and fuzzing only: an output capacity that always suffices for
/// `cdecompress_compress(codec, ..., in_len, ...)`, or 0 for an unknown codec or an input
/// too large to bound.
size_t cdecompress_compress_bound(int codec, size_t in_len);

#ifdef __cplusplus
}
#endif
