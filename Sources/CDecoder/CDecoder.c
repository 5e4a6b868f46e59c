#include "CDecoder.h"
#include <string.h>
#include <Zydis/Zydis.h>

/// The ModRM number of a 64-bit general-purpose register, or -1.
static int8_t gpr_number(ZydisMachineMode mode, ZydisRegister reg, uint8_t *high8) {
    *high8 = 0;
    switch (reg) {
    case ZYDIS_REGISTER_AH: *high8 = 1; return 0;
    case ZYDIS_REGISTER_CH: *high8 = 1; return 1;
    case ZYDIS_REGISTER_DH: *high8 = 1; return 2;
    case ZYDIS_REGISTER_BH: *high8 = 1; return 3;
    default: break;
    }
    ZydisRegister full = ZydisRegisterGetLargestEnclosing(mode, reg);
    if (full >= ZYDIS_REGISTER_EAX && full <= ZYDIS_REGISTER_R15D) full = full - ZYDIS_REGISTER_EAX + ZYDIS_REGISTER_RAX;
    if (full >= ZYDIS_REGISTER_RAX && full <= ZYDIS_REGISTER_R15) return (int8_t)(full - ZYDIS_REGISTER_RAX);
    if (full >= ZYDIS_REGISTER_AX && full <= ZYDIS_REGISTER_R15W) return (int8_t)(full - ZYDIS_REGISTER_AX);
    return -1;
}

static int8_t segment_number(ZydisRegister reg) {
    switch (reg) {
    case ZYDIS_REGISTER_ES: return 0;
    case ZYDIS_REGISTER_CS: return 1;
    case ZYDIS_REGISTER_SS: return 2;
    case ZYDIS_REGISTER_DS: return 3;
    case ZYDIS_REGISTER_FS: return 4;
    case ZYDIS_REGISTER_GS: return 5;
    default: return -1;
    }
}

int cdec_decode(const uint8_t *bytes, size_t length, int mode_bits, uint64_t address, cdec_instruction *out) {
    ZydisMachineMode mode;
    ZydisStackWidth stack;
    switch (mode_bits) {
    case 64: mode = ZYDIS_MACHINE_MODE_LONG_64; stack = ZYDIS_STACK_WIDTH_64; break;
    case 32: mode = ZYDIS_MACHINE_MODE_LEGACY_32; stack = ZYDIS_STACK_WIDTH_32; break;
    case 16: mode = ZYDIS_MACHINE_MODE_REAL_16; stack = ZYDIS_STACK_WIDTH_16; break;
    default: return CDEC_BAD_MODE;
    }
    memset(out, 0, sizeof *out);
    ZydisDecoder decoder;
    if (ZYAN_FAILED(ZydisDecoderInit(&decoder, mode, stack))) return CDEC_BAD_MODE;
    ZydisDecodedInstruction instruction;
    ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
    ZyanStatus status = ZydisDecoderDecodeFull(&decoder, bytes, length, &instruction, operands);
    if (status == ZYDIS_STATUS_NO_MORE_DATA) return CDEC_TRUNCATED;
    if (ZYAN_FAILED(status)) return CDEC_INVALID;

    out->length = instruction.length;
    out->mnemonic_id = (uint16_t)instruction.mnemonic;
    const char *name = ZydisMnemonicGetString(instruction.mnemonic);
    if (name) strncpy(out->mnemonic, name, sizeof out->mnemonic - 1);
    out->operand_width = instruction.operand_width;
    out->address_width = instruction.address_width;
    out->has_lock = (instruction.attributes & ZYDIS_ATTRIB_HAS_LOCK) != 0;
    out->has_rep = (instruction.attributes & (ZYDIS_ATTRIB_HAS_REP | ZYDIS_ATTRIB_HAS_REPE | ZYDIS_ATTRIB_HAS_REPNE)) != 0;

    ZydisFormatter formatter;
    if (ZYAN_SUCCESS(ZydisFormatterInit(&formatter, ZYDIS_FORMATTER_STYLE_INTEL))) {
        ZydisFormatterFormatInstruction(&formatter, &instruction, operands, instruction.operand_count_visible,
                                        out->text, sizeof out->text, address, ZYAN_NULL);
    }

    uint8_t count = instruction.operand_count_visible;
    if (count > 4) count = 4;
    out->operand_count = count;
    for (uint8_t i = 0; i < count; i++) {
        const ZydisDecodedOperand *op = &operands[i];
        cdec_operand *o = &out->operands[i];
        o->size_bits = op->size;
        o->is_read = (op->actions & ZYDIS_OPERAND_ACTION_MASK_READ) != 0;
        o->is_written = (op->actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) != 0;
        o->reg = -1;
        o->base = -1;
        o->index = -1;
        o->segment = -1;
        switch (op->type) {
        case ZYDIS_OPERAND_TYPE_REGISTER:
            o->kind = CDEC_OPERAND_REGISTER;
            o->reg = gpr_number(mode, op->reg.value, &o->reg_high8);
            break;
        case ZYDIS_OPERAND_TYPE_MEMORY: {
            uint8_t high;
            o->kind = CDEC_OPERAND_MEMORY;
            if (op->mem.base == ZYDIS_REGISTER_RIP || op->mem.base == ZYDIS_REGISTER_EIP) o->base = 16;
            else if (op->mem.base != ZYDIS_REGISTER_NONE) o->base = gpr_number(mode, op->mem.base, &high);
            if (op->mem.index != ZYDIS_REGISTER_NONE) o->index = gpr_number(mode, op->mem.index, &high);
            o->scale = op->mem.scale;
            o->segment = segment_number(op->mem.segment);
            o->displacement = op->mem.disp.has_displacement ? op->mem.disp.value : 0;
            break;
        }
        case ZYDIS_OPERAND_TYPE_IMMEDIATE:
            o->kind = CDEC_OPERAND_IMMEDIATE;
            o->immediate = op->imm.value.u;
            break;
        default:
            o->kind = CDEC_OPERAND_OTHER;
            break;
        }
    }
    return CDEC_OK;
}
