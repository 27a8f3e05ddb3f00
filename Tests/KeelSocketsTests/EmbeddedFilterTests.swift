import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import KeelTestSupport
import Testing

// In-memory tests of the filter model: a real TCPConnection with its filter stack and handler on an
// embedded thread (no sockets, no threads, no sleeps). Each case runs with two or more filters.

/// Records every handler event, in order.
struct EventRecorder: TCPConnectionHandler {
    let log: Collector<String>
    var echoes = false
    var pauseAfterFirst = false
    var accumulateUntil: Int?
    var delivered = 0

    mutating func connectionEstablished(_ connection: TCPConnection) {
        log.add("established \(connection.remoteAddress.map { "\($0)" } ?? "-")")
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        delivered += 1
        if let target = accumulateUntil, buffer.readableBytes < target {
            log.add("partial \(buffer.readableBytes)")
            return connection.continueReading(into: buffer)
        }
        log.add("in \(String(decoding: buffer.readableByteArray, as: UTF8.self))")
        if pauseAfterFirst && delivered == 1 { connection.pauseReading() }
        if echoes { connection.write(buffer) }
    }

    mutating func connectionPeerHalfClosed(_ connection: TCPConnection) {
        log.add("half-closed")
        connection.close()
    }

    mutating func connectionWriteCompleted(_ connection: TCPConnection, bytes: Int) { log.add("sent \(bytes)") }

    mutating func connectionWritabilityChanged(_ connection: TCPConnection, isWritable: Bool) {
        log.add("writable \(isWritable)")
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) { log.add("closed \(reason)") }
}

/// Passes everything on and logs the events it sees, tagged with its name.
class LoggingFilter: TCPConnectionFilter {
    let name: String
    let log: Collector<String>
    init(_ name: String, log: Collector<String>) {
        self.name = name
        self.log = log
    }

    func connectionEstablished(context: TCPFilterContext) {
        log.add("\(name) established")
        context.passEstablished()
    }
    func filterInbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        log.add("\(name) in")
        context.passInbound(buffer)
    }
    func filterOutbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        log.add("\(name) out")
        context.passOutbound(buffer)
    }
    func peerHalfClosed(context: TCPFilterContext) {
        log.add("\(name) half-closed")
        context.passPeerHalfClosed()
    }
    func writabilityChanged(_ isWritable: Bool, context: TCPFilterContext) {
        log.add("\(name) writable \(isWritable)")
        context.passWritabilityChanged(isWritable)
    }
    func writeCompleted(_ bytes: Int, context: TCPFilterContext) {
        log.add("\(name) sent \(bytes)")
        context.passWriteCompleted(bytes)
    }
    func closeRequested(_ mode: TCPCloseMode, context: TCPFilterContext) {
        log.add("\(name) close \(mode)")
        context.passClose(mode)
    }
    func connectionClosed(_ reason: TCPCloseReason, context: TCPFilterContext) {
        log.add("\(name) closed \(reason)")
    }
}

/// Upper-cases ASCII letters on the way in.
final class UppercasingFilter: TCPConnectionFilter {
    func filterInbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        buffer.withUnsafeMutableReadableBytes { bytes in
            for i in bytes.indices where bytes[i] >= 0x61 && bytes[i] <= 0x7A { bytes[i] -= 0x20 }
        }
        context.passInbound(buffer)
    }
}

/// Passes every received byte up as its own buffer (a decoder that yields many messages per read).
final class SplittingFilter: TCPConnectionFilter {
    func filterInbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        let bytes = buffer.readableByteArray
        for byte in bytes {
            var piece = try! context.bufferPool.acquire()
            piece.append(contentsOf: [byte])
            context.passInbound(piece)
        }
    }
}

