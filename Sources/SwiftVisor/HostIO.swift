package import VisorHost

// The host helpers live in VisorHost, with the system calls; here they learn the
// machine's error type, so that embedders and the CLI get a `MachineError` they can show.
extension HostIO {
    /// Reads a whole regular file, refusing anything larger than `limit` bytes.
    package static func readFile(_ path: String, limit: Int) throws(MachineError) -> [UInt8] {
        do { return try readRegularFile(path, limit: limit) } catch {
            throw .cannotReadFile(path: path, reason: error.reason)
        }
    }

    /// Creates or truncates `path` and writes `bytes` to it.
    package static func writeFile(_ path: String, _ bytes: [UInt8]) throws(MachineError) {
        do { try createFile(path, bytes) } catch { throw .cannotWriteFile(path: path, reason: error.reason) }
    }

    /// Creates or truncates `path` and keeps it open, to be rewritten later.
    package static func outputFile(_ path: String) throws(MachineError) -> HostOutputFile {
        do { return try openOutputFile(path) } catch {
            throw .cannotWriteFile(path: path, reason: error.reason)
        }
    }
}
