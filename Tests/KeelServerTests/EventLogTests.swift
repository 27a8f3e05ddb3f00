@testable import KeelServer
import Logging
import Synchronization
import Testing

/// Collects what an EventLog writes.
final class CollectingLogHandler: LogHandler, @unchecked Sendable {
    // @unchecked Sendable: `lines` is behind a mutex; the rest is set once.
    let lines = Mutex<[(message: String, metadata: Logger.Metadata)]>([])
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        lines.withLock { $0.append(("\(event.message)", event.metadata ?? [:])) }
    }
}

@Suite("keel-server event log")
struct EventLogTests {
    @Test func aFloodOfOneEventIsCutToTheBurstAndTheNextLineCountsWhatWasLeftOut() {
        let handler = CollectingLogHandler()
        let start = ContinuousClock.now
        let offset = Mutex<Duration>(.zero)
        let log = EventLog(logger: Logger(label: "test") { _ in handler }, burst: 3, clock: { start + offset.withLock { $0 } })
        for index in 0..<100 { log.log(.warning, kind: "slow", "slow consumer \(index)") }
        log.log(.notice, kind: "bad", "another kind has its own budget")
        var lines = handler.lines.withLock { $0 }
        #expect(lines.map(\.message) == ["slow consumer 0", "slow consumer 1", "slow consumer 2", "another kind has its own budget"])
        offset.withLock { $0 = .milliseconds(1001) }
        log.log(.warning, kind: "slow", "slow consumer again")
        lines = handler.lines.withLock { $0 }
        #expect(lines.last?.message == "slow consumer again")
        #expect(lines.last?.metadata["suppressed"] == "97")
    }
}

@Suite("keel-server JSON log lines")
struct JSONLogTests {
    @Test func anEventIsOneJSONObjectOnOneLineWithItsMetadataEscaped() {
        var handler = JSONLogHandler(label: "keel.server", logLevel: .info)
        handler.metadata["worker"] = "2"
        let event = LogEvent(level: .warning, message: "slow consumer \"closed\"\n", metadata: ["peer": "127.0.0.1:9\t"],
                             source: nil, file: #fileID, function: #function, line: #line)
        let line = handler.render(event, time: "2026-12-02T04:12:40Z")
        #expect(line == #"{"time":"2026-12-02T04:12:40Z","level":"warning","label":"keel.server","message":"slow consumer \"closed\"\n","peer":"127.0.0.1:9\t","worker":"2"}"# + "\n")
        #expect(line.filter { $0 == "\n" }.count == 1)
    }
}
