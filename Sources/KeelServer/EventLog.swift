import KeelSystem
import Logging
import Synchronization

/// The operator's log of events worth attention (a slow consumer closed, a bad message, a limit
/// reached), rate-limited per kind of event: under a flood, at most `burst` lines per kind per second,
/// and the next line that gets through says how many were left out.
final class EventLog: Sendable {
    private let logger: Logger
    private let burst: Int
    private let clock: @Sendable () -> ContinuousClock.Instant
    private let windows = Locked<[String: Window]>([:])

    private struct Window {
        var start: ContinuousClock.Instant
        var logged: Int
        var suppressed: Int
    }

    convenience init(label: String, burst: Int = 5) {
        self.init(logger: Logger(label: label), burst: burst)
    }

    /// An event log writing to `logger`, reading the time from `clock` (tests move it by hand).
    init(logger: Logger, burst: Int, clock: @escaping @Sendable () -> ContinuousClock.Instant = { .now }) {
        self.logger = logger
        self.burst = burst
        self.clock = clock
    }

    /// Logs `message` unless this kind of event already used its lines in the current second.
    func log(_ level: Logger.Level, kind: String, _ message: @autoclosure () -> String, metadata: Logger.Metadata = [:]) {
        let now = clock()
        let suppressed: Int? = windows.withLock { windows in
            var window = windows[kind] ?? Window(start: now, logged: 0, suppressed: 0)
            var carried = 0
            if now - window.start >= .seconds(1) {
                carried = window.suppressed
                window = Window(start: now, logged: 0, suppressed: 0)
            }
            defer { windows[kind] = window }
            guard window.logged < burst else {
                window.suppressed += 1
                return nil
            }
            window.logged += 1
            return carried
        }
        guard let suppressed else { return }
        var metadata = metadata
        if suppressed > 0 { metadata["suppressed"] = "\(suppressed)" }
        logger.log(level: level, "\(message())", metadata: metadata)
    }
}
