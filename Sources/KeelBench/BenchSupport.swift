import CKeelLinux
import Histogram
import KeelEngine
import KeelSystem
import Synchronization

/// Monotonic nanoseconds.
@inline(__always)
func now() -> UInt64 { ckeel_monotonic_ns() }

/// Byte `offset` of stream `stream`'s rolling pattern (every echoed byte is checked against it).
@inline(__always)
func patternByte(stream: Int, offset: Int) -> UInt8 {
    UInt8(truncatingIfNeeded: (stream &* 31 &+ offset) % 251)
}

/// Where a run is: warming up (not measured), measuring, or stopping (no new work).
final class Phase: Sendable {
    static let warmup = 0, measuring = 1, stopping = 2
    private let value = Atomic<Int>(Phase.warmup)
    var current: Int { value.load(ordering: .acquiring) }
    func set(_ phase: Int) { value.store(phase, ordering: .releasing) }
}

/// Counters and a latency histogram owned by one I/O thread (no locks on the hot path); merged at the end.
final class ThreadStats: @unchecked Sendable {
    // @unchecked Sendable: mutated only on its I/O thread; read after the run through thread.submit.
    var latency = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    var messages = 0
    var bytes = 0
    var validationFailures = 0
    var errors = 0
    var connections = 0
    /// Messages a subscriber never got (gaps in a publisher's sequence), and ones that came twice or
    /// out of order (`pubsub`).
    var lost = 0
    var reordered = 0
    /// Deliveries in every phase, warm-up and drain included (`pubsub`: checked against what was published).
    var deliveredAll = 0
    var connectTimes = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    /// Messages so far, readable from any thread for the progress line.
    let progress = Atomic<Int>(0)
}

/// Totals of a run.
public struct BenchResult: Sendable {
    public var mode: String
    public var seconds: Double
    public var messages: Int = 0
    public var bytes: Int = 0
    public var errors: Int = 0
    public var validationFailures: Int = 0
    public var connections: Int = 0
    public var held: Int = 0
    public var p50Microseconds: Double = 0
    public var p99Microseconds: Double = 0
    public var p999Microseconds: Double = 0
    public var lost: Int = 0
    public var reordered: Int = 0
    public var extra: [(String, String)] = []
    /// What ``messages`` counts: `messages` (echo), `connects` (storm, hold), `datagrams` (udp).
    public var unit = "messages"
    /// What the latency percentiles measure: a message's round trip, or a connect's duration.
    public var latencyOf = "round trip"

    /// Messages (or connects, datagrams) per second.
    public var rate: Double { seconds > 0 ? Double(messages) / seconds : 0 }

    /// One human-readable summary line.
    public var summary: String {
        var parts = ["\(mode): \(messages) \(unit) in \(format(seconds)) s", "\(Int(rate)) \(unit)/s"]
        if bytes > 0 { parts.append("\(format(Double(bytes) / seconds / 1e6)) MB/s") }
        if p50Microseconds > 0 {
            parts.append("\(latencyOf) p50 \(format(p50Microseconds)) µs, p99 \(format(p99Microseconds)) µs, p99.9 \(format(p999Microseconds)) µs")
        }
        if connections > 0 { parts.append("connections \(connections)") }
        if mode == "hold" { parts.append("held \(held)") }
        if mode == "udp" || mode == "pubsub" { parts.append("lost \(lost), reordered \(reordered)") }
        for (key, value) in extra { parts.append("\(key) \(value)") }
        parts.append("errors \(errors)")
        parts.append("validation failures \(validationFailures)")
        return parts.joined(separator: ", ")
    }

    /// The result as one JSON object.
    public var json: String {
        var fields: [(String, String)] = [
            ("mode", "\"\(mode)\""), ("seconds", format(seconds, digits: 3)), ("count", "\(messages)"),
            ("rate", format(rate, digits: 1)), ("bytes", "\(bytes)"), ("errors", "\(errors)"),
            ("validation_failures", "\(validationFailures)"), ("connections", "\(connections)"),
            ("held", "\(held)"), ("latency_p50_us", format(p50Microseconds, digits: 2)),
            ("latency_p99_us", format(p99Microseconds, digits: 2)), ("latency_p999_us", format(p999Microseconds, digits: 2)),
            ("lost", "\(lost)"), ("reordered", "\(reordered)"), ("unit", "\"\(unit)\""),
            ("latency_of", "\"\(latencyOf)\""),
        ]
        fields += extra.map { ($0.0, "\"\($0.1)\"") }
        return "{" + fields.map { "\"\($0.0)\": \($0.1)" }.joined(separator: ", ") + "}"
    }
}

