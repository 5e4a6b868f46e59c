import Glibc

/// A disk image for a block device: a regular file or a host block device, open for the
/// machine's lifetime (closed on deinit). Opened once, by the machine builder, never per
/// request; the device moves data between it and guest RAM with `GuestMemory`'s
/// `readFromFile` and `writeToFile`.
package final class HostDiskFile: Sendable {
    /// The open descriptor, valid until deinit.
    package let fd: Int32
    /// The size in bytes when opened, a multiple of 512.
    package let size: UInt64
    /// Whether the file was opened read-only.
    package let readOnly: Bool
    /// The file's identity (device, inode), to refuse one file given twice.
    package let identity: Identity

    /// A file's device and inode numbers.
    package struct Identity: Hashable, Sendable {
        package let device: UInt64
        package let inode: UInt64
    }

    private init(fd: Int32, size: UInt64, readOnly: Bool, identity: Identity) {
        self.fd = fd
        self.size = size
        self.readOnly = readOnly
        self.identity = identity
    }

    deinit { close(fd) }

    /// Opens `path` read-write, or read-only. Refuses a path that does not exist or cannot
    /// be opened so, a directory or anything but a regular file or block device, a size
    /// that is not a multiple of 512 bytes, and a file in use: a writable disk takes an
    /// exclusive `flock(2)`, a read-only one a shared lock, so two VMs (or two disks of one)
    /// never write one image, nor does one write what another reads. Where the file system
    /// has no locks the file is opened without. The error is the reason.
    package static func open(_ path: String, readOnly: Bool) throws(HostFileError) -> HostDiskFile {
        let fd = unsafe Glibc.open(path, (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
        guard fd >= 0 else { throw HostFileError(errno: errno) }
        var info = stat()
        // SAFETY: fstat(2) writes only `info`, a local that outlives the call.
        guard unsafe fstat(fd, &info) == 0 else {
            let code = errno
            close(fd)
            throw HostFileError(errno: code)
        }
        let kind = info.st_mode & S_IFMT
        guard kind == S_IFREG || kind == S_IFBLK else {
            close(fd)
            throw HostFileError(reason: kind == S_IFDIR ? "is a directory" : "not a regular file or block device")
        }
        // lseek to the end gives the size of a block device as well as of a file.
        let end = lseek(fd, 0, SEEK_END)
        guard end >= 0 else {
            let code = errno
            close(fd)
            throw HostFileError(errno: code)
        }
        guard end % 512 == 0 else {
            close(fd)
            throw HostFileError(reason: "its size, \(end) bytes, is not a multiple of 512")
        }
        // Held until the descriptor is closed (deinit): the lock belongs to this open file.
        if flock(fd, (readOnly ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0 {
            let code = errno
            if code == EWOULDBLOCK {
                close(fd)
                throw HostFileError(
                    reason: "is in use: another disk or process holds a lock on it (a writable disk belongs to one VM)")
            }
            guard code == ENOLCK || code == EOPNOTSUPP || code == EINVAL else {
                close(fd)
                throw HostFileError(errno: code)
            }
        }
        let identity = Identity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
        return HostDiskFile(fd: fd, size: UInt64(end), readOnly: readOnly, identity: identity)
    }

    /// An anonymous disk (an unlinked temporary file) holding `contents`, whose length must be a
    /// multiple of 512, for tests and fuzzing. Open read-write whatever `readOnly` says, so
    /// that only the device's own checks keep a read-only disk unwritten.
    package static func anonymous(contents: [UInt8], readOnly: Bool) throws(HostFileError) -> HostDiskFile {
        guard contents.count % 512 == 0 else { throw HostFileError(reason: "not a multiple of 512 bytes") }
        // An unlinked temporary file: nothing is left behind, whatever happens to the process.
        var template = Array("/tmp/swiftvisor-disk-XXXXXX".utf8CString)
        // SAFETY: mkstemp(3) rewrites the six X of the NUL-terminated template in place.
        let fd = unsafe template.withUnsafeMutableBufferPointer { unsafe mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw HostFileError(errno: errno) }
        // SAFETY: the template is NUL-terminated, and holds the name mkstemp made.
        _ = unsafe template.withUnsafeBufferPointer { unsafe unlink($0.baseAddress!) }
        var done = 0
        while done < contents.count {
            // SAFETY: pwrite(2) reads at most count - done bytes starting at offset done (< count).
            let n = unsafe contents.withUnsafeBytes {
                unsafe pwrite(fd, $0.baseAddress! + done, $0.count - done, off_t(done))
            }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else {
                let code = errno
                close(fd)
                throw HostFileError(errno: code)
            }
            done += n
        }
        return HostDiskFile(fd: fd, size: UInt64(contents.count), readOnly: readOnly, identity: Identity(device: 0, inode: 0))
    }

    /// The file's current contents, read from offset 0 to its current end; nil on an error.
    /// For tests and fuzzing.
    package func contents() -> [UInt8]? {
        let end = lseek(fd, 0, SEEK_END)
        guard end >= 0, end <= Int.max else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(end))
        var done = 0
        while done < bytes.count {
            // SAFETY: pread(2) writes at most count - done bytes starting at offset done (< count).
            let n = unsafe bytes.withUnsafeMutableBytes {
                unsafe pread(fd, $0.baseAddress! + done, $0.count - done, off_t(done))
            }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { return nil }
            done += n
        }
        return bytes
    }

    /// fsync(2), retried on EINTR. Returns whether it succeeded.
    package func sync() -> Bool {
        while true {
            if fsync(fd) == 0 { return true }
            if errno != EINTR { return false }
        }
    }
}
