import KeelBuffers
import KeelEngine
import KeelSystem
import Synchronization

/// How long to wait before reconnecting: starts at `initial`, doubles after each failed attempt up to
/// `maximum`, and starts over once a connection has been made.
public struct ReconnectBackoff: Sendable, Hashable {
    /// The first delay.
    public var initial: Duration
    /// The longest delay.
    public var maximum: Duration

    /// Creates a backoff policy.
    public init(initial: Duration = .milliseconds(100), maximum: Duration = .seconds(30)) {
        self.initial = initial
        self.maximum = maximum
    }
}

/// Keeps one outbound connection open: connects, and whenever the connection fails or closes,
/// connects again after a backoff (the C++ framework's "connection maintaining"). Each connection gets
/// a fresh handler from `makeHandler`.
///
/// **Threading:** its state lives on one I/O thread; ``start()``, ``stop()`` and the counters may be
/// used from any thread.
public final class TCPConnectionMaintainer<Handler: TCPConnectionHandler>: @unchecked Sendable {
    // @unchecked Sendable: mutable state is touched only on `thread`; counters are atomics.

    /// The address it connects to.
    public let address: SocketAddress
    /// The backoff policy.
    public let backoff: ReconnectBackoff
    private let thread: IOThread
    private let connector: TCPConnector<MaintainedHandler<Handler>>
    private let makeHandler: @Sendable () -> Handler
    private var running = false
    private var delay: Duration
    private var retryTimer: TimerHandle?
    private var current: TCPConnection?
    private let connects = Atomic<Int>(0)
    private let failures = Atomic<Int>(0)
    private let connected = Atomic<Bool>(false)

    /// Creates a maintainer; call ``start()`` to begin.
    public init(
        pool: IOPool, address: SocketAddress, configuration: TCPConnectorConfiguration = .init(),
        backoff: ReconnectBackoff = .init(), makeHandler: @escaping @Sendable () -> Handler
    ) {
        self.address = address
        self.backoff = backoff
        self.delay = backoff.initial
        self.thread = pool.next()
        self.connector = TCPConnector(pool: pool, configuration: configuration)
        self.makeHandler = makeHandler
    }

    /// Connections made so far.
    public var connectionCount: Int { connects.load(ordering: .relaxed) }
    /// Connection attempts that failed so far.
    public var failedAttempts: Int { failures.load(ordering: .relaxed) }
    /// True while a connection is open.
    public var isConnected: Bool { connected.load(ordering: .relaxed) }

    /// Starts connecting (and reconnecting).
    public func start() {
        thread.execute { [self] in
            guard !running else { return }
            running = true
            attempt()
        }
    }

    /// Stops reconnecting and closes the current connection gracefully.
    public func stop() {
        thread.execute { [self] in
            running = false
            if let retryTimer { thread.cancelTimer(retryTimer) }
            retryTimer = nil
            current?.close()
        }
    }

    private func attempt() {
        guard running else { return }
        connector.connect(to: address, on: thread, makeHandler: { [self] in
            MaintainedHandler(inner: makeHandler(), maintainer: self)
        }, failed: { [self] _ in
            self.failures.wrappingAdd(1, ordering: .relaxed)
            self.scheduleRetry()
        })
    }

    private func scheduleRetry() {
        guard running, retryTimer == nil else { return }
        let wait = delay
        delay = min(delay * 2, backoff.maximum)
        retryTimer = thread.scheduleTimer(after: wait) { [self] in
            retryTimer = nil
            attempt()
        }
    }

    fileprivate func established(_ connection: TCPConnection) {
        connects.wrappingAdd(1, ordering: .relaxed)
        connected.store(true, ordering: .relaxed)
        delay = backoff.initial
        current = connection
        if !running { connection.close() }
    }

    fileprivate func lost() {
        connected.store(false, ordering: .relaxed)
        current = nil
        scheduleRetry()
    }
}

/// Forwards every event to the user's handler and tells the maintainer when the connection opens and closes.
struct MaintainedHandler<Inner: TCPConnectionHandler>: TCPConnectionHandler {
    var inner: Inner
    let maintainer: TCPConnectionMaintainer<Inner>

    mutating func connectionEstablished(_ connection: TCPConnection) {
        maintainer.established(connection)
        inner.connectionEstablished(connection)
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        inner.connectionReceived(buffer, on: connection)
    }

    mutating func connectionPeerHalfClosed(_ connection: TCPConnection) {
        inner.connectionPeerHalfClosed(connection)
    }

    mutating func connectionWriteCompleted(_ connection: TCPConnection, bytes: Int) {
        inner.connectionWriteCompleted(connection, bytes: bytes)
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        inner.connectionClosed(connection, reason: reason)
        maintainer.lost()
    }
}
