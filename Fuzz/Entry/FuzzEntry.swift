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
    /// The process entry: SwiftPM points `main` here.
    @_cdecl("swiftvisor_fuzz_main")
    func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
        unsafe runLibFuzzer(argc, argv, targets: FuzzTarget.allCases.map { target in (target.rawValue, { target.run($0) }) })
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
