import SystemPackage

/// A failed system call: which call, on what, and the kernel's errno.
///
/// Every syscall Keel makes, directly or through io_uring (where the error comes back as `-cqe.res`),
/// reports failure through this one type, so callers can match on ``errno`` and logs say what failed.
public struct SystemError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The errno value the kernel returned.
    public var errno: Errno
    /// The system call that failed, e.g. `"io_uring_setup"`.
    public var call: String
    /// Extra context, e.g. `"fd 12"`. Empty when there is none.
    public var context: String

    /// Creates an error for `call` failing with `errno`.
    public init(_ errno: Errno, call: String, context: String = "") {
        self.errno = errno
        self.call = call
        self.context = context
    }

    /// Creates an error from a raw errno code.
    public init(code: Int32, call: String, context: String = "") {
        self.init(Errno(rawValue: code), call: call, context: context)
    }

    public var description: String {
        context.isEmpty ? "\(call) failed: \(errno) (errno \(errno.rawValue))"
            : "\(call) failed (\(context)): \(errno) (errno \(errno.rawValue))"
    }
}
