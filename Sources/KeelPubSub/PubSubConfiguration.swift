import KeelSockets
import KeelSystem

/// What a subscriber's queue does with a message of a topic when the queue is full (the subscriber
/// reads more slowly than the topic is published).
public enum PubSubOverflowPolicy: String, Sendable, Hashable, CaseIterable {
    /// Make room by dropping the oldest queued messages of lossy topics (tickers: the latest matters).
    case dropOldest = "drop-oldest"
    /// Drop the new message (the queued ones stay).
    case dropNewest = "drop-newest"
    /// Must not lose: make room by dropping queued messages of lossy topics; if there still is none,
    /// disconnect the subscriber (``TCPCloseReason/slowConsumer``) rather than skip a message.
    case disconnect
}

/// The overflow policy for the topics a filter matches (`prices.*`, or one topic).
public struct PubSubTopicPolicy: Sendable, Hashable {
    /// The topics it applies to.
    public var filter: TopicFilter
    /// What their subscribers' full queues do.
    public var policy: PubSubOverflowPolicy

    /// A policy for the topics `filter` matches.
    public init(_ filter: TopicFilter, _ policy: PubSubOverflowPolicy) {
        self.filter = filter
        self.policy = policy
    }
}

/// How a ``PubSubServer`` listens and bounds its subscribers.
public struct PubSubServerConfiguration: Sendable {
    /// The line protocol's listener (``PubSubLineProtocol``).
    public var line: TCPServerConfiguration
    /// The length-prefixed binary protocol's listener (``PubSubBinaryProtocol``), when wanted.
    public var binary: TCPServerConfiguration?
    /// A WebSocket listener (each text or binary message one line-protocol command), when wanted.
    public var webSocket: TCPServerConfiguration?
    /// The most memory one subscriber's waiting messages may pin beyond its connection's own send
    /// queue (which holds up to the connection's high watermark) before its topics' policies apply.
    /// Each waiting message counts as the pool buffer it occupies (16 KiB by default, whatever its
    /// length), so this bounds memory, not payload bytes: 4 MiB holds 256 waiting messages.
    public var subscriberQueueBytes: Int
    /// The policy of topics no entry of ``topicPolicies`` matches.
    public var defaultPolicy: PubSubOverflowPolicy
    /// Per-topic policies, the first match winning.
    public var topicPolicies: [PubSubTopicPolicy]
    /// The most filters one connection may subscribe to.
    public var maximumSubscriptionsPerConnection: Int
    /// When set, every published message also goes out as one UDP datagram (`MESSAGE <topic>
    /// <payload>`) to this address: a multicast group (TTL 1, looped back) for LAN fan-out, or one host.
    public var udpOut: SocketAddress?

    /// A configuration listening for the line protocol on `line`; other listeners off.
    /// The defaults bound a subscriber at 4 MiB waiting (plus 64 KiB in its connection) and disconnect
    /// one that falls further behind (as Redis does with its pub/sub output-buffer limit).
    public init(line: TCPServerConfiguration, binary: TCPServerConfiguration? = nil, webSocket: TCPServerConfiguration? = nil,
                subscriberQueueBytes: Int = 4 * 1024 * 1024, defaultPolicy: PubSubOverflowPolicy = .disconnect,
                topicPolicies: [PubSubTopicPolicy] = [], maximumSubscriptionsPerConnection: Int = 1024,
                udpOut: SocketAddress? = nil) {
        self.line = line
        self.binary = binary
        self.webSocket = webSocket
        self.subscriberQueueBytes = subscriberQueueBytes
        self.defaultPolicy = defaultPolicy
        self.topicPolicies = topicPolicies
        self.maximumSubscriptionsPerConnection = maximumSubscriptionsPerConnection
        self.udpOut = udpOut
    }

    /// The policy for messages published to `topic`.
    public func policy(for topic: String) -> PubSubOverflowPolicy {
        topicPolicies.first { $0.filter.matches(topic) }?.policy ?? defaultPolicy
    }

    /// The flow control each subscriber connection gets: messages are handed to the connection only
    /// while it is below its high watermark (the rest wait in the subscriber's queue, where the topic
    /// policies apply); the hard limit only bounds replies to a client that sends commands but never
    /// reads.
    static let subscriberFlowControl = TCPFlowControl(
        highWatermark: 64 * 1024, lowWatermark: 16 * 1024, hardLimit: 512 * 1024, policy: .refuse)
}
