import KeelSystem

/// An error from Keel's engine, with a code callers can match and context for logs.
public struct KeelError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong. New codes may be added without breaking callers.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// The code's name, stable across releases. Layers above may define codes of their own.
        public let name: String

        /// Creates a code (define each once, as a static constant).
        public init(_ name: String) { self.name = name }
        /// The requested backend cannot run on this host (e.g. io_uring disabled by seccomp).
        public static let backendUnavailable = Code("backendUnavailable")
        /// Creating a backend (ring, epoll, eventfd) failed; see ``KeelError/underlying``.
        public static let backendSetupFailed = Code("backendSetupFailed")
        /// The pool or thread has been shut down.
        public static let shutDown = Code("shutDown")

        public var description: String { name }
    }

    /// The kind of failure.
    public var code: Code
    /// What Keel was doing.
    public var context: String
    /// The system call failure behind it, if any.
    public var underlying: SystemError?

    /// Creates an error.
    public init(_ code: Code, context: String, underlying: SystemError? = nil) {
        self.code = code
        self.context = context
        self.underlying = underlying
    }

    public var description: String {
        if let underlying { return "\(code): \(context): \(underlying)" }
        return "\(code): \(context)"
    }
}
