internal import CDecoder

/// The processor mode an instruction is decoded for.
public enum CodeMode: Int, Sendable {
    case real16 = 16, protected32 = 32, long64 = 64
}

/// Why bytes did not decode.
public enum DecodeError: Error, Equatable, CustomStringConvertible {
    /// The bytes are no valid instruction in this mode.
    case invalid
    /// The bytes end before the instruction does.
    case truncated(available: Int)

    public var description: String {
        switch self {
        case .invalid: "not a valid instruction"
        case .truncated(let available): "instruction runs past the \(available) bytes available"
        }
    }
}

/// A memory operand's address expression: segment:[base + index * scale + displacement].
public struct MemoryOperand: Sendable, Equatable {
    /// Base register number (0 = RAX ... 15 = R15), `MemoryOperand.rip` for RIP-relative, or nil.
    public var base: Int?
    public var index: Int?
    public var scale: Int
    public var displacement: Int64
    /// 0 ES, 1 CS, 2 SS, 3 DS, 4 FS, 5 GS.
    public var segment: Int?
    public static let rip = 16

    public init(base: Int?, index: Int?, scale: Int, displacement: Int64, segment: Int?) {
        self.base = base
        self.index = index
        self.scale = scale
        self.displacement = displacement
        self.segment = segment
    }
}

/// One operand, as the emulator needs it.
public enum Operand: Sendable, Equatable {
    /// A general-purpose register by number (0 = RAX ... 15 = R15); `high8` for AH, CH, DH, BH.
    case register(Int, high8: Bool)
    /// Some other register (segment, control, vector...).
    case otherRegister
    case memory(MemoryOperand)
    case immediate(UInt64)
    case other
}

/// A decoded x86 instruction.
public struct DecodedInstruction: Sendable, Equatable {
    /// Length in bytes (1-15).
    public var length: Int
    /// Lowercase mnemonic, e.g. "popcnt", "cmpxchg16b", "int3".
    public var mnemonic: String
    /// Intel-syntax text, e.g. "popcnt rax, qword ptr [rbx+0x10]".
    public var text: String
    /// Effective operand size in bits.
    public var operandWidth: Int
    /// Effective address size in bits.
    public var addressWidth: Int
    public var hasLock: Bool
    public var hasRep: Bool
    /// The visible operands with their sizes in bits.
    public var operands: [(operand: Operand, bits: Int)]

    public static func == (a: DecodedInstruction, b: DecodedInstruction) -> Bool {
        a.length == b.length && a.mnemonic == b.mnemonic && a.text == b.text && a.operandWidth == b.operandWidth
            && a.addressWidth == b.addressWidth && a.hasLock == b.hasLock && a.hasRep == b.hasRep
            && a.operands.map(\.operand) == b.operands.map(\.operand) && a.operands.map(\.bits) == b.operands.map(\.bits)
    }
}

/// x86 instruction decoding and disassembly, by Zydis.
package enum X86Decoder {
    /// The architectural maximum instruction length.
    package static let maximumLength = 15

    /// Decodes the instruction at the start of `bytes` (only the first 15 are looked at),
    /// formatting it as if it sat at `address`.
    package static func decode(_ bytes: [UInt8], mode: CodeMode, address: UInt64 = 0) throws(DecodeError) -> DecodedInstruction {
        var raw = cdec_instruction()
        let available = min(bytes.count, maximumLength)
        // SAFETY: Zydis reads at most `available` (<= bytes.count) bytes from the buffer, valid
        // for the call, and writes one cdec_instruction into `raw`.
        let status = unsafe bytes.withUnsafeBufferPointer { buffer in
            unsafe cdec_decode(buffer.baseAddress, available, Int32(mode.rawValue), address, &raw)
        }
        switch status {
        case Int32(CDEC_OK): break
        case Int32(CDEC_TRUNCATED): throw .truncated(available: available)
        default: throw .invalid
        }
        var operands: [(Operand, Int)] = []
        // SAFETY: the view covers the fixed array of 4 operands; operand_count is at most 4
        // (clamped by the C side), so every index read is inside it.
        unsafe withUnsafeBytes(of: &raw.operands) { buffer in
            let list = unsafe buffer.bindMemory(to: cdec_operand.self)
            for i in 0..<Int(raw.operand_count) {
                let o = unsafe list[i]
                let operand: Operand
                switch Int32(o.kind) {
                case Int32(CDEC_OPERAND_REGISTER):
                    operand = o.reg >= 0 ? .register(Int(o.reg), high8: o.reg_high8 != 0) : .otherRegister
                case Int32(CDEC_OPERAND_MEMORY):
                    operand = .memory(
                        MemoryOperand(
                            base: o.base >= 0 ? Int(o.base) : nil, index: o.index >= 0 ? Int(o.index) : nil,
                            scale: Int(o.scale), displacement: o.displacement,
                            segment: o.segment >= 0 ? Int(o.segment) : nil))
                case Int32(CDEC_OPERAND_IMMEDIATE):
                    operand = .immediate(o.immediate)
                default:
                    operand = .other
                }
                operands.append((operand, Int(o.size_bits)))
            }
        }
        return DecodedInstruction(
            length: Int(raw.length), mnemonic: string(&raw.mnemonic), text: string(&raw.text),
            operandWidth: Int(raw.operand_width), addressWidth: Int(raw.address_width),
            hasLock: raw.has_lock != 0, hasRep: raw.has_rep != 0, operands: operands)
    }

    /// Disassembles up to `count` instructions from `bytes`, one line each:
    /// address, bytes, Intel syntax. Stops at the first byte sequence that does not decode.
    package static func disassemble(_ bytes: [UInt8], mode: CodeMode, address: UInt64, count: Int) -> [String] {
        var lines: [String] = []
        var offset = 0
        while lines.count < count, offset < bytes.count {
            let here = address &+ UInt64(offset)
            do throws(DecodeError) {
                let instruction = try decode(Array(bytes[offset...]), mode: mode, address: here)
                let raw = bytes[offset..<offset + instruction.length].map { hex2($0) }.joined(separator: " ")
                lines.append("\(hex16(here))  \(raw.padding(29))  \(instruction.text)")
                offset += instruction.length
            } catch {
                lines.append(
                    "\(hex16(here))  \(bytes[offset...].prefix(8).map { hex2($0) }.joined(separator: " ").padding(29))  (\(error))"
                )
                break
            }
        }
        return lines
    }

    /// A NUL-terminated fixed C array as a String.
    private static func string<T>(_ tuple: inout T) -> String {
        // SAFETY: reads only within the fixed C array, stopping at its NUL or its end.
        unsafe withUnsafeBytes(of: &tuple) { bytes in
            unsafe String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
    }
}

func hex2(_ v: UInt8) -> String {
    let s = String(v, radix: 16)
    return s.count == 1 ? "0" + s : s
}

func hex16(_ v: UInt64) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: 16 - s.count) + s
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}
