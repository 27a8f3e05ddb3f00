import HTTPTypes

/// What the request and response parsers share: a head gathered across inputs (copied only when it
/// arrives split), and a body read by length, in chunks with trailers, or until the connection ends,
/// as ranges of the caller's input.
struct HTTPMessageReader: Sendable {
    /// Where a body stands.
    enum BodyState: Sendable {
        case fixed(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd(seenCR: Bool)
        case trailers
        case untilClose
        case end(trailers: HTTPFields?)
    }

    /// What a body read found.
    enum BodyPart {
        case body(Range<Int>)
        case end(trailers: HTTPFields?)
    }

    let limits: HTTPParserLimits
    /// The error a start line over the limit is (414 for a request line).
    let startLineTooLong: HTTPParseError.Code
    /// Head bytes, a chunk-size line or a trailer line gathered across inputs.
    private var gathered: [UInt8] = []
    /// Body bytes of the current message so far (for the size limit).
    private var bodyBytes = 0
    private var trailerFields = HTTPFields()
    private var trailerCount = 0

    init(limits: HTTPParserLimits, startLineTooLong: HTTPParseError.Code) {
        self.limits = limits
        self.startLineTooLong = startLineTooLong
    }

    /// True while part of a head (or line) has been gathered.
    var isGathering: Bool { !gathered.isEmpty }

    // MARK: Heads

