import Glibc
import Synchronization
import SwiftVisor
import VisorHost
import VisorKVM

/// Feeds standard input to the running machine's COM1 receive FIFO.
///
/// One reader thread serves every machine of the process: after a guest reset under
/// `--on-reboot restart` the next machine is attached in place of the old one, so no thread
/// stays behind holding a dead machine, and bytes typed while no machine is attached wait
/// for the next one instead of going to the old one.
///
/// When standard input is a terminal it is put in raw mode (no line buffering, no echo)
/// while a machine is attached, with one exception: ISIG stays on, so Ctrl-C still stops
/// the VM. The FIFO holds 64 bytes; when it is full the reader waits for the guest to drain
/// it rather than dropping input.
final class ConsoleInput: Sendable {
    private struct State {
        /// The machine that gets input, if one is attached.
        var machine: Machine?
        /// The terminal's settings before raw mode; the main and signal threads may both
        /// restore them.
        var saved: termios?
        var readerStarted = false
    }

    private let state = Mutex(State())

    /// Sends input to `machine` from now on. The first call starts the reader thread, which
    /// takes the console's seccomp filter when the machine's configuration asks for filters.
    func start(machine: Machine) {
        let attributes = HostTerminal.enterRawMode(0)
        let startReader = state.withLock { state in
            state.machine = machine
            if let attributes, state.saved == nil { state.saved = attributes }
            defer { state.readerStarted = true }
            return !state.readerStarted
        }
        if startReader { startReaderThread(confine: machine.configuration.seccomp) }
    }

    /// Stops sending input to the attached machine. Input read from now on waits for the
    /// next machine.
    func detach() {
        state.withLock { $0.machine = nil }
    }

    /// The attached machine, if any.
    private var machine: Machine? { state.withLock { $0.machine } }

    private func startReaderThread(confine: Bool) {
        _ = HostThread.detach { [self] in
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
                    // Looked up for every try, so the thread never keeps a machine alive.
                    let taken = machine?.sendConsoleInput(Array(pending)) ?? 0
                    pending = pending.dropFirst(taken)
                    if taken == 0 { HostIO.sleep(nanoseconds: 1_000_000) }
                }
            }
        }
    }

    /// Puts the terminal back as it was.
    func restoreTerminal() {
        state.withLock { state in
            if let attributes = state.saved {
                HostTerminal.restore(0, attributes)
                state.saved = nil
            }
        }
    }
}
