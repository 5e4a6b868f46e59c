// GuestBuilder: the build-tool plugin that builds the guest programs in Guests/ from source
// and hands the SwiftVisorGuests target the generated GuestImages.swift.
//
// It adds one build command: `/bin/sh Guests/build.sh <work>/out <clang> <ld.lld> <swiftc>`. Every
// file under Guests/ is an input, so editing any guest source, the linker script or the
// script itself rebuilds the images on the next `swift build`; the output is
// <work>/out/GuestImages.swift, which SwiftPM compiles into the target.
//
// clang, ld.lld and swiftc (for the Embedded Swift sandbox guests) are the Swift toolchain's
// own (found with `context.tool(named:)`, which searches the toolchain's directory and then
// PATH); if that fails the plugin searches PATH itself. Nothing else is needed: no system
// assembler, no objcopy.

import Foundation
import PackagePlugin

@main
struct GuestBuilder: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: any Target) async throws -> [Command] {
        // Which guests each target embeds: all of them for the test guests; only the
        // host-quirk probe for the library, so that embedding SwiftVisor builds no test guest.
        let environment: [String: String]
        switch target.name {
        case "SwiftVisorGuests": environment = [:]
        case "SwiftVisorProbes": environment = ["GUESTS_ONLY": "host_quirks", "GUESTS_ENUM": "ProbeImages"]
        default:
            Diagnostics.warning(
                "GuestBuilder builds guest images for SwiftVisorGuests and SwiftVisorProbes only; ignoring target '\(target.name)'"
            )
            return []
        }

        let guests = context.package.directoryURL.appending(path: "Guests", directoryHint: .isDirectory)
        let script = guests.appending(path: "build.sh", directoryHint: .notDirectory)
        let outputDirectory = context.pluginWorkDirectoryURL.appending(path: "out", directoryHint: .isDirectory)
        let generated = outputDirectory.appending(path: "GuestImages.swift", directoryHint: .notDirectory)

        let clang = try Self.findTool("clang", context: context)
        let linker = try Self.findTool("ld.lld", context: context)
        let swiftc = try Self.findTool("swiftc", context: context)

        return [
            .buildCommand(
                displayName: "Building guest images from Guests/ for \(target.name)",
                executable: URL(filePath: "/bin/sh"),
                arguments: [script.path(), outputDirectory.path(), clang.path(), linker.path(), swiftc.path()],
                environment: environment,
                inputFiles: try Self.inputFiles(under: guests) + [clang, linker, swiftc],
                outputFiles: [generated])
        ]
    }

    /// Every regular file under `directory` (recursively), except hidden files and `out/`,
    /// the folder a hand-run `Guests/build.sh Guests/out` would write to; and the folders
    /// themselves, whose modification times change when a file is added or removed, so that
    /// deleting a guest rebuilds the images too.
    static func inputFiles(under directory: URL) throws -> [URL] {
        guard
            let walker = FileManager.default.enumerator(
                at: directory,
                includingPropertiesForKeys: [.isRegularFileKey, .isDirectoryKey],
                options: [.skipsHiddenFiles])
        else {
            throw GuestBuilderError.missingGuestsDirectory(directory.path())
        }
        var files: [URL] = [directory]
        for case let url as URL in walker {
            let values = try url.resourceValues(forKeys: [.isRegularFileKey, .isDirectoryKey])
            if values.isDirectory == true, url.lastPathComponent == "out",
                url.deletingLastPathComponent().standardizedFileURL.path() == directory.standardizedFileURL.path()
            {
                walker.skipDescendants()
            } else if values.isDirectory == true {
                files.append(url)
            } else if values.isRegularFile == true {
                files.append(url)
            }
        }
        guard files.contains(where: { $0.lastPathComponent == "build.sh" }) else {
            throw GuestBuilderError.missingGuestsDirectory(directory.path())
        }
        return files.sorted { $0.path() < $1.path() }
    }

    /// The toolchain's `name`: from `context.tool(named:)`, else the first executable `name`
    /// on PATH.
    static func findTool(_ name: String, context: PluginContext) throws -> URL {
        if let tool = try? context.tool(named: name) {
            return tool.url
        }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        for directory in path.split(separator: ":") where !directory.isEmpty {
            let candidate = URL(filePath: String(directory), directoryHint: .isDirectory)
                .appending(path: name, directoryHint: .notDirectory)
            if FileManager.default.isExecutableFile(atPath: candidate.path()) {
                return candidate
            }
        }
        throw GuestBuilderError.missingTool(name)
    }
}

enum GuestBuilderError: Error, CustomStringConvertible {
    case missingTool(String)
    case missingGuestsDirectory(String)

    var description: String {
        switch self {
        case .missingTool(let name):
            "GuestBuilder cannot find '\(name)': it needs the clang, ld.lld and swiftc that ship with the Swift "
                + "toolchain or on PATH"
        case .missingGuestsDirectory(let path):
            "GuestBuilder cannot find the guest sources: no \(path)/build.sh"
        }
    }
}
