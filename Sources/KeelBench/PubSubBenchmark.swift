import Glibc
import Histogram
import KeelBuffers
import KeelEngine
import KeelFraming
import KeelSockets
import KeelSystem
import Synchronization

/// The server protocol a `pubsub` run speaks.
public enum PubSubBenchmarkProtocol: String, Sendable, CaseIterable {
    /// keel-pubsub's line protocol (`SUBSCRIBE`, `PUBLISH`, deliveries `MESSAGE <topic> <payload>`).
    case keel
    /// Redis's PUBLISH and SUBSCRIBE (inline commands; deliveries as RESP arrays).
    case redis
}

/// Settings of the `pubsub` mode.
public struct PubSubBenchmarkOptions: Sendable {
    public var target: SocketAddress
    public var publishers: Int
    public var subscribers: Int
    /// Messages per second published in all (spread over the publishers).
    public var rate: Int
    /// Payload bytes per message (at least 40: the header that carries publisher, sequence and time).
    public var payloadSize: Int
    public var topic: String
    public var serverProtocol: PubSubBenchmarkProtocol
    public var warmup: Duration
    public var duration: Duration
    /// The server's process on this machine: its CPU time over the measured window is reported as
    /// `server_cpu_s` (and per delivery), excluding the subscribers' connecting and the warm-up.
    public var serverProcess: Int32?

    public init(target: SocketAddress, publishers: Int, subscribers: Int, rate: Int, payloadSize: Int, topic: String,
                serverProtocol: PubSubBenchmarkProtocol, warmup: Duration, duration: Duration, serverProcess: Int32? = nil) {
        self.serverProcess = serverProcess
        self.target = target
        self.publishers = publishers
        self.subscribers = subscribers
        self.rate = rate
        self.payloadSize = max(40, payloadSize)
        self.topic = topic
        self.serverProtocol = serverProtocol
        self.warmup = warmup
        self.duration = duration
    }
}

/// Shared state of one `pubsub` run.
final class PubSubRun: Sendable {
    let options: PubSubBenchmarkOptions
    let phase = Phase()
    let stats: [ThreadStats]
    /// Subscribers whose subscription the server confirmed.
    let subscribed = Atomic<Int>(0)
    /// Set once every subscriber is in: publishers start.
    let publishing = Atomic<Bool>(false)
    /// Messages published (every phase).
    let published = Atomic<Int>(0)
    let finished = Atomic<Int>(0)

    init(options: PubSubBenchmarkOptions, threads: Int) {
        self.options = options
        stats = (0..<threads).map { _ in ThreadStats() }
    }
}

/// Marks the start of the figures a payload carries: `kb|PUBLISHER|SEQUENCE|SENT_NS|xxx...`.
private let payloadMarker: [UInt8] = Array("kb|".utf8)

/// One subscriber: subscribes, then checks each delivery's publisher sequence (a gap is loss, a repeat
/// or step back a reordering) and records its latency from the publisher's send time.
struct PubSubBenchSubscriber: TCPConnectionHandler {
    final class State {
        var lines: FrameAccumulator<LineDecoder>
        /// The next sequence number expected from each publisher.
        var expected: [Int]
        var isSubscribed = false

        init(publishers: Int, maximumLine: Int) {
            lines = FrameAccumulator(decoder: LineDecoder(maximumLineBytes: maximumLine))
            expected = [Int](repeating: 0, count: publishers)
        }
    }

    let run: PubSubRun
    let state: State
    var stats: ThreadStats?

    init(run: PubSubRun) {
        self.run = run
        state = State(publishers: run.options.publishers, maximumLine: run.options.payloadSize + 512)
    }

    mutating func connectionEstablished(_ connection: TCPConnection) {
        stats = run.stats[connection.thread.index]
        stats!.connections += 1
        guard var buffer = try? connection.thread.bufferPool.acquire() else { return connection.close(.abortive) }
        buffer.append(contentsOf: "SUBSCRIBE \(run.options.topic)\r\n".utf8)
        connection.write(buffer)
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        guard let stats else { return }
        let run = self.run, state = self.state
        do {
            try state.lines.feed(buffer) { line in
                if !state.isSubscribed {
                    // keel: `OK SUBSCRIBE <topic>`; Redis: the array's `subscribe` element.
                    if Self.equals(line, "OK SUBSCRIBE \(run.options.topic)") || Self.equals(line, "subscribe") {
                        state.isSubscribed = true
                        run.subscribed.wrappingAdd(1, ordering: .relaxed)
                    }
                    return
                }
                guard let figures = Self.figures(in: line), figures.publisher < state.expected.count else { return }
                let expected = state.expected[figures.publisher]
                if figures.sequence == expected {
                    state.expected[figures.publisher] = expected + 1
                } else if figures.sequence > expected {
                    stats.lost += figures.sequence - expected
                    state.expected[figures.publisher] = figures.sequence + 1
                } else {
                    stats.reordered += 1
                }
                stats.deliveredAll += 1
                if run.phase.current == Phase.measuring {
                    _ = stats.latency.record(now() &- figures.sentAt)
                    stats.messages += 1
                    stats.bytes += run.options.payloadSize
                    stats.progress.wrappingAdd(1, ordering: .relaxed)
                }
            }
        } catch {
            stats.validationFailures += 1
            connection.close(.abortive)
        }
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        if reason != .local { stats?.errors += 1 }
        state.lines.discard()
        run.finished.wrappingAdd(1, ordering: .relaxed)
    }

