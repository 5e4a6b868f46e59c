import Glibc

/// Runs a closure on a new POSIX thread and waits for it. vCPUs get their own threads so
/// that a signal can kick exactly one of them out of KVM_RUN, and so that a blocking
/// KVM_RUN never occupies a Swift concurrency thread.
/// Threads for vCPUs and for the host-side helpers of a VM (signal and input threads).
public enum HostThread {
    /// Runs `body` on a new detached thread. Returns 0 or the pthread_create error.
    @discardableResult
    public static func detach(_ body: @escaping @Sendable () -> Void) -> Int32 { VCPUThread.start(body) }
}

enum VCPUThread {
    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }

    /// Starts `body` on a new detached thread. Returns 0, or the pthread_create error.
    static func start(_ body: @escaping @Sendable () -> Void) -> Int32 {
        var thread = pthread_t()
        // SAFETY: as in runAndJoin; the thread owns the Body from here on.
        let context = Unmanaged.passRetained(Body(body)).toOpaque()
        let rc = pthread_create(&thread, nil, { context in
            Unmanaged<Body>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, context)
        guard rc == 0 else {
            Unmanaged<Body>.fromOpaque(context).release()
            return rc
        }
        pthread_detach(thread)
        return 0
    }

    /// Starts `body` on a new joinable thread, stored in `thread`. Returns 0 or the error.
    static func create(_ thread: inout pthread_t, _ body: @escaping @Sendable () -> Void) -> Int32 {
        // SAFETY: as in runAndJoin; the thread owns the Body from here on.
        let context = Unmanaged.passRetained(Body(body)).toOpaque()
        let rc = pthread_create(&thread, nil, { context in
            Unmanaged<Body>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, context)
        if rc != 0 { Unmanaged<Body>.fromOpaque(context).release() }
        return rc
    }

    /// Starts `body` on a new thread and joins it. Returns 0, or the pthread_create error.
    static func runAndJoin(_ body: @escaping () -> Void) -> Int32 {
        var thread = pthread_t()
        // SAFETY: the retained Body is handed to the new thread, which takes (and so
        // releases) it exactly once; on failure to start we release it here instead.
        let context = Unmanaged.passRetained(Body(body)).toOpaque()
        let rc = pthread_create(&thread, nil, { context in
            Unmanaged<Body>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, context)
        guard rc == 0 else {
            Unmanaged<Body>.fromOpaque(context).release()
            return rc
        }
        pthread_join(thread, nil)
        return 0
    }
}
