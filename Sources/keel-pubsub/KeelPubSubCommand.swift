// keel-pubsub: a publish/subscribe server on Keel.
//
//   keel-pubsub [--host 127.0.0.1] [--port 7007] [--binary-port P] [--ws-port P] [--backend io_uring|epoll]
//               [--threads N] [--queue-kib 4096] [--default-policy disconnect|drop-oldest|drop-newest]
//               [--policy 'ticker.*=drop-oldest' ...] [--max-subscriptions 1024] [--udp-out HOST:PORT]
//
// Line protocol on --port: SUBSCRIBE <topic>, UNSUBSCRIBE <topic> (a trailing * makes a prefix
// pattern), PUBLISH <topic> <payload>, PING; deliveries are MESSAGE <topic> <payload>. Prints
// `listening on HOST:PORT` (and `binary on HOST:PORT`, `websockets on HOST:PORT`) when ready.
import ArgumentParser
import KeelCommandLine
import KeelEngine
import KeelPubSub
import KeelSockets
import KeelSystem

extension PubSubOverflowPolicy: ExpressibleByArgument {}

@main
struct KeelPubSubCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keel-pubsub", abstract: "A publish/subscribe server on Keel (line, binary and WebSocket protocols).")

    @OptionGroup var options: ServerOptions

    @Option(help: "Also serve the length-prefixed binary protocol on this port (0: any free port).")
    var binaryPort: UInt16?

    @Option(help: "Also serve WebSockets on this port (0: any free port).")
    var wsPort: UInt16?

    @Option(help: "KiB one subscriber's waiting messages may pin (a pool buffer each) before its topics' policies apply.")
    var queueKib: Int = 4096

    @Option(help: "What a full subscriber queue does for topics no --policy names: disconnect, drop-oldest or drop-newest.")
    var defaultPolicy: PubSubOverflowPolicy = .disconnect

    @Option(name: .customLong("policy"), help: "A topic's policy as PATTERN=POLICY (ticker.*=drop-oldest); repeat, first match wins.")
    var policies: [String] = []

    @Option(help: "Most subscriptions per connection.")
    var maxSubscriptions: Int = 1024

    @Option(help: "Also send every message as a UDP datagram to HOST:PORT (a multicast group for LAN fan-out).")
    var udpOut: String?

    func validate() throws {
        _ = try topicPolicies()
        _ = try udpOutAddress()
        if queueKib < 1 { throw ValidationError("--queue-kib must be at least 1") }
    }

    func topicPolicies() throws -> [PubSubTopicPolicy] {
        try policies.map { entry in
            guard let equals = entry.lastIndex(of: "="), let policy = PubSubOverflowPolicy(rawValue: String(entry[entry.index(after: equals)...])),
                  equals > entry.startIndex
            else {
                throw ValidationError("--policy takes PATTERN=POLICY with POLICY disconnect, drop-oldest or drop-newest; got \(entry)")
            }
            return PubSubTopicPolicy(TopicFilter(parsing: String(entry[..<equals])), policy)
        }
    }

    /// A listener on `port` with the connection options the common flags ask for.
    func listener(port: UInt16) -> TCPServerConfiguration {
        var configuration = TCPServerConfiguration(host: options.host, port: port)
        options.listener.apply(to: &configuration.connection)
        return configuration
    }

    func udpOutAddress() throws -> SocketAddress? {
        try udpOut.map { try parseHostPort($0, option: "--udp-out", resolvesNames: false) }
    }

    func run() throws {
        let policies = try topicPolicies()
        let udpOut = try udpOutAddress()
        try options.runUntilSignalled("keel-pubsub") { pool in
            let configuration = PubSubServerConfiguration(
                line: listener(port: options.port),
                binary: binaryPort.map(listener(port:)),
                webSocket: wsPort.map(listener(port:)),
                subscriberQueueBytes: queueKib << 10, defaultPolicy: defaultPolicy, topicPolicies: policies,
                maximumSubscriptionsPerConnection: maxSubscriptions, udpOut: udpOut)
            let server = try PubSubServer(pool: pool, configuration: configuration)
            if let address = server.binaryAddress { announce("binary on \(address)") }
            if let address = server.webSocketAddress { announce("websockets on \(address)") }
            return RunningService(
                address: server.localAddress,
                summary: {
                    let statistics = server.statistics
                    return "\(statistics.published) published, \(statistics.delivered) delivered, \(statistics.dropped) dropped, "
                        + "\(statistics.slowSubscribersDisconnected) slow subscribers disconnected"
                },
                counters: { server.statistics.counters })
        }
    }
}
