// The libFuzzer entry point for every target in `FuzzTargets`.
//
// `Tools/fuzz` builds this with `-sanitize=fuzzer` and `-D SWIFTVISOR_LIBFUZZER`:
// `runLibFuzzer` hands the command line to libFuzzer's driver, and the environment
// variable `SWIFTVISOR_FUZZ_TARGET` names the target. SwiftPM links an executable's `main`
// to the symbol `<module>_main`. A plain `swift build` makes a small tool that lists the
// targets, so that the package builds without libFuzzer.
import FuzzDeviceTargets
import FuzzTargets

#if SWIFTVISOR_LIBFUZZER
    /// The target named by `SWIFTVISOR_FUZZ_TARGET`, chosen at the first input.
    let selectedTarget = selectFuzzTarget(FuzzTarget.self)

    /// libFuzzer's callback: runs the selected target on one input. The target traps when its
    /// property fails, which libFuzzer reports as a crash and saves the input.
    @_cdecl("LLVMFuzzerTestOneInput")
    func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
        selectedTarget.run(unsafe fuzzInput(data, size))
        return 0
    }

    /// The process entry: SwiftPM points `main` here.
    @_cdecl("swiftvisor_fuzz_main")
    func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
        unsafe runLibFuzzer(argc, argv, names: FuzzTarget.allCases.map(\.rawValue)) { data, size in
            unsafe fuzzTestOneInput(data, size)
        }
    }
#else
    @main
    enum FuzzEntry {
        static func main() {
            print("swiftvisor-fuzz: built without libFuzzer; run Tools/fuzz to fuzz. Targets:")
            for target in FuzzTarget.allCases { print("  \(target.rawValue)") }
        }
    }
#endif
