import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Synchronization

/// What a misbehaving peer does to an echo server. Each connection plays one part, in turn.
public enum PeerBehaviour: Int, CaseIterable, Sendable {
    /// Sends 1 MiB at once, then reads the echo one delivery every 20 ms: the server's send queue
    /// backs up and its flow control must hold the rest in TCP.
    case slowReader
    /// Sends 512 KiB without reading, then resets the connection (RST) while the echo is in flight.
    case resetMidWrite
    /// Sends up to 64 KiB of arbitrary bytes in pieces of 1 to 4096 bytes, 2 ms apart.
    case garbage
    /// Sends up to 256 KiB, shuts down its sending side at once, and reads until the server closes.
    case halfClose

    /// The name reports use.
    public var name: String {
        switch self {
        case .slowReader: "slow_readers"
        case .resetMidWrite: "resets_mid_write"
        case .garbage: "garbage"
        case .halfClose: "half_closes"
        }
    }
}

/// Shared state of a `misbehave` run.
final class MisbehaveRun: Sendable {
    let phase = Phase()
    let stats: [ThreadStats]
    let target: SocketAddress
    let behaviours: [PeerBehaviour]
    /// Sessions completed as planned, per behaviour (by raw value).
    let completed = Locked([Int](repeating: 0, count: PeerBehaviour.allCases.count))
    let active = Atomic<Int>(0)
    let connectFailures = Atomic<Int>(0)

    private let reports = Locked(0)

    /// Prints what went wrong with a session to standard error (the first 20 only).
    func report(_ line: String) {
        guard reports.withLock({ count in
            count += 1
            return count <= 20
        }) else { return }
        var standardError = StandardError()
        print("misbehave: " + line, to: &standardError)
    }

    init(threads: Int, target: SocketAddress, behaviours: [PeerBehaviour]) {
        stats = (0..<threads).map { _ in ThreadStats() }
        self.target = target
        self.behaviours = behaviours
    }
}

/// One misbehaving session's state, shared by its handler and its timer (confined to its I/O thread).
final class PeerSession: @unchecked Sendable {
    // @unchecked Sendable: created on the connector's thread for the connection and touched only there.
    let behaviour: PeerBehaviour
    let seed: Int
    /// Bytes this session sends; every byte echoed back is checked against ``byte(at:)``.
    private(set) var volume = 0
    var sent = 0
    var received = 0
    var corrupted = false
    var resetByUs = false
    var timer: TimerHandle?
    private var random: UInt64

    init(behaviour: PeerBehaviour, seed: Int) {
        self.behaviour = behaviour
        self.seed = seed
        random = UInt64(truncatingIfNeeded: seed) &* 0x9E37_79B9_7F4A_7C15 | 1
        switch behaviour {
        case .slowReader: volume = 1 << 20
        case .resetMidWrite: volume = 512 << 10
        case .garbage: volume = 1 + next(below: 64 << 10)
        case .halfClose: volume = 1 + next(below: 256 << 10)
        }
    }

    /// A pseudo-random number below `bound` (xorshift).
    func next(below bound: Int) -> Int {
        random ^= random << 13
        random ^= random >> 7
        random ^= random << 17
        return Int(random % UInt64(bound))
    }

    /// Byte `offset` of this session's stream: arbitrary-looking values, all 256 of them.
    func byte(at offset: Int) -> UInt8 {
        var mixed = UInt64(truncatingIfNeeded: seed &* 1_000_003 &+ offset) &* 0xBF58_476D_1CE4_E5B9
        mixed ^= mixed >> 31
        return UInt8(truncatingIfNeeded: mixed)
    }

    /// Queues the next `count` bytes of the stream (fewer when the pool runs dry). - Returns: whether
    /// all of them were queued.
    func send(_ count: Int, on connection: TCPConnection) -> Bool {
        var remaining = min(count, volume - sent)
        while remaining > 0 {
            guard var buffer = try? connection.thread.bufferPool.acquire() else { return false }
            let chunk = min(remaining, buffer.writableBytes)
            let start = sent
            buffer.withUnsafeMutableWritableBytes { bytes in
                for index in 0..<chunk { bytes[index] = byte(at: start + index) }
            }
            buffer.moveWriterIndex(forwardBy: chunk)
            connection.write(buffer)
            sent += chunk
            remaining -= chunk
        }
        return true
    }

    /// Checks echoed bytes against what was sent.
    func check(_ buffer: borrowing IOBuffer) {
        let start = received
        let intact = buffer.withUnsafeReadableBytes { bytes in
            start + bytes.count <= sent && bytes.indices.allSatisfy { bytes[$0] == byte(at: start + $0) }
        }
        if !intact { corrupted = true }
        received += buffer.readableBytes
    }
}

/// A peer that misbehaves as its session says, validates every echoed byte, then starts the next session.
struct MisbehavingPeer: TCPConnectionHandler {
    let run: MisbehaveRun
    let connector: TCPConnector<MisbehavingPeer>
    let slot: Int
    let session: PeerSession

