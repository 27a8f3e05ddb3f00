import HTTPTypes

/// An HTTP/1.x protocol version.
public struct HTTPVersion: Sendable, Hashable, CustomStringConvertible {
    /// The major version (1).
    public var major: Int
    /// The minor version (0 or 1).
    public var minor: Int

    /// A version `major.minor`.
    public init(major: Int, minor: Int) {
        self.major = major
        self.minor = minor
    }

    /// HTTP/1.0.
    public static let http1_0 = HTTPVersion(major: 1, minor: 0)
    /// HTTP/1.1.
    public static let http1_1 = HTTPVersion(major: 1, minor: 1)

    public var description: String { "HTTP/\(major).\(minor)" }
}

/// How a message's body is delimited on the wire.
public enum HTTPBodyFraming: Sendable, Hashable {
    /// No body.
    case none
    /// Exactly this many bytes.
    case contentLength(Int)
    /// Chunked transfer coding, ended by a zero-size chunk and optional trailer fields.
    case chunked
    /// Everything until the connection ends (responses only: no length and not chunked).
    case untilClose
}

/// A request head as parsed from HTTP/1.x: the request itself (method, target, fields, as
/// swift-http-types' `HTTPRequest`) and what the HTTP/1.1 wire adds to it.
public struct HTTPRequestHead: Sendable, Hashable {
    /// Method, scheme/authority/path from the request target and `Host`, and the header fields.
    public var request: HTTPRequest
    /// The version the client spoke.
    public var version: HTTPVersion
    /// True when the connection may carry another request after this one: HTTP/1.1 unless the
    /// client sent `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
    public var keepAlive: Bool
    /// How the body that follows the head is delimited.
    public var bodyFraming: HTTPBodyFraming
    /// The protocols the client asks to switch to (its `Upgrade` field, when `Connection` names
    /// `upgrade`), in its order of preference; empty otherwise.
    public var upgrade: [String]

    /// A head with these parts.
    public init(request: HTTPRequest, version: HTTPVersion = .http1_1, keepAlive: Bool = true,
                bodyFraming: HTTPBodyFraming = .none, upgrade: [String] = []) {
        self.request = request
        self.version = version
        self.keepAlive = keepAlive
        self.bodyFraming = bodyFraming
        self.upgrade = upgrade
    }
}

/// One step of a request as the parser finds it in the bytes it is given.
public enum HTTPRequestPart: Sendable, Hashable {
    /// The head. A body (possibly empty) and `end` follow.
    case head(HTTPRequestHead)
    /// Body bytes: this range of the input passed to ``HTTPRequestParser/next(_:consumed:)``, already
    /// de-chunked (never copied by the parser).
    case body(Range<Int>)
    /// The request is complete; `trailers` are the fields after a chunked body, if it had any.
    case end(trailers: HTTPFields?)
}
