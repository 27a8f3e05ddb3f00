import SystemPackage

/// Why a connection closed: a code that callers match, plus the kernel's errno or a layer's detail
/// where one applies.
///
/// The set of codes is open: each layer adds its own without breaking anyone who switches over the
/// ones they know (a TLS layer's "handshake failed", a WebSocket close code, a refused PROXY header):
///
/// ```swift
/// extension TCPCloseReason.Code {
///     public static let handshakeFailed = Self("tls.handshakeFailed")
/// }
/// context.close(.abortive, reason: TCPCloseReason(.handshakeFailed, detail: "certificate expired"))
/// ```
///
/// Compare with `==` against the statics (`reason == .idleTimeout`) or match on ``code`` (which also
/// matches reasons carrying an errno or detail: `reason.code == .error`).
public struct TCPCloseReason: Sendable, Hashable, CustomStringConvertible {
    /// What kind of close. Codes are named by a string; Keel's own are short names, layers above
    /// prefix theirs (`"tls."`, `"websocket."`, `"proxy."`).
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        // The bytes of a static string, as their address and count (16 bytes, copied as plain data: a
        // `String` here cost a retain and a release per copy, several per closed connection, and a
        // `StaticString`'s 17 bytes made every connection's stored close reason 8 bytes larger). A
        // one-scalar literal has no address: `address` is 0 and `count` holds the scalar.
        private let address: UInt
        private let count: Int

        /// The code's name, stable across releases (logs and metrics may use it).
        public var name: String {
            guard let start = UnsafeRawPointer(bitPattern: address) else {
                return String(Unicode.Scalar(UInt32(count)).map(Character.init) ?? "?")
            }
            return String(decoding: UnsafeRawBufferPointer(start: start, count: count), as: UTF8.self)
        }

        /// Creates a code. Layers define theirs once, as static constants named by a literal.
        public init(_ name: StaticString) {
            if name.hasPointerRepresentation {
                address = UInt(bitPattern: name.utf8Start)
                count = name.utf8CodeUnitCount
            } else {
                address = 0
                count = Int(name.unicodeScalar.value)
            }
        }

        public static func == (lhs: Code, rhs: Code) -> Bool {
            (lhs.address == rhs.address && lhs.count == rhs.count) || lhs.name == rhs.name
        }

        public func hash(into hasher: inout Hasher) { hasher.combine(name) }

        /// This side asked to close (``TCPConnection/close(_:)``, or the server stopped).
        public static let local = Code("local")
        /// The peer closed the connection (end of stream) and this side finished.
        public static let peerClosed = Code("peerClosed")
        /// The peer reset the connection (ECONNRESET, EPIPE).
        public static let reset = Code("reset")
        /// Nothing received or sent within the idle timeout.
        public static let idleTimeout = Code("idleTimeout")
        /// Nothing received within the read timeout.
        public static let readTimeout = Code("readTimeout")
        /// The peer read too slowly: the write queue hit its hard limit (``SendQueuePolicy/refuse``).
        public static let slowConsumer = Code("slowConsumer")
        /// A system call failed (see ``TCPCloseReason/errno``).
        public static let error = Code("error")
        /// A protocol layer found the peer's bytes invalid (see ``TCPCloseReason/detail``).
        public static let protocolError = Code("protocolError")
        /// A resource ran out part-way through (the buffer pool, for a write that filters must copy).
        public static let resourceExhausted = Code("resourceExhausted")

        public var description: String { name }
    }

    /// The kind of close.
    public var code: Code
    /// The kernel's errno, when a system call failed.
    public var errno: Errno?
    /// What a layer wants to add for logs (a WebSocket close code, a TLS alert, ...).
    public var detail: String?

    /// Creates a reason.
    public init(_ code: Code, errno: Errno? = nil, detail: String? = nil) {
        self.code = code
        self.errno = errno
        self.detail = detail
    }

    /// This side asked to close.
    public static let local = TCPCloseReason(.local)
    /// The peer closed the connection (end of stream) and this side finished.
    public static let peerClosed = TCPCloseReason(.peerClosed)
    /// The peer reset the connection.
    public static let reset = TCPCloseReason(.reset)
    /// Nothing received or sent within the idle timeout.
    public static let idleTimeout = TCPCloseReason(.idleTimeout)
    /// Nothing received within the read timeout.
    public static let readTimeout = TCPCloseReason(.readTimeout)
    /// The write queue hit its hard limit with the close policy.
    public static let slowConsumer = TCPCloseReason(.slowConsumer)

    /// A system call failed with `errno`.
    public static func error(_ errno: Errno) -> TCPCloseReason { TCPCloseReason(.error, errno: errno) }

    public var description: String {
        var text = code.name
        if let errno { text += ": \(errno)" }
        if let detail { text += ": \(detail)" }
        return text
    }
}
