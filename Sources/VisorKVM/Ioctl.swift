internal import CKVM
import Glibc

/// Runs an ioctl through `body`, retrying on EINTR, and turns -1 into `KVMError.ioctl`.
/// Returns the ioctl's non-negative result.
@inline(__always)
func checkedIoctl(_ name: StaticString, _ body: () -> Int32) throws(KVMError) -> Int32 {
    while true {
        let result = body()
        if result >= 0 { return result }
        let code = errno
        if code == EINTR { continue }
        throw KVMError.ioctl(name: name.description, errno: code)
    }
}

/// Calls an ioctl whose argument is a structure the kernel reads or writes.
///
/// The pointer handed to the kernel is that of `value`, valid for the duration of the
/// call: `withUnsafeMutablePointer` pins it, and the kernel touches exactly
/// `MemoryLayout<T>.size` bytes, the size encoded in the ioctl number for `T`.
@inline(__always)
func ioctlStruct<T>(_ fd: Int32, _ request: UInt, _ name: StaticString, _ value: inout T)
    throws(KVMError)
{
    _ = try checkedIoctl(name) {
        // SAFETY: as above: the pointer is pinned for the call and the kernel touches only `T`.
        unsafe withUnsafeMutablePointer(to: &value) { unsafe ckvm_ioctl_pointer(fd, request, $0) }
    }
}
