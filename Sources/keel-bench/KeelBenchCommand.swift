// keel-bench: Keel's load and soak tool. Every mode is bounded in time and stops by itself.
//
//   keel-bench echo  --port 7007 --connections 50 --size 64 --depth 16 --duration 10 [--tls --ca ca.pem]
//   keel-bench relay --port 7007 --connections 50 --size 64 --depth 16 --duration 10   (echo through a gateway)
//   keel-bench pubsub --port 7007 --publishers 1 --subscribers 100 --rate 10000 --size 64 [--protocol keel|redis]
//   keel-bench ws    --port 7007 --connections 50 --size 64 --depth 16 --duration 10 [--deflate] [--tls --ca ca.pem]
//   keel-bench storm --port 7007 --concurrency 64 --duration 10
//   keel-bench hold  --port 7007 --count 10000 --duration 30 [--trickle-ms 1000]
//   keel-bench udp   --port 7007 --sockets 8 --window 32 --duration 10 [--server-pid PID]
//   keel-bench misbehave --port 7007 --concurrency 16 --duration 10 [--behaviour slow-reader ...]
import ArgumentParser
import KeelBench
import KeelCommandLine
import KeelEngine
import KeelProxyProtocol
import KeelSockets
import KeelSystem

@main
struct KeelBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keel-bench", abstract: "Load and soak tool for TCP and UDP echo servers.",
        subcommands: [Echo.self, Relay.self, PubSub.self, WebSocket.self, Storm.self, Hold.self, UDP.self, Misbehave.self])
}

/// Options every mode shares.
struct Common: ParsableArguments {
    @Option(help: "Server address (numeric IPv4 or IPv6).") var host = "127.0.0.1"
    @Option(help: "Server port.") var port: UInt16 = 7007
    @Option(help: "Seconds to measure.") var duration: Double = 10
    @Option(help: "Seconds of warm-up before measuring.") var warmup: Double = 2
    @Option(help: "Client I/O threads.") var threads = 1
    @Option(help: "Client backend: io_uring or epoll (default: automatic).") var backend: BackendKind?
    @Flag(help: "Print the result as one JSON object.") var json = false

    func target() throws -> SocketAddress { try SocketAddress(host: host, port: port) }
    var warmupTime: Duration { .milliseconds(Int64(warmup * 1000)) }
    var measuredTime: Duration { .milliseconds(Int64(duration * 1000)) }
    func pool() throws -> IOPool {
        try IOPool(configuration: .init(threadCount: threads, backend: backend, workPoolThreadCount: 1,
                                        providedBuffersPerThread: 4096))
    }
    func report(_ result: BenchResult) { announce(json ? result.json : result.summary) }

    /// Runs one mode on a client pool of its own, reports the result, and exits nonzero when any echo
    /// was corrupted (or, with `failsOnErrors`, when anything failed).
    func run(failsOnErrors: Bool, _ body: (IOPool, SocketAddress) async throws -> BenchResult) async throws {
        let pool = try pool()
        defer { pool.shutdown() }
        let result = try await body(pool, try target())
        report(result)
        if result.validationFailures > 0 || (failsOnErrors && result.errors > 0) { throw ExitCode.failure }
    }
}

extension KeelBenchCommand {
    struct Echo: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Echo load: C connections, S-byte messages, P in flight; every byte validated.")
        @OptionGroup var common: Common
        @Option(name: [.customShort("c"), .long], help: "Connections.") var connections = 50
        @Option(name: [.customShort("s"), .long], help: "Message size in bytes.") var size = 64
        @Option(name: [.customShort("p"), .long], help: "Messages in flight per connection.") var depth = 1
        @Option(help: "Messages per connection instead of a duration.") var messages: Int?
        @OptionGroup var tls: ClientTLSOptions

