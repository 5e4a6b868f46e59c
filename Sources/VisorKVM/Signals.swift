internal import CKVM
import Glibc

/// The signals SwiftVisor uses around vCPU threads.
package enum VCPUSignals {
    /// Sent to a vCPU thread to make its blocking KVM_RUN return (with EINTR).
    package static let kick = SIGUSR2

    /// Installs the kick signal's handler once per process.
    package static func installKickHandler() {
        _ = installed
    }

    private static let installed: Bool = ckvm_install_kick_handler(kick) == 0

    /// Blocks `signals` in the calling thread (threads it creates inherit the mask).
    package static func block(_ signals: [Int32]) {
        // SAFETY: the C function reads `count` ints from the buffer, valid for the call.
        _ = unsafe signals.withUnsafeBufferPointer { unsafe ckvm_thread_signal_mask(SIG_BLOCK, $0.baseAddress, Int32($0.count)) }
    }

    /// Unblocks `signals` in the calling thread.
    package static func unblock(_ signals: [Int32]) {
        // SAFETY: as in block(_:).
        _ = unsafe signals.withUnsafeBufferPointer {
            unsafe ckvm_thread_signal_mask(SIG_UNBLOCK, $0.baseAddress, Int32($0.count))
        }
    }

    /// Waits at most `milliseconds` for one of `signals`, which the caller must have
    /// blocked; returns nil when none came.
    package static func wait(for signals: [Int32], milliseconds: Int) -> Int32? {
        // SAFETY: as in block(_:).
        let signal = unsafe signals.withUnsafeBufferPointer {
            unsafe ckvm_wait_for_signal_timed($0.baseAddress, Int32($0.count), milliseconds)
        }
        return signal > 0 ? signal : nil
    }

    /// Waits for one of `signals`, which the caller must have blocked.
    package static func wait(for signals: [Int32]) -> Int32 {
        // SAFETY: as in block(_:).
        unsafe signals.withUnsafeBufferPointer { unsafe ckvm_wait_for_signal($0.baseAddress, Int32($0.count)) }
    }
}
