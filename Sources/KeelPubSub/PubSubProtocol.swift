import KeelBuffers

/// What a subscription names: one topic exactly, or every topic that starts with a prefix (written
/// with a trailing `*`: `prices.*` matches `prices.eur` and `prices.usd.spot`; a lone `*` matches all).
public struct TopicFilter: Hashable, Sendable, CustomStringConvertible {
    /// The topic, or the pattern's prefix (without its `*`).
    public let text: String
    /// True for a prefix pattern.
    public let isPattern: Bool

    /// A filter for `text` as written by a client (a trailing `*` makes it a pattern).
    public init(parsing text: String) {
        if text.hasSuffix("*") {
            self.text = String(text.dropLast())
            isPattern = true
        } else {
            self.text = text
            isPattern = false
        }
    }

    /// True when a message published to `topic` reaches this subscription.
    public func matches(_ topic: String) -> Bool {
        isPattern ? topic.utf8.starts(with: text.utf8) : topic == text
    }

    /// As the client wrote it.
    public var description: String { isPattern ? text + "*" : text }
}

/// A command a pub/sub client sent, one per line.
public enum PubSubCommand: Hashable, Sendable {
    /// `SUBSCRIBE <topic>`: deliver what is published to it from now on.
    case subscribe(TopicFilter)
    /// `UNSUBSCRIBE <topic>`: stop (the filter as it was subscribed).
    case unsubscribe(TopicFilter)
    /// `PUBLISH <topic> <payload>`: the payload is the rest of the line, as the byte range `payload`
    /// of the line it was parsed from (no copy).
    case publish(topic: String, payload: Range<Int>)
    /// `PING`: answered `PONG`.
    case ping
}

/// Why a line is not a command: answered `ERR <reason>` on a line of its own; the connection stays up.
public struct PubSubProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What was wrong, for the client.
    public let reason: String

    /// An error saying `reason`.
    public init(_ reason: String) { self.reason = reason }

    /// `ERR <reason>`.
    public var description: String { "ERR \(reason)" }
}

/// keel-pubsub's line protocol: client lines `SUBSCRIBE <topic>`, `UNSUBSCRIBE <topic>`,
/// `PUBLISH <topic> <payload>`, `PING`; deliveries `MESSAGE <topic> <payload>`; replies `OK ...`, `PONG`,
/// `ERR <reason>`. Every line ends with `\n` (a `\r` before it is ignored on input).
public enum PubSubLineProtocol {
    /// The longest topic (or pattern) accepted, in bytes.
    public static let maximumTopicBytes = 256

    /// Parses one line (without its newline).
    public static func parse(_ line: UnsafeRawBufferPointer) throws(PubSubProtocolError) -> PubSubCommand {
        var end = line.count
        if end > 0 && line[end - 1] == UInt8(ascii: "\r") { end -= 1 }
        let verbEnd = firstSpace(line, from: 0, to: end)
        let verbBytes = UnsafeRawBufferPointer(rebasing: line[0..<verbEnd])
        // Matched as bytes, any case, in plain loops: parsing a publication allocates nothing.
        var verb = verbEnd == 0 ? "" : "?"
        var index = 0
        while index < verbs.count {  // (an iterator over [String] allocates in unoptimised builds)
            if equalIgnoringCase(verbBytes, verbs[index]) {
                verb = verbs[index]
                break
            }
            index += 1
        }
        let argumentStart = min(verbEnd + 1, end)
        switch verb {
        case "PING":
            guard argumentStart == end else { throw PubSubProtocolError("PING takes no argument") }
            return .ping
        case "SUBSCRIBE", "UNSUBSCRIBE":
            let filter = try filter(line, from: argumentStart, to: end, verb: verb)
            return verb == "SUBSCRIBE" ? .subscribe(filter) : .unsubscribe(filter)
        case "PUBLISH":
            let topicEnd = firstSpace(line, from: argumentStart, to: end)
            let topic = try publishedTopic(line, from: argumentStart, to: topicEnd)
            return .publish(topic: topic, payload: min(topicEnd + 1, end)..<end)
        case "":
            throw PubSubProtocolError("empty line; commands are SUBSCRIBE, UNSUBSCRIBE, PUBLISH and PING")
        default:
            let written = String(decoding: verbBytes, as: UTF8.self)
            let shown = written.count > 32 ? String(written.prefix(32)) + "..." : written
            throw PubSubProtocolError("unknown command \(shown); commands are SUBSCRIBE, UNSUBSCRIBE, PUBLISH and PING")
        }
    }

