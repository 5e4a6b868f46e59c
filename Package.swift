// swift-tools-version: 6.2
//
// SwiftVisor: a KVM virtual machine monitor whose VM-exit handling layer is a Swift API.
//
// The import graph, by layer from the top: a target depends on, and imports, only targets
// on lower layers. Each line draws exactly the package targets its target depends on
// (external products, ArgumentParser, Histogram, the NIO modules and Logging, are not
// drawn); a target may take several lines of its layer. Tools/check-imports reads this
// block and fails CI when it differs from the targets below, when a Swift file imports a
// module its target does not declare, or when an import goes up. Every library target
// has a line; test targets are not drawn (they sit above everything and import what they
// declare).
//
// import graph:
//  7  swiftvisor          -> SwiftVisor SwiftVisorGuests VisorKVM      -- the command-line tool
//     swiftvisor          -> VisorHost VisorAPI
//     swiftvisor-bench    -> SwiftVisor SwiftVisorGuests VisorKVM VisorFirmware CBenchSupport
//     swiftvisor-bench    -> SwiftVisorSandbox VisorHost
//     swiftvisor-example  -> SwiftVisor SwiftVisorGuests              -- the embedding example
//     swiftvisor-sandbox-example -> SwiftVisorSandbox SwiftVisorGuests  -- plugins in pools of sandboxes
//     swiftvisor-fuzz     -> FuzzTargets FuzzDeviceTargets            -- the libFuzzer entry
//     swiftvisor-fuzz-devices -> FuzzDeviceTargets                    -- the same, device targets alone
//  6  FuzzTargets         -> VisorCore VisorKVM VisorMemory VisorDevices VisorLoader  -- fuzz targets
//     FuzzTargets         -> VisorLinux TestSupport VisorEmulator VisorDecoder VisorVirtio
//     FuzzTargets         -> VisorHost VisorAPI SwiftVisor VisorSnapshot SwiftVisorSandbox
//     FuzzTargets         -> FuzzDeviceTargets
//  5  VisorAPI            -> SwiftVisor VisorHost                      -- the Firecracker-compatible control API
//  4  SwiftVisor          -> VisorCore VisorEmulator VisorDevices VisorLinux VisorLoader  -- the machine facade
//     SwiftVisor          -> VisorKVM VisorMemory VisorFirmware SwiftVisorProbes
//     SwiftVisor          -> VisorHost VisorDecoder VisorVirtio VisorSnapshot
//     SwiftVisorSandbox   -> VisorKVM VisorMemory VisorLoader VisorHost  -- sandboxes: guest functions in micro-VMs
//     FuzzDeviceTargets   -> VisorCore VisorDevices                   -- device and parser fuzz targets
//  3  VisorDevices        -> VisorCore VisorFirmware VisorHost        -- device models, Platform
//     VisorDevices        -> VisorSnapshot
//     VisorVirtio         -> VisorCore VisorMemory VisorHost          -- virtio-mmio, virtqueues, virtio devices
//     VisorVirtio         -> VisorSnapshot
//     TestSupport         -> VisorCore VisorKVM VisorMemory           -- fakes for tests and the bench
//     VisorLinux          -> VisorLoader VisorMemory CDecompress      -- bzImage, vmlinux, PVH
//     VisorLinux          -> VisorHost
//     VisorEmulator       -> VisorCore VisorKVM VisorMemory VisorDecoder  -- instruction emulator, page walks
//  2  VisorCore           -> VisorKVM VisorMemory                     -- exits, buses, dispatch, policy
//     VisorLoader         -> VisorMemory                              -- ELF, flat, boot layout
//  1  VisorKVM            -> CKVM CSeccomp VisorSnapshot              -- /dev/kvm, VM, vCPU handles, seccomp
//     VisorMemory         -> CGuestAtomics                            -- guest RAM
//     VisorDecoder        -> CDecoder                                 -- x86 decoding (Zydis)
//     VisorHost           -> CHost                                    -- host system calls, threads, I/O threads
//     VisorFirmware                                                   -- ACPI tables and AML
//     SwiftVisorGuests                                                -- test guests, from Guests/
//     SwiftVisorProbes                                                -- the host-quirk probe, from Guests/
//  0  CKVM CSeccomp CGuestAtomics CDecoder CDecompress CHost          -- C shims
//     VisorSnapshot                                                   -- snapshot state encoding and file
//     CBenchSupport CNativeOps                                        -- C for benchmarks, tests
// end of import graph
import PackageDescription

// Strict memory safety makes the compiler flag every unsafe construct that is not marked
// `unsafe`, so unsafe code is found by the compiler rather than by convention.
let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
    .strictMemorySafety(),
]

// Test targets take only strict memory safety: the upcoming features would rewrite every
// test's imports and existentials for no gain in what the tests check.
let strictTests: [SwiftSetting] = [.strictMemorySafety()]

