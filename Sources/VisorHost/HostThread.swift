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

/// A condition under which the calling thread's blocking writes give up.
///
/// A vCPU thread sets one for its whole exit loop: "this machine is being paused or
/// stopped". Every `HostIO.write` (the console, a trace line, a log message) on that thread
/// then asks it before each `write(2)`, so the kick that interrupts a write blocked on a full
/// pipe also ends it, whoever wrote the closure that called it.
public enum WriteGiveUp {
    private final class Condition {
        let holds: () -> Bool
        init(_ holds: @escaping () -> Bool) { self.holds = holds }
    }

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        // SAFETY: pthread_key_create writes only `key`, a local that outlives the call. No
        // destructor: `during(_:run:)` clears the value before its frame ends.
        let rc = unsafe pthread_key_create(&key, nil)
        precondition(rc == 0, "pthread_key_create failed: \(rc)")
        return key
    }()

    /// Runs `body` with `condition` as the calling thread's give-up condition.
    package static func during<R>(_ condition: @escaping () -> Bool, run body: () -> R) -> R {
        let box = Condition(condition)
        // SAFETY: the thread's slot holds an unretained pointer to `box`, which this frame
        // keeps alive until the slot is cleared below; only this thread reads its slot.
        unsafe pthread_setspecific(key, Unmanaged.passUnretained(box).toOpaque())
        defer {
            // Cleared before `box` can be released.
            pthread_setspecific(key, nil)
            withExtendedLifetime(box) {}
        }
        return body()
    }

    /// Whether the calling thread's condition holds now; false on a thread without one.
    public static var holds: Bool {
        // SAFETY: a non-nil value was set by `during(_:run:)` on this thread and points to a
        // Condition that frame keeps alive (see there).
        guard let raw = unsafe pthread_getspecific(key) else { return false }
        return unsafe Unmanaged<Condition>.fromOpaque(raw).takeUnretainedValue().holds()
    }
}
