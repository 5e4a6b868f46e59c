package import Glibc

/// Threads for vCPUs and for the host-side helpers of a VM (signal and input threads).
public enum HostThread {
    /// Runs `body` on a new detached thread. Returns 0 or the pthread_create error.
    @discardableResult
    public static func detach(_ body: @escaping @Sendable () -> Void) -> Int32 { VCPUThread.start(body) }
}

/// POSIX threads for vCPUs: each vCPU gets its own, so that a signal can kick exactly one
/// of them out of KVM_RUN, and so that a blocking KVM_RUN never occupies a Swift
/// concurrency thread.
package enum VCPUThread {
    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }

    /// Starts `body` on a new joinable thread, stored in `thread`. Returns 0 or the error.
    package static func create(_ thread: inout pthread_t, _ body: @escaping () -> Void) -> Int32 {
        // SAFETY: the retained Body is handed to the new thread, which takes (and so
        // releases) it exactly once; if the thread cannot start, we release it here.
        let context = unsafe Unmanaged.passRetained(Body(body)).toOpaque()
        let rc = unsafe pthread_create(
            &thread, nil,
            { context in
                unsafe Unmanaged<Body>.fromOpaque(context!).takeRetainedValue().run()
                return nil
            }, context)
        if rc != 0 { unsafe Unmanaged<Body>.fromOpaque(context).release() }
        return rc
    }

    /// Starts `body` on a new detached thread. Returns 0 or the pthread_create error.
    package static func start(_ body: @escaping @Sendable () -> Void) -> Int32 {
        var thread = pthread_t()
        let rc = create(&thread, body)
        if rc == 0 { pthread_detach(thread) }
        return rc
    }

    /// Waits for a thread started by `create` to end; its result is not asked for.
    package static func join(_ thread: pthread_t) {
        _ = pthread_join(thread, nil)
    }
}
