import CKeelLinux
import SystemPackage

/// An I/O operation to submit on an ``IOThread``: a value built with a named factory.
///
/// Operations that name memory (``read(_:into:)``, ``write(_:from:)``) are unsafe in one way: the memory
/// must stay valid and untouched until the completion arrives (the kernel reads or writes it
/// asynchronously). Owning it in the completion closure's captures is the usual way.
public struct IOOperation: Sendable {
    @usableFromInline
    enum Core: Sendable, BitwiseCopyable {
        case nop
        case timeout(nanoseconds: UInt64)
        case read(fd: Int32, address: UInt, length: UInt32)
        case write(fd: Int32, address: UInt, length: UInt32)
        case accept(fd: Int32, multishot: Bool, direct: Bool)
        case receive(fd: Int32, address: UInt, length: UInt32)
        case receivePooled(fd: Int32, multishot: Bool)
        case send(fd: Int32, address: UInt, length: UInt32, flags: UInt32)
        case sendMessage(fd: Int32, message: UInt, flags: UInt32)
        case sendMessageZeroCopy(fd: Int32, message: UInt, flags: UInt32)
        case connect(fd: Int32, address: UInt, length: UInt32)
        case receiveMessagePooled(fd: Int32, template: UInt, multishot: Bool)
        case pollReadable(fd: Int32)

        /// True for operations that wait for the descriptor to become readable (epoll).
        var waitsForReadable: Bool {
            switch self {
            case .read, .accept, .receive, .receivePooled, .receiveMessagePooled, .pollReadable: return true
            default: return false
            }
        }

        var isMultishot: Bool {
            switch self {
            case .accept(_, let multishot, _), .receivePooled(_, let multishot), .receiveMessagePooled(_, _, let multishot):
                return multishot

            default: return false
            }
        }
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

extension IOOperation {
    /// Accepts connections on listening socket `fd`. The result is the new connection's descriptor
    /// (non-blocking, close-on-exec). With `multishot`, one completion arrives per connection, each
    /// flagged ``IOCompletion/hasMore``, until the operation is cancelled or fails.
    ///
    /// With `direct` (io_uring with ``KernelFeatures/directDescriptors`` only: see
    /// ``IOThread/acceptsDirectDescriptors``), each connection goes into a free slot of the thread's
    /// registered file table instead of the process's descriptor table; turn the result into the value
    /// the thread's socket calls take with ``IOThread/acceptedDescriptor(_:)``.
    public static func accept(_ fd: Int32, multishot: Bool, direct: Bool = false) -> IOOperation {
        IOOperation(core: .accept(fd: fd, multishot: multishot, direct: direct))
    }