    /// Reads a head from `input`, gathering it across calls when it arrives split, and hands its bytes
    /// (its lines, each ended by CRLF, without the blank line) to `parse`; nil until the head is whole.
    mutating func readHead<Head>(_ input: UnsafeRawBufferPointer, _ offset: inout Int,
                                 parse: (UnsafeRawBufferPointer) throws(HTTPParseError) -> Head) throws(HTTPParseError) -> Head? {
        if gathered.isEmpty {
            // Empty lines before a start line are ignored (RFC 9112, 2.2).
            while offset + 1 < input.count && input[offset] == .cr && input[offset + 1] == .lf { offset += 2 }
            if offset < input.count && input[offset] == .lf { throw HTTPParseError(.badRequest, "a bare LF before the start line") }
            let start = offset
            if let end = Self.endOfHead(in: input, from: start, scannedUpTo: start) {
                try checkHeadSize(end - start, complete: true, firstLine: UnsafeRawBufferPointer(rebasing: input[start..<end]))
                offset = end
                return try parse(UnsafeRawBufferPointer(rebasing: input[start..<(end - 2)]))
            }
            if offset == input.count { return nil }
        }
        // The head arrives in pieces: gather up to the limit, then look for its end across the seam.
        var previous = gathered.count
        let room = limits.maximumHeadSize + 4 - previous
        let take = min(input.count - offset, max(room, 0))
        gathered.append(contentsOf: UnsafeRawBufferPointer(rebasing: input[offset..<(offset + take)]))
        // Empty lines before the start line, split from it: dropped (they count as consumed).
        var dropped = 0
        while gathered.count - dropped >= 2 && gathered[dropped] == .cr && gathered[dropped + 1] == .lf { dropped += 2 }
        if dropped > 0 {
            gathered.removeFirst(dropped)
            previous -= dropped  // may go negative: then some of this input's bytes were dropped
        }
        if gathered.first == .lf { throw HTTPParseError(.badRequest, "a bare LF before the start line") }
        let outcome = gathered.withUnsafeBytes { bytes in
            Result { () throws(HTTPParseError) -> (end: Int, head: Head)? in
                guard let end = Self.endOfHead(in: bytes, from: 0, scannedUpTo: max(0, previous - 3)) else {
                    try checkHeadSize(bytes.count, complete: false, firstLine: bytes)
                    return nil
                }
                try checkHeadSize(end, complete: true, firstLine: UnsafeRawBufferPointer(rebasing: bytes[..<end]))
                return (end, try parse(UnsafeRawBufferPointer(rebasing: bytes[..<(end - 2)])))
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
    static func endOfHead(in bytes: UnsafeRawBufferPointer, from start: Int, scannedUpTo: Int) -> Int? {
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

    /// Applies the start-line and head size limits to `size` bytes of head (its first line starts
    /// `firstLine`).
    private func checkHeadSize(_ size: Int, complete: Bool, firstLine: UnsafeRawBufferPointer) throws(HTTPParseError) {
        let lineEnd = firstLine.firstIndex(of: .cr) ?? firstLine.count
        if lineEnd > limits.maximumRequestLineLength {
            throw HTTPParseError(startLineTooLong, "the start line exceeds \(limits.maximumRequestLineLength) bytes")
        }
        if size > limits.maximumHeadSize + (complete ? 4 : 3) {
            throw HTTPParseError(.headerFieldsTooLarge, "the head exceeds \(limits.maximumHeadSize) bytes")
        }
    }

    // MARK: Bodies

    /// The state a body framed by `framing` starts in.
    mutating func startBody(_ framing: HTTPBodyFraming) -> BodyState {
        bodyBytes = 0
        switch framing {
        case .none, .contentLength(0): return .end(trailers: nil)
        case .contentLength(let length): return .fixed(remaining: length)
        case .chunked: return .chunkSize
        case .untilClose: return .untilClose
        }
    }

    /// The next body part in `input[offset...]`; nil when more input is needed.
    mutating func readBody(_ state: inout BodyState, _ input: UnsafeRawBufferPointer, _ offset: inout Int) throws(HTTPParseError) -> BodyPart? {
        while true {
            switch state {
            case .end(let trailers):
                return .end(trailers: trailers)
            case .fixed(let remaining):
                guard offset < input.count else { return nil }
                let count = min(remaining, input.count - offset)
                let range = offset..<(offset + count)
                offset += count
                state = remaining == count ? .end(trailers: nil) : .fixed(remaining: remaining - count)
                return .body(range)
            case .untilClose:
                guard offset < input.count else { return nil }
                let count = input.count - offset
                guard count <= limits.maximumBodySize - bodyBytes else {
                    throw HTTPParseError(.contentTooLarge, "the body exceeds \(limits.maximumBodySize) bytes")
                }
                bodyBytes += count
                let range = offset..<input.count
                offset = input.count
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

    // MARK: Lines and fields

    /// The field lines left in `lines`, under the field-count limit.
    static func fields(_ lines: inout LineCursor, limits: HTTPParserLimits) throws(HTTPParseError) -> HTTPFields {
        var fields = HTTPFields()
        var count = 0
        while let line = try lines.next() {
            count += 1
            guard count <= limits.maximumHeaderCount else {
                throw HTTPParseError(.headerFieldsTooLarge, "more than \(limits.maximumHeaderCount) header fields")
            }
            fields.append(try field(line))
        }
        return fields
    }

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

    /// The length `values` (every Content-Length field, each possibly a list) agree on.
    /// - Throws: 400 for a value that is not a number or values that differ; 413 over the body limit.
    static func contentLength(_ values: [String], limits: HTTPParserLimits) throws(HTTPParseError) -> Int {
        var length: Int?
        for value in values.flatMap({ $0.split(separator: ",", omittingEmptySubsequences: false) }) {
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
        return length ?? 0
    }

    /// The comma-separated tokens of `values`, lowercased, without empty elements.
    static func tokens(_ values: [String]) -> [String] {
        values.flatMap { $0.split(separator: ",") }.map { $0.trimmingOWS().lowercased() }.filter { !$0.isEmpty }
    }
}

/// Walks CRLF-ended lines; a CR or LF on its own inside a line is an error.
struct LineCursor {
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

/// A stream of HTTP messages, requests or responses: heads parsed by the caller's function, bodies read
/// here, and the first error kept (the stream cannot be resynchronised after it).
struct HTTPMessageStream: Sendable {
    enum State: Sendable {
        case head
        case body(HTTPMessageReader.BodyState)
        case failed(HTTPParseError)
    }

    /// One step of a message.
    enum Part<Head> {
        case head(Head)
        case body(Range<Int>)
        case end(trailers: HTTPFields?)
    }

    private(set) var state = State.head
    private var reader: HTTPMessageReader

    init(limits: HTTPParserLimits, startLineTooLong: HTTPParseError.Code) {
        reader = HTTPMessageReader(limits: limits, startLineTooLong: startLineTooLong)
    }

    /// True between messages, with nothing of the next one gathered.
    var isIdle: Bool {
        if case .head = state { return !reader.isGathering }
        return false
    }

    /// The next part in `input[consumed...]`; nil when more input is needed. `parseHead` reads a
    /// head's lines; `framing` says how its body is delimited.
    mutating func next<Head>(_ input: UnsafeRawBufferPointer, consumed: inout Int,
                             parseHead: (UnsafeRawBufferPointer) throws(HTTPParseError) -> Head,
                             framing: (Head) -> HTTPBodyFraming) throws(HTTPParseError) -> Part<Head>? {
        do throws(HTTPParseError) {
            switch state {
            case .failed(let error):
                throw error
            case .head:
                guard consumed < input.count, let head = try reader.readHead(input, &consumed, parse: parseHead) else { return nil }
                state = .body(reader.startBody(framing(head)))
                return .head(head)
            case .body(var body):
                let part = try reader.readBody(&body, input, &consumed)
                state = .body(body)
                switch part {
                case nil: return nil
                case .body(let range): return .body(range)
                case .end(let trailers):
                    state = .head
                    return .end(trailers: trailers)
                }
            }
        } catch {
            state = .failed(error)
            throw error
        }
    }

    /// The connection ended: ends a body delimited by the close; nil when no message was in progress.
    /// - Throws: ``HTTPParseError`` when a message was cut short.
    mutating func finish() throws(HTTPParseError) -> HTTPFields?? {
        switch state {
        case .failed(let error):
            throw error
        case .head:
            guard !reader.isGathering else { throw fail(HTTPParseError(.badRequest, "the connection ended inside a head")) }
            return nil
        case .body(.untilClose):
            state = .head
            return .some(nil)
        case .body(.end(let trailers)):
            state = .head
            return .some(trailers)
        case .body:
            throw fail(HTTPParseError(.badRequest, "the connection ended inside a body"))
        }
    }

    private mutating func fail(_ error: HTTPParseError) -> HTTPParseError {
        state = .failed(error)
        return error
    }
}
