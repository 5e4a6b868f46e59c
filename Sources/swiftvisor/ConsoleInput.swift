import Glibc
import Synchronization
import SwiftVisor
import VisorHost
import VisorKVM

/// Feeds standard input to the guest's COM1 receive FIFO.
///
/// When standard input is a terminal it is put in raw mode (no line buffering, no echo) for
/// the VM's lifetime, with one exception: ISIG stays on, so Ctrl-C still stops the VM.
/// The FIFO holds 64 bytes; when it is full the reader waits for the guest to drain it
/// rather than dropping input.
final class ConsoleInput: Sendable {
    /// The terminal's settings before raw mode; the main and signal threads may both restore them.
    private let saved = Mutex<termios?>(nil)

    func start(machine: Machine) {
        if let attributes = HostTerminal.enterRawMode(0) {
            saved.withLock { $0 = attributes }
        }
        let confine = machine.configuration.seccomp
        _ = HostThread.detach {
            // This thread handles nothing but input bytes; with the VM's filters on it
            // gets the console allowlist before its first read.
            if confine {
                do throws(SeccompError) { try Seccomp.install(.console) } catch {
                    HostIO.printError("swiftvisor: console input off: \(error)")
                    return
                }
            }
            var buffer = [UInt8](repeating: 0, count: 256)
            while true {
                let n = HostIO.read(from: 0, into: &buffer)
                guard n > 0 else { return }  // end of input, or no usable stdin
                var pending = buffer[0..<n]
                while !pending.isEmpty {
                    let taken = machine.sendConsoleInput(Array(pending))
                    pending = pending.dropFirst(taken)
                    if taken == 0 {
                        if machine.hasStopped { return }
                        HostIO.sleep(nanoseconds: 1_000_000)
                    }
                }
            }
        }
    }

    /// Puts the terminal back as it was.
    func restoreTerminal() {
        saved.withLock { saved in
            if let attributes = saved {
                HostTerminal.restore(0, attributes)
                saved = nil
            }
        }
    }
}
