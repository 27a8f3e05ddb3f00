import Histogram
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Synchronization

/// Settings of the `echo` mode.
public struct EchoBenchmarkOptions: Sendable {
    public var target: SocketAddress
    public var connections: Int
    public var messageSize: Int
    public var depth: Int
    public var warmup: Duration
    public var duration: Duration
    /// Messages per connection instead of a duration (nil: run for `duration`).
    public var messagesPerConnection: Int?
    /// The load connections' options (their filters: TLS).
    public var connection: TCPConnectionOptions
    /// The name the result carries (`relay` when the echo goes through a gateway).
    public var mode = "echo"

    public init(target: SocketAddress, connections: Int, messageSize: Int, depth: Int, warmup: Duration,
                duration: Duration, messagesPerConnection: Int?, connection: TCPConnectionOptions = .init()) {
        self.connection = connection
        self.target = target
        self.connections = connections
        self.messageSize = messageSize
        self.depth = depth
        self.warmup = warmup
        self.duration = duration
        self.messagesPerConnection = messagesPerConnection
    }
}

/// Shared state of one echo-style run (`echo`, `ws`): its options, phase, per-thread figures, and the
/// connections finished so far.
final class LoadRun<Options: Sendable>: Sendable {
    let options: Options
    let phase = Phase()
    let stats: [ThreadStats]
    let finished = Atomic<Int>(0)
    /// Hands out stream numbers to connections made by a shared factory.
    let nextStream = Atomic<Int>(0)

    init(options: Options, threads: Int) {
        self.options = options
        stats = (0..<threads).map { _ in ThreadStats() }
    }
}

typealias EchoRun = LoadRun<EchoBenchmarkOptions>

/// One load connection: keeps `depth` messages in flight, checks every echoed byte against its
/// stream's pattern, and records each message's round-trip time while measuring.
struct EchoLoadClient: TCPConnectionHandler {
    let run: EchoRun
    let stream: Int
    var stats: ThreadStats?
    var sentMessages = 0
    var receivedBytes = 0
    var sendTimes: [UInt64]

    init(run: EchoRun, stream: Int) {
        self.run = run
        self.stream = stream
        sendTimes = [UInt64](repeating: 0, count: run.options.depth)
    }

    var size: Int { run.options.messageSize }

    mutating func connectionEstablished(_ connection: TCPConnection) {
        stats = run.stats[connection.thread.index]
        stats!.connections += 1
        fill(connection)
    }

    mutating func fill(_ connection: TCPConnection) {
        let limit = run.options.messagesPerConnection ?? Int.max
        while sentMessages * size - receivedBytes < run.options.depth * size && sentMessages < limit
            && run.phase.current != Phase.stopping
        {
            var offset = 0
            while offset < size {
                guard let buffer = patternBuffer(stream: stream, from: sentMessages * size + offset, upTo: size - offset,
                                                 pool: connection.thread.bufferPool) else { return }
                offset += buffer.readableBytes
                connection.write(buffer)
            }
            sendTimes[sentMessages % run.options.depth] = now()
            sentMessages += 1
        }
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        let start = receivedBytes
        let stream = self.stream
        let bad = buffer.withUnsafeReadableBytes { bytes -> Bool in
            for i in 0..<bytes.count where bytes[i] != patternByte(stream: stream, offset: start + i) { return true }
            return false
        }
        if bad {
            stats!.validationFailures += 1
            connection.close(.abortive)
            return
        }
        receivedBytes += buffer.readableBytes
        let measuring = run.phase.current == Phase.measuring
        // Every message completed by these bytes: record its round trip.
        var completed = start / size
        let arrived = now()
        while (completed + 1) * size <= receivedBytes {
            if measuring {
                _ = stats!.latency.record(arrived &- sendTimes[completed % run.options.depth])
                stats!.messages += 1
                stats!.bytes += size
                stats!.progress.wrappingAdd(1, ordering: .relaxed)
            }
            completed += 1
        }
        fill(connection)
        if receivedBytes == sentMessages * size
            && (run.phase.current == Phase.stopping || sentMessages == run.options.messagesPerConnection)
        {
            connection.close()
        }
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        if reason != .local { stats?.errors += 1 }
        run.finished.wrappingAdd(1, ordering: .relaxed)
    }
}

