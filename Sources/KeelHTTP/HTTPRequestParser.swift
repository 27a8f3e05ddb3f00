import HTTPTypes

/// A strict, incremental HTTP/1.1 request parser (RFC 9112): give it bytes as they arrive, in pieces
/// of any size, and it hands back the requests' parts in order, pipelined requests included.
///
/// ```swift
/// var offset = 0
/// while let part = try parser.next(bytes, consumed: &offset) {
///     switch part {
///     case .head(let head): …              // method, target, fields, keep-alive, body framing
///     case .body(let range): …             // bytes[range]: body bytes, de-chunked, not copied
///     case .end(let trailers): …           // the request is complete; the next one may follow
///     }
/// }
/// // every byte of `bytes` was consumed (or the caller stopped early, e.g. to hand the rest of the
/// // stream to another protocol after an upgrade: bytes[offset...] are not the parser's).
/// ```
///
/// What it refuses, each as an ``HTTPParseError`` naming the status to answer with: bytes outside the
/// grammar (bare CR or LF, whitespace before a field's colon, obsolete line folding, control
/// characters), a missing or repeated `Host` in HTTP/1.1, ambiguous framing (`Transfer-Encoding`
/// with `Content-Length`, differing `Content-Length`s, chunked not last) as 400; transfer codings
/// other than chunked as 501; versions other than 1.0 and 1.1 as 505; and the limits
/// (``HTTPParserLimits``) as 414, 431 and 413. After an error every call throws it again: the stream
/// cannot be resynchronised, the connection must close.
///
/// Heads are gathered (copied) only when they arrive split; bodies are never copied.
public struct HTTPRequestParser: Sendable {
    /// The limits in force.
    public let limits: HTTPParserLimits

    private enum State: Sendable {
        case head
        case fixedBody(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd(seenCR: Bool)
        case trailers
        case end(trailers: HTTPFields?)
        case failed(HTTPParseError)
    }

    private var state = State.head
    /// Head bytes (or a chunk-size line, or trailer lines) gathered across inputs.
    private var gathered: [UInt8] = []
    /// Body bytes of the current message so far (for the size limit).
    private var bodyBytes = 0
    /// Trailer fields of the current chunked message.
    private var trailerFields = HTTPFields()
    private var trailerCount = 0

    /// A parser enforcing `limits`.
    public init(limits: HTTPParserLimits = HTTPParserLimits()) {
        self.limits = limits
    }

    /// True between requests: nothing of a next request has arrived (a server may close an idle
    /// keep-alive connection then without cutting a request short).
    public var isIdle: Bool {
        if case .head = state { return gathered.isEmpty }
        return false
    }

    /// The next part found in `input[consumed...]`, advancing `consumed` past the bytes it used; nil
    /// once every byte is consumed and more input is needed.
    /// - Throws: ``HTTPParseError`` when the bytes cannot be a valid request (and on every later call).
    public mutating func next(_ input: UnsafeRawBufferPointer, consumed: inout Int) throws(HTTPParseError) -> HTTPRequestPart? {
        do {
            return try step(input, &consumed)
        } catch {
            state = .failed(error)
            throw error
        }
    }

