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

    private var stream: HTTPMessageStream

    /// A parser enforcing `limits`.
    public init(limits: HTTPParserLimits = HTTPParserLimits()) {
        self.limits = limits
        stream = HTTPMessageStream(limits: limits, startLineTooLong: .uriTooLong)
    }

    /// True between requests: nothing of a next request has arrived (a server may close an idle
    /// keep-alive connection then without cutting a request short).
    public var isIdle: Bool { stream.isIdle }

    /// The next part found in `input[consumed...]`, advancing `consumed` past the bytes it used; nil
    /// once every byte is consumed and more input is needed.
    /// - Throws: ``HTTPParseError`` when the bytes cannot be a valid request (and on every later call).
    public mutating func next(_ input: UnsafeRawBufferPointer, consumed: inout Int) throws(HTTPParseError) -> HTTPRequestPart? {
        let limits = limits
        let part = try stream.next(input, consumed: &consumed, parseHead: { bytes throws(HTTPParseError) in
            try Self.head(bytes, limits: limits)
        }, framing: \.bodyFraming)
        switch part {
        case nil: return nil
        case .head(let head): return .head(head)
        case .body(let range): return .body(range)
        case .end(let trailers): return .end(trailers: trailers)
        }
    }

    // MARK: Heads

    /// Parses a head: the request line and field lines, each ended by CRLF (`bytes` ends with the
    /// last field line's CRLF, the blank line excluded).
    private static func head(_ bytes: UnsafeRawBufferPointer, limits: HTTPParserLimits) throws(HTTPParseError) -> HTTPRequestHead {
        var lines = LineCursor(bytes)
        guard let requestLine = try lines.next() else { throw HTTPParseError(.badRequest, "no request line") }
        let (method, target, version) = try Self.requestLine(requestLine)
        let fields = try HTTPMessageReader.fields(&lines, limits: limits)
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
        let connection = HTTPMessageReader.tokens(fields[values: .connection])
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
            let codings = HTTPMessageReader.tokens(transferEncodings)
            guard codings.last == "chunked", codings.filter({ $0 == "chunked" }).count == 1 else {
                throw HTTPParseError(.badRequest, "chunked is not the final transfer coding, exactly once")
            }
            if codings.count > 1 {
                throw HTTPParseError(.notImplemented, "transfer codings other than chunked (\(codings.dropLast().joined(separator: ", ")))")
            }
            return .chunked
        }
        guard !contentLengths.isEmpty else { return .none }
        return .contentLength(try HTTPMessageReader.contentLength(contentLengths, limits: limits))
    }

}