/// Frames every write as `[...]` with pieces of its own.
final class BracketingFilter: TCPConnectionFilter {
    func filterOutbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        var open = try! context.bufferPool.acquire()
        open.append(contentsOf: Array("[".utf8))
        var close = try! context.bufferPool.acquire()
        close.append(contentsOf: Array("]".utf8))
        context.passOutbound(open)
        context.passOutbound(buffer)
        context.passOutbound(close)
    }
}

/// A PROXY-like header reader: holds `established` back until a `FROM a.b.c.d port\n` line arrived,
/// then names the real peer, passes `established` and the bytes after the line, and removes itself.
final class HeaderFilter: TCPConnectionFilter {
    private var header: [UInt8] = []
    private(set) var passedEstablished = false

    func connectionEstablished(context: TCPFilterContext) {}  // held until the header is read

    func filterInbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        let bytes = buffer.readableByteArray
        guard let newline = bytes.firstIndex(of: 0x0A) else {
            header += bytes
            return
        }
        header += bytes[..<newline]
        let parts = String(decoding: header, as: UTF8.self).split(separator: " ")
        guard parts.count == 3, parts[0] == "FROM", let port = UInt16(parts[2]),
              let address = try? SocketAddress(host: String(parts[1]), port: port)
        else {
            return context.close(.abortive, reason: TCPCloseReason(.headerRefused, detail: "bad header"))
        }
        context.setRemoteAddress(address)
        context.passEstablished()
        buffer.consume(newline + 1)
        context.removeFilter()
        if buffer.readableBytes > 0 { context.passInbound(buffer) }
    }
}

extension TCPCloseReason.Code {
    /// A test layer's own code.
    static let headerRefused = Self("test.headerRefused")
}

/// Says goodbye before letting a close continue (as TLS sends close_notify).
final class GoodbyeFilter: TCPConnectionFilter {
    func closeRequested(_ mode: TCPCloseMode, context: TCPFilterContext) {
        var bye = try! context.bufferPool.acquire()
        bye.append(contentsOf: Array("bye".utf8))
        context.passOutbound(bye)
        context.passClose(mode)
    }
}

/// Hands the connection to another protocol: after an `UPGRADE\n` line it replaces itself with an
/// upper-casing filter, passing on what followed the line.
final class UpgradingFilter: TCPConnectionFilter {
    func filterInbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        let bytes = buffer.readableByteArray
        let marker = Array("UPGRADE\n".utf8)
        guard bytes.starts(with: marker) else { return context.passInbound(buffer) }
        buffer.consume(marker.count)
        context.replaceFilter(with: [UppercasingFilter()])
        // Bytes after the marker belong to the new protocol: a removed context still passes to its
        // former neighbour above, which is now the new filter.
        if buffer.readableBytes > 0 { context.passInbound(buffer) }
    }
}

/// Holds the writes of a loop iteration back and passes them down as one buffer at the flush (as TLS
/// seals a burst of small writes into one record); passes each at once when flushes are unavailable.
final class GatheringFilter: TCPConnectionFilter {
    let log: Collector<String>
    private var held: DetachedBuffer?
    private var pieces = 0
    init(log: Collector<String>) { self.log = log }

    func filterOutbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        if var gathered = held?.reattach() {
            _ = buffer.withUnsafeReadableBytes { gathered.append($0) }
            held = gathered.detach()
            pieces += 1
        } else if context.requestFlush() {
            held = buffer.detach()
            pieces = 1
        } else {
            log.add("passed at once")
            context.passOutbound(buffer)
        }
    }

    func flush(context: TCPFilterContext) {
        guard let gathered = held else { return }
        held = nil
        log.add("flushed \(pieces)")
        context.passOutbound(gathered.reattach())
    }

    func connectionClosed(_ reason: TCPCloseReason, context: TCPFilterContext) {
        held?.release()
        held = nil
    }
}

struct TestError: Error, CustomStringConvertible {
    var description: String { "test error" }
}