    static func equals(_ line: UnsafeRawBufferPointer, _ text: String) -> Bool {
        line.count == text.utf8.count && line.elementsEqual(text.utf8)
    }

    /// The publisher, sequence and send time a payload in `line` carries (nil for other lines).
    static func figures(in line: UnsafeRawBufferPointer) -> (publisher: Int, sequence: Int, sentAt: UInt64)? {
        guard line.count >= payloadMarker.count else { return nil }
        var index = 0
        while index + payloadMarker.count <= line.count {
            if line[index] == payloadMarker[0] && line[index + 1] == payloadMarker[1] && line[index + 2] == payloadMarker[2] { break }
            index += 1
        }
        guard index + payloadMarker.count <= line.count else { return nil }
        index += payloadMarker.count
        var numbers: (UInt64, UInt64, UInt64) = (0, 0, 0)
        for field in 0..<3 {
            var value: UInt64 = 0
            while index < line.count, line[index] != UInt8(ascii: "|") {
                value = value &* 10 &+ UInt64(line[index] &- UInt8(ascii: "0"))
                index += 1
            }
            index += 1
            switch field {
            case 0: numbers.0 = value
            case 1: numbers.1 = value
            default: numbers.2 = value
            }
        }
        return (Int(numbers.0), Int(numbers.1), numbers.2)
    }
}

/// One publisher: publishes its share of the rate, paced by a 1 ms timer, each payload carrying its
/// number, sequence and send time. Replies (Redis's subscriber counts) are read and ignored.
struct PubSubBenchPublisher: TCPConnectionHandler {
    final class State {
        var sequence = 0
        var start: UInt64 = 0
        var timer: TimerHandle?
    }

    let run: PubSubRun
    let index: Int
    let state = State()

    mutating func connectionEstablished(_ connection: TCPConnection) {
        let run = self.run, state = self.state, index = self.index
        let perPublisher = Double(run.options.rate) / Double(run.options.publishers)
        state.timer = connection.thread.scheduleTimer(after: .milliseconds(1), repeating: .milliseconds(1)) {
            guard run.publishing.load(ordering: .relaxed), run.phase.current != Phase.stopping else { return }
            if state.start == 0 { state.start = now() }
            let due = Int(Double(now() &- state.start) / 1e9 * perPublisher) + 1
            var sent = 0
            while state.sequence < due && sent < 2000 {
                guard Self.publish(index: index, sequence: state.sequence, run: run, on: connection) else { return }
                state.sequence += 1
                sent += 1
            }
            if sent > 0 { run.published.wrappingAdd(sent, ordering: .relaxed) }
        }
    }

    /// Writes `PUBLISH <topic> kb|INDEX|SEQUENCE|NOW|xxx...` (padded to the payload size).
    static func publish(index: Int, sequence: Int, run: PubSubRun, on connection: TCPConnection) -> Bool {
        guard var buffer = try? connection.thread.bufferPool.acquire() else { return false }
        buffer.append(contentsOf: "PUBLISH ".utf8)
        buffer.append(contentsOf: run.options.topic.utf8)
        buffer.append(contentsOf: " kb|".utf8)
        let start = buffer.readableBytes
        appendDecimal(UInt64(index), to: &buffer)
        buffer.append(contentsOf: CollectionOfOne(UInt8(ascii: "|")))
        appendDecimal(UInt64(sequence), to: &buffer)
        buffer.append(contentsOf: CollectionOfOne(UInt8(ascii: "|")))
        appendDecimal(now(), to: &buffer)
        buffer.append(contentsOf: CollectionOfOne(UInt8(ascii: "|")))
        let header = buffer.readableBytes - start + payloadMarker.count
        buffer.append(contentsOf: repeatElement(UInt8(ascii: "x"), count: max(0, run.options.payloadSize - header)))
        buffer.append(contentsOf: "\r\n".utf8)
        connection.write(buffer)
        return true
    }

    static func appendDecimal(_ value: UInt64, to buffer: inout IOBuffer) {
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0
        var rest = value
        withUnsafeMutableBytes(of: &digits) { bytes in
            repeat {
                bytes[19 - count] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
                count += 1
            } while rest > 0
            _ = buffer.append(UnsafeRawBufferPointer(rebasing: bytes[(20 - count)...]))
        }
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {}

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        if let timer = state.timer { connection.thread.cancelTimer(timer) }
        run.finished.wrappingAdd(1, ordering: .relaxed)
    }
}

