import Foundation
import Synchronization
import SwiftVisorGuests
import Testing

/// A process's threads, descriptors and resident memory, from /proc.
struct ProcessFootprint: CustomStringConvertible {
    var threads: Int
    var descriptors: Int
    var residentBytes: Int

    init(pid: Int32) {
        let fm = FileManager.default
        threads = (try? fm.contentsOfDirectory(atPath: "/proc/\(pid)/task").count) ?? -1
        descriptors = (try? fm.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
        let statm = (try? String(contentsOfFile: "/proc/\(pid)/statm", encoding: .utf8)) ?? ""
        let pages = statm.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? -1
        residentBytes = pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    var description: String { "\(threads) threads, \(descriptors) fds, RSS \(residentBytes >> 10) KiB" }
}

/// Collects a pipe's output on a thread of its own.
final class OutputCollector: Sendable {
    private let bytes = Mutex<[UInt8]>([])

    init(_ handle: FileHandle) {
        Thread.detachNewThread { [self] in
            while true {
                let data = handle.availableData
                if data.isEmpty { return }
                bytes.withLock { $0.append(contentsOf: data) }
            }
        }
    }

    var text: String { bytes.withLock { String(decoding: $0, as: UTF8.self) } }

    /// Waits up to `seconds` for `condition` on the text so far.
    func wait(_ seconds: Double = 10, until condition: (String) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition(text) { return true }
            Thread.sleep(forTimeInterval: 0.001)
        }
        return condition(text)
    }
}

extension KVMIntegration.CLITests {
    /// Linux's pseudo-terminal ioctls (not in Glibc's Swift overlay).
    static let setPTYLock: UInt = 0x4004_5431, getPTYNumber: UInt = 0x8004_5430

    /// Writes one byte to the terminal's primary side, as if typed.
    static func type(_ byte: UInt8, into fd: Int32) -> Bool {
        var byte = byte
        // SAFETY: write(2) reads one byte from `byte`, a local that outlives the call.
        return unsafe write(fd, &byte, 1) == 1
    }

    /// Defect 2 of the hardening issue: under `--on-reboot restart` with standard input open,
    /// every boot used to start a console reader that stayed blocked in read(0) holding its
    /// dead machine, and swallowed the next input.
    @Test(
        "200 guest resets under --on-reboot restart, input on a pseudo-terminal: each boot gets its input; threads, descriptors and RSS stay flat"
    )
    func rebootLoopOnTerminal() throws {
        let boots = 200
        let image = try #require(builtinImage("reset_echo"))
        let kernel = try temporaryFile(image)
        defer { removeFile(kernel) }

        // The pseudo-terminal: the VMM reads the subsidiary side as its standard input.
        // SAFETY: open reads a NUL-terminated path, valid for the call.
        let primary = unsafe open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard primary >= 0 else {
            Issue.record("cannot open /dev/ptmx")
            return
        }
        defer { close(primary) }
        var unlock: Int32 = 0
        var number: UInt32 = 0
        // SAFETY: TIOCSPTLCK reads one int and TIOCGPTN writes one, each a local that
        // outlives its call.
        let unlocked = unsafe ioctl(primary, Self.setPTYLock, &unlock) == 0
        let numbered = unsafe ioctl(primary, Self.getPTYNumber, &number) == 0
        #expect(unlocked && numbered)
        // SAFETY: as above.
        let subsidiary = unsafe open("/dev/pts/\(number)", O_RDWR | O_NOCTTY)
        guard subsidiary >= 0 else {
            Issue.record("cannot open /dev/pts/\(number)")
            return
        }

        let process = Process()
        process.executableURL = Self.binary
        process.arguments = [
            "boot", "--kernel", kernel, "--memory", "32M", "--cmdline-replace", "",
            "--on-reboot", "restart", "--debug-exit-port",
        ]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle(fileDescriptor: subsidiary, closeOnDealloc: true)
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        let console = OutputCollector(output.fileHandleForReading)

        var expected = ""
        var baseline: ProcessFootprint?
        for boot in 0..<boots {
            expected += "ready\n"
            let ready = expected
            guard console.wait(until: { $0 == ready }) else {
                Issue.record(
                    "boot \(boot + 1): expected \(ready.suffix(40).debugDescription), got \(console.text.suffix(40).debugDescription)"
                )
                return
            }
            if boot == 10 { baseline = ProcessFootprint(pid: process.processIdentifier) }
            // Typed after boot N said it is ready: boot N must be the one to echo it.
            let letter = UInt8(ascii: "a") + UInt8(boot % 16)  // a-p: q ends the VM
            #expect(Self.type(letter, into: primary))
            expected += String(UnicodeScalar(letter)) + "\n"
        }
        let last = expected + "ready\n"
        #expect(console.wait(until: { $0 == last }), "the last boot did not start")
        let after = ProcessFootprint(pid: process.processIdentifier)
        #expect(Self.type(UInt8(ascii: "q"), into: primary))
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)

        let before = try #require(baseline)
        print("reboot loop: after boot 11: \(before); after boot \(boots + 1): \(after)")
        #expect(after.threads == before.threads, "threads grew from \(before.threads) to \(after.threads)")
        #expect(after.descriptors == before.descriptors, "descriptors grew from \(before.descriptors) to \(after.descriptors)")
        #expect(after.residentBytes - before.residentBytes < 8 << 20, "RSS grew from \(before) to \(after)")
    }
}