    private mutating func step(_ input: UnsafeRawBufferPointer, _ offset: inout Int) throws(HTTPParseError) -> HTTPRequestPart? {
        while true {
            switch state {
            case .failed(let error):
                throw error
            case .end(let trailers):
                state = .head
                bodyBytes = 0
                return .end(trailers: trailers)
            case .head:
                guard offset < input.count else { return nil }
                guard let head = try readHead(input, &offset) else { return nil }
                switch head.bodyFraming {
                case .none, .contentLength(0): state = .end(trailers: nil)
                case .contentLength(let length): state = .fixedBody(remaining: length)
                case .chunked: state = .chunkSize
                }
                return .head(head)
            case .fixedBody(let remaining):
                guard offset < input.count else { return nil }
                let count = min(remaining, input.count - offset)
                let range = offset..<(offset + count)
                offset += count
                state = remaining == count ? .end(trailers: nil) : .fixedBody(remaining: remaining - count)
                return .body(range)
            case .chunkSize:
                guard let line = try readLine(input, &offset, limit: 1024, what: "chunk size line") else { return nil }
                let size = try Self.chunkSize(line)
                if size == 0 {
                    state = .trailers
                    trailerFields = HTTPFields()
                    trailerCount = 0
                } else {
                    guard size <= limits.maximumBodySize - bodyBytes else {
                        throw HTTPParseError(.contentTooLarge, "the chunked body exceeds \(limits.maximumBodySize) bytes")
                    }
                    bodyBytes += size
                    state = .chunkData(remaining: size)
                }
            case .chunkData(let remaining):
                guard offset < input.count else { return nil }
                let count = min(remaining, input.count - offset)
                let range = offset..<(offset + count)
                offset += count
                state = remaining == count ? .chunkDataEnd(seenCR: false) : .chunkData(remaining: remaining - count)
                return .body(range)
            case .chunkDataEnd(let seenCR):
                guard offset < input.count else { return nil }
                let byte = input[offset]
                offset += 1
                if !seenCR {
                    guard byte == .cr else { throw HTTPParseError(.badRequest, "chunk data longer than its size") }
                    state = .chunkDataEnd(seenCR: true)
                } else {
                    guard byte == .lf else { throw HTTPParseError(.badRequest, "chunk data not ended by CRLF") }
                    state = .chunkSize
                }
            case .trailers:
                guard let line = try readLine(input, &offset, limit: limits.maximumHeadSize, what: "trailer field",
                                                overLimit: .headerFieldsTooLarge) else { return nil }
                if line.isEmpty {
                    state = .end(trailers: trailerCount > 0 ? trailerFields : nil)
                    continue
                }
                trailerCount += 1
                guard trailerCount <= limits.maximumHeaderCount else {
                    throw HTTPParseError(.headerFieldsTooLarge, "more than \(limits.maximumHeaderCount) trailer fields")
                }
                let field = line.withUnsafeBytes { bytes in Result { () throws(HTTPParseError) in try Self.field(bytes) } }
                trailerFields.append(try field.get())
            }
        }
    }

    // MARK: Heads

    /// Reads a head from `input`, gathering it across calls when it arrives split; nil until whole.
    private mutating func readHead(_ input: UnsafeRawBufferPointer, _ offset: inout Int) throws(HTTPParseError) -> HTTPRequestHead? {
        if gathered.isEmpty {
            // Empty lines before a request line are ignored (RFC 9112, 2.2).
            while offset + 1 < input.count && input[offset] == .cr && input[offset + 1] == .lf { offset += 2 }
            if offset < input.count && input[offset] == .lf { throw HTTPParseError(.badRequest, "a bare LF before the request line") }
            let start = offset
            if let end = Self.endOfHead(in: input, from: start, scannedUpTo: start) {
                try Self.checkHeadSize(end - start, complete: true, firstLine: UnsafeRawBufferPointer(rebasing: input[start..<end]),
                                       limits: limits)
                offset = end
                return try Self.head(UnsafeRawBufferPointer(rebasing: input[start..<(end - 2)]), limits: limits)
            }
            if offset == input.count { return nil }
        }
        // The head arrives in pieces: gather up to the limit, then look for its end across the seam.
        var previous = gathered.count
        let room = limits.maximumHeadSize + 4 - previous
        let take = min(input.count - offset, max(room, 0))
        gathered.append(contentsOf: UnsafeRawBufferPointer(rebasing: input[offset..<(offset + take)]))
        // Empty lines before the request line, split from it: dropped (they count as consumed).
        var dropped = 0
        while gathered.count - dropped >= 2 && gathered[dropped] == .cr && gathered[dropped + 1] == .lf { dropped += 2 }
        if dropped > 0 {
            gathered.removeFirst(dropped)
            previous -= dropped  // may go negative: then some of this input's bytes were dropped
        }
        if gathered.first == .lf { throw HTTPParseError(.badRequest, "a bare LF before the request line") }
        let limits = limits
        let outcome = gathered.withUnsafeBytes { bytes in
            Result { () throws(HTTPParseError) -> (end: Int, head: HTTPRequestHead)? in
                guard let end = Self.endOfHead(in: bytes, from: 0, scannedUpTo: max(0, previous - 3)) else {
                    try Self.checkHeadSize(bytes.count, complete: false, firstLine: bytes, limits: limits)
                    return nil
                }
                try Self.checkHeadSize(end, complete: true, firstLine: UnsafeRawBufferPointer(rebasing: bytes[..<end]), limits: limits)
                return (end, try Self.head(UnsafeRawBufferPointer(rebasing: bytes[..<(end - 2)]), limits: limits))
            }
        }
        let result = try outcome.get()
        guard let result else {
            offset += take
            return nil
        }
        offset += result.end - previous  // the bytes after the head's end stay in the input
        gathered.removeAll(keepingCapacity: true)
        return result.head
    }

