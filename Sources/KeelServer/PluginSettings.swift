/// A plugin's settings as the configuration file gave them: keys to scalar text, each with its line.
/// Plugins read them through a ``PluginSettingsReader``, which reports wrong values and unknown keys
/// in the same form as the rest of the configuration.
public struct PluginSettings: Sendable, Hashable {
    /// One setting's value.
    public struct Value: Sendable, Hashable {
        /// The text as written (numbers and booleans too).
        public var text: String
        /// Its line in the file, when known.
        public var line: Int?

        /// Creates a value.
        public init(_ text: String, line: Int? = nil) {
            self.text = text
            self.line = line
        }

        // Equality ignores the line: moving a setting within the file is not a change.
        public static func == (lhs: Value, rhs: Value) -> Bool { lhs.text == rhs.text }
        public func hash(into hasher: inout Hasher) { hasher.combine(text) }
    }

    /// The settings by key.
    public var values: [String: Value]
    /// The line of the `settings` key itself.
    public var line: Int?

    /// Creates settings from plain key-value text.
    public init(_ values: [String: String] = [:]) {
        self.values = values.mapValues { Value($0) }
    }

    /// Creates settings with lines.
    public init(values: [String: Value], line: Int?) {
        self.values = values
        self.line = line
    }

    // Equality ignores the line, as for values.
    public static func == (lhs: PluginSettings, rhs: PluginSettings) -> Bool { lhs.values == rhs.values }
    public func hash(into hasher: inout Hasher) { hasher.combine(values) }
}

/// Reads a plugin's settings with types and defaults, reporting each problem to the configuration's
/// diagnostics (`settings.KEY`, with the line and a fix) instead of failing at the first.
public final class PluginSettingsReader {
    private let settings: PluginSettings
    private let diagnostics: ConfigurationDiagnostics
    private let endpoint: String
    private var read: Set<String> = []

    /// Reads `settings` of `endpoint`, reporting to `diagnostics`.
    public init(_ settings: PluginSettings, endpoint: String, diagnostics: ConfigurationDiagnostics) {
        self.settings = settings
        self.endpoint = endpoint
        self.diagnostics = diagnostics
    }

    /// Reports a problem with setting `key`.
    public func report(_ key: String, problem: String, fix: String) {
        diagnostics.report(line: settings.values[key]?.line ?? settings.line, endpoint: endpoint,
                           key: "settings.\(key)", problem: problem, fix: fix)
    }

    /// A string setting.
    public func string(_ key: String, default value: String) -> String {
        read.insert(key)
        return settings.values[key]?.text ?? value
    }

    /// An integer setting within `range`.
    public func integer(_ key: String, default value: Int, in range: ClosedRange<Int> = 0...Int.max) -> Int {
        read.insert(key)
        guard let text = settings.values[key]?.text else { return value }
        guard let number = Int(text), range.contains(number) else {
            report(key, problem: "\"\(text)\" is not an integer in \(range.lowerBound)...\(range.upperBound)",
                   fix: "write a whole number such as \(value)")
            return value
        }
        return number
    }

    /// A size in bytes within `range`: a number, or one with a unit (`64KiB`, `16MiB`).
    public func bytes(_ key: String, default value: Int, in range: ClosedRange<Int> = 0...Int.max) -> Int {
        read.insert(key)
        guard let text = settings.values[key]?.text else { return value }
        guard let number = parseByteCount(text), range.contains(number) else {
            report(key, problem: "\"\(text)\" is not a size in \(range.lowerBound)...\(range.upperBound) bytes",
                   fix: "write bytes, or a number with KiB or MiB (e.g. 64KiB)")
            return value
        }
        return number
    }

    /// A boolean setting (`true`/`false`, `yes`/`no`, `on`/`off`).
    public func bool(_ key: String, default value: Bool) -> Bool {
        read.insert(key)
        guard let text = settings.values[key]?.text else { return value }
        guard let flag = parseBool(text) else {
            report(key, problem: "\"\(text)\" is not a boolean", fix: "write true or false")
            return value
        }
        return flag
    }

    /// Every setting as text, sorted by key (for plugins that check their settings themselves, such as
    /// those loaded from libraries); counts as reading them all.
    public func allValues() -> [(String, String)] {
        let pairs = settings.values.sorted { $0.key < $1.key }.map { ($0.key, $0.value.text) }
        for (key, _) in pairs { read.insert(key) }
        return pairs
    }

    /// Reports every key that no accessor asked for (a typo, or a setting of another plugin). Call it
    /// once, after reading.
    public func reportUnknownKeys(plugin: String) {
        for (key, value) in settings.values.sorted(by: { $0.key < $1.key }) where !read.contains(key) {
            let suggestion = closestMatch(to: key, in: Array(read)).map { "did you mean \"\($0)\"?" }
            let known = read.isEmpty ? "it takes no settings" : "it knows \(read.sorted().joined(separator: ", "))"
            diagnostics.report(line: value.line, endpoint: endpoint, key: "settings.\(key)",
                               problem: "plugin \"\(plugin)\" has no setting \"\(key)\"",
                               fix: suggestion ?? "remove it (\(known))")
        }
    }
}

/// `true`/`false`, `yes`/`no`, `on`/`off`; nil for anything else.
func parseBool(_ text: String) -> Bool? {
    switch text.lowercased() {
    case "true", "yes", "on": true
    case "false", "no", "off": false
    default: nil
    }
}