    private static let verbs: [String] = ["PUBLISH", "SUBSCRIBE", "UNSUBSCRIBE", "PING"]

    private static func equalIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ upper: String) -> Bool {
        guard bytes.count == upper.utf8.count else { return false }
        var index = 0
        for expected in upper.utf8 {
            let byte = bytes[index]
            guard byte == expected || (byte >= 0x61 && byte <= 0x7A && byte - 0x20 == expected) else { return false }
            index += 1
        }
        return true
    }

    /// The index of the first space in `bytes[start..<end]`, or `end`.
    private static func firstSpace(_ bytes: UnsafeRawBufferPointer, from start: Int, to end: Int) -> Int {
        var index = start
        while index < end && bytes[index] != UInt8(ascii: " ") { index += 1 }
        return index
    }

    /// True when `bytes[start..<end]` holds `byte`.
    private static func contains(_ byte: UInt8, in bytes: UnsafeRawBufferPointer, from start: Int, to end: Int) -> Bool {
        var index = start
        while index < end {
            if bytes[index] == byte { return true }
            index += 1
        }
        return false
    }

    /// The subscription filter between `start` and `end` of `bytes` (for `verb`'s error messages).
    static func filter(_ bytes: UnsafeRawBufferPointer, from start: Int, to end: Int, verb: String) throws(PubSubProtocolError) -> TopicFilter {
        let topic = try topicText(bytes, from: start, to: end, verb: verb)
        guard !topic.utf8.contains(UInt8(ascii: " ")) else {
            throw PubSubProtocolError("\(verb) takes one topic; topics have no spaces")
        }
        let filter = TopicFilter(parsing: topic)
        guard !filter.text.utf8.contains(UInt8(ascii: "*")) else {
            throw PubSubProtocolError("'*' may only end a pattern (as in prices.*)")
        }
        return filter
    }

    /// The topic of a publication between `start` and `end` of `bytes`.
    static func publishedTopic(_ bytes: UnsafeRawBufferPointer, from start: Int, to end: Int) throws(PubSubProtocolError) -> String {
        guard !contains(UInt8(ascii: "*"), in: bytes, from: start, to: end), !contains(UInt8(ascii: " "), in: bytes, from: start, to: end) else {
            throw PubSubProtocolError("PUBLISH names one topic, not a pattern")
        }
        return try topicText(bytes, from: start, to: end, verb: "PUBLISH")
    }

    /// The topic between `start` and `end`, checked for presence, length and UTF-8.
    private static func topicText(_ line: UnsafeRawBufferPointer, from start: Int, to end: Int, verb: String) throws(PubSubProtocolError) -> String {
        guard start < end else { throw PubSubProtocolError("\(verb) needs a topic") }
        guard end - start <= maximumTopicBytes else {
            throw PubSubProtocolError("topic longer than \(maximumTopicBytes) bytes")
        }
        guard let topic = String(validating: UnsafeRawBufferPointer(rebasing: line[start..<end]), as: UTF8.self) else {
            throw PubSubProtocolError("a topic must be UTF-8")
        }
        return topic
    }

    /// The bytes of a delivery: `MESSAGE <topic> <payload>\n`.
    public static func messageLength(topicBytes: Int, payloadBytes: Int) -> Int { 8 + topicBytes + 1 + payloadBytes + 1 }

    /// Writes `MESSAGE <topic> <payload>\n` into `buffer` (which must have room: ``messageLength(topicBytes:payloadBytes:)``).
    /// - Parameter newline: false to leave the newline out (a WebSocket message is delimited already).
    public static func writeMessage(topic: String, payload: UnsafeRawBufferPointer, into buffer: inout IOBuffer, newline: Bool = true) {
        buffer.append(contentsOf: "MESSAGE ".utf8)
        buffer.append(contentsOf: topic.utf8)
        buffer.append(contentsOf: CollectionOfOne(UInt8(ascii: " ")))
        buffer.append(payload)
        if newline { buffer.append(contentsOf: CollectionOfOne(UInt8(ascii: "\n"))) }
    }
}