/// The `pubsub` mode: S subscribers on one topic, then P publishers at a total rate; every delivery
/// checked for loss, repeats and order per publisher, and its latency from publish to delivery.
public func runPubSubBenchmark(_ options: PubSubBenchmarkOptions, pool: IOPool) async -> BenchResult {
    let run = PubSubRun(options: options, threads: pool.threads.count)
    let subscribers = TCPConnector<PubSubBenchSubscriber>(pool: pool, configuration: .init(connectTimeout: .seconds(10)))
    let publishers = TCPConnector<PubSubBenchPublisher>(pool: pool, configuration: .init(connectTimeout: .seconds(10)))
    let failures = Atomic<Int>(0)
    let local = options.target.host.hasPrefix("127.")
    for index in 0..<options.subscribers {
        let source = local ? try? SocketAddress(host: "127.0.0.\(2 + index % 200)", port: 0) : nil
        subscribers.connect(to: options.target, from: source, makeHandler: { PubSubBenchSubscriber(run: run) },
                            failed: { _ in failures.wrappingAdd(1, ordering: .relaxed) })
    }
    let joinDeadline = ContinuousClock.now + .seconds(120)
    while run.subscribed.load(ordering: .relaxed) + failures.load(ordering: .relaxed) < options.subscribers
        && ContinuousClock.now < joinDeadline
    {
        try? await Task.sleep(for: .milliseconds(20))
    }
    for index in 0..<options.publishers {
        publishers.connect(to: options.target, makeHandler: { PubSubBenchPublisher(run: run, index: index) },
                           failed: { _ in failures.wrappingAdd(1, ordering: .relaxed) })
    }
    run.publishing.store(true, ordering: .relaxed)
    let progress = ProgressLine()
    try? await Task.sleep(for: options.warmup)
    let cpuBefore = options.serverProcess.flatMap(processCPUSeconds)
    run.phase.set(Phase.measuring)
    let start = ContinuousClock.now
    await runFor(options.duration, label: "pubsub", progress: progress) {
        run.stats.reduce(0) { $0 + $1.progress.load(ordering: .relaxed) }
    }
    let seconds = (ContinuousClock.now - start).seconds
    run.phase.set(Phase.stopping)
    let cpuAfter = options.serverProcess.flatMap(processCPUSeconds)
    // Let what is on its way arrive: stop once deliveries stay still for half a second (10 s at most).
    var last = -1
    var delivered = 0
    let drainDeadline = ContinuousClock.now + .seconds(10)
    while ContinuousClock.now < drainDeadline {
        try? await Task.sleep(for: .milliseconds(500))
        delivered = await merge(run.stats, pool: pool).deliveredAll
        if delivered == last { break }
        last = delivered
    }
    progress.finish()
    await publishers.closeAll(.graceful)
    await subscribers.closeAll(.graceful)
    let total = await merge(run.stats, pool: pool)
    let published = run.published.load(ordering: .relaxed)
    var result = BenchResult(mode: "pubsub", seconds: seconds)
    result.unit = "deliveries"
    result.latencyOf = "publish to delivery"
    result.messages = total.messages
    result.bytes = total.bytes
    result.connections = total.connections
    result.errors = total.errors + failures.load(ordering: .relaxed)
    result.validationFailures = total.validationFailures
    // A gap inside a sequence, or deliveries that never came at the end: both are loss.
    result.lost = max(total.lost, published * options.subscribers - total.deliveredAll)
    result.reordered = total.reordered
    result.p50Microseconds = Double(total.latency.valueAtPercentile(50)) / 1000
    result.p99Microseconds = Double(total.latency.valueAtPercentile(99)) / 1000
    result.p999Microseconds = Double(total.latency.valueAtPercentile(99.9)) / 1000
    result.extra = [("published", "\(published)"), ("subscribers", "\(run.subscribed.load(ordering: .relaxed))"),
                    ("protocol", options.serverProtocol.rawValue)]
    if let cpuBefore, let cpuAfter {
        let cpu = cpuAfter - cpuBefore
        result.extra.append(("server_cpu_s", format(cpu, digits: 3)))
        if cpu > 0 { result.extra.append(("deliveries_per_server_cpu_s", format(Double(total.messages) / cpu, digits: 0))) }
    }
    return result
}

/// User plus system CPU seconds process `pid` has used (from /proc/PID/stat), or nil when unreadable.
func processCPUSeconds(_ pid: Int32) -> Double? {
    guard let file = fopen("/proc/\(pid)/stat", "r") else { return nil }
    defer { fclose(file) }
    var line = [CChar](repeating: 0, count: 4096)
    guard fgets(&line, Int32(line.count), file) != nil else { return nil }
    let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    // Fields after the command name (which may hold spaces) start past its closing parenthesis.
    guard let close = text.lastIndex(of: ")") else { return nil }
    let fields = text[text.index(after: close)...].split(separator: " ")
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}