/// A pooled buffer holding up to `count` bytes of stream `stream`'s pattern from byte `offset` (as
/// many as fit); nil when the pool is exhausted.
func patternBuffer(stream: Int, from offset: Int, upTo count: Int, pool: BufferPool) -> IOBuffer? {
    guard var buffer = try? pool.acquire() else { return nil }
    let length = min(buffer.writableBytes, count)
    buffer.withUnsafeMutableWritableBytes { region in
        for i in 0..<length { region[i] = patternByte(stream: stream, offset: offset + i) }
    }
    buffer.moveWriterIndex(forwardBy: length)
    return buffer
}

/// The `echo` mode: C connections, S-byte messages, P in flight each, every byte validated.
public func runEchoBenchmark(_ options: EchoBenchmarkOptions, pool: IOPool) async -> BenchResult {
    let run = EchoRun(options: options, threads: pool.threads.count)
    let connector = TCPConnector<EchoLoadClient>(pool: pool, configuration: .init(connectTimeout: .seconds(10), connection: options.connection))
    let failures = Atomic<Int>(0)
    for stream in 0..<options.connections {
        let source = try? SocketAddress(host: "127.0.0.\(2 + stream % 200)", port: 0)
        connector.connect(to: options.target, from: options.target.host.hasPrefix("127.") ? source : nil,
                          makeHandler: { EchoLoadClient(run: run, stream: stream) },
                          failed: { _ in failures.wrappingAdd(1, ordering: .relaxed); run.finished.wrappingAdd(1, ordering: .relaxed) })
    }
    return await measureEchoRun(mode: options.mode, stats: run.stats, phase: run.phase, finished: { run.finished.load(ordering: .relaxed) },
                                connections: options.connections, messagesPerConnection: options.messagesPerConnection,
                                warmup: options.warmup, duration: options.duration,
                                connectFailures: { failures.load(ordering: .relaxed) }, pool: pool)
}

/// Drives an echo-style run whose connections were started: for a count of messages, until every
/// connection finished; otherwise warm-up, the measured duration, then stopping (each connection ends
/// once its messages in flight are back). - Returns: the merged figures.
func measureEchoRun(mode: String, stats: [ThreadStats], phase: Phase, finished: () -> Int, connections: Int,
                    messagesPerConnection: Int?, warmup: Duration, duration: Duration, connectFailures: () -> Int,
                    pool: IOPool) async -> BenchResult {
    let progress = ProgressLine()
    let count: @Sendable () -> Int = { stats.reduce(0) { $0 + $1.progress.load(ordering: .relaxed) } }
    var seconds: Double
    if messagesPerConnection != nil {
        phase.set(Phase.measuring)
        let start = ContinuousClock.now
        while finished() < connections {
            try? await Task.sleep(for: .milliseconds(10))
            if ContinuousClock.now - start > .seconds(600) { break }
        }
        seconds = (ContinuousClock.now - start).seconds
    } else {
        try? await Task.sleep(for: warmup)
        phase.set(Phase.measuring)
        let start = ContinuousClock.now
        await runFor(duration, label: mode, progress: progress, count: count)
        seconds = (ContinuousClock.now - start).seconds
        phase.set(Phase.stopping)
        let deadline = ContinuousClock.now + .seconds(10)
        while finished() < connections && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
    }
    progress.finish()
    let total = await merge(stats, pool: pool)
    var result = BenchResult(mode: mode, seconds: seconds)
    result.messages = total.messages
    result.bytes = total.bytes
    result.errors = total.errors + connectFailures()
    result.validationFailures = total.validationFailures
    result.connections = total.connections
    result.p50Microseconds = Double(total.latency.valueAtPercentile(50)) / 1000
    result.p99Microseconds = Double(total.latency.valueAtPercentile(99)) / 1000
    result.p999Microseconds = Double(total.latency.valueAtPercentile(99.9)) / 1000
    return result
}

extension Duration {
    /// The duration in seconds as a Double.
    var seconds: Double {
        let (whole, attoseconds) = components
        return Double(whole) + Double(attoseconds) / 1e18
    }
}