    mutating func connectionEstablished(_ connection: TCPConnection) {
        let session = self.session
        let thread = connection.thread
        switch session.behaviour {
        case .slowReader:
            connection.pauseReading()
            guard session.send(session.volume, on: connection) else { return connection.close(.abortive) }
            session.timer = thread.scheduleTimer(after: .milliseconds(20), repeating: .milliseconds(20)) {
                connection.resumeReading()
            }
        case .resetMidWrite:
            guard session.send(session.volume, on: connection) else { return connection.close(.abortive) }
            session.timer = thread.scheduleTimer(after: .milliseconds(5 + session.next(below: 45))) {
                session.resetByUs = true
                connection.close(.abortive)
            }
        case .garbage:
            session.timer = thread.scheduleTimer(after: .milliseconds(2), repeating: .milliseconds(2)) {
                guard session.send(1 + session.next(below: 4096), on: connection) else { return connection.close(.abortive) }
                if session.sent == session.volume, let timer = session.timer {
                    thread.cancelTimer(timer)
                    session.timer = nil
                }
            }
        case .halfClose:
            guard session.send(session.volume, on: connection) else { return connection.close(.abortive) }
            connection.close(.halfClose)
        }
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        session.check(buffer)
        switch session.behaviour {
        case .slowReader:
            connection.pauseReading()
            if session.received >= session.volume { connection.close() }
        case .garbage:
            if session.received >= session.volume { connection.close() }
        case .resetMidWrite, .halfClose:
            break
        }
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        if let timer = session.timer { connection.thread.cancelTimer(timer) }
        let stats = run.stats[connection.thread.index]
        let planned = session.behaviour == .resetMidWrite ? session.resetByUs : session.received == session.volume
        if session.corrupted { stats.validationFailures += 1 }
        if planned && !session.corrupted {
            if run.phase.current == Phase.measuring {
                stats.messages += 1
                stats.bytes += session.received
                stats.progress.wrappingAdd(1, ordering: .relaxed)
                run.completed.withLock { $0[session.behaviour.rawValue] += 1 }
            }
        } else if !planned {
            stats.errors += 1
            run.report("\(session.behaviour.name) session \(session.seed) ended early: \(reason); "
                + "\(session.received) of \(session.volume) bytes echoed, \(session.sent) sent")
        }
        MisbehavingPeer.next(run: run, connector: connector, slot: slot, round: session.seed / 1_000_000 + 1)
    }

    /// Starts slot `slot`'s next session (its behaviour rotates with `round`), unless the run is stopping.
    static func next(run: MisbehaveRun, connector: TCPConnector<MisbehavingPeer>, slot: Int, round: Int) {
        guard run.phase.current != Phase.stopping else {
            run.active.wrappingSubtract(1, ordering: .relaxed)
            return
        }
        let behaviour = run.behaviours[(slot + round) % run.behaviours.count]
        let seed = round * 1_000_000 + slot
        connector.connect(to: run.target, makeHandler: {
            MisbehavingPeer(run: run, connector: connector, slot: slot, session: PeerSession(behaviour: behaviour, seed: seed))
        }, failed: { error in
            run.connectFailures.wrappingAdd(1, ordering: .relaxed)
            run.report("\(behaviour.name) session \(seed) could not connect: \(error)")
            MisbehavingPeer.next(run: run, connector: connector, slot: slot, round: round + 1)
        })
    }
}

/// `misbehave`: `concurrency` peers at once, each session one of `behaviours` in turn, for `duration`.
/// Counts sessions that went as planned; any corrupted echo is a validation failure, any session the
/// server ended early an error.
public func runMisbehaveBenchmark(target: SocketAddress, concurrency: Int, behaviours: [PeerBehaviour],
                                  warmup: Duration, duration: Duration, pool: IOPool) async -> BenchResult {
    let run = MisbehaveRun(threads: pool.threads.count, target: target,
                           behaviours: behaviours.isEmpty ? PeerBehaviour.allCases : behaviours)
    let connector = TCPConnector<MisbehavingPeer>(pool: pool, configuration: .init(connectTimeout: .seconds(10)))
    run.active.store(concurrency, ordering: .relaxed)
    for slot in 0..<concurrency { MisbehavingPeer.next(run: run, connector: connector, slot: slot, round: 0) }
    // Sessions in progress at the end finish (a slow reader takes a few seconds) and start no others.
    let seconds = await measureSessions(label: "misbehave", phase: run.phase, stats: run.stats, warmup: warmup,
                                        duration: duration, drain: .seconds(30)) { run.active.load(ordering: .relaxed) }
    let total = await merge(run.stats, pool: pool)
    var result = BenchResult(mode: "misbehave", seconds: seconds)
    result.unit = "sessions"
    result.messages = total.messages
    result.bytes = total.bytes
    result.connections = concurrency
    result.errors = total.errors + run.connectFailures.load(ordering: .relaxed) + run.active.load(ordering: .relaxed)
    result.validationFailures = total.validationFailures
    let completed = run.completed.withLock { $0 }
    result.extra = PeerBehaviour.allCases.map { ($0.name, "\(completed[$0.rawValue])") }
    return result
}

/// Standard error as a `print` target.
struct StandardError: TextOutputStream {
    mutating func write(_ string: String) {
        var string = string
        string.withUTF8 { bytes in _ = Glibc.write(2, bytes.baseAddress, bytes.count) }
    }
}

#if canImport(Glibc)
import Glibc
#endif
