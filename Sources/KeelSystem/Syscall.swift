import CKeelLinux
import Glibc
import SystemPackage

/// The outcome of a non-blocking system call that may have to wait.
public enum IOOutcome<Value> {
    /// The call completed with a value.
    case completed(Value)
    /// The call would block (EAGAIN/EWOULDBLOCK): wait for readiness and try again.
    case wouldBlock
}

extension IOOutcome: Sendable where Value: Sendable {}

/// The syscall funnel: runs `body` (a libc call returning -1 and setting errno on failure), retries it on
/// EINTR, and turns any other failure into a ``SystemError`` naming `call`.
///
/// - Throws: ``SystemError`` for every errno other than EINTR.
@inline(__always)
public func retryingSyscall<T: FixedWidthInteger>(
    _ call: StaticString, context: @autoclosure () -> String = "", _ body: () -> T
) throws(SystemError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = ckeel_errno()
        if code == EINTR { continue }
        throw SystemError(code: code, call: "\(call)", context: context())
    }
}

/// Like ``retryingSyscall(_:context:_:)`` for non-blocking calls: EAGAIN/EWOULDBLOCK is returned as
/// ``IOOutcome/wouldBlock`` rather than thrown.
@inline(__always)
public func nonBlockingSyscall<T: FixedWidthInteger>(
    _ call: StaticString, context: @autoclosure () -> String = "", _ body: () -> T
) throws(SystemError) -> IOOutcome<T> {
    while true {
        let result = body()
        if result != -1 { return .completed(result) }
        let code = ckeel_errno()
        if code == EINTR { continue }
        if code == EAGAIN || code == EWOULDBLOCK { return .wouldBlock }
        throw SystemError(code: code, call: "\(call)", context: context())
    }
}
