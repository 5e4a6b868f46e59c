// The libFuzzer entry point for the device-model and option-parser targets alone
// (`DeviceFuzzTarget`): the same targets as in `swiftvisor-fuzz`, in a binary with a
// fraction of its coverage counters, so that libFuzzer runs them several times faster.
// `Tools/fuzz` builds both and runs each target in the smallest binary that holds it.
import FuzzDeviceTargets

#if SWIFTVISOR_LIBFUZZER
    /// The process entry: SwiftPM points `main` here.
    @_cdecl("swiftvisor_fuzz_devices_main")
    func fuzzDevicesMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
        unsafe runLibFuzzer(
            argc, argv, targets: DeviceFuzzTarget.allCases.map { target in (target.rawValue, { target.run($0) }) })
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