let package = Package(
    name: "SwiftVisor",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "SwiftVisor", targets: ["SwiftVisor"]),
        .library(name: "SwiftVisorSandbox", targets: ["SwiftVisorSandbox"]),
        .executable(name: "swiftvisor", targets: ["swiftvisor"]),
        .executable(name: "swiftvisor-firecracker", targets: ["swiftvisor-firecracker"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
        // HTTP/1.1 for the control API: SwiftNIO's codec, not hand-written parsing.
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        // Logging API for the Firecracker-compatible front end's log lines.
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        .target(name: "CKVM"),
        .target(name: "CSeccomp"),
        .target(name: "VisorKVM", dependencies: ["CKVM", "CSeccomp", "VisorSnapshot"], swiftSettings: strict),
        .target(name: "CGuestAtomics"),
        .target(name: "VisorMemory", dependencies: ["CGuestAtomics"], swiftSettings: strict),
        // Zydis from Debian's libzydis-dev (no pkg-config file there, so the library is named).
        .target(name: "CDecoder", linkerSettings: [.linkedLibrary("Zydis")]),
        .target(name: "VisorDecoder", dependencies: ["CDecoder"], swiftSettings: strict),
        .target(
            name: "VisorCore",
            dependencies: [
                "VisorKVM", "VisorMemory",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: strict),
        // Host system calls (files, clocks, sleeping, threads, the terminal) for the layers above.
        .target(name: "CHost"),
        .target(name: "VisorHost", dependencies: ["CHost"], swiftSettings: strict),
        .target(
            name: "VisorDevices", dependencies: ["VisorCore", "VisorFirmware", "VisorHost", "VisorSnapshot"],
            swiftSettings: strict),
        .target(
            name: "VisorVirtio", dependencies: ["VisorCore", "VisorMemory", "VisorHost", "VisorSnapshot"],
            swiftSettings: strict),
        .target(
            name: "VisorEmulator",
            dependencies: ["VisorCore", "VisorKVM", "VisorMemory", "VisorDecoder"],
            swiftSettings: strict),
        .target(name: "VisorLoader", dependencies: ["VisorMemory"], swiftSettings: strict),
        // Debian's zlib1g-dev, liblzma-dev, liblz4-dev and libzstd-dev.
        .target(
            name: "CDecompress",
            linkerSettings: [.linkedLibrary("z"), .linkedLibrary("lzma"), .linkedLibrary("lz4"), .linkedLibrary("zstd")]),
        .target(name: "VisorFirmware", swiftSettings: strict),
        .target(name: "VisorSnapshot", swiftSettings: strict),
        .target(
            name: "VisorLinux", dependencies: ["VisorMemory", "VisorLoader", "CDecompress", "VisorHost"],
            swiftSettings: strict),
        .target(
            name: "SwiftVisor",
            dependencies: [
                "VisorKVM", "VisorMemory", "VisorCore", "VisorEmulator", "VisorDevices", "VisorLoader", "VisorFirmware",
                "VisorLinux",
                "SwiftVisorProbes", "VisorHost", "VisorDecoder", "VisorVirtio", "VisorSnapshot",
            ],
            swiftSettings: strict),
        // Sandboxes: a guest's functions called by name in a CPL 3 micro-VM (Guests/sandbox/ABI.md).
        .target(
            name: "SwiftVisorSandbox", dependencies: ["VisorKVM", "VisorMemory", "VisorLoader", "VisorHost"],
            swiftSettings: strict),
        // The Firecracker-compatible control plane: its REST API on a Unix socket (SwiftNIO's
        // HTTP/1.1), its configuration file, and the rules over one VM's life.
        .target(
            name: "VisorAPI",
            dependencies: [
                "SwiftVisor", "VisorHost",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .plugin(name: "GuestBuilder", capability: .buildTool()),
        .target(name: "SwiftVisorProbes", swiftSettings: strict, plugins: ["GuestBuilder"]),
        .target(name: "SwiftVisorGuests", swiftSettings: strict, plugins: ["GuestBuilder"]),
        .executableTarget(
            name: "swiftvisor",
            dependencies: [
                "SwiftVisor", "SwiftVisorGuests", "VisorKVM", "VisorHost", "VisorAPI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // A small static C launcher that binds the API socket before swiftvisor has loaded,
        // then becomes `swiftvisor firecracker` (see its main.c).
        .executableTarget(name: "swiftvisor-firecracker"),
        .executableTarget(
            name: "swiftvisor-example",
            dependencies: ["SwiftVisor", "SwiftVisorGuests"],
            path: "Examples/Embedding",
            swiftSettings: strict),
        // Untrusted plugins in pools of sandboxes, called from several threads.
        .executableTarget(
            name: "swiftvisor-sandbox-example",
            dependencies: ["SwiftVisorSandbox", "SwiftVisorGuests"],
            path: "Examples/Sandbox",
            swiftSettings: strict),
        .target(name: "CBenchSupport"),
        .executableTarget(
            name: "swiftvisor-bench",
            dependencies: [
                "SwiftVisor", "SwiftVisorGuests", "CBenchSupport", "VisorFirmware", "VisorKVM", "SwiftVisorSandbox", "VisorHost",
            ],
            swiftSettings: strict),
        .target(
            name: "CNativeOps", path: "Tests/CNativeOps", cSettings: [.unsafeFlags(["-mbmi", "-mbmi2", "-madx", "-msse4.2"])]),
        // Fakes (vCPUs, devices), the seeded random source and log capture, shared by the
        // unit tests and the benchmark.
        .target(
            name: "TestSupport", dependencies: ["VisorCore", "VisorKVM", "VisorMemory"], path: "Tests/TestSupport",
            swiftSettings: strict),
        // Every fuzz target as a plain function over bytes, shared by the libFuzzer entry
        // and the seeded pass in `swift test`. Not part of any product.
        .target(
            name: "FuzzTargets",
            dependencies: [
                "VisorCore", "VisorKVM", "VisorMemory", "VisorDevices", "VisorLoader", "VisorLinux", "VisorEmulator",
                "VisorDecoder", "TestSupport", "VisorVirtio", "VisorHost", "VisorAPI", "SwiftVisor", "VisorSnapshot",
                "SwiftVisorSandbox", "FuzzDeviceTargets",
            ],
            path: "Fuzz/Targets", swiftSettings: strict),
        // The device-model and option-parser targets, on the lower layers alone, with the
        // libFuzzer glue both fuzz executables share.
        .target(
            name: "FuzzDeviceTargets", dependencies: ["VisorCore", "VisorDevices"], path: "Fuzz/DeviceTargets",
            swiftSettings: strict),
        // The libFuzzer entry point. A plain build makes a replay tool (run a target over
        // files); `Tools/fuzz` builds it with `-sanitize=fuzzer` and `-D SWIFTVISOR_LIBFUZZER`.
        .executableTarget(
            name: "swiftvisor-fuzz", dependencies: ["FuzzTargets", "FuzzDeviceTargets"], path: "Fuzz/Entry",
            swiftSettings: strict),
        // The same for `FuzzDeviceTargets` alone: a binary with far fewer coverage counters.
        .executableTarget(
            name: "swiftvisor-fuzz-devices", dependencies: ["FuzzDeviceTargets"], path: "Fuzz/DevicesEntry",
            swiftSettings: strict),
        .testTarget(
            name: "FuzzTargetsTests", dependencies: ["FuzzTargets", "FuzzDeviceTargets", "TestSupport", "VisorLinux"],
            path: "Fuzz/Tests",
            swiftSettings: strictTests),
        .testTarget(name: "VisorKVMTests", dependencies: ["VisorKVM", "VisorSnapshot"], swiftSettings: strictTests),
        .testTarget(
            name: "VisorAPITests",
            dependencies: ["VisorAPI", "SwiftVisor", "VisorHost", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictTests),
        .testTarget(
            name: "VisorVirtioTests",
            dependencies: ["VisorVirtio", "VisorCore", "VisorMemory", "VisorHost", "VisorKVM", "VisorSnapshot"],
            swiftSettings: strictTests),
        .testTarget(name: "VisorMemoryTests", dependencies: ["VisorMemory"], swiftSettings: strictTests),
        .testTarget(
            name: "VisorCoreTests", dependencies: ["VisorCore", "VisorKVM", "VisorMemory", "TestSupport"],
            exclude: ["Fixtures"], swiftSettings: strictTests),
        .testTarget(
            name: "VisorEmulatorTests",
            dependencies: ["VisorEmulator", "VisorCore", "VisorKVM", "VisorMemory", "TestSupport", "CNativeOps"],
            swiftSettings: strictTests),
        .testTarget(
            name: "SwiftVisorTests",
            dependencies: [
                "SwiftVisor", "VisorCore", "VisorHost", "VisorKVM", "VisorLoader", "TestSupport", "VisorFirmware", "VisorMemory",
                "VisorSnapshot",
            ],
            swiftSettings: strictTests),
        .testTarget(
            name: "VisorDevicesTests",
            dependencies: ["VisorDevices", "VisorCore", "VisorFirmware", "VisorSnapshot", "TestSupport"],
            swiftSettings: strictTests),
        .testTarget(name: "VisorDecoderTests", dependencies: ["VisorDecoder", "TestSupport"], swiftSettings: strictTests),
        .testTarget(
            name: "VisorLoaderTests", dependencies: ["VisorLoader", "VisorMemory", "TestSupport", "SwiftVisorGuests"],
            swiftSettings: strictTests),
        .testTarget(name: "SwiftVisorSandboxTests", dependencies: ["SwiftVisorSandbox"], swiftSettings: strictTests),
        .testTarget(name: "VisorSnapshotTests", dependencies: ["VisorSnapshot"], swiftSettings: strictTests),
        .testTarget(name: "VisorFirmwareTests", dependencies: ["VisorFirmware", "VisorDevices"], swiftSettings: strictTests),
        .testTarget(
            name: "VisorLinuxTests", dependencies: ["VisorLinux", "VisorLoader", "VisorMemory", "TestSupport"],
            swiftSettings: strictTests),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "SwiftVisor", "SwiftVisorGuests", "VisorKVM", "VisorHost", "CBenchSupport", "CNativeOps", "VisorSnapshot",
                "SwiftVisorSandbox",
            ],
            swiftSettings: strictTests),
    ],
    swiftLanguageModes: [.v6]
)
