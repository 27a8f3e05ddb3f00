import KeelSockets
import KeelSystem

/// What a ``TCPGateway`` listens on, where it relays to, and how it treats its back-ends.
public struct TCPGatewayConfiguration: Sendable {
    /// The listener and the options of each client connection (its filters: TLS termination, a PROXY
    /// header from a load balancer in front; its idle timeout; the connection limit).
    public var listener: TCPServerConfiguration
    /// The back-ends, used round robin; at least one.
    public var backends: [SocketAddress]
    /// Give up connecting to a back-end after this long (then the next one is tried).
    public var connectTimeout: Duration
    /// Options of each back-end connection (idle timeout, socket options, filters).
    public var backendConnection: TCPConnectionOptions
    /// Send a PROXY protocol v2 header first on each back-end connection, naming the client's
    /// address, so the back-end sees who connected rather than the gateway.
    public var sendsProxyHeader: Bool
    /// Consecutive connect failures after which a back-end is marked down.
    public var failuresBeforeDown: Int
    /// How long a back-end stays down after it was marked so, at first; each further failure of the
    /// retry doubles it, up to ``maximumRetryBackoff``. A connection that succeeds marks it up again.
    public var retryBackoff: Duration
    /// The longest a back-end stays down before it is tried again.
    public var maximumRetryBackoff: Duration

    /// A gateway from `listener` to `backends`. Both sides get the relay's flow control
    /// (``TCPFlowControl/relay``) and a fixed 128 KiB receive buffer (the kernel doubles it) unless you
    /// change them afterwards: a side whose reading is paused then holds at most that much in the kernel
    /// and hands the relay at most that much at once.
    public init(listener: TCPServerConfiguration, backends: [SocketAddress], connectTimeout: Duration = .seconds(5),
                backendConnection: TCPConnectionOptions = .init(), sendsProxyHeader: Bool = false,
                failuresBeforeDown: Int = 1, retryBackoff: Duration = .seconds(1), maximumRetryBackoff: Duration = .seconds(30)) {
        self.listener = listener
        self.backends = backends
        self.connectTimeout = connectTimeout
        self.backendConnection = backendConnection
        self.sendsProxyHeader = sendsProxyHeader
        self.failuresBeforeDown = failuresBeforeDown
        self.retryBackoff = retryBackoff
        self.maximumRetryBackoff = maximumRetryBackoff
        self.listener.connection.flowControl = .relay
        self.backendConnection.flowControl = .relay
        self.listener.connection.receiveBufferSize = Self.relayReceiveBufferSize
        self.backendConnection.receiveBufferSize = Self.relayReceiveBufferSize
    }
}

extension TCPGatewayConfiguration {
    /// `SO_RCVBUF` of relayed connections by default.
    public static let relayReceiveBufferSize: Int32 = 128 * 1024
}

extension TCPFlowControl {
    /// A relay's flow control: a side whose write queue passes 256 KiB stops the other side's reading
    /// until it drains to 64 KiB, so a relayed connection holds at most about that much whatever the
    /// speeds of its two peers. There is no hard limit: the pause, not a close, bounds the queue.
    public static let relay = TCPFlowControl(highWatermark: 256 * 1024, lowWatermark: 64 * 1024, hardLimit: nil)
}

/// Why a gateway could not start.
public struct TCPGatewayError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What is wrong.
    public var description: String

    /// An error saying `description`.
    public init(_ description: String) { self.description = description }
}
