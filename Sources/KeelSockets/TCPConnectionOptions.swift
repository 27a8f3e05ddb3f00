import KeelEngine
import KeelSystem

/// What every connection of a server or connector gets: timeouts, socket options, flow control, write
/// coalescing, urgent data and the filter stack. ``TCPServerConfiguration`` and
/// ``TCPConnectorConfiguration`` both carry one, so an option added here serves accepted and outbound
/// connections alike.
public struct TCPConnectionOptions: Sendable {
    /// Close after this long with nothing received or sent (nil: never).
    public var idleTimeout: Duration?
    /// Close after this long with nothing received, even while sending (nil: never).
    public var readTimeout: Duration?
    /// `TCP_NODELAY`: send small segments at once (Nagle off). Default true.
    public var noDelay: Bool
    /// TCP keepalive idle seconds (nil: off).
    public var keepAliveIdleSeconds: Int32?
    /// `SO_RCVBUF` in bytes (nil: the kernel's default, which grows with the traffic). A fixed size
    /// caps what the kernel holds for a connection whose reading is paused, and what one multishot
    /// receive can hand over at once: a relay sets it to bound each relayed connection's memory.
    public var receiveBufferSize: Int32?
    /// Bounds on each connection's write queue.
    public var flowControl: TCPFlowControl
    /// Coalesce the writes a connection makes during one loop iteration into one `sendmsg`, flushed
    /// before the thread waits (like flushing at the end of a read batch). On epoll, what a
    /// connection's own receive callback writes leaves as soon as that callback returns, still in one
    /// system call, so a lone reply skips the write queue. Off: every write is tried at once (the
    /// inline fast path). Default on.
    public var coalescesWrites: Bool
    /// With ``coalescesWrites``: hold coalesced writes for up to this long and send everything written
    /// meanwhile together, instead of at the end of each loop iteration. Each connection then makes one
    /// send per window rather than one per iteration that wrote to it: far less kernel work per message
    /// for connections that receive a stream of small messages (a pub/sub subscriber, a game client on
    /// a tick), for at most this much added latency. What is still queued when a send completes
    /// (written meanwhile, or not taken by a full socket) also waits for the next window. Nil (the
    /// default): no delay.
    public var writeCoalescingDelay: Duration?
    /// Watch for urgent (out-of-band) data and deliver it through
    /// ``TCPConnectionHandler/connectionReceivedUrgent(_:byte:)`` (one more operation per connection).
    public var receivesUrgentData: Bool
    /// Makes the filter stack (bottom, socket side, first) for each connection, from its addresses and
    /// the listener or target it belongs to; nil for none. Called on the connection's I/O thread.
    public var makeFilters: (@Sendable (TCPFilterSetup) -> [any TCPConnectionFilter])?
    /// Sends of at least this many queued bytes go out zero-copy (`IORING_OP_SENDMSG_ZC`) where the
    /// I/O threads have ``KernelFeatures/zeroCopySend``: the kernel sends from the pooled buffers and
    /// the connection holds them until the kernel's notification. Smaller sends, and every send on
    /// epoll, copy as usual. nil (the default): never.
    ///
    /// Each connection tests its route with its first zero-copy send: when the kernel reports that it
    /// copied anyway (loopback, a device without scatter-gather), the connection copies from then on
    /// (see ``zeroCopyEvenWhenCopied``). Trade-off: until the peer acknowledges them, the kernel holds
    /// the pool's buffers rather than copies, so a slow peer pins up to its socket send buffer of pool
    /// memory beyond the write queue's bounds. docs/PERFORMANCE.md has the measurements; 64 KiB is a
    /// reasonable threshold for a real NIC.
    public var zeroCopySendThreshold: Int?
    /// Keep sending zero-copy even on a route where the kernel copies (benchmarks of zero-copy's own
    /// cost). Default false.
    public var zeroCopyEvenWhenCopied = false

    /// Creates options; every parameter has a production default.
    public init(
        idleTimeout: Duration? = nil, readTimeout: Duration? = nil, noDelay: Bool = true,
        keepAliveIdleSeconds: Int32? = nil, receiveBufferSize: Int32? = nil, flowControl: TCPFlowControl = .default,
        coalescesWrites: Bool = true, receivesUrgentData: Bool = false,
        makeFilters: (@Sendable (TCPFilterSetup) -> [any TCPConnectionFilter])? = nil,
        zeroCopySendThreshold: Int? = nil
    ) {
        self.zeroCopySendThreshold = zeroCopySendThreshold
        self.idleTimeout = idleTimeout
        self.readTimeout = readTimeout
        self.noDelay = noDelay
        self.keepAliveIdleSeconds = keepAliveIdleSeconds
        self.receiveBufferSize = receiveBufferSize
        self.flowControl = flowControl
        self.coalescesWrites = coalescesWrites
        self.receivesUrgentData = receivesUrgentData
        self.makeFilters = makeFilters
    }
}

/// What a filter factory knows about the connection it makes filters for.
public struct TCPFilterSetup: Sendable {
    /// Where a connection comes from.
    public enum Endpoint: Sendable, Hashable {
        /// Accepted by a server listening on this address.
        case listener(SocketAddress)
        /// Made by a connector to this target (`host:port`, as given).
        case target(String)
        /// Opened by an ``EmbeddedConnection`` (tests).
        case embedded
    }

    /// The listener or target the connection belongs to (e.g. to pick a certificate per listener).
    public var endpoint: Endpoint
    /// The connection's local address, as the kernel reports it.
    public var localAddress: SocketAddress?
    /// The peer's address, as the kernel reports it (e.g. for an allow-list of PROXY senders).
    public var remoteAddress: SocketAddress?

    /// Creates a setup description.
    public init(endpoint: Endpoint, localAddress: SocketAddress?, remoteAddress: SocketAddress?) {
        self.endpoint = endpoint
        self.localAddress = localAddress
        self.remoteAddress = remoteAddress
    }
}

/// What a server or connector applies to each of its connections; made once, shared by all (one
/// reference per connection instead of the options' ~150 bytes).
final class ConnectionSettings: Sendable {
    let options: TCPConnectionOptions
    /// Queued bytes from which a send goes out zero-copy: the option where the threads can, else
    /// `Int.max` (one comparison on the write path decides).
    let zeroCopySendThreshold: Int

    init(options: TCPConnectionOptions, kernelFeatures: KernelFeatures = []) {
        self.options = options
        zeroCopySendThreshold = kernelFeatures.contains(.zeroCopySend) ? max(1, options.zeroCopySendThreshold ?? .max) : .max
    }

    static let `default` = ConnectionSettings(options: TCPConnectionOptions())
}
