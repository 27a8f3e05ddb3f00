import KeelSockets
import Synchronization

/// One I/O thread's counters for one endpoint. Only that thread writes them (a relaxed load and
/// store, no read-modify-write and no shared cache line with another thread's counters); any thread
/// reads them.
final class ThreadCounters: Sendable {
    let messagesIn = Atomic<Int>(0)
    let messagesOut = Atomic<Int>(0)
    let bytesIn = Atomic<Int>(0)
    let bytesOut = Atomic<Int>(0)
    /// Messages the peer's flow control refused, or that could not be framed.
    let drops = Atomic<Int>(0)
    /// Peers opened and closed on this thread.
    let opened = Atomic<Int>(0)
    let closed = Atomic<Int>(0)
    /// Peers closed for a bad message (oversized, malformed framing).
    let badMessages = Atomic<Int>(0)
    /// Messages a plugin sent that the endpoint cannot carry (see ``SendOutcome/invalid``).
    let pluginErrors = Atomic<Int>(0)
    /// Connections closed, by ``CloseReasonBucket``.
    let closeReasons = CloseReasonBucket.allCases.map { _ in CloseCount() }

    /// One bucket's count.
    final class CloseCount: Sendable {
        let value = Atomic<Int>(0)
    }
    // Keeps the next thread's counters off this cache line (objects are allocated apart, but small
    // ones may share a line).
    private let padding: (Int, Int, Int, Int, Int, Int, Int, Int) = (0, 0, 0, 0, 0, 0, 0, 0)

    @inline(__always) private static func bump(_ counter: borrowing Atomic<Int>, by value: Int = 1) {
        counter.store(counter.load(ordering: .relaxed) &+ value, ordering: .relaxed)
    }

    func received(_ bytes: Int) {
        Self.bump(messagesIn)
        Self.bump(bytesIn, by: bytes)
    }

    func sent(_ bytes: Int) {
        Self.bump(messagesOut)
        Self.bump(bytesOut, by: bytes)
    }

    func dropped() { Self.bump(drops) }
    func pluginError() { Self.bump(pluginErrors) }

    /// Counts one send by its outcome.
    @inline(__always) func count(_ outcome: SendOutcome, bytes: Int) {
        switch outcome {
        case .sent: sent(bytes)
        case .dropped: dropped()
        case .invalid: pluginError()
        }
    }
    func peerOpened() { Self.bump(opened) }
    func peerClosed() { Self.bump(closed) }
    func badMessage() { Self.bump(badMessages) }
    func closed(because reason: CloseReasonBucket) { Self.bump(closeReasons[reason.rawValue].value) }
}

/// Why connections closed, in the buckets metrics report (layers' own codes fall under `other`).
enum CloseReasonBucket: Int, CaseIterable, Sendable {
    case local, peerClosed, reset, idleTimeout, readTimeout, slowConsumer, error, protocolError, resourceExhausted, other

    init(_ code: TCPCloseReason.Code) {
        self = Self.allCases.first { $0.name == code.name } ?? .other
    }

    /// The code's name (`TCPCloseReason.Code.name`).
    var name: String { "\(self)" }
}

/// An endpoint's traffic counters, summed over threads.
public struct EndpointTraffic: Sendable, Hashable {
    /// Creates counters.
    public init(messagesIn: Int = 0, messagesOut: Int = 0, bytesIn: Int = 0, bytesOut: Int = 0, drops: Int = 0,
                peersOpened: Int = 0, peersClosed: Int = 0, badMessages: Int = 0) {
        self.messagesIn = messagesIn
        self.messagesOut = messagesOut
        self.bytesIn = bytesIn
        self.bytesOut = bytesOut
        self.drops = drops
        self.peersOpened = peersOpened
        self.peersClosed = peersClosed
        self.badMessages = badMessages
    }

    /// Messages received from peers.
    public var messagesIn = 0
    /// Messages sent to peers.
    public var messagesOut = 0
    /// Payload bytes received (without framing).
    public var bytesIn = 0
    /// Payload bytes sent (without framing).
    public var bytesOut = 0
    /// Messages not sent: refused by a peer's flow control, or not framable.
    public var drops = 0
    /// Peers opened so far.
    public var peersOpened = 0
    /// Peers closed so far.
    public var peersClosed = 0
    /// Peers closed for a bad message (oversized, malformed framing).
    public var badMessages = 0
    /// Messages plugins sent that the endpoint cannot carry (the wrong size for fixed framing, too
    /// long for the length prefix or one datagram).
    public var pluginErrors = 0
    /// Connections closed, by reason (`peerClosed`, `local`, `reset`, `idleTimeout`, `readTimeout`,
    /// `slowConsumer`, `error`, `protocolError`, `resourceExhausted`, `other`); absent reasons are 0.
    public var closeReasons: [String: Int] = [:]
}

/// Per-thread counters of one endpoint.
final class EndpointCounters: Sendable {
    let threads: [ThreadCounters]

    init(threadCount: Int) {
        threads = (0..<threadCount).map { _ in ThreadCounters() }
    }

    var traffic: EndpointTraffic {
        var total = EndpointTraffic()
        for counters in threads {
            total.messagesIn += counters.messagesIn.load(ordering: .relaxed)
            total.messagesOut += counters.messagesOut.load(ordering: .relaxed)
            total.bytesIn += counters.bytesIn.load(ordering: .relaxed)
            total.bytesOut += counters.bytesOut.load(ordering: .relaxed)
            total.drops += counters.drops.load(ordering: .relaxed)
            total.peersOpened += counters.opened.load(ordering: .relaxed)
            total.peersClosed += counters.closed.load(ordering: .relaxed)
            total.badMessages += counters.badMessages.load(ordering: .relaxed)
            total.pluginErrors += counters.pluginErrors.load(ordering: .relaxed)
            for bucket in CloseReasonBucket.allCases {
                let count = counters.closeReasons[bucket.rawValue].value.load(ordering: .relaxed)
                if count > 0 { total.closeReasons[bucket.name, default: 0] += count }
            }
        }
        return total
    }
}
