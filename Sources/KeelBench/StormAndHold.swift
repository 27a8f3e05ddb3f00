import Histogram
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Synchronization

/// Shared state of a `storm` or `hold` run.
final class ConnectionRun: @unchecked Sendable {
    // @unchecked Sendable: `open` lists are touched only on their I/O threads; the rest is atomic or immutable.
    let phase = Phase()
    let stats: [ThreadStats]
    let target: SocketAddress
    let messageSize: Int
    let trickle: Duration?
    let active = Atomic<Int>(0)
    let closedEarly = Atomic<Int>(0)
    let failures = Atomic<Int>(0)
    /// Per I/O thread (the outer array is immutable: each thread writes only its own list).
    let open: [OpenList]

    final class OpenList: @unchecked Sendable {
        // @unchecked Sendable: touched only on the I/O thread it belongs to.
        var connections: [TCPConnection] = []
    }

    init(threads: Int, target: SocketAddress, messageSize: Int, trickle: Duration?) {
        stats = (0..<threads).map { _ in ThreadStats() }
        open = (0..<threads).map { _ in OpenList() }
        self.target = target
        self.messageSize = messageSize
        self.trickle = trickle
    }

    func source(_ index: Int) -> SocketAddress? {
        target.host.hasPrefix("127.") ? try? SocketAddress(host: "127.0.0.\(2 + index % 200)", port: 0) : nil
    }
}

/// `storm`: connect, echo one message, close, again, as fast as the concurrency allows.
struct StormClient: TCPConnectionHandler {
    let run: ConnectionRun
    let connector: TCPConnector<StormClient>?
    let slot: Int
    let startedAt: UInt64
    var received = 0
    var ok = false

    mutating func connectionEstablished(_ connection: TCPConnection) {
        let stats = run.stats[connection.thread.index]
        _ = stats.connectTimes.record(now() &- startedAt)
        guard var buffer = try? connection.thread.bufferPool.acquire() else { return connection.close() }
        let count = min(run.messageSize, buffer.writableBytes)
        let slot = self.slot
        buffer.withUnsafeMutableWritableBytes { for i in 0..<count { $0[i] = patternByte(stream: slot, offset: i) } }
        buffer.moveWriterIndex(forwardBy: count)
        connection.write(buffer)
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        let start = received
        let slot = self.slot
        let good = buffer.withUnsafeReadableBytes { bytes in
            bytes.indices.allSatisfy { bytes[$0] == patternByte(stream: slot, offset: start + $0) }
        }
        if !good { run.stats[connection.thread.index].validationFailures += 1 }
        received += buffer.readableBytes
        if received >= min(run.messageSize, connection.thread.bufferPool.bufferSize) {
            ok = good
            connection.close(.abortive)  // the client closes first: no TIME_WAIT pile-up on the server
        }
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        let stats = run.stats[connection.thread.index]
        if ok {
            if run.phase.current == Phase.measuring {
                stats.messages += 1
                stats.progress.wrappingAdd(1, ordering: .relaxed)
            }
        } else {
            stats.errors += 1
        }
        StormClient.next(run: run, connector: connector, slot: slot)
    }

    static func next(run: ConnectionRun, connector: TCPConnector<StormClient>?, slot: Int) {
        guard let connector, run.phase.current != Phase.stopping else {
            run.active.wrappingSubtract(1, ordering: .relaxed)
            return
        }
        let started = now()
        connector.connect(to: run.target, from: run.source(slot &+ Int(started % 199)), makeHandler: {
            StormClient(run: run, connector: connector, slot: slot, startedAt: started)
        }, failed: { _ in
            run.failures.wrappingAdd(1, ordering: .relaxed)
            StormClient.next(run: run, connector: connector, slot: slot)
        })
    }
}

/// `storm`: connections per second with `concurrency` attempts in flight.
public func runStormBenchmark(target: SocketAddress, concurrency: Int, messageSize: Int, warmup: Duration,
                              duration: Duration, connection: TCPConnectionOptions = .init(), pool: IOPool) async -> BenchResult {
    let run = ConnectionRun(threads: pool.threads.count, target: target, messageSize: messageSize, trickle: nil)
    let connector = TCPConnector<StormClient>(pool: pool, configuration: .init(connectTimeout: .seconds(5), connection: connection))
    run.active.store(concurrency, ordering: .relaxed)
    for slot in 0..<concurrency { StormClient.next(run: run, connector: connector, slot: slot) }
    let seconds = await measureSessions(label: "storm", phase: run.phase, stats: run.stats, warmup: warmup, duration: duration,
                                        drain: .seconds(10)) { run.active.load(ordering: .relaxed) }
    let total = await merge(run.stats, pool: pool)
    var result = BenchResult(mode: "storm", seconds: seconds)
    result.messages = total.messages
    result.errors = total.errors + run.failures.load(ordering: .relaxed)
    result.validationFailures = total.validationFailures
    result.p50Microseconds = Double(total.connectTimes.valueAtPercentile(50)) / 1000
    result.p99Microseconds = Double(total.connectTimes.valueAtPercentile(99)) / 1000
    result.p999Microseconds = Double(total.connectTimes.valueAtPercentile(99.9)) / 1000
    result.unit = "connects"
    result.latencyOf = "connect time"
    return result
}

