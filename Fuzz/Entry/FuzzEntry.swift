// The libFuzzer entry point for every target in `FuzzTargets`.
//
// `Tools/fuzz` builds this with `-sanitize=fuzzer` and `-D SWIFTVISOR_LIBFUZZER`: libFuzzer
// calls `LLVMFuzzerTestOneInput` for each input, and the environment variable
// `SWIFTVISOR_FUZZ_TARGET` names the target. SwiftPM links an executable's `main` to the
// symbol `<module>_main`, so that symbol hands the command line to libFuzzer's driver. A plain `swift build` makes a small
// tool that lists the targets, so that the package builds without libFuzzer.
import FuzzTargets

#if SWIFTVISOR_LIBFUZZER
    #if canImport(Glibc)
        import Glibc
    #elseif canImport(Musl)
        import Musl
    #endif

    /// The target named by `SWIFTVISOR_FUZZ_TARGET`, chosen once per process.
    let selectedTarget: FuzzTarget = {
        // SAFETY: getenv returns nil or a NUL-terminated string owned by the environment, which
        // nothing in this process changes; it is copied into a Swift string at once.
        guard let name = unsafe getenv("SWIFTVISOR_FUZZ_TARGET").map({ unsafe String(cString: $0) }),
            let target = FuzzTarget(rawValue: name)
        else {
            let names = FuzzTarget.allCases.map(\.rawValue).joined(separator: " ")
            fatalError("set SWIFTVISOR_FUZZ_TARGET to one of: \(names)")
        }
        return target
    }()

    /// libFuzzer's callback: runs the selected target on one input. The target traps when its
    /// property fails, which libFuzzer reports as a crash and saves the input.
    @_cdecl("LLVMFuzzerTestOneInput")
    func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
        // SAFETY: libFuzzer passes `size` readable bytes at `data` (or nil with size 0), valid for
        // this call; they are copied into an array before the target runs.
        let bytes = unsafe data.map { unsafe Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
        selectedTarget.run(bytes)
        return 0
    }
    /// libFuzzer's driver: parses libFuzzer's flags from the command line and runs the fuzzer.
    /// The corresponding C function is `LLVMFuzzerRunDriver`.
    @_silgen_name("LLVMFuzzerRunDriver")
    func runFuzzerDriver(
        _ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
        _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
    ) -> Int32

    /// The process entry: SwiftPM points `main` here.
    @_cdecl("swiftvisor_fuzz_main")
    func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
        var argc = argc
        var argv = argv
        // SAFETY: argc and argv are the process's own, as main received them; libFuzzer's driver
        // reads them during this call only, and the callback is a plain C function.
        return unsafe runFuzzerDriver(&argc, &argv, { data, size in unsafe fuzzTestOneInput(data, size) })
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
