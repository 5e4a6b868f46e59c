// Deterministic randomness and small fixtures shared by the tests.
package import VisorMemory

/// A deterministic linear congruential generator (Knuth's MMIX constants): the same seed
/// gives the same sequence on every machine, so a failing mutation test can be replayed.
package struct LCG: RandomNumberGenerator {
    package var state: UInt64
    package init(state: UInt64) { self.state = state }
    /// Advances the generator and returns its whole 64-bit state (whose low bits are weak:
    /// take high bits, or mix, where that matters).
    package mutating func step() -> UInt64 {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return state
    }
    /// The next 31 random bits.
    package mutating func next() -> UInt64 { step() >> 33 }
    /// A value in 0..<n (0 when n is not positive).
    package mutating func below(_ n: Int) -> Int { n <= 0 ? 0 : Int(next() % UInt64(n)) }
    package mutating func byte() -> UInt8 { UInt8(truncatingIfNeeded: next()) }
}

/// Guest RAM of `size` bytes at 0, filled with `fill`.
package func guestRAM(_ size: UInt64, filledWith fill: UInt8 = 0xAA) throws -> GuestMemory {
    let memory = try GuestMemory(size: size)
    try memory.fill(fill, count: size, at: 0)
    return memory
}
