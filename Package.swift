// swift-tools-version: 6.1
//
// SwiftVisor: a KVM virtual machine monitor whose VM-exit handling layer is a Swift API.
//
// Layers import only downward:
//   CKVM (C shim over <linux/kvm.h>)
//   VisorKVM     typed handles for /dev/kvm, the VM and its vCPUs
//   VisorMemory  guest RAM: mmap'd regions, bounds-checked access
//   VisorDecoder x86 instruction decoding and disassembly (Zydis)
//   VisorCore    exits, port and MMIO buses, dispatch, statistics
//   VisorEmulator the instructions KVM cannot emulate, guest page-table walks, the state
//                dump (over VisorCore, VisorMemory and VisorDecoder)
//   VisorDevices device models (16550 UART, debug-exit port)
//   VisorLoader  ELF and flat-binary loaders, x86 boot layout
//   CDecompress  C face over Debian's zlib, liblzma, liblz4 and libzstd
//   VisorLinux   Linux kernel images (bzImage, vmlinux), zero page, e820, PVH start info
//   VisorFirmware ACPI tables and the AML they carry
//   SwiftVisor   the machine facade: wires the above and runs vCPU threads
//   swiftvisor   the command-line tool
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "SwiftVisor",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "SwiftVisor", targets: ["SwiftVisor"]),
        .executable(name: "swiftvisor", targets: ["swiftvisor"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
    ],
    targets: [
        .target(name: "CKVM"),
        .target(name: "VisorKVM", dependencies: ["CKVM"], swiftSettings: strict),
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
        .target(
            name: "VisorEmulator",
            dependencies: ["VisorCore", "VisorKVM", "VisorMemory", "VisorDecoder"],
            swiftSettings: strict),
        .target(name: "VisorDevices", dependencies: ["VisorCore"], swiftSettings: strict),
        .target(name: "VisorLoader", dependencies: ["VisorMemory"], swiftSettings: strict),
        // Debian's zlib1g-dev, liblzma-dev, liblz4-dev and libzstd-dev.
        .target(
            name: "CDecompress",
            linkerSettings: [.linkedLibrary("z"), .linkedLibrary("lzma"), .linkedLibrary("lz4"), .linkedLibrary("zstd")]),
        .target(name: "VisorFirmware", swiftSettings: strict),
        .target(name: "VisorLinux", dependencies: ["VisorMemory", "VisorLoader", "CDecompress"], swiftSettings: strict),
        .target(
            name: "SwiftVisor",
            dependencies: [
                "VisorKVM", "VisorMemory", "VisorCore", "VisorEmulator", "VisorDevices", "VisorLoader", "VisorFirmware",
                "VisorLinux",
                "SwiftVisorGuests",
            ],
            swiftSettings: strict),
        .plugin(name: "GuestBuilder", capability: .buildTool()),
        .target(name: "SwiftVisorGuests", swiftSettings: strict, plugins: ["GuestBuilder"]),
        .executableTarget(
            name: "swiftvisor",
            dependencies: [
                "SwiftVisor", "SwiftVisorGuests",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "swiftvisor-example",
            dependencies: ["SwiftVisor", "SwiftVisorGuests"],
            path: "Examples/Embedding",
            swiftSettings: strict),
        .target(name: "CBenchSupport"),
        .executableTarget(
            name: "swiftvisor-bench",
            dependencies: ["SwiftVisor", "SwiftVisorGuests", "CBenchSupport", "VisorFirmware"],
            swiftSettings: strict),
        .target(name: "CNativeOps", path: "Tests/CNativeOps", cSettings: [.unsafeFlags(["-mbmi", "-mbmi2", "-madx", "-msse4.2"])]),
        .testTarget(name: "VisorCoreTests", dependencies: ["VisorCore", "VisorKVM", "VisorMemory"], exclude: ["Fixtures"]),
        .testTarget(
            name: "VisorEmulatorTests",
            dependencies: ["VisorEmulator", "VisorCore", "VisorKVM", "VisorMemory", "CNativeOps"]),
        .testTarget(name: "VisorDevicesTests", dependencies: ["VisorDevices"]),
        .testTarget(name: "VisorDecoderTests", dependencies: ["VisorDecoder", "VisorCore", "VisorMemory"]),
        .testTarget(name: "VisorLoaderTests", dependencies: ["VisorLoader", "VisorMemory"]),
        .testTarget(name: "VisorFirmwareTests", dependencies: ["VisorFirmware"]),
        .testTarget(name: "VisorLinuxTests", dependencies: ["VisorLinux", "VisorLoader", "VisorMemory"]),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["SwiftVisor", "SwiftVisorGuests", "CBenchSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
