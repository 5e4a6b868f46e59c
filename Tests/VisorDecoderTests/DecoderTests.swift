import Testing
import TestSupport
import VisorDecoder

@Suite("x86 decoder")
struct DecoderTests {
    @Test(
        "plain instructions decode with their length, mnemonic and Intel text",
        arguments: [
            ([UInt8]([0xCC]), CodeMode.long64, 1, "int3", "int3"),
            ([0x0F, 0x0B], .long64, 2, "ud2", "ud2"),
            ([0xF3, 0x48, 0x0F, 0xB8, 0xC3], .long64, 5, "popcnt", "popcnt rax, rbx"),
            ([0xF3, 0x0F, 0xB8, 0xC3], .long64, 4, "popcnt", "popcnt eax, ebx"),
            ([0x66, 0xF3, 0x0F, 0xB8, 0xC3], .long64, 5, "popcnt", "popcnt ax, bx"),
            ([0x0F, 0x01, 0xCA], .long64, 3, "clac", "clac"),
            ([0x0F, 0x01, 0xCB], .long64, 3, "stac", "stac"),
            ([0x9B], .long64, 1, "fwait", "fwait"),
            ([0xF0, 0x48, 0x0F, 0xC7, 0x0F], .long64, 5, "cmpxchg16b", "lock cmpxchg16b [rdi]"),
            ([0xEE], .real16, 1, "out", "out dx, al"),
            ([0x66, 0xB8, 0x78, 0x56, 0x34, 0x12], .real16, 6, "mov", "mov eax, 0x12345678"),
        ])
    func decodes(bytes: [UInt8], mode: CodeMode, length: Int, mnemonic: String, text: String) throws {
        let instruction = try X86Decoder.decode(bytes, mode: mode)
        #expect(instruction.length == length)
        #expect(instruction.mnemonic == mnemonic)
        #expect(instruction.text.lowercased() == text.lowercased())
    }

    @Test("REX, ModRM and SIB produce register and memory operands with sizes")
    func operands() throws {
        // popcnt r9, qword ptr [rbx + r12*8 + 0x40]
        let i = try X86Decoder.decode([0xF3, 0x4E, 0x0F, 0xB8, 0x4C, 0xE3, 0x40], mode: .long64)
        #expect(i.length == 7)
        #expect(i.operands.count == 2)
        #expect(i.operands[0].operand == .register(9, high8: false))
        #expect(i.operands[0].bits == 64)
        #expect(i.operands[1].operand == .memory(MemoryOperand(base: 3, index: 12, scale: 8, displacement: 0x40, segment: 3)))
        #expect(i.operands[1].bits == 64)
    }

    @Test("RIP-relative memory operands name RIP as the base")
    func ripRelative() throws {
        // popcnt eax, dword ptr [rip + 0x100]
        let i = try X86Decoder.decode([0xF3, 0x0F, 0xB8, 0x05, 0x00, 0x01, 0x00, 0x00], mode: .long64, address: 0x1000)
        #expect(
            i.operands[1].operand
                == .memory(
                    MemoryOperand(
                        base: MemoryOperand.rip, index: nil, scale: 0,
                        displacement: 0x100, segment: 3)))
        #expect(i.text.hasSuffix("1108]"), "Intel text resolves the target: \(i.text)")
    }

    @Test("high-byte registers are flagged")
    func highByte() throws {
        let i = try X86Decoder.decode([0x88, 0xE0], mode: .long64)  // mov al, ah
        #expect(i.operands[1].operand == .register(0, high8: true))
    }

    @Test("truncated bytes are a clean error, never a crash")
    func truncated() {
        #expect(throws: DecodeError.truncated(available: 3)) { try X86Decoder.decode([0xF3, 0x48, 0x0F], mode: .long64) }
        #expect(throws: DecodeError.self) { try X86Decoder.decode([], mode: .long64) }
    }

    @Test("the 15-byte limit: 15 prefixes plus an opcode do not decode")
    func tooLong() {
        let bytes = [UInt8](repeating: 0x66, count: 15) + [0x90]
        #expect(throws: DecodeError.self) { try X86Decoder.decode(bytes, mode: .long64) }
        // 14 prefixes and NOP is exactly 15 bytes and valid.
        #expect((try? X86Decoder.decode([UInt8](repeating: 0x66, count: 14) + [0x90], mode: .long64))?.length == 15)
    }

    @Test("invalid encodings are rejected")
    func invalid() {
        #expect(throws: DecodeError.invalid) { try X86Decoder.decode([0x0F, 0x04, 0x00, 0x00], mode: .long64) }
        #expect(throws: DecodeError.invalid) { try X86Decoder.decode([0x06], mode: .long64) }  // push es: not in 64-bit mode
    }

    @Test("disassembly lists address, bytes and text, and stops at undecodable bytes")
    func disassemble() {
        let lines = X86Decoder.disassemble([0x0F, 0x0B, 0xEE, 0x0F], mode: .long64, address: 0x100000, count: 5)
        #expect(lines.count == 3)
        #expect(lines[0].hasPrefix("0000000000100000  0f 0b"))
        #expect(lines[0].hasSuffix("ud2"))
        #expect(lines[1].hasSuffix("out dx, al"))
        #expect(lines[2].contains("instruction runs past"))
    }

    @Test("random byte strings decode or fail cleanly, and lengths stay within 1...15")
    func fuzz() {
        var rng = LCG(state: 0x5EED)
        for _ in 0..<20_000 {
            var bytes: [UInt8] = []
            for _ in 0..<Int(rng.state % 17) {
                bytes.append(UInt8(truncatingIfNeeded: rng.step() >> 33))
            }
            _ = rng.step()
            for mode in [CodeMode.long64, .protected32, .real16] {
                if let i = try? X86Decoder.decode(bytes, mode: mode) {
                    #expect((1...15).contains(i.length))
                    #expect(i.length <= bytes.count)
                }
            }
        }
    }
}
