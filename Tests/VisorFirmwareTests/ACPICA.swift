import Glibc

/// A failure of the test harness itself (not of the code under test).
struct HarnessError: Error, CustomStringConvertible {
    let description: String
}

/// A fresh directory under /tmp, removed with its files when released.
final class TemporaryDirectory {
    let path: String

    init() throws {
        var template = Array("/tmp/visorfirmware-XXXXXX".utf8CString)
        // SAFETY: `template` is a NUL-terminated, writable buffer that mkdtemp rewrites in
        // place; the pointer is used only during the call.
        let made = unsafe template.withUnsafeMutableBufferPointer { unsafe mkdtemp($0.baseAddress!) }
        guard unsafe made != nil else { throw HarnessError(description: "mkdtemp failed: errno \(errno)") }
        // SAFETY: mkdtemp kept the buffer NUL-terminated.
        path = unsafe template.withUnsafeBufferPointer { unsafe String(cString: $0.baseAddress!) }
    }

    deinit {
        // SAFETY: opendir, unlink and rmdir read NUL-terminated copies of the paths Swift
        // passes for each call; `dir` is used only until closedir, once.
        guard let dir = unsafe opendir(path) else { return }
        var names: [String] = []
        while let entry = unsafe readdir(dir) {
            // SAFETY: d_name is a NUL-terminated array inside the dirent readdir returned,
            // valid until the next readdir call; it is copied into a String at once.
            let name = unsafe withUnsafePointer(to: &entry.pointee.d_name) {
                unsafe $0.withMemoryRebound(to: CChar.self, capacity: Int(NAME_MAX) + 1) { unsafe String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        unsafe closedir(dir)
        for name in names { unsafe unlink(path + "/" + name) }
        unsafe rmdir(path)
    }

    func write(_ bytes: some Collection<UInt8>, to name: String) throws {
        // SAFETY: one FILE, opened and closed here.
        guard let file = unsafe fopen(path + "/" + name, "wb") else {
            throw HarnessError(description: "cannot create \(path)/\(name): errno \(errno)")
        }
        defer { unsafe fclose(file) }
        let array = Array(bytes)
        // SAFETY: fwrite reads exactly array.count bytes from the array's own storage.
        let written = unsafe array.withUnsafeBytes { unsafe fwrite($0.baseAddress, 1, $0.count, file) }
        guard written == array.count else { throw HarnessError(description: "short write to \(path)/\(name)") }
    }

    /// The file's contents as text, or nil if it does not exist.
    func read(_ name: String) -> String? {
        readBytes(name).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The file's contents, or nil if it does not exist.
    func readBytes(_ name: String) -> [UInt8]? {
        // SAFETY: one FILE, opened and closed here; fread writes at most count bytes into
        // the array, pinned for the call.
        guard let file = unsafe fopen(path + "/" + name, "rb") else { return nil }
        defer { unsafe fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            // SAFETY: fread writes at most chunk.count bytes into chunk's own storage.
            let n = unsafe chunk.withUnsafeMutableBytes { unsafe fread($0.baseAddress, 1, $0.count, file) }
            if n == 0 { break }
            bytes += chunk[0..<n]
        }
        return bytes
    }
}

/// Runs the ACPICA tools from Debian's acpica-tools: `iasl` (compiler and disassembler)
/// and `acpiexec` (ACPICA's table loader and AML interpreter, as in the Linux kernel).
enum ACPICA {
    static let missing = "not found: install acpica-tools (iasl), e.g. sudo apt-get install acpica-tools"

    struct Run {
        let status: Int32
        /// Standard output and standard error together.
        let output: String
    }

    /// Runs `tool arguments...` with no input and its output captured in `directory`.
    /// Throws if the tool cannot be started (saying to install acpica-tools when missing).
    static func run(_ tool: String, _ arguments: [String], in directory: TemporaryDirectory) throws -> Run {
        let logName = "\(tool)-\(UInt32.random(in: 0...UInt32.max)).log"
        let logPath = directory.path + "/" + logName
        // SAFETY: the spawn actions are initialised before use and destroyed once; the
        // strings they name are copied by the calls.
        var actions = unsafe posix_spawn_file_actions_t()
        unsafe posix_spawn_file_actions_init(&actions)
        defer { unsafe posix_spawn_file_actions_destroy(&actions) }
        unsafe posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        unsafe posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        unsafe posix_spawn_file_actions_adddup2(&actions, 1, 2)

        // SAFETY: each strdup'd string is freed once, after posix_spawnp has copied it.
        let argv: [UnsafeMutablePointer<CChar>?] = unsafe ([tool] + arguments).map { unsafe strdup($0) } + [nil]
        defer { unsafe argv.forEach { unsafe free($0) } }
        var pid: pid_t = 0
        // SAFETY: argv is a NULL-terminated array of strdup'd C strings that outlive the
        // call; environ is the process environment, which posix_spawnp only reads.
        let rc = unsafe argv.withUnsafeBufferPointer { unsafe posix_spawnp(&pid, tool, &actions, nil, $0.baseAddress!, environ) }
        guard rc == 0 else {
            throw HarnessError(description: rc == ENOENT ? "\(tool) \(missing)" : "cannot start \(tool): error \(rc)")
        }
        var status: Int32 = 0
        while unsafe waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        // WIFEXITED/WEXITSTATUS: low 7 bits 0 means a normal exit, code in bits 8-15.
        let exitCode = status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
        return Run(status: exitCode, output: directory.read(logName) ?? "")
    }
}
