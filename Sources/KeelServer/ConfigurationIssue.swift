/// One thing wrong with a configuration file: where (file, line, endpoint, key), what, and how to fix it.
public struct ConfigurationIssue: Sendable, Hashable, CustomStringConvertible {
    /// The file (or `<default>` for the embedded configuration).
    public var file: String
    /// The line, counted from 1, when the format gives it.
    public var line: Int?
    /// The endpoint's name (or `endpoints[N]` before it has one), nil for top-level keys.
    public var endpoint: String?
    /// The key, as a dotted path within the endpoint or file (`limits.max-connections`).
    public var key: String
    /// What is wrong.
    public var problem: String
    /// How to fix it.
    public var fix: String

    /// Creates an issue.
    public init(file: String, line: Int?, endpoint: String?, key: String, problem: String, fix: String) {
        self.file = file
        self.line = line
        self.endpoint = endpoint
        self.key = key
        self.problem = problem
        self.fix = fix
    }

    /// `FILE:LINE: endpoint "NAME": KEY: PROBLEM (fix: FIX)`.
    public var description: String {
        var text = file
        if let line { text += ":\(line)" }
        text += ": "
        if let endpoint { text += "endpoint \"\(endpoint)\": " }
        text += "\(key): \(problem)"
        if !fix.isEmpty { text += " (fix: \(fix))" }
        return text
    }
}

/// A configuration that was refused, with every issue found in it (not just the first).
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    /// The issues, in file order.
    public var issues: [ConfigurationIssue]

    /// Creates an error from its issues.
    public init(issues: [ConfigurationIssue]) {
        self.issues = issues
    }

    /// One issue per line, after a count.
    public var description: String {
        let count = issues.count == 1 ? "1 error" : "\(issues.count) errors"
        return "configuration refused, \(count):\n" + issues.map { "  \($0)" }.joined(separator: "\n")
    }
}

/// Collects issues while a configuration (or a plugin's settings) is read.
public final class ConfigurationDiagnostics {
    /// The file being read.
    public let file: String
    /// The issues so far.
    public private(set) var issues: [ConfigurationIssue] = []

    /// Starts collecting issues for `file`.
    public init(file: String) {
        self.file = file
    }

    /// Records an issue.
    public func report(line: Int?, endpoint: String?, key: String, problem: String, fix: String) {
        issues.append(ConfigurationIssue(file: file, line: line, endpoint: endpoint, key: key, problem: problem, fix: fix))
    }

    /// True when nothing was reported.
    public var isClean: Bool { issues.isEmpty }
}

/// The closest of `candidates` to `word` (a typo's intended key), if one is close enough.
func closestMatch(to word: String, in candidates: [String]) -> String? {
    func distance(_ a: [Character], _ b: [Character]) -> Int {
        var previous = Array(0...b.count)
        for (i, ca) in a.enumerated() {
            var current = [i + 1]
            for (j, cb) in b.enumerated() {
                current.append(min(previous[j + 1] + 1, current[j] + 1, previous[j] + (ca == cb ? 0 : 1)))
            }
            previous = current
        }
        return previous[b.count]
    }
    let lowered = Array(word.lowercased())
    let scored = candidates.map { ($0, distance(lowered, Array($0))) }.min { $0.1 < $1.1 }
    guard let (best, score) = scored, score <= max(2, word.count / 3) else { return nil }
    return best
}