    /// Receives up to `buffer.count` bytes from socket `fd` into `buffer`.
    /// - Important: `buffer` must stay valid until the completion runs.
    public static func receive(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> IOOperation {
        IOOperation(core: .receive(fd: fd, address: UInt(bitPattern: buffer.baseAddress), length: UInt32(buffer.count)))
    }

    /// Receives from socket `fd` into a buffer of the I/O thread's pool, chosen only when data arrives
    /// (io_uring provided buffers; emulated on epoll), so a waiting receive holds no memory. Take the
    /// data in the completion handler with ``IOThread/takeReceivedBuffer(_:)``; a buffer not taken goes
    /// back to the pool. With `multishot`, one completion arrives per chunk received, each flagged
    /// ``IOCompletion/hasMore``, until end of stream (result 0), an error, or cancellation. `-ENOBUFS`
    /// means the pool ran dry: submit again once buffers come back.
    public static func receivePooled(_ fd: Int32, multishot: Bool) -> IOOperation {
        IOOperation(core: .receivePooled(fd: fd, multishot: multishot))
    }

    /// Receives datagrams with their sender addresses from socket `fd` into pooled buffers (io_uring
    /// multishot RECVMSG with provided buffers; emulated on epoll with the same layout). Each buffer
    /// holds a ``ReceivedMessageLayout`` header, then `template.msg_namelen` bytes of address, then
    /// `template.msg_controllen` bytes of control messages, then the payload. The template's
    /// `msg_namelen` and `msg_controllen` reserve that space; it must stay valid while the operation is
    /// armed.
    public static func receiveMessagePooled(_ fd: Int32, template: UnsafeMutablePointer<msghdr>, multishot: Bool)
        -> IOOperation
    {
        IOOperation(core: .receiveMessagePooled(fd: fd, template: UInt(bitPattern: template), multishot: multishot))
    }

    /// Completes once socket `fd` is readable, has urgent (out-of-band) data, or hung up; the result is
    /// the ready mask (`POLLIN`, `POLLPRI`, `POLLHUP`, `POLLERR`, `POLLRDHUP`). For readers that must
    /// look for urgent data before reading past it.
    public static func pollReadable(_ fd: Int32) -> IOOperation {
        IOOperation(core: .pollReadable(fd: fd))
    }

    /// Sends `buffer` on socket `fd` (never raising SIGPIPE). `urgent` sends it as out-of-band data.
    /// - Important: `buffer` must stay valid until the completion runs.
    public static func send(_ fd: Int32, from buffer: UnsafeRawBufferPointer, urgent: Bool = false) -> IOOperation {
        IOOperation(core: .send(
            fd: fd, address: UInt(bitPattern: buffer.baseAddress), length: UInt32(buffer.count),
            flags: CKEEL_MSG_NOSIGNAL | (urgent ? CKEEL_MSG_OOB : 0)))
    }

    /// Sends the iovecs (and optional destination address) of `message` on socket `fd` in one call.
    /// - Important: the message, its iovec array and the memory they name must stay valid until the
    ///   completion runs.
    public static func sendMessage(_ fd: Int32, _ message: UnsafePointer<msghdr>) -> IOOperation {
        IOOperation(core: .sendMessage(fd: fd, message: UInt(bitPattern: message), flags: CKEEL_MSG_NOSIGNAL))
    }

    /// Like ``sendMessage(_:_:)``, but where the ring has ``KernelFeatures/zeroCopySend`` the kernel
    /// sends from the memory itself rather than a copy. The first completion carries the result; when
    /// it ``IOCompletion/hasMore``, a second one follows, flagged
    /// ``IOCompletion/isZeroCopyNotification``, once the kernel no longer reads the memory. Elsewhere
    /// (epoll, a kernel without it) it is a plain ``sendMessage(_:_:)`` with a single completion.
    /// - Important: the message, its iovecs and the memory they name must stay valid until the final
    ///   completion (the notification, when there is one).
    public static func sendMessageZeroCopy(_ fd: Int32, _ message: UnsafePointer<msghdr>) -> IOOperation {
        IOOperation(core: .sendMessageZeroCopy(fd: fd, message: UInt(bitPattern: message), flags: CKEEL_MSG_NOSIGNAL))
    }

    /// Connects socket `fd` (non-blocking) to the address at `address`. The result is 0 or `-errno`.
    /// - Important: the address must stay valid until the completion runs.
    public static func connect(_ fd: Int32, to address: UnsafeRawPointer, length: Int) -> IOOperation {
        IOOperation(core: .connect(fd: fd, address: UInt(bitPattern: address), length: UInt32(length)))
    }
}

/// The layout of a buffer filled by ``IOOperation/receiveMessagePooled(_:template:multishot:)``.
public enum ReceivedMessageLayout {
    /// Bytes of the header at the start of the buffer.
    public static var headerBytes: Int { ckeel_recvmsg_out_size() }
    /// The sender address length the kernel stored.
    public static func addressLength(_ buffer: UnsafeRawPointer) -> Int { Int(ckeel_recvmsg_out_namelen(buffer)) }
    /// The bytes of control messages the kernel stored.
    public static func controlLength(_ buffer: UnsafeRawPointer) -> Int { Int(ckeel_recvmsg_out_controllen(buffer)) }
    /// The datagram's full length (more than was stored when it was truncated).
    public static func payloadLength(_ buffer: UnsafeRawPointer) -> Int { Int(ckeel_recvmsg_out_payloadlen(buffer)) }
    /// True when the datagram did not fit and was cut.
    public static func isTruncated(_ buffer: UnsafeRawPointer) -> Bool { ckeel_recvmsg_out_flags(buffer) & CKEEL_MSG_TRUNC != 0 }
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
    /// True when a multishot operation stays armed and more completions will follow.
    public var hasMore: Bool { flags & CKEEL_CQE_F_MORE != 0 }
    /// True when the completion carries a pooled receive buffer.
    public var hasBuffer: Bool { flags & CKEEL_CQE_F_BUFFER != 0 }
    /// True for the notification that ends a zero-copy send: the kernel no longer reads its memory.
    public var isZeroCopyNotification: Bool { flags & CKEEL_CQE_F_NOTIF != 0 }
    /// True on a zero-copy notification when the kernel copied the bytes after all (loopback, or a
    /// device that cannot send from user pages): zero-copy only added work for that send.
    public var zeroCopyFellBackToCopy: Bool { isZeroCopyNotification && UInt32(bitPattern: result) & CKEEL_NOTIF_USAGE_ZC_COPIED != 0 }
    /// The pool chunk id of the carried buffer (valid when ``hasBuffer``).
    var bufferChunk: UInt32 { flags >> CKEEL_CQE_BUFFER_SHIFT }

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
