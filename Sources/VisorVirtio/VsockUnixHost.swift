package import VisorHost
import Synchronization

/// The vsock device's host side on Unix sockets, served by an I/O thread: the listener at
/// `uds_path` (made when the machine was built, shared by every machine built from the
/// same configuration) and, for a guest connecting to host port P, `uds_path_P`. Every
/// socket is non-blocking; every readiness report runs on the I/O thread.
///
/// The thread is held weakly: its queue-notification handlers hold the device's transport,
/// hence the device and this object, so a strong reference would be a cycle that keeps
/// the listener (and its path) alive after the machine is gone.
package final class VsockUnixHost: VsockHostSide {
    private let listener: HostUnixListener
    private struct State {
        var watches: [Int32: IOWatch] = [:]
        var listenerWatch: IOWatch?
        weak var device: VirtioVsockDevice?
        weak var thread: IOThread?
        /// The device's deadline timer, made on the first `wake(at:)`.
        var timer: IOTimer?
    }
    private let state = Mutex(State())

    package init(listener: HostUnixListener, thread: IOThread) {
        self.listener = listener
        state.withLock { $0.thread = thread }
    }

    package func start(device: VirtioVsockDevice) {
        state.withLock { $0.device = device }
        _ = watchListener(true)
    }

    package func watchListener(_ on: Bool) -> Bool {
        state.withLock { state in
            guard let thread = state.thread else { return !on }
            if on, state.listenerWatch == nil {
                let device = state.device
                state.listenerWatch = try? thread.watch(listener.descriptor, for: .readable) { [weak device] _ in
                    device?.listenerReady()
                }
                return state.listenerWatch != nil
            } else if !on, let watch = state.listenerWatch {
                thread.unwatch(watch, descriptor: listener.descriptor)
                state.listenerWatch = nil
            }
            return true
        }
    }

    package func accept() -> SocketAccept { HostSocket.accept(listener.descriptor) }

    package func connect(port: UInt32) -> Int32? { HostSocket.connect(path: "\(listener.path)_\(port)") }

    package func send(_ handle: Int32, _ bytes: ArraySlice<UInt8>) -> SocketTransfer { HostSocket.send(handle, bytes) }

    package func receive(_ handle: Int32, into buffer: inout [UInt8], at offset: Int, count: Int, peek: Bool)
        -> SocketTransfer
    {
        HostSocket.receive(handle, into: &buffer, at: offset, count: count, peek: peek)
    }

    package func shutdownOutput(_ handle: Int32) { HostSocket.shutdownOutput(handle) }

    package func close(_ handle: Int32) {
        state.withLock { state in
            if let thread = state.thread, let watch = state.watches.removeValue(forKey: handle) {
                thread.unwatch(watch, descriptor: handle)
            }
        }
        HostSocket.close(handle)
    }

    /// On the I/O thread; at once on the caller's when the thread is gone (nothing else
    /// would close the sockets then).
    package func perform(_ work: @escaping @Sendable () -> Void) {
        guard let thread = state.withLock({ $0.thread }) else { return work() }
        thread.perform(work)
    }

    package var now: UInt64 { HostIO.monotonicNanoseconds() }

    package func wake(at deadline: UInt64) {
        state.withLock { state in
            guard let thread = state.thread else { return }
            let timer: IOTimer
            if let made = state.timer {
                timer = made
            } else {
                let device = state.device
                timer = thread.addTimer { [weak device] in device?.deadlinePassed() }
                state.timer = timer
            }
            thread.arm(timer, at: deadline)
        }
    }

    /// False when epoll refuses the watch or the change (or the thread is gone): the
    /// watch then stays as it was.
    package func watch(_ handle: Int32, readable: Bool, writable: Bool) -> Bool {
        var events: IOEvents = []
        if readable { events.insert(.readable) }
        if writable { events.insert(.writable) }
        return state.withLock { state in
            guard let thread = state.thread else { return events.isEmpty }
            if let watch = state.watches[handle] {
                if events.isEmpty {
                    thread.unwatch(watch, descriptor: handle)
                    state.watches[handle] = nil
                    return true
                }
                do throws(HostFileError) { try thread.change(watch, descriptor: handle, to: events) } catch {
                    return false
                }
                return true
            }
            guard !events.isEmpty else { return true }
            let device = state.device
            let watch = try? thread.watch(handle, for: events) { [weak device] ready in
                device?.hostSocketReady(handle, events: ready)
            }
            state.watches[handle] = watch
            return watch != nil
        }
    }
}
