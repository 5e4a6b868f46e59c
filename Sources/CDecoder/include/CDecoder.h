// CDecoder: a small C face over Zydis 4 (Debian's libzydis-dev), so that Swift sees plain
// structs instead of Zydis's large unions. Every symbol is prefixed `cdec_`.
#ifndef CDECODER_H
#define CDECODER_H
#include <stddef.h>
#include <stdint.h>

enum {
    CDEC_OPERAND_NONE = 0,
    CDEC_OPERAND_REGISTER = 1,
    CDEC_OPERAND_MEMORY = 2,
    CDEC_OPERAND_IMMEDIATE = 3,
    CDEC_OPERAND_OTHER = 4,
};

/// A general-purpose register, by its number in the ModRM encoding: 0 = RAX ... 15 = R15,
/// or -1 when the register is not a general-purpose one (or absent).
typedef struct {
    uint8_t kind;         // CDEC_OPERAND_*
    uint16_t size_bits;   // operand size
    uint8_t is_read;      // the instruction reads the operand
    uint8_t is_written;   // the instruction writes the operand
    int8_t reg;           // register operand: GPR number, or -1
    uint8_t reg_high8;    // AH, CH, DH or BH
    int8_t base;          // memory operand: base GPR, -1 for none, 16 for RIP
    int8_t index;         // memory operand: index GPR, -1 for none
    uint8_t scale;
    int8_t segment;       // 0 ES, 1 CS, 2 SS, 3 DS, 4 FS, 5 GS, -1 none
    int64_t displacement;
    uint64_t immediate;
} cdec_operand;

typedef struct {
    uint8_t length;
    uint16_t mnemonic_id;  // ZydisMnemonic
    char mnemonic[24];     // lowercase, e.g. "popcnt"
    char text[128];        // Intel syntax, e.g. "popcnt rax, qword ptr [rbx+0x10]"
    uint8_t operand_width; // effective operand size in bits
    uint8_t address_width; // effective address size in bits
    uint8_t has_lock;
    uint8_t has_rep;
    uint8_t operand_count; // visible operands in `operands`
    cdec_operand operands[4];
} cdec_instruction;

enum {
    CDEC_OK = 0,
    CDEC_INVALID = -1,     // the bytes are no valid instruction
    CDEC_TRUNCATED = -2,   // the bytes end before the instruction does
    CDEC_BAD_MODE = -3,
};

/// Decodes the instruction at `bytes` (at most `length` bytes are read) for a CPU in
/// `mode_bits` (16, 32 or 64) mode, formatting it as if it sat at `address`.
int cdec_decode(const uint8_t *bytes, size_t length, int mode_bits, uint64_t address, cdec_instruction *out);

#endif
