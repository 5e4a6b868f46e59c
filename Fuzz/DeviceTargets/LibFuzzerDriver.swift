// The libFuzzer glue both fuzz executables share. Each executable keeps its selected
// target in a global of its own enum and its callback a plain function: a closure stored
// for the callback would be reabstracted, and allocate, on every input, which makes
// libFuzzer run LeakSanitizer after every input (it does when an input's mallocs and
// frees differ).
#if SWIFTVISOR_LIBFUZZER
    #if canImport(Glibc)
        import Glibc
    #elseif canImport(Musl)
        import Musl
    #endif

    /// Reads an environment variable.
    private func environment(_ name: String) -> String? {
        // SAFETY: getenv returns nil or a NUL-terminated string owned by the environment, which
        // nothing in this process changes; it is copied into a Swift string at once.
        unsafe getenv(name).map { unsafe String(cString: $0) }
    }

    /// The target `SWIFTVISOR_FUZZ_TARGET` names; stops with the list of names when it
    /// names none.
    package func selectFuzzTarget<Target: RawRepresentable & CaseIterable>(_: Target.Type) -> Target
    where Target.RawValue == String {
        guard let name = environment("SWIFTVISOR_FUZZ_TARGET"), let target = Target(rawValue: name) else {
            let names = Target.allCases.map(\.rawValue).joined(separator: " ")
            fatalError("set SWIFTVISOR_FUZZ_TARGET to one of: \(names)")
        }
        return target
    }

    /// libFuzzer's input as an array.
    package func fuzzInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> [UInt8] {
        // SAFETY: libFuzzer passes `size` readable bytes at `data` (or nil with size 0), valid for
        // the callback that calls this; they are copied into the array.
        unsafe data.map { unsafe Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    }

    /// libFuzzer's driver: parses libFuzzer's flags from the command line and runs the fuzzer.
    /// The corresponding C function is `LLVMFuzzerRunDriver`.
    @_silgen_name("LLVMFuzzerRunDriver")
    func runFuzzerDriver(
        _ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
        _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
    ) -> Int32

    /// A fuzz executable's whole program: with `SWIFTVISOR_FUZZ_LIST` set, prints `names`,
    /// one per line (`Tools/fuzz` asks each binary which targets it holds); else runs
    /// libFuzzer's driver on the process's command line with `callback` for each input.
    package func runLibFuzzer(
        _ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?, names: [String],
        _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
    ) -> Int32 {
        if environment("SWIFTVISOR_FUZZ_LIST") != nil {
            for name in names { print(name) }
            return 0
        }
        var argc = argc
        var argv = unsafe argv
        // SAFETY: argc and argv are the process's own, as main received them; libFuzzer's driver
        // reads them during this call only, and the callback is a plain C function.
        return unsafe runFuzzerDriver(&argc, &argv, callback)
    }
#endif