    /// Where the head ends (the index after its blank line's LF), searching from `scannedUpTo`.
    private static func endOfHead(in bytes: UnsafeRawBufferPointer, from start: Int, scannedUpTo: Int) -> Int? {
        var index = max(start, scannedUpTo)
        while index + 3 < bytes.count {
            if bytes[index + 3] == .lf {
                if bytes[index + 2] == .cr && bytes[index + 1] == .lf && bytes[index] == .cr { return index + 4 }
                index += 1
            } else if bytes[index + 3] == .cr {
                index += 1
            } else {
                index += 4
            }
        }
        return nil
    }

    /// Applies the request-line and head size limits to `size` bytes of head (the first line starts
    /// `firstLine`).
    private static func checkHeadSize(_ size: Int, complete: Bool, firstLine: UnsafeRawBufferPointer,
                                      limits: HTTPParserLimits) throws(HTTPParseError) {
        let lineEnd = firstLine.firstIndex(of: .cr) ?? firstLine.count
        if lineEnd > limits.maximumRequestLineLength {
            throw HTTPParseError(.uriTooLong, "the request line exceeds \(limits.maximumRequestLineLength) bytes")
        }
        if size > limits.maximumHeadSize + (complete ? 4 : 3) {
            throw HTTPParseError(.headerFieldsTooLarge, "the request head exceeds \(limits.maximumHeadSize) bytes")
        }
    }

    /// Parses a head: the request line and field lines, each ended by CRLF (`bytes` ends with the
    /// last field line's CRLF, the blank line excluded).
    private static func head(_ bytes: UnsafeRawBufferPointer, limits: HTTPParserLimits) throws(HTTPParseError) -> HTTPRequestHead {
        var lines = LineCursor(bytes)
        guard let requestLine = try lines.next() else { throw HTTPParseError(.badRequest, "no request line") }
        let (method, target, version) = try Self.requestLine(requestLine)
        var fields = HTTPFields()
        var count = 0
        while let line = try lines.next() {
            count += 1
            guard count <= limits.maximumHeaderCount else {
                throw HTTPParseError(.headerFieldsTooLarge, "more than \(limits.maximumHeaderCount) header fields")
            }
            fields.append(try Self.field(line))
        }
        return try Self.interpret(method: method, target: target, version: version, fields: fields, limits: limits)
    }

    private static func requestLine(_ line: UnsafeRawBufferPointer) throws(HTTPParseError) -> (HTTPRequest.Method, UnsafeRawBufferPointer, HTTPVersion) {
        guard let firstSpace = line.firstIndex(of: .space), firstSpace > 0 else {
            throw HTTPParseError(.badRequest, "a malformed request line")
        }
        let methodBytes = UnsafeRawBufferPointer(rebasing: line[..<firstSpace])
        guard methodBytes.allSatisfy(\.isTokenCharacter),
              let method = HTTPRequest.Method(String(decoding: methodBytes, as: UTF8.self))
        else { throw HTTPParseError(.badRequest, "a method that is not a token") }
        let rest = UnsafeRawBufferPointer(rebasing: line[(firstSpace + 1)...])
        guard let secondSpace = rest.firstIndex(of: .space), secondSpace > 0 else {
            throw HTTPParseError(.badRequest, "a malformed request line")
        }
        let target = UnsafeRawBufferPointer(rebasing: rest[..<secondSpace])
        guard target.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw HTTPParseError(.badRequest, "a request target with a character outside the URI grammar")
        }
        let version = try Self.version(UnsafeRawBufferPointer(rebasing: rest[(secondSpace + 1)...]))
        return (method, target, version)
    }