/// `hold`: open connections and keep them, idle or trickling a byte now and then.
struct HoldClient: TCPConnectionHandler {
    let run: ConnectionRun
    let startedAt: UInt64
    var timer: TimerHandle?

    mutating func connectionEstablished(_ connection: TCPConnection) {
        let stats = run.stats[connection.thread.index]
        _ = stats.connectTimes.record(now() &- startedAt)
        stats.connections += 1
        run.open[connection.thread.index].connections.append(connection)
        if let trickle = run.trickle {
            let thread = connection.thread
            timer = thread.scheduleTimer(after: trickle, repeating: trickle) {
                guard var buffer = try? thread.bufferPool.acquire() else { return }
                buffer.append(contentsOf: CollectionOfOne(UInt8(ascii: ".")))
                connection.write(buffer)
            }
        }
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {}

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        if let timer { connection.thread.cancelTimer(timer) }
        run.open[connection.thread.index].connections.removeAll { $0 === connection }
        if run.phase.current != Phase.stopping {
            run.closedEarly.wrappingAdd(1, ordering: .relaxed)
            run.stats[connection.thread.index].errors += 1
        }
    }
}

/// `hold`: establishes `count` connections (spread over 127.0.0.x sources), holds them for `duration`.
public func runHoldBenchmark(target: SocketAddress, count: Int, trickle: Duration?, duration: Duration,
                             pool: IOPool, connection: TCPConnectionOptions = .init()) async -> BenchResult {
    let run = ConnectionRun(threads: pool.threads.count, target: target, messageSize: 1, trickle: trickle)
    let connector = TCPConnector<HoldClient>(pool: pool, configuration: .init(connectTimeout: .seconds(10), connection: connection))
    let start = ContinuousClock.now
    let progress = ProgressLine()
    // Connect in waves so the server's backlog is not the limit.
    var started = 0
    while started < count {
        let wave = min(500, count - started)
        for index in started..<(started + wave) {
            let begun = now()
            connector.connect(to: target, from: run.source(index), makeHandler: { HoldClient(run: run, startedAt: begun) },
                              failed: { _ in run.failures.wrappingAdd(1, ordering: .relaxed) })
        }
        started += wave
        let target = started
        let deadline = ContinuousClock.now + .seconds(10)
        while connector.activeConnections + run.failures.load(ordering: .relaxed) < target && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        progress.show("hold: \(connector.activeConnections) established")
    }
    let established = connector.activeConnections
    let holdStart = ContinuousClock.now
    while ContinuousClock.now - holdStart < duration {
        try? await Task.sleep(for: .milliseconds(200))
        progress.show("hold: \(connector.activeConnections) held")
    }
    progress.finish()
    let held = connector.activeConnections
    run.phase.set(Phase.stopping)
    for (index, thread) in pool.threads.enumerated() {
        thread.execute { for connection in run.open[index].connections { connection.close(.abortive) } }
    }
    let deadline = ContinuousClock.now + .seconds(20)
    while connector.activeConnections > 0 && ContinuousClock.now < deadline {
        try? await Task.sleep(for: .milliseconds(10))
    }
    let total = await merge(run.stats, pool: pool)
    var result = BenchResult(mode: "hold", seconds: (ContinuousClock.now - start).seconds)
    result.connections = established
    result.held = held
    result.messages = established
    result.errors = run.failures.load(ordering: .relaxed) + run.closedEarly.load(ordering: .relaxed)
    result.p50Microseconds = Double(total.connectTimes.valueAtPercentile(50)) / 1000
    result.p99Microseconds = Double(total.connectTimes.valueAtPercentile(99)) / 1000
    result.p999Microseconds = Double(total.connectTimes.valueAtPercentile(99.9)) / 1000
    result.unit = "connects"
    result.latencyOf = "connect time"
    return result
}
