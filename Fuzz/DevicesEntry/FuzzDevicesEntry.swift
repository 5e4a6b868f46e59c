// The libFuzzer entry point for the device-model and option-parser targets alone
// (`DeviceFuzzTarget`): the same targets as in `swiftvisor-fuzz`, in a binary with a
// fraction of its coverage counters, so that libFuzzer runs them several times faster.
// `Tools/fuzz` builds both and runs each target in the smallest binary that holds it.
import FuzzDeviceTargets

#if SWIFTVISOR_LIBFUZZER
    /// The target named by `SWIFTVISOR_FUZZ_TARGET`, chosen at the first input.
    let selectedTarget = selectFuzzTarget(DeviceFuzzTarget.self)

    /// libFuzzer's callback: runs the selected target on one input. The target traps when its
    /// property fails, which libFuzzer reports as a crash and saves the input.
    @_cdecl("LLVMFuzzerTestOneInput")
    func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
        selectedTarget.run(unsafe fuzzInput(data, size))
        return 0
    }

    /// The process entry: SwiftPM points `main` here.
    @_cdecl("swiftvisor_fuzz_devices_main")
    func fuzzDevicesMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
        unsafe runLibFuzzer(argc, argv, names: DeviceFuzzTarget.allCases.map(\.rawValue)) { data, size in
            unsafe fuzzTestOneInput(data, size)
        }
    }
#else
    @main
    enum FuzzDevicesEntry {
        static func main() {
            print("swiftvisor-fuzz-devices: built without libFuzzer; run Tools/fuzz to fuzz. Targets:")
            for target in DeviceFuzzTarget.allCases { print("  \(target.rawValue)") }
        }
    }
#endif
