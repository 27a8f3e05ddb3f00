import KeelBuffers
import SystemPackage

/// Your per-connection logic for a ``TCPServer``, as a value stored inside the connection.
///
/// The handler *is* the connection's typed user data: its stored properties belong to that
/// connection, are touched only on the connection's I/O thread, and need no locks. A struct handler
/// costs no allocation per connection (connections are recycled).
///
/// All callbacks run on the connection's I/O thread. A callback may write, close, and read the
/// connection's properties; events caused by a callback (a write completing at once, a close) are
/// delivered after it returns, never re-entrantly.
public protocol TCPConnectionHandler: SendableMetatype {
    /// The connection is open. Reading starts after this returns.
    mutating func connectionEstablished(_ connection: TCPConnection)

    /// Bytes arrived, in a pooled buffer you now own. Keep it to accumulate a message, hand it to
    /// ``TCPConnection/write(_:)-(IOBuffer)`` to echo it without a copy, or drop it.
    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection)

    /// The peer shut down its sending side (end of stream). The default closes the connection
    /// gracefully; implement it to keep writing to a half-closed peer.
    mutating func connectionPeerHalfClosed(_ connection: TCPConnection)

    /// `bytes` more bytes reached the kernel (in order). Optional.
    mutating func connectionWriteCompleted(_ connection: TCPConnection, bytes: Int)

    /// Whether ``connectionWriteCompleted(_:bytes:)`` is called. The default is true; a handler that
    /// does not implement it may say false, which spares the event (~40 instructions a write).
    static var observesWriteCompletion: Bool { get }

    /// The connection is closed and its descriptor released; `reason` says why. Optional.
    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason)

    /// The write queue crossed the high watermark (`isWritable` false: stop producing) or fell back
    /// to the low watermark (`isWritable` true: go on). Optional. See ``TCPFlowControl``.
    mutating func connectionWritabilityChanged(_ connection: TCPConnection, isWritable: Bool)

    /// A write took the queue past the hard limit with the ``SendQueuePolicy/notify`` policy
    /// (the write was queued; decide what to do, e.g. close). Optional.
    mutating func connectionWriteLimitExceeded(_ connection: TCPConnection, queuedBytes: Int)

    /// The peer sent an urgent (out-of-band, `MSG_OOB`) byte, delivered apart from the normal stream.
    /// Only called when the server or connector enables ``TCPServerConfiguration/receivesUrgentData``.
    mutating func connectionReceivedUrgent(_ connection: TCPConnection, byte: UInt8)

    /// A filter reported an error that did not close the connection (``TCPFilterContext/passError(_:)``).
    /// The default closes the connection abortively with ``TCPCloseReason/Code/protocolError``.
    mutating func connectionErrorCaught(_ error: any Error, on connection: TCPConnection)
}

extension TCPConnectionHandler {
    public mutating func connectionEstablished(_ connection: TCPConnection) {}
    public mutating func connectionPeerHalfClosed(_ connection: TCPConnection) { connection.close() }
    public mutating func connectionWriteCompleted(_ connection: TCPConnection, bytes: Int) {}
    public static var observesWriteCompletion: Bool { true }
    public mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {}
    public mutating func connectionWritabilityChanged(_ connection: TCPConnection, isWritable: Bool) {}
    public mutating func connectionWriteLimitExceeded(_ connection: TCPConnection, queuedBytes: Int) {}
    public mutating func connectionReceivedUrgent(_ connection: TCPConnection, byte: UInt8) {}
    public mutating func connectionErrorCaught(_ error: any Error, on connection: TCPConnection) {
        connection.closeForError(error)
    }
}

/// Bounds on what a connection queues for a slow reader, so the server never hoards memory.
///
/// ```
///  queued bytes ─┬─ hardLimit      policy: refuse (closes: slowConsumer) | dropNewest | dropOldest | notify
///                ├─ highWatermark  → not writable: producers pause (and reading pauses, if asked)
///                └─ lowWatermark   → writable again
/// ```
public struct TCPFlowControl: Sendable, Hashable {
    /// Queued bytes above which the connection reports itself not writable.
    public var highWatermark: Int
    /// Queued bytes at or below which it reports itself writable again.
    public var lowWatermark: Int
    /// Most bytes the queue may hold (nil: no limit).
    public var hardLimit: Int?
    /// What to do with a write past the hard limit (``SendQueuePolicy/refuse``: close the slow consumer).
    public var policy: SendQueuePolicy
    /// Stop reading this connection while its own queue is over the high watermark: a peer that sends
    /// without reading (an echo client) is pushed back by TCP instead of growing the server's queue.
    public var pausesReadingWhileNotWritable: Bool

    /// Creates a flow-control configuration.
    public init(highWatermark: Int = 256 * 1024, lowWatermark: Int = 64 * 1024, hardLimit: Int? = 16 * 1024 * 1024,
                policy: SendQueuePolicy = .refuse, pausesReadingWhileNotWritable: Bool = false) {
        precondition(lowWatermark <= highWatermark, "lowWatermark must not exceed highWatermark")
        self.highWatermark = highWatermark
        self.lowWatermark = lowWatermark
        self.hardLimit = hardLimit
        self.policy = policy
        self.pausesReadingWhileNotWritable = pausesReadingWhileNotWritable
    }

    /// The default: 256 KiB high, 64 KiB low, 16 MiB hard limit closing a slow consumer.
    public static let `default` = TCPFlowControl()
}

/// How ``TCPConnection/close(_:)`` ends a connection.
public enum TCPCloseMode: Sendable, Hashable {
    /// Send everything queued, shut down the sending side (the peer reads end of stream), then close.
    case graceful
    /// Send everything queued and shut down the sending side, but keep receiving until the peer
    /// closes its side too.
    case halfClose
    /// Drop anything queued and close at once with an RST (`SO_LINGER` 0). The connection skips
    /// TIME_WAIT, which spares the local port table under heavy churn, at the cost that the peer may
    /// lose data still in flight and sees "connection reset" rather than an orderly end.
    case abortive
}
