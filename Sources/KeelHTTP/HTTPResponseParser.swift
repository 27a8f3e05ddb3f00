import HTTPTypes

/// A response head as parsed from HTTP/1.x: the response (status and fields, swift-http-types'
/// `HTTPResponse`) and what the wire adds to it.
public struct HTTPResponseHead: Sendable, Hashable {
    /// Status and header fields.
    public var response: HTTPResponse
    /// The version the server spoke.
    public var version: HTTPVersion
    /// True when the connection may carry another request: HTTP/1.1 unless the server sent
    /// `Connection: close` (or delimits the body by closing); HTTP/1.0 only with `keep-alive`.
    public var keepAlive: Bool
    /// How the body that follows is delimited (none for 1xx, 204, 304 and answers to HEAD).
    public var bodyFraming: HTTPBodyFraming

    /// A head with these parts.
    public init(response: HTTPResponse, version: HTTPVersion = .http1_1, keepAlive: Bool = true, bodyFraming: HTTPBodyFraming = .none) {
        self.response = response
        self.version = version
        self.keepAlive = keepAlive
        self.bodyFraming = bodyFraming
    }
}

/// One step of a response as the parser finds it.
public enum HTTPResponsePart: Sendable, Hashable {
    /// The head. A body (possibly empty) and `end` follow; after an informational (1xx) response's
    /// `end`, the final response's head follows (after 101, the stream is no longer HTTP).
    case head(HTTPResponseHead)
    /// Body bytes: this range of the input (de-chunked, never copied).
    case body(Range<Int>)
    /// The response is complete.
    case end(trailers: HTTPFields?)
}

/// An incremental HTTP/1.1 response parser, the client's counterpart of ``HTTPRequestParser``, with
/// the same pull API, grammar checks and limits. A response's body framing depends on the request it
/// answers: give the request's method with each call (HEAD responses have no body).
public struct HTTPResponseParser: Sendable {
    /// The limits in force (the start-line limit applies to the status line).
    public let limits: HTTPParserLimits

    private var stream: HTTPMessageStream

    /// A parser enforcing `limits`.
    public init(limits: HTTPParserLimits = HTTPParserLimits()) {
        self.limits = limits
        stream = HTTPMessageStream(limits: limits, startLineTooLong: .headerFieldsTooLarge)
    }

    /// The next part found in `input[consumed...]`, advancing `consumed`; nil once every byte is
    /// consumed and more input is needed. `method`: the method of the request this response answers.
    /// - Throws: ``HTTPParseError`` when the bytes cannot be a valid response (and on every later call).
    public mutating func next(_ input: UnsafeRawBufferPointer, consumed: inout Int,
                              answering method: HTTPRequest.Method = .get) throws(HTTPParseError) -> HTTPResponsePart? {
        let limits = limits
        let part = try stream.next(input, consumed: &consumed, parseHead: { bytes throws(HTTPParseError) in
            try Self.head(bytes, method: method, limits: limits)
        }, framing: \.bodyFraming)
        switch part {
        case nil: return nil
        case .head(let head): return .head(head)
        case .body(let range): return .body(range)
        case .end(let trailers): return .end(trailers: trailers)
        }
    }

    /// The server closed the connection: ends a body delimited by the close (nil when no response
    /// was in progress).
    /// - Throws: ``HTTPParseError`` when a response was cut short.
    public mutating func finish() throws(HTTPParseError) -> HTTPResponsePart? {
        guard let trailers = try stream.finish() else { return nil }
        return .end(trailers: trailers)
    }

    // MARK: Heads

    private static func head(_ bytes: UnsafeRawBufferPointer, method: HTTPRequest.Method,
                             limits: HTTPParserLimits) throws(HTTPParseError) -> HTTPResponseHead {
        var lines = LineCursor(bytes)
        guard let statusLine = try lines.next() else { throw HTTPParseError(.badRequest, "no status line") }
        let (version, status) = try Self.statusLine(statusLine)
        let fields = try HTTPMessageReader.fields(&lines, limits: limits)
        let framing = try Self.framing(status: status, method: method, fields: fields, limits: limits)
        let connection = HTTPMessageReader.tokens(fields[values: .connection])
        let keepAlive = framing != .untilClose
            && (version == .http1_1 ? !connection.contains("close") : connection.contains("keep-alive"))
        return HTTPResponseHead(response: HTTPResponse(status: status, headerFields: fields), version: version,
                                keepAlive: keepAlive, bodyFraming: framing)
    }

    /// `HTTP/1.x SP 3DIGIT [SP reason]` (a missing reason is accepted).
    private static func statusLine(_ line: UnsafeRawBufferPointer) throws(HTTPParseError) -> (HTTPVersion, HTTPResponse.Status) {
        guard line.count >= 12, line.starts(with: Array("HTTP/1.".utf8)), line[7].isDigit, line[8] == .space,
              line[9].isDigit, line[10].isDigit, line[11].isDigit, line.count == 12 || line[12] == .space
        else {
            if line.starts(with: Array("HTTP/".utf8)), line.count > 7, line[5].isDigit, line[5] != UInt8(ascii: "1") {
                throw HTTPParseError(.versionNotSupported, "a protocol version other than HTTP/1.x")
            }
            throw HTTPParseError(.badRequest, "a malformed status line")
        }
        let minor = Int(line[7] - 0x30)
        guard minor <= 1 else { throw HTTPParseError(.versionNotSupported, "HTTP/1.\(minor) is not supported") }
        let code = Int(line[9] - 0x30) * 100 + Int(line[10] - 0x30) * 10 + Int(line[11] - 0x30)
        guard code >= 100 else { throw HTTPParseError(.badRequest, "a status code under 100") }
        let reasonBytes = line.count > 13 ? UnsafeRawBufferPointer(rebasing: line[13...]) : UnsafeRawBufferPointer(start: nil, count: 0)
        guard reasonBytes.allSatisfy({ $0 == .tab || ($0 >= 0x20 && $0 != 0x7F) }) else {
            throw HTTPParseError(.badRequest, "a control character in the reason phrase")
        }
        return (HTTPVersion(major: 1, minor: minor), HTTPResponse.Status(code: code, reasonPhrase: String(decoding: reasonBytes, as: UTF8.self)))
    }

    /// RFC 9112, 6.3, for responses.
    private static func framing(status: HTTPResponse.Status, method: HTTPRequest.Method, fields: HTTPFields,
                                limits: HTTPParserLimits) throws(HTTPParseError) -> HTTPBodyFraming {
        if method == .head || status.kind == .informational || status.code == 204 || status.code == 304 { return .none }
        if method == .connect && status.kind == .successful { return .none }  // a tunnel follows
        let transferEncodings = fields[values: .transferEncoding]
        if !transferEncodings.isEmpty {
            return HTTPMessageReader.tokens(transferEncodings).last == "chunked" ? .chunked : .untilClose
        }
        let contentLengths = fields[values: .contentLength]
        guard !contentLengths.isEmpty else { return .untilClose }
        return .contentLength(try HTTPMessageReader.contentLength(contentLengths, limits: limits))
    }
}
