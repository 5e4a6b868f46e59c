// The targets of `swiftvisor-fuzz-devices`.

/// The device-model and option-parser targets, which need only the lower layers
/// (`VisorCore`, `VisorDevices`). libFuzzer scans every coverage counter of its binary
/// after each input, so these run several times faster in a binary of their own than in
/// `swiftvisor-fuzz`, whose counters include the control API's HTTP stack. `FuzzTarget`
/// holds them too, under the same names, for the seeded pass and the full binary.
package enum DeviceFuzzTarget: String, CaseIterable, Sendable {
    case serial16550
    case i8042
    case cmos
    case pm1
    case resetControl = "reset"
    case pciConfig = "pci-config"
    case cpuidOverride = "cpuid-override"
    case msrOption = "msr-option"
    case byteSize = "byte-size"

    /// Runs the target on one input. Traps (`precondition`) when its property fails.
    package func run(_ data: [UInt8]) {
        switch self {
        case .serial16550: fuzzSerial16550(data)
        case .i8042: fuzzI8042(data)
        case .cmos: fuzzCMOS(data)
        case .pm1: fuzzPM1(data)
        case .resetControl: fuzzResetControl(data)
        case .pciConfig: fuzzPCIConfig(data)
        case .cpuidOverride: fuzzCPUIDOverride(data)
        case .msrOption: fuzzMSROption(data)
        case .byteSize: fuzzByteSize(data)
        }
    }
}
