import HTTPTypes

/// Why a request could not be parsed, and the status a server answers with before it closes the
/// connection (after such an error the byte stream cannot be trusted, so the connection must close).
public struct HTTPParseError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong, as the status the peer should get.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        /// The HTTP status that reports this error.
        public let status: HTTPResponse.Status

        /// 400: the message breaks the grammar or its framing is ambiguous (a request smuggling risk).
        public static let badRequest = Code(status: .badRequest)
        /// 413: the body is over the limit.
        public static let contentTooLarge = Code(status: .contentTooLarge)
        /// 414: the request line is over the limit.
        public static let uriTooLong = Code(status: .uriTooLong)
        /// 431: too many header fields, or the head is over the size limit.
        public static let headerFieldsTooLarge = Code(status: .requestHeaderFieldsTooLarge)
        /// 501: a transfer coding other than chunked.
        public static let notImplemented = Code(status: .notImplemented)
        /// 505: a protocol version other than HTTP/1.0 and HTTP/1.1.
        public static let versionNotSupported = Code(status: .httpVersionNotSupported)

        public var description: String { "\(status.code) \(status.reasonPhrase)" }
    }

    /// The kind of error (and the status to answer with).
    public var code: Code
    /// What exactly was wrong, for logs (never echoes the peer's bytes beyond a short excerpt).
    public var detail: String

    /// An error of `code` with `detail`.
    public init(_ code: Code, _ detail: String) {
        self.code = code
        self.detail = detail
    }

    public var description: String { "\(code): \(detail)" }
}

/// Limits a parser enforces, each answered with its own status when exceeded.
public struct HTTPParserLimits: Sendable, Hashable {
    /// The longest request line, CRLF excluded (414 beyond it).
    public var maximumRequestLineLength: Int
    /// The most header fields in a head, or trailer fields after a chunked body (431 beyond it).
    public var maximumHeaderCount: Int
    /// The largest head, request line and fields together (431 beyond it).
    public var maximumHeadSize: Int
    /// The largest body of one message, in bytes after chunked decoding (413 beyond it).
    public var maximumBodySize: Int

    /// Limits for a server that takes small requests: 8 KiB request line, 100 fields, 32 KiB head,
    /// 1 MiB body.
    public init(maximumRequestLineLength: Int = 8 * 1024, maximumHeaderCount: Int = 100,
                maximumHeadSize: Int = 32 * 1024, maximumBodySize: Int = 1 << 20) {
        self.maximumRequestLineLength = maximumRequestLineLength
        self.maximumHeaderCount = maximumHeaderCount
        self.maximumHeadSize = maximumHeadSize
        self.maximumBodySize = maximumBodySize
    }
}
