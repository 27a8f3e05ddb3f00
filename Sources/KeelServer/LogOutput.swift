import Glibc
import Logging

/// How log lines are written to standard error.
public enum LogFormat: String, CaseIterable, Sendable {
    /// swift-log's plain text lines.
    case text
    /// One JSON object per line (for log shippers).
    case json
}

/// Sends swift-log's output to standard error, from `level` up, as text or JSON lines. Call once,
/// before anything logs.
public func bootstrapLogging(level: Logger.Level, format: LogFormat) {
    LoggingSystem.bootstrap { label in
        switch format {
        case .text:
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        case .json:
            return JSONLogHandler(label: label, logLevel: level)
        }
    }
}

/// A swift-log handler writing one JSON object per event to standard error, with one `write` call per
/// line (lines from several threads never interleave):
/// `{"time":"2026-12-02T04:12:40Z","level":"info","label":"keel.server","message":"started","endpoints":"5"}`.
public struct JSONLogHandler: LogHandler {
    /// The logger's label.
    public let label: String
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]

    /// A handler for `label` at `logLevel`.
    public init(label: String, logLevel: Logger.Level = .info) {
        self.label = label
        self.logLevel = logLevel
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let bytes = Array(render(event, time: Self.timestamp()).utf8)
        _ = bytes.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }

    /// The event's line, newline included.
    func render(_ event: LogEvent, time: String) -> String {
        var fields = metadata
        if let explicit = event.metadata { fields.merge(explicit) { $1 } }
        if let error = event.error { fields["error"] = "\(error)" }
        var out = "{\"time\":\(quoted(time)),\"level\":\"\(event.level)\",\"label\":\(quoted(label)),"
        out += "\"message\":\(quoted(event.message.description))"
        for (key, value) in fields.sorted(by: { $0.key < $1.key }) where !["time", "level", "label", "message"].contains(key) {
            out += ",\(quoted(key)):\(quoted("\(value)"))"
        }
        return out + "}\n"
    }

    /// UTC, to the second, in ISO 8601.
    static func timestamp() -> String {
        var now = time(nil)
        var parts = tm()
        gmtime_r(&now, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%SZ", &parts)
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