    private static func version(_ bytes: UnsafeRawBufferPointer) throws(HTTPParseError) -> HTTPVersion {
        let prefix = Array("HTTP/".utf8)
        guard bytes.count == 8, bytes.starts(with: prefix), bytes[6] == UInt8(ascii: "."),
              bytes[5].isDigit, bytes[7].isDigit
        else { throw HTTPParseError(.badRequest, "a malformed protocol version") }
        let version = HTTPVersion(major: Int(bytes[5] - 0x30), minor: Int(bytes[7] - 0x30))
        guard version == .http1_1 || version == .http1_0 else {
            throw HTTPParseError(.versionNotSupported, "\(version) is not supported (HTTP/1.0 and HTTP/1.1 are)")
        }
        return version
    }

    /// Parses one field line (`name: value`, no CRLF).
    static func field(_ line: UnsafeRawBufferPointer) throws(HTTPParseError) -> HTTPField {
        guard let first = line.first else { throw HTTPParseError(.badRequest, "an empty field line") }
        if first == .space || first == .tab { throw HTTPParseError(.badRequest, "obsolete line folding") }
        guard let colon = line.firstIndex(of: .colon), colon > 0 else {
            throw HTTPParseError(.badRequest, "a field line without a name and colon")
        }
        let nameBytes = UnsafeRawBufferPointer(rebasing: line[..<colon])
        guard nameBytes.allSatisfy(\.isTokenCharacter), let name = HTTPField.Name(String(decoding: nameBytes, as: UTF8.self)) else {
            throw HTTPParseError(.badRequest, "a field name that is not a token (whitespace before the colon?)")
        }
        var start = colon + 1
        var end = line.count
        while start < end && (line[start] == .space || line[start] == .tab) { start += 1 }
        while end > start && (line[end - 1] == .space || line[end - 1] == .tab) { end -= 1 }
        let value = UnsafeRawBufferPointer(rebasing: line[start..<end])
        guard value.allSatisfy({ $0 == .tab || ($0 >= 0x20 && $0 != 0x7F) }) else {
            throw HTTPParseError(.badRequest, "a control character in the value of \(name)")
        }
        return HTTPField(name: name, value: value)
    }

