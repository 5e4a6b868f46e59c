import CNativeOps
import Testing
import TestSupport
import VisorCore
@testable import VisorEmulator
import VisorKVM

/// The emulator's BMI1, BMI2, ADX and CRC32 results against the host CPU running the same
/// instructions natively (64-bit register forms; the guest test covers 32-bit and memory forms).
@Suite("Bit-manipulation emulation against the host CPU", .enabled(if: native_supported() != 0, "host lacks BMI2/ADX/SSE4.2"))
struct BitManipulationTests {
    /// (native op, encoding builder from (dest, src1, src2) register numbers) with operand roles
    /// matching native_run: result = op(a, b).
    /// a is in RBX (or RDX for MULX), b in RCX, the destination RAX (MULX: RAX high, RSI low).
    static let cases: [(name: String, op: Int32, bytes: [UInt8], definedFlags: UInt64)] = [
        ("andn", Int32(NATIVE_ANDN), [0xC4, 0xE2, 0xE0, 0xF2, 0xC1], 0x8C1),  // andn rax, rbx, rcx
        ("bextr", Int32(NATIVE_BEXTR), [0xC4, 0xE2, 0xF0, 0xF7, 0xC3], 0x841),  // bextr rax, rbx, rcx
        ("blsr", Int32(NATIVE_BLSR), [0xC4, 0xE2, 0xF8, 0xF3, 0xCB], 0x8C1),  // blsr rax, rbx
        ("blsi", Int32(NATIVE_BLSI), [0xC4, 0xE2, 0xF8, 0xF3, 0xDB], 0x8C1),  // blsi rax, rbx
        ("blsmsk", Int32(NATIVE_BLSMSK), [0xC4, 0xE2, 0xF8, 0xF3, 0xD3], 0x8C1),  // blsmsk rax, rbx
        ("pdep", Int32(NATIVE_PDEP), [0xC4, 0xE2, 0xE3, 0xF5, 0xC1], 0x8D5),  // pdep rax, rbx, rcx
        ("pext", Int32(NATIVE_PEXT), [0xC4, 0xE2, 0xE2, 0xF5, 0xC1], 0x8D5),  // pext rax, rbx, rcx
        ("shlx", Int32(NATIVE_SHLX), [0xC4, 0xE2, 0xF1, 0xF7, 0xC3], 0x8D5),  // shlx rax, rbx, rcx
        ("shrx", Int32(NATIVE_SHRX), [0xC4, 0xE2, 0xF3, 0xF7, 0xC3], 0x8D5),  // shrx rax, rbx, rcx
        ("sarx", Int32(NATIVE_SARX), [0xC4, 0xE2, 0xF2, 0xF7, 0xC3], 0x8D5),  // sarx rax, rbx, rcx
        ("rorx1", Int32(NATIVE_RORX1), [0xC4, 0xE3, 0xFB, 0xF0, 0xC3, 0x01], 0x8D5),  // rorx rax, rbx, 1
        ("rorx13", Int32(NATIVE_RORX13), [0xC4, 0xE3, 0xFB, 0xF0, 0xC3, 0x0D], 0x8D5),
        ("adcx", Int32(NATIVE_ADCX), [0x66, 0x48, 0x0F, 0x38, 0xF6, 0xC1], 0x8D5),  // adcx rax, rcx (a in rax)
        ("adox", Int32(NATIVE_ADOX), [0xF3, 0x48, 0x0F, 0x38, 0xF6, 0xC1], 0x8D5),  // adox rax, rcx
        ("crc32b", Int32(NATIVE_CRC32_8), [0xF2, 0x0F, 0x38, 0xF0, 0xC1], 0x8D5),  // crc32 eax, cl
        ("crc32q", Int32(NATIVE_CRC32_64), [0xF2, 0x48, 0x0F, 0x38, 0xF1, 0xC1], 0x8D5),  // crc32 rax, rcx
        ("mulx", Int32(NATIVE_MULX), [0xC4, 0xE2, 0xCB, 0xF6, 0xC1], 0x8D5),  // mulx rax, rsi, rcx (rdx implicit)
    ]

    @Test("random inputs give the native result and defined flags", arguments: cases.map(\.name))
    func matchesNative(name: String) throws {
        let c = Self.cases.first { $0.name == name }!
        let h = try EmulatorHarness()
        var rng = LCG(state: 0xB1B1 &+ UInt64(c.op))
        func next() -> UInt64 {
            let seed = rng.step()
            return seed ^ (seed >> 29)
        }
        let specials: [UInt64] = [0, 1, .max, 0x8000_0000_0000_0000, 0x0123_4567_89AB_CDEF, 0x0408, 0x2010, 0xFF00, 63, 64]
        for i in 0..<300 {
            let a = i < specials.count ? specials[i] : next()
            let b = i < specials.count ? specials[(i * 7) % specials.count] : (i % 3 == 0 ? next() % 130 : next())
            for flagsIn: UInt64 in [0x2, 0x8D7] {
                var nativeResult: UInt64 = 0, nativeLow: UInt64 = 0
                // SAFETY: native_run writes one UInt64 through each pointer, both to locals.
                let nativeFlags = unsafe native_run(c.op, a, b, flagsIn, &nativeResult, &nativeLow)

                h.vcpu.regs = Registers()
                h.vcpu.regs.rip = 0x10000
                h.vcpu.regs.rflags = flagsIn
                h.vcpu.regs.rax = (c.name == "adcx" || c.name == "adox" || c.name.hasPrefix("crc32")) ? a : 0x5555_5555_5555_5555
                h.vcpu.regs.rbx = a
                h.vcpu.regs.rdx = a
                h.vcpu.regs.rcx = b
                h.vcpu.regs.rsi = 0x5555_5555_5555_5555
                #expect(try h.run(c.bytes) == .handled)
                #expect(h.vcpu.injections.isEmpty, "\(name) faulted")
                #expect(
                    h.vcpu.regs.rax == nativeResult,
                    "\(name)(\(hex(a)), \(hex(b))): emulated \(hex(h.vcpu.regs.rax)), native \(hex(nativeResult))")
                if c.name == "mulx" { #expect(h.vcpu.regs.rsi == nativeLow) }
                #expect(
                    h.vcpu.regs.rflags & c.definedFlags == nativeFlags & c.definedFlags,
                    "\(name)(\(hex(a)), \(hex(b))) flags in \(hex(flagsIn)): emulated \(hex(h.vcpu.regs.rflags)), native \(hex(nativeFlags))"
                )
                #expect(h.vcpu.regs.rip == 0x10000 + UInt64(c.bytes.count))
                if h.vcpu.regs.rax != nativeResult { return }
            }
        }
    }
}
