package import Logging
import Synchronization
package import VisorHost

/// Firecracker's log level filter (`level` of `PUT /logger`, `--level`).
package enum LogLevelFilter: Int, Sendable, Comparable, CaseIterable {
    case off, error, warn, info, debug, trace

    /// Firecracker's names, case-insensitive; `Warning` is `Warn`.
    package init?(name: String) {
        switch name.lowercased() {
        case "off": self = .off
        case "error": self = .error
        case "warn", "warning": self = .warn
        case "info": self = .info
        case "debug": self = .debug
        case "trace": self = .trace
        default: return nil
        }
    }

    package static func < (a: LogLevelFilter, b: LogLevelFilter) -> Bool { a.rawValue < b.rawValue }

    /// The filter a swift-log level falls under (notice counts as info, critical as error).
    package init(_ level: Logger.Level) {
        switch level {
        case .trace: self = .trace
        case .debug: self = .debug
        case .info, .notice: self = .info
        case .warning: self = .warn
        case .error, .critical: self = .error
        }
    }

    /// The least severe swift-log level that passes this filter (nil: none passes).
    var loggerLevel: Logger.Level? {
        switch self {
        case .off: nil
        case .error: .error
        case .warn: .warning
        case .info: .info
        case .debug: .debug
        case .trace: .trace
        }
    }

    /// The name a line shows with `show_level`.
    var label: String {
        switch self {
        case .off: "OFF"
        case .error: "ERROR"
        case .warn: "WARN"
        case .info: "INFO"
        case .debug: "DEBUG"
        case .trace: "TRACE"
        }
    }
}

/// `PUT /logger`'s body (and the configuration file's `logger`): every field optional.
package struct LoggerConfig: Sendable, Equatable {
    package var logPath: String?
    package var level: LogLevelFilter?
    package var showLevel: Bool?
    package var showLogOrigin: Bool?
    package var module: String?

    package init(
        logPath: String? = nil, level: LogLevelFilter? = nil, showLevel: Bool? = nil, showLogOrigin: Bool? = nil,
        module: String? = nil
    ) {
        self.logPath = logPath
        self.level = level
        self.showLevel = showLevel
        self.showLogOrigin = showLogOrigin
        self.module = module
    }

    package init(parsing body: JSONValue) throws(APIError) {
        let reader = try FieldReader(body, known: ["log_path", "level", "show_level", "show_log_origin", "module"])
        logPath = try reader.string("log_path")
        if let name = try reader.string("level") {
            guard let level = LogLevelFilter(name: name) else {
                throw .badRequest("An error occurred when deserializing the json body of a request: Invalid LevelFilter.")
            }
            self.level = level
        }
        showLevel = try reader.bool("show_level")
        showLogOrigin = try reader.bool("show_log_origin")
        module = try reader.string("module")
    }
}

