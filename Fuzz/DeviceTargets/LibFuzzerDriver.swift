// The libFuzzer glue both fuzz executables share: the callback libFuzzer calls for each
// input, and a start that picks the target named by `SWIFTVISOR_FUZZ_TARGET`.
#if SWIFTVISOR_LIBFUZZER
    #if canImport(Glibc)
        import Glibc
    #elseif canImport(Musl)
        import Musl
    #endif
    import Synchronization

    /// The run function of the target this process fuzzes, set once before libFuzzer starts.
    private let selectedRun = Mutex<(@Sendable ([UInt8]) -> Void)?>(nil)

    /// libFuzzer's callback: runs the selected target on one input. The target traps when its
    /// property fails, which libFuzzer reports as a crash and saves the input.
    @_cdecl("LLVMFuzzerTestOneInput")
    func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
        // SAFETY: libFuzzer passes `size` readable bytes at `data` (or nil with size 0), valid for
        // this call; they are copied into an array before the target runs.
        let bytes = unsafe data.map { unsafe Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
        selectedRun.withLock { $0 }?(bytes)
        return 0
    }

    /// libFuzzer's driver: parses libFuzzer's flags from the command line and runs the fuzzer.
    /// The corresponding C function is `LLVMFuzzerRunDriver`.
    @_silgen_name("LLVMFuzzerRunDriver")
    func runFuzzerDriver(
        _ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
        _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
    ) -> Int32

    /// Reads an environment variable.
    private func environment(_ name: String) -> String? {
        // SAFETY: getenv returns nil or a NUL-terminated string owned by the environment, which
        // nothing in this process changes; it is copied into a Swift string at once.
        unsafe getenv(name).map { unsafe String(cString: $0) }
    }

    /// A fuzz executable's whole program: with `SWIFTVISOR_FUZZ_LIST` set, prints the names of
    /// `targets`, one per line (`Tools/fuzz` asks each binary which targets it holds); else
    /// runs libFuzzer's driver on the process's command line over the target that
    /// `SWIFTVISOR_FUZZ_TARGET` names, and stops with the list when it names none of them.
    package func runLibFuzzer(
        _ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
        targets: [(name: String, run: @Sendable ([UInt8]) -> Void)]
    ) -> Int32 {
        if environment("SWIFTVISOR_FUZZ_LIST") != nil {
            for target in targets { print(target.name) }
            return 0
        }
        guard let name = environment("SWIFTVISOR_FUZZ_TARGET"), let target = targets.first(where: { $0.name == name })
        else {
            fatalError("set SWIFTVISOR_FUZZ_TARGET to one of: \(targets.map(\.name).joined(separator: " "))")
        }
        selectedRun.withLock { $0 = target.run }
        var argc = argc
        var argv = argv
        // SAFETY: argc and argv are the process's own, as main received them; libFuzzer's driver
        // reads them during this call only, and the callback is a plain C function.
        return unsafe runFuzzerDriver(&argc, &argv, { data, size in unsafe fuzzTestOneInput(data, size) })
    }
#endif