/// Reports a (non-fatal) error for every inbound `!`.
final class ErrorReportingFilter: TCPConnectionFilter {
    func filterInbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        if buffer.readableByteArray.contains(0x21) { return context.passError(TestError()) }
        context.passInbound(buffer)
    }
}

@Suite("Filters in memory")
struct EmbeddedFilterTests {
    @Test func bytesGoUpAndDownThroughTwoFiltersInOrder() {
        let log = Collector<String>()
        let test = EmbeddedConnection(
            handler: EventRecorder(log: log, echoes: true),
            options: .init(makeFilters: { _ in [LoggingFilter("a", log: log), UppercasingFilter(), BracketingFilter(), LoggingFilter("b", log: log)] }))
        test.receive("keel")
        #expect(test.takeWrittenString() == "[KEEL]")
        #expect(log.snapshot.prefix(5) == ["a established", "b established", "established 127.0.0.1:50000", "a in", "b in"])
        // Down: b once, then a once per piece the bracketing filter sent.
        #expect(log.snapshot.filter { $0.hasSuffix(" out") } == ["b out", "a out", "a out", "a out"])
        #expect(test.finish().isClean)
    }

    @Test func everySplitOfTheInputGivesTheSameResult() {
        let input = Array("FROM 10.1.2.3 4567\nhello".utf8)
        for split in 0...input.count {
            let log = Collector<String>()
            let test = EmbeddedConnection(
                handler: EventRecorder(log: log),
                options: .init(makeFilters: { _ in [HeaderFilter(), UppercasingFilter()] }))
            #expect(log.snapshot.isEmpty, "the handler must not see established before the header")
            test.receive(chunks: [Array(input[..<split]), Array(input[split...])])
            let received = log.snapshot.filter { $0.hasPrefix("in ") }.map { $0.dropFirst(3) }.joined()
            #expect(log.snapshot.first == "established 10.1.2.3:4567", "split at \(split)")
            #expect(received == "HELLO", "split at \(split)")
            #expect(test.filters.count == 1, "the header filter removed itself")
            #expect(test.connection.remoteAddress == (try! SocketAddress(host: "10.1.2.3", port: 4567)))
            #expect(test.finish().isClean)
        }
    }

