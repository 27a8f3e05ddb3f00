import KeelSystem

/// An error from Keel's engine, with a code callers can match and context for logs.
public struct KeelError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong. New codes may be added without breaking callers.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable { case backendUnavailable, backendSetupFailed, shutDown }
        private let base: Base
        /// The requested backend cannot run on this host (e.g. io_uring disabled by seccomp).
        public static let backendUnavailable = Code(base: .backendUnavailable)
        /// Creating a backend (ring, epoll, eventfd) failed; see ``KeelError/underlying``.
        public static let backendSetupFailed = Code(base: .backendSetupFailed)
        /// The pool or thread has been shut down.
        public static let shutDown = Code(base: .shutDown)

        public var description: String {
            switch base {
            case .backendUnavailable: return "backendUnavailable"
            case .backendSetupFailed: return "backendSetupFailed"
            case .shutDown: return "shutDown"
            }
        }
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