    /// The request's meaning: target form, Host, framing, keep-alive and upgrade.
    private static func interpret(method: HTTPRequest.Method, target: UnsafeRawBufferPointer, version: HTTPVersion,
                                  fields: HTTPFields, limits: HTTPParserLimits) throws(HTTPParseError) -> HTTPRequestHead {
        // swift-http-types carries Host as the request's authority, not as a field.
        var fields = fields
        let hosts = fields[values: .hostField]
        fields[.hostField] = nil
        if version == .http1_1 && hosts.count != 1 {
            throw HTTPParseError(.badRequest, hosts.isEmpty ? "no Host field" : "more than one Host field")
        }
        if version == .http1_0 && hosts.count > 1 { throw HTTPParseError(.badRequest, "more than one Host field") }
        let targetText = String(decoding: target, as: UTF8.self)
        var scheme: String?
        var authority = hosts.first
        var path: String?
        if target.first == UInt8(ascii: "/") {
            path = targetText
        } else if method == .connect {
            authority = targetText  // authority-form: host:port
        } else if targetText == "*" {
            guard method == .options else { throw HTTPParseError(.badRequest, "the asterisk form outside OPTIONS") }
            path = "*"
        } else if let colon = target.firstIndex(of: .colon), colon > 0, target.count > colon + 2,
                  target[colon + 1] == UInt8(ascii: "/"), target[colon + 2] == UInt8(ascii: "/") {
            // absolute-form: the target's authority wins over Host (RFC 9112, 3.2.2).
            let schemeBytes = UnsafeRawBufferPointer(rebasing: target[..<colon])
            guard schemeBytes.allSatisfy({ $0.isLetterOrDigit || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") }) else {
                throw HTTPParseError(.badRequest, "a malformed scheme in the request target")
            }
            scheme = String(decoding: schemeBytes, as: UTF8.self).lowercased()
            let afterScheme = UnsafeRawBufferPointer(rebasing: target[(colon + 3)...])
            let slash = afterScheme.firstIndex(of: UInt8(ascii: "/")) ?? afterScheme.count
            guard slash > 0 else { throw HTTPParseError(.badRequest, "an absolute request target without an authority") }
            authority = String(decoding: UnsafeRawBufferPointer(rebasing: afterScheme[..<slash]), as: UTF8.self)
            path = slash == afterScheme.count ? "/" : String(decoding: UnsafeRawBufferPointer(rebasing: afterScheme[slash...]), as: UTF8.self)
        } else {
            throw HTTPParseError(.badRequest, "a request target in no known form")
        }

        let framing = try Self.framing(fields: fields, version: version, limits: limits)
        let connection = Self.tokens(fields[values: .connection])
        let keepAlive = version == .http1_1 ? !connection.contains("close") : connection.contains("keep-alive")
        let upgrade = connection.contains("upgrade")
            ? fields[values: .upgrade].flatMap { $0.split(separator: ",") }.map { $0.trimmingOWS() }.filter { !$0.isEmpty }
            : []
        let request = HTTPRequest(method: method, scheme: scheme, authority: authority, path: path, headerFields: fields)
        return HTTPRequestHead(request: request, version: version, keepAlive: keepAlive, bodyFraming: framing, upgrade: upgrade)
    }

    private static func framing(fields: HTTPFields, version: HTTPVersion, limits: HTTPParserLimits) throws(HTTPParseError) -> HTTPBodyFraming {
        let transferEncodings = fields[values: .transferEncoding]
        let contentLengths = fields[values: .contentLength]
        if !transferEncodings.isEmpty {
            if version == .http1_0 { throw HTTPParseError(.badRequest, "Transfer-Encoding in an HTTP/1.0 request") }
            if !contentLengths.isEmpty { throw HTTPParseError(.badRequest, "both Transfer-Encoding and Content-Length") }
            let codings = Self.tokens(transferEncodings)
            guard codings.last == "chunked", codings.filter({ $0 == "chunked" }).count == 1 else {
                throw HTTPParseError(.badRequest, "chunked is not the final transfer coding, exactly once")
            }
            if codings.count > 1 {
                throw HTTPParseError(.notImplemented, "transfer codings other than chunked (\(codings.dropLast().joined(separator: ", ")))")
            }
            return .chunked
        }
        guard !contentLengths.isEmpty else { return .none }
        var length: Int?
        for value in contentLengths.flatMap({ $0.split(separator: ",", omittingEmptySubsequences: false) }) {
            let digits = value.trimmingOWS()
            guard !digits.isEmpty, digits.utf8.allSatisfy(\.isDigit) else {
                throw HTTPParseError(.badRequest, "a Content-Length that is not a number")
            }
            guard digits.utf8.count <= 18, let parsed = Int(digits), parsed <= limits.maximumBodySize else {
                throw HTTPParseError(.contentTooLarge, "a body of \(digits) bytes exceeds \(limits.maximumBodySize)")
            }
            if let length, length != parsed { throw HTTPParseError(.badRequest, "Content-Length values differ") }
            length = parsed
        }
        return .contentLength(length ?? 0)
    }

    /// The comma-separated tokens of `values`, lowercased, without empty elements.
    private static func tokens(_ values: [String]) -> [String] {
        values.flatMap { $0.split(separator: ",") }.map { $0.trimmingOWS().lowercased() }.filter { !$0.isEmpty }
    }

    // MARK: Chunks and lines

    /// Reads a CRLF-ended line, gathering it across calls; nil until complete.
    private mutating func readLine(_ input: UnsafeRawBufferPointer, _ offset: inout Int, limit: Int, what: String,
                                   overLimit: HTTPParseError.Code = .badRequest) throws(HTTPParseError) -> [UInt8]? {
        while offset < input.count {
            let byte = input[offset]
            offset += 1
            if byte == .lf {
                guard gathered.last == .cr else { throw HTTPParseError(.badRequest, "a bare LF in a \(what)") }
                let line = Array(gathered.dropLast())
                gathered.removeAll(keepingCapacity: true)
                return line
            }
            if gathered.last == .cr { throw HTTPParseError(.badRequest, "a bare CR in a \(what)") }
            gathered.append(byte)
            if gathered.count > limit + 1 {
                throw HTTPParseError(overLimit, "a \(what) over \(limit) bytes")
            }
        }
        return nil
    }

    /// The size of a chunk-size line (`1*HEXDIG [ chunk-ext ]`).
    private static func chunkSize(_ line: [UInt8]) throws(HTTPParseError) -> Int {
        var size = 0
        var digits = 0
        for byte in line {
            guard let value = byte.hexValue else { break }
            digits += 1
            guard digits <= 15 else { throw HTTPParseError(.contentTooLarge, "a chunk size of more than 15 hex digits") }
            size = size << 4 | value
        }
        guard digits > 0 else { throw HTTPParseError(.badRequest, "a chunk size that is not hexadecimal") }
        let rest = line[digits...]
        if let first = rest.first {
            // Extensions (ignored): ";" after optional whitespace; no control characters.
            let trimmed = rest.drop { $0 == .space || $0 == .tab }
            guard trimmed.first == UInt8(ascii: ";"), first == .space || first == .tab || first == UInt8(ascii: ";"),
                  rest.allSatisfy({ $0 == .tab || ($0 >= 0x20 && $0 != 0x7F) })
            else { throw HTTPParseError(.badRequest, "a malformed chunk size line") }
        }
        return size
    }
}

/// Walks CRLF-ended lines; a CR or LF on its own inside a line is an error.
private struct LineCursor {
    let bytes: UnsafeRawBufferPointer
    var position = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    mutating func next() throws(HTTPParseError) -> UnsafeRawBufferPointer? {
        guard position < bytes.count else { return nil }
        var index = position
        while index < bytes.count {
            let byte = bytes[index]
            if byte == .cr {
                guard index + 1 < bytes.count, bytes[index + 1] == .lf else { throw HTTPParseError(.badRequest, "a bare CR") }
                let line = UnsafeRawBufferPointer(rebasing: bytes[position..<index])
                position = index + 2
                return line
            }
            if byte == .lf { throw HTTPParseError(.badRequest, "a bare LF") }
            index += 1
        }
        throw HTTPParseError(.badRequest, "a line without CRLF")
    }
}

extension HTTPField.Name {
    /// `Host` (swift-http-types marks its own constant unavailable: it maps to the authority).
    static let hostField = HTTPField.Name("Host")!
}

extension UInt8 {
    static let cr = UInt8(ascii: "\r")
    static let lf = UInt8(ascii: "\n")
    static let space = UInt8(ascii: " ")
    static let tab = UInt8(ascii: "\t")
    static let colon = UInt8(ascii: ":")

    var isDigit: Bool { self >= 0x30 && self <= 0x39 }
    var isLetterOrDigit: Bool { isDigit || (self | 0x20 >= 0x61 && self | 0x20 <= 0x7A) }

    /// RFC 9110 tchar: the characters of a token.
    var isTokenCharacter: Bool {
        switch self {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
             UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."),
             UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"): true
        default: false
        }
    }

    var hexValue: Int? {
        switch self {
        case 0x30...0x39: Int(self - 0x30)
        case 0x41...0x46: Int(self - 0x41 + 10)
        case 0x61...0x66: Int(self - 0x61 + 10)
        default: nil
        }
    }
}

extension StringProtocol {
    /// Without leading and trailing spaces and tabs (optional whitespace).
    func trimmingOWS() -> String {
        let isOWS: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = firstIndex(where: { !isOWS($0) }), let last = lastIndex(where: { !isOWS($0) }) else { return "" }
        return String(self[first...last])
    }
}