/// Firecracker's log: one line per event, `{local time} [{instance}:{thread}{:LEVEL}{:file:line}] {message}`,
/// to standard error or to the file or FIFO a client named. Lines below the level, or
/// from another module than `module` names, are dropped; a line the target does not take
/// is lost and counted (`missedLines`), never retried or waited for.
package final class LogSink: Sendable {
    struct Settings {
        var target: HostLogTarget
        var level: LogLevelFilter = .info
        var showLevel = false
        var showOrigin = false
        var module: String?
    }

    package let instanceID: String
    private let clock: @Sendable () -> HostLocalTime
    private let settings: Mutex<Settings>
    private let missed = Atomic<UInt64>(0)
    /// The level, readable without the lock: `Logger` asks it before building a message.
    private let levelRaw: Atomic<Int>

    package init(
        instanceID: String, target: HostLogTarget = .standardError,
        clock: @escaping @Sendable () -> HostLocalTime = { HostLocalTime.now() }
    ) {
        self.instanceID = instanceID
        self.clock = clock
        self.settings = Mutex(Settings(target: target))
        self.levelRaw = Atomic(LogLevelFilter.info.rawValue)
    }

    /// Lines that could not be written so far (Firecracker's `logger.missed_log_count`).
    package var missedLines: UInt64 { missed.load(ordering: .relaxed) }

    package var level: LogLevelFilter { LogLevelFilter(rawValue: levelRaw.load(ordering: .relaxed)) ?? .info }

    /// Applies a logger configuration: a given path is opened first (an error changes
    /// nothing), then every given field replaces the current one.
    package func configure(
        _ config: LoggerConfig, open: (String) throws(HostFileError) -> HostLogTarget = HostLogTarget.open
    ) throws(APIError) {
        var target: HostLogTarget?
        if let path = config.logPath {
            do { target = try open(path) } catch {
                throw .badRequest("Logger error: Failed to open target file: \(error.reason)")
            }
        }
        settings.withLock { settings in
            if let target { settings.target = target }
            if let level = config.level { settings.level = level }
            if let show = config.showLevel { settings.showLevel = show }
            if let show = config.showLogOrigin { settings.showOrigin = show }
            if let module = config.module { settings.module = module }
            levelRaw.store(settings.level.rawValue, ordering: .relaxed)
        }
    }

    /// A swift-log `Logger` whose lines name `thread` (`main`, `fc_api`, `fc_vmm`, `fc_vcpu 0`).
    package func logger(thread: String) -> Logger {
        Logger(label: thread) { label in FirecrackerLogHandler(sink: self, thread: label) }
    }

    /// Writes one event, if the level and module filters let it through.
    func write(_ event: LogEvent, thread: String) {
        let level = LogLevelFilter(event.level)
        let time = clock()
        let line: [UInt8]? = settings.withLock { settings in
            guard level <= settings.level, level != .off else { return nil }
            if let module = settings.module, !event.source.hasPrefix(module) { return nil }
            let text = Self.format(
                time: time, instanceID: instanceID, thread: thread, level: settings.showLevel ? level : nil,
                origin: settings.showOrigin ? (event.file, event.line) : nil, message: event.message.description)
            return Array(text.utf8)
        }
        guard let line else { return }
        // Written under no lock: a slow target delays only this thread's line.
        let target = settings.withLock { $0.target }
        if !target.write(line) { missed.add(1, ordering: .relaxed) }
    }

    /// One line as Firecracker writes it, newline included.
    package static func format(
        time: HostLocalTime, instanceID: String, thread: String, level: LogLevelFilter?, origin: (String, UInt)?,
        message: String
    ) -> String {
        var text = timestamp(time) + " [" + instanceID + ":" + thread
        if let level { text += ":" + level.label }
        if let (file, line) = origin { text += ":\(file):\(line)" }
        // One event, one line: a newline in a message (a client's field name, say) cannot
        // forge another line.
        let flat =
            message.contains(where: \.isNewline)
            ? message.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).joined(separator: "\\n") : message
        return text + "] " + flat + "\n"
    }

    /// `%Y-%m-%dT%H:%M:%S.%f` with nine digits of nanoseconds.
    package static func timestamp(_ t: HostLocalTime) -> String {
        func pad(_ value: Int, _ width: Int) -> String {
            let digits = String(max(value, 0))
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(t.year, 4))-\(pad(t.month, 2))-\(pad(t.day, 2))T\(pad(t.hour, 2)):\(pad(t.minute, 2)):"
            + "\(pad(t.second, 2)).\(pad(t.nanosecond, 9))"
    }
}

/// The swift-log handler over a `LogSink`: the logger's label is the thread name.
package struct FirecrackerLogHandler: LogHandler {
    let sink: LogSink
    let thread: String
    package var metadata: Logger.Metadata = [:]
    package var metadataProvider: Logger.MetadataProvider?

    /// The sink's level: one `PUT /logger` changes every logger at once, so a level set
    /// on one logger is not kept.
    package var logLevel: Logger.Level {
        get { sink.level.loggerLevel ?? .critical }
        set {}
    }

    package subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    package func log(event: LogEvent) {
        sink.write(event, thread: thread)
    }
}