    @Test func aFilterClosesWithItsOwnReasonAndEveryLayerSeesIt() {
        let log = Collector<String>()
        let test = EmbeddedConnection(
            handler: EventRecorder(log: log),
            options: .init(makeFilters: { _ in [LoggingFilter("a", log: log), HeaderFilter(), LoggingFilter("b", log: log)] }))
        test.receive("GARBAGE\n")
        #expect(test.isClosed)
        #expect(test.closeReason?.code == .headerRefused)
        #expect(test.closedAbortively)
        #expect(log.snapshot.suffix(3) == ["a closed test.headerRefused: bad header", "b closed test.headerRefused: bad header",
                                           "closed test.headerRefused: bad header"])
        #expect(!log.snapshot.contains { $0.hasPrefix("established") }, "the handler never saw the connection open")
        #expect(test.finish().isClean)
    }

    @Test func aRequestedCloseGoesDownThroughTheFiltersWhichFinishTheirProtocolFirst() {
        let log = Collector<String>()
        let test = EmbeddedConnection(
            handler: EventRecorder(log: log),
            options: .init(makeFilters: { _ in [LoggingFilter("a", log: log), GoodbyeFilter(), LoggingFilter("b", log: log)] }))
        test.withConnection { connection in
            var hi = try! connection.thread.bufferPool.acquire()
            hi.append(contentsOf: Array("hi ".utf8))
            connection.write(hi)
            connection.close()
            var late = try! connection.thread.bufferPool.acquire()
            late.append(contentsOf: Array("late".utf8))
            connection.write(late)  // after close: dropped, never reaches the filters
        }
        #expect(test.takeWrittenString() == "hi bye")
        #expect(test.peerSawEndOfStream)
        #expect(test.closeReason == .local)
        #expect(log.snapshot.filter { $0.contains("close ") } == ["b close graceful", "a close graceful"])
        #expect(test.finish().isClean)
    }

    @Test func anAbortiveCloseDoesNotWaitForFilters() {
        let log = Collector<String>()
        let test = EmbeddedConnection(
            handler: EventRecorder(log: log),
            options: .init(makeFilters: { _ in [GoodbyeFilter(), LoggingFilter("b", log: log)] }))
        test.withConnection { $0.close(.abortive) }
        #expect(test.takeWritten().isEmpty)
        #expect(test.closedAbortively && test.closeReason == .local)
        #expect(log.snapshot.last == "closed local")
        #expect(test.finish().isClean)
    }

    @Test func peerHalfCloseTravelsUpThroughTheFilters() {
        let log = Collector<String>()
        let test = EmbeddedConnection(
            handler: EventRecorder(log: log),
            options: .init(makeFilters: { _ in [LoggingFilter("a", log: log), LoggingFilter("b", log: log)] }))
        test.receive("x")
        test.peerHalfCloses()
        let events = log.snapshot.filter { $0.contains("half") || $0.contains("closed") }
        #expect(events == ["a half-closed", "b half-closed", "half-closed", "a closed peerClosed", "b closed peerClosed",
                           "closed peerClosed"])
        #expect(test.peerSawEndOfStream)
        #expect(test.finish().isClean)
    }

    @Test func writabilityAndWriteCompletionTravelUpThroughTheFilters() {
        let log = Collector<String>()
        let flow = TCPFlowControl(highWatermark: 8, lowWatermark: 2, hardLimit: nil)
        let test = EmbeddedConnection(
            handler: EventRecorder(log: log),
            options: .init(flowControl: flow, makeFilters: { _ in [LoggingFilter("a", log: log), LoggingFilter("b", log: log)] }))
        test.sendWindow = 0
        test.withConnection { connection in
            var payload = try! connection.thread.bufferPool.acquire()
            payload.append(contentsOf: Array("0123456789".utf8))
            connection.write(payload)
        }
        #expect(test.connection.isWritable == false)
        #expect(log.snapshot.filter { $0.contains("writable") } == ["a writable false", "b writable false", "writable false"])
        test.sendWindow = .max
        #expect(test.takeWrittenString() == "0123456789")
        #expect(log.snapshot.filter { $0.contains("sent") } == ["a sent 10", "b sent 10", "sent 10"])
        #expect(log.snapshot.filter { $0.contains("writable") }.suffix(3) == ["a writable true", "b writable true", "writable true"])
        #expect(test.finish().isClean)
    }

    @Test func pauseHoldsBackBytesAFilterAlreadyDecoded() {
        let log = Collector<String>()
        var handler = EventRecorder(log: log)
        handler.pauseAfterFirst = true
        let test = EmbeddedConnection(
            handler: handler, options: .init(makeFilters: { _ in [SplittingFilter(), UppercasingFilter()] }))
        test.receive("abc")
        test.receive("de")
        #expect(log.snapshot.filter { $0.hasPrefix("in ") } == ["in A"], "nothing reaches a paused handler")
        #expect(test.connection.isReadingPaused && test.unreadBytes == 2)
        test.withConnection { $0.resumeReading() }
        #expect(log.snapshot.filter { $0.hasPrefix("in ") } == ["in A", "in B", "in C", "in D", "in E"])
        #expect(test.finish().isClean)
    }

    @Test func continueReadingAccumulatesDecodedBytesAboveTheFilters() {
        let log = Collector<String>()
        var handler = EventRecorder(log: log)
        handler.accumulateUntil = 6
        let test = EmbeddedConnection(
            handler: handler, options: .init(makeFilters: { _ in [SplittingFilter(), UppercasingFilter()] }))
        test.receive("ab")
        test.receive("cdef")
        // Each decoded byte is appended to the handler's own buffer (never fed back into the filters,
        // which would upper-case or split them twice).
        #expect(log.snapshot.filter { $0.hasPrefix("in ") } == ["in ABCDEF"])
        #expect(log.snapshot.filter { $0.hasPrefix("partial") } == ["partial 1", "partial 2", "partial 3", "partial 4", "partial 5"])
        #expect(test.finish().isClean)
    }

    @Test func anUpgradeReplacesAFilterInPlace() {
        let log = Collector<String>()
        let test = EmbeddedConnection(
            handler: EventRecorder(log: log),
            options: .init(makeFilters: { _ in [LoggingFilter("a", log: log), UpgradingFilter()] }))
        test.receive("before")
        test.receive("UPGRADE\nafter")
        test.receive("more")
        #expect(log.snapshot.filter { $0.hasPrefix("in ") } == ["in before", "in AFTER", "in MORE"])
        #expect(test.filters.count == 2 && test.filters.last is UppercasingFilter)
        #expect(test.finish().isClean)
    }

    @Test func anErrorFromAFilterClosesWithAProtocolErrorByDefault() {
        let log = Collector<String>()
        let test = EmbeddedConnection(
            handler: EventRecorder(log: log),
            options: .init(makeFilters: { _ in [ErrorReportingFilter(), LoggingFilter("b", log: log)] }))
        test.receive("fine")
        test.receive("bad!")
        #expect(test.closeReason == TCPCloseReason(.protocolError, detail: "test error"))
        #expect(test.closedAbortively)
        #expect(test.finish().isClean)
    }

    @Test(arguments: [true, false])
    func aFilterMayHoldAnIterationsWritesUntilTheFlush(coalescesWrites: Bool) {
        let log = Collector<String>()
        var options = TCPConnectionOptions(makeFilters: { _ in
            [LoggingFilter("a", log: log), GatheringFilter(log: log), SplittingFilter()]
        })
        options.coalescesWrites = coalescesWrites
        let test = EmbeddedConnection(handler: EventRecorder(log: log, echoes: true), options: options)
        test.receive("abc")  // three deliveries, three echoed writes, in one iteration
        #expect(test.takeWrittenString() == "abc")
        let downAtTheBottom = log.snapshot.filter { $0 == "a out" }.count
        if coalescesWrites {
            #expect(log.snapshot.contains("flushed 3"))
            #expect(downAtTheBottom == 1, "the three writes went down as one")
        } else {
            #expect(log.snapshot.filter { $0 == "passed at once" }.count == 3)
            #expect(downAtTheBottom == 3)
        }
        test.receive("de")
        #expect(test.takeWrittenString() == "de", "a later iteration flushes again")
        #expect(test.finish().isClean)
    }

    @Test func aContextKeptPastCloseIsInert() {
        // @unchecked Sendable: an embedded connection runs on the test's thread only.
        final class Kept: @unchecked Sendable { var context: TCPFilterContext? }
        final class Keeper: TCPConnectionFilter {
            let kept: Kept
            init(_ kept: Kept) { self.kept = kept }
            func connectionEstablished(context: TCPFilterContext) {
                kept.context = context
                context.passEstablished()
            }
        }
        let kept = Kept()
        let test = EmbeddedConnection(
            handler: EventRecorder(log: Collector()), options: .init(makeFilters: { _ in [Keeper(kept), UppercasingFilter()] }))
        test.withConnection { $0.close() }
        #expect(test.isClosed)
        test.withConnection { _ in
            var stale = try! kept.context!.bufferPool.acquire()
            stale.append(contentsOf: Array("stale".utf8))
            kept.context!.passOutbound(stale)
            kept.context!.close(.abortive, reason: .reset)
        }
        #expect(test.takeWritten().isEmpty)
        #expect(test.closeReason == .local)
        #expect(test.finish().isClean)
        kept.context = nil  // the factory holds `kept`, the connection holds the factory: break that cycle
    }
}
