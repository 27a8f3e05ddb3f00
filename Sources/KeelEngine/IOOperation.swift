import CKeelLinux
import SystemPackage

/// An I/O operation to submit on an ``IOThread``: a value built with a named factory.
///
/// Operations that name memory (``read(_:into:)``, ``write(_:from:)``) are unsafe in one way: the memory
/// must stay valid and untouched until the completion arrives (the kernel reads or writes it
/// asynchronously). Owning it in the completion closure's captures is the usual way.
public struct IOOperation: Sendable {
    @usableFromInline
    enum Core: Sendable {
        case nop
        case timeout(nanoseconds: UInt64)
        case read(fd: Int32, address: UInt, length: UInt32)
        case write(fd: Int32, address: UInt, length: UInt32)
    }

    @usableFromInline let core: Core

    /// Completes at once with result 0. Measures the engine's round trip.
    public static let nop = IOOperation(core: .nop)

    /// Completes with `-ETIME` (``IOCompletion/isTimeout``) after `duration`, unless cancelled first.
    /// For application timers use ``IOThread/scheduleTimer(after:repeating:_:)``, which is cheaper.
    public static func timeout(_ duration: Duration) -> IOOperation {
        IOOperation(core: .timeout(nanoseconds: duration.nanoseconds))
    }

    /// Reads up to `buffer.count` bytes from `fd` (a pipe, socket, eventfd...) into `buffer`.
    /// The completion's result is the number of bytes read (0 at end of file).
    /// - Important: `buffer` must stay valid until the completion runs.
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> IOOperation {
        IOOperation(core: .read(fd: fd, address: UInt(bitPattern: buffer.baseAddress), length: UInt32(buffer.count)))
    }

    /// Writes `buffer` to `fd`. The completion's result is the number of bytes written.
    /// - Important: `buffer` must stay valid until the completion runs.
    public static func write(_ fd: Int32, from buffer: UnsafeRawBufferPointer) -> IOOperation {
        IOOperation(core: .write(fd: fd, address: UInt(bitPattern: buffer.baseAddress), length: UInt32(buffer.count)))
    }
}

/// The result of an ``IOOperation``: the kernel's `cqe.res` and `cqe.flags`.
public struct IOCompletion: Sendable, Hashable, CustomStringConvertible {
    /// Non-negative: the operation's value (bytes transferred, ...). Negative: `-errno`.
    public let result: Int32
    /// The completion flags (`IORING_CQE_F_*`); 0 on the epoll backend.
    public let flags: UInt32

    /// Creates a completion.
    public init(result: Int32, flags: UInt32 = 0) {
        self.result = result
        self.flags = flags
    }

    /// The error, when ``result`` is negative.
    public var error: Errno? { result < 0 ? Errno(rawValue: -result) : nil }
    /// True when the operation was cancelled (`-ECANCELED`).
    public var isCancelled: Bool { result == -ECANCELED }
    /// True when a timeout operation expired (`-ETIME`).
    public var isTimeout: Bool { result == -ETIME }

    public var description: String {
        if let error { return "IOCompletion(error: \(error))" }
        return "IOCompletion(result: \(result))"
    }
}

/// Identifies a submitted operation, for ``IOThread/cancel(_:)``.
public struct OperationID: Hashable, Sendable {
    @usableFromInline let token: Token
}

extension Duration {
    /// Whole nanoseconds, clamped at zero.
    @usableFromInline
    var nanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        if seconds < 0 { return 0 }
        return UInt64(seconds) &* 1_000_000_000 &+ UInt64(attoseconds / 1_000_000_000)
    }
}