        func run() async throws {
            let connection = try tls.connectionOptions(host: common.host)
            try await common.run(failsOnErrors: true) { pool, target in
                await runEchoBenchmark(
                    .init(target: target, connections: connections, messageSize: size, depth: depth,
                          warmup: common.warmupTime, duration: common.measuredTime,
                          messagesPerConnection: messages, connection: connection), pool: pool)
            }
        }
    }

    struct Relay: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Echo load through a relay (keel-gateway, HAProxy) to an echo back-end: C connections, S-byte messages, P in flight; every byte validated.")
        @OptionGroup var common: Common
        @Option(name: [.customShort("c"), .long], help: "Connections.") var connections = 50
        @Option(name: [.customShort("s"), .long], help: "Message size in bytes.") var size = 64
        @Option(name: [.customShort("p"), .long], help: "Messages in flight per connection.") var depth = 1
        @Option(help: "Messages per connection instead of a duration.") var messages: Int?
        @OptionGroup var tls: ClientTLSOptions

        func run() async throws {
            let connection = try tls.connectionOptions(host: common.host)
            try await common.run(failsOnErrors: true) { pool, target in
                var options = EchoBenchmarkOptions(
                    target: target, connections: connections, messageSize: size, depth: depth, warmup: common.warmupTime,
                    duration: common.measuredTime, messagesPerConnection: messages, connection: connection)
                options.mode = "relay"
                return await runEchoBenchmark(options, pool: pool)
            }
        }
    }

    struct PubSub: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "pubsub",
            abstract: "Pub/sub load: S subscribers on one topic, P publishers at a total rate; every delivery checked for loss, repeats and order, with its latency.")
        @OptionGroup var common: Common
        @Option(help: "Publisher connections.") var publishers = 1
        @Option(help: "Subscriber connections.") var subscribers = 100
        @Option(help: "Messages published per second in all.") var rate = 10_000
        @Option(name: [.customShort("s"), .long], help: "Payload bytes per message (at least 40).") var size = 64
        @Option(help: "The topic.") var topic = "bench"
        @Option(name: .customLong("protocol"), help: "The server's protocol: keel (keel-pubsub's line protocol) or redis.")
        var serverProtocol: PubSubBenchmarkProtocol = .keel
        @Option(help: "The server's process ID (same machine): report its CPU time over the measured window.")
        var serverPid: Int32?

        func run() async throws {
            try await common.run(failsOnErrors: true) { pool, target in
                await runPubSubBenchmark(
                    .init(target: target, publishers: publishers, subscribers: subscribers, rate: rate, payloadSize: size,
                          topic: topic, serverProtocol: serverProtocol, warmup: common.warmupTime, duration: common.measuredTime,
                          serverProcess: serverPid),
                    pool: pool)
            }
        }
    }

    struct WebSocket: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ws", abstract: "WebSocket echo load: C connections, S-byte binary messages, P in flight; every message validated.")
        @OptionGroup var common: Common
        @Option(name: [.customShort("c"), .long], help: "Connections.") var connections = 50
        @Option(name: [.customShort("s"), .long], help: "Message size in bytes.") var size = 64
        @Option(name: [.customShort("p"), .long], help: "Messages in flight per connection.") var depth = 1
        @Option(help: "Messages per connection instead of a duration.") var messages: Int?
        @Option(help: "The request path of the upgrade.") var path = "/"
        @Flag(help: "Offer permessage-deflate.") var deflate = false
        @OptionGroup var tls: ClientTLSOptions

        func run() async throws {
            let connection = try tls.connectionOptions(host: common.host)
            try await common.run(failsOnErrors: true) { pool, target in
                await runWebSocketBenchmark(
                    .init(target: target, host: "\(common.host):\(common.port)", path: path, connections: connections,
                          messageSize: size, depth: depth, warmup: common.warmupTime, duration: common.measuredTime,
                          messagesPerConnection: messages, deflate: deflate, connection: connection), pool: pool)
            }
        }
    }

    struct Storm: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Connect, echo one message, close, as fast as possible.")
        @OptionGroup var common: Common
        @Option(help: "Connections in progress at once.") var concurrency = 64
        @Option(name: [.customShort("s"), .long], help: "Message size in bytes.") var size = 64
        @OptionGroup var tls: ClientTLSOptions

        func run() async throws {
            let connection = try tls.connectionOptions(host: common.host)
            try await common.run(failsOnErrors: false) { pool, target in
                await runStormBenchmark(
                    target: target, concurrency: concurrency, messageSize: size,
                    warmup: common.warmupTime, duration: common.measuredTime, connection: connection, pool: pool)
            }
        }
    }

    struct Hold: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Open N connections and hold them, idle or trickling.")
        @OptionGroup var common: Common
        @Option(help: "Connections to open.") var count = 1000
        @Option(help: "Send one byte on each connection every this many milliseconds (default: idle).") var trickleMs: Int?
        @Option(help: "Open each connection with a PROXY protocol header: v1 or v2 (for servers behind a balancer).")
        var proxyHeader: ProxyHeader.Version?

        func run() async throws {
            var connection = TCPConnectionOptions()
            if let proxyHeader {
                let target = try common.target()
                let client = target.family == .ipv4 ? try SocketAddress(host: "203.0.113.1", port: 40000)
                                                    : try SocketAddress(host: "2001:db8::1", port: 40000)
                connection.sendProxyHeader(ProxyHeader(version: proxyHeader, addresses: .inet(source: client, destination: target)))
            }
            try await common.run(failsOnErrors: false) { pool, target in
                await runHoldBenchmark(
                    target: target, count: count, trickle: trickleMs.map { .milliseconds($0) },
                    duration: common.measuredTime, pool: pool, connection: connection)
            }
        }
    }

    struct UDP: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Datagrams per second, loss and reordering against a UDP echo server.")
        @OptionGroup var common: Common
        @Option(help: "Client sockets.") var sockets = 8
        @Option(name: [.customShort("s"), .long], help: "Datagram size in bytes (at least 16).") var size = 64
        @Option(help: "Datagrams in flight per socket.") var window = 32
        @Option(help: "The server's process ID (same machine): report its CPU time and datagrams per CPU-second over the measured window.")
        var serverPid: Int32?

        func run() async throws {
            try await common.run(failsOnErrors: false) { pool, target in
                await runUDPBenchmark(
                    target: target, sockets: sockets, size: size, window: window,
                    warmup: common.warmupTime, duration: common.measuredTime, pool: pool, serverProcess: serverPid)
            }
        }
    }

    struct Misbehave: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Misbehaving peers against an echo server: slow readers, resets mid-write, garbage, half-closes; every echoed byte validated.")
        @OptionGroup var common: Common
        @Option(help: "Sessions in progress at once.") var concurrency = 16
        @Option(help: "Behaviours to rotate through (default: all): slow-reader, reset-mid-write, garbage, half-close.")
        var behaviour: [PeerBehaviour] = []

        func run() async throws {
            try await common.run(failsOnErrors: true) { pool, target in
                await runMisbehaveBenchmark(
                    target: target, concurrency: concurrency, behaviours: behaviour,
                    warmup: common.warmupTime, duration: common.measuredTime, pool: pool)
            }
        }
    }
}

extension PubSubBenchmarkProtocol: ExpressibleByArgument {}

extension PeerBehaviour: ExpressibleByArgument {
    public init?(argument: String) {
        guard let match = PeerBehaviour.allCases.first(where: { $0.argument == argument }) else { return nil }
        self = match
    }

    /// The command-line spelling.
    var argument: String {
        switch self {
        case .slowReader: "slow-reader"
        case .resetMidWrite: "reset-mid-write"
        case .garbage: "garbage"
        case .halfClose: "half-close"
        }
    }
}

extension ProxyHeader.Version: ExpressibleByArgument {
    public init?(argument: String) {
        switch argument {
        case "v1", "1": self = .v1
        case "v2", "2": self = .v2
        default: return nil
        }
    }
}