/// Fixed-point formatting without Foundation.
func format(_ value: Double, digits: Int = 1) -> String {
    guard value.isFinite else { return "0" }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let scaled = Int((abs(value) * scale).rounded())
    let whole = scaled / Int(scale)
    var fraction = String(scaled % Int(scale))
    while fraction.count < digits { fraction = "0" + fraction }
    return (value < 0 ? "-" : "") + (digits > 0 ? "\(whole).\(fraction)" : "\(whole)")
}

/// Collects every thread's stats on its own thread and merges them.
func merge(_ stats: [ThreadStats], pool: IOPool) async -> ThreadStats {
    let total = ThreadStats()
    for (index, thread) in pool.threads.enumerated() {
        let part = stats[index]
        if let snapshot = try? await thread.submit({ () -> ThreadStatsSnapshot in ThreadStatsSnapshot(part) }) {
            total.latency.add(snapshot.latency)
            total.connectTimes.add(snapshot.connectTimes)
            total.messages += snapshot.messages
            total.bytes += snapshot.bytes
            total.validationFailures += snapshot.validationFailures
            total.errors += snapshot.errors
            total.connections += snapshot.connections
            total.lost += snapshot.lost
            total.reordered += snapshot.reordered
            total.deliveredAll += snapshot.deliveredAll
        }
    }
    return total
}

/// A copy of one thread's stats taken on that thread.
struct ThreadStatsSnapshot: @unchecked Sendable {
    // @unchecked Sendable: a value copy made on the owning thread, handed over once.
    var latency: Histogram<UInt64>
    var connectTimes: Histogram<UInt64>
    var messages, bytes, validationFailures, errors, connections, lost, reordered, deliveredAll: Int
    init(_ stats: ThreadStats) {
        lost = stats.lost
        reordered = stats.reordered
        deliveredAll = stats.deliveredAll
        latency = stats.latency
        connectTimes = stats.connectTimes
        messages = stats.messages
        bytes = stats.bytes
        validationFailures = stats.validationFailures
        errors = stats.errors
        connections = stats.connections
    }
}

/// Prints a live progress line on a terminal (a no-op when stdout is not one).
final class ProgressLine: Sendable {
    let enabled = isatty(1) != 0

    func show(_ text: String) {
        guard enabled else { return }
        print("\r\(text)   ", terminator: "")
        fflushStdout()
    }

    func finish() {
        guard enabled else { return }
        print("")
    }
}

func fflushStdout() { fflush(nil) }

/// A closed-loop run of sessions that start one another (storm, misbehave): warms up, measures for
/// `duration`, then stops starting sessions and waits up to `drain` for those in progress to end.
/// - Returns: the measured seconds.
func measureSessions(label: String, phase: Phase, stats: [ThreadStats], warmup: Duration, duration: Duration,
                     drain: Duration, active: @escaping @Sendable () -> Int) async -> Double {
    try? await Task.sleep(for: warmup)
    phase.set(Phase.measuring)
    let start = ContinuousClock.now
    let progress = ProgressLine()
    await runFor(duration, label: label, progress: progress) {
        stats.reduce(0) { $0 + $1.progress.load(ordering: .relaxed) }
    }
    let seconds = (ContinuousClock.now - start).seconds
    phase.set(Phase.stopping)
    let deadline = ContinuousClock.now + drain
    while active() > 0 && ContinuousClock.now < deadline {
        try? await Task.sleep(for: .milliseconds(10))
    }
    progress.finish()
    return seconds
}

/// Sleeps `duration` while updating the progress line from `count` once a second.
func runFor(_ duration: Duration, label: String, progress: ProgressLine, count: @escaping @Sendable () -> Int) async {
    let start = ContinuousClock.now
    var last = count()
    while ContinuousClock.now - start < duration {
        let step = min(Duration.seconds(1), duration - (ContinuousClock.now - start))
        try? await Task.sleep(for: step)
        let current = count()
        progress.show("\(label): \(current - last)/s")
        last = current
    }
}

#if canImport(Glibc)
import Glibc
#endif
