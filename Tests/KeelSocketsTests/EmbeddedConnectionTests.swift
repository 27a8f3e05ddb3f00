import KeelBuffers
import KeelEngine
@testable import KeelSockets
import KeelSystem
import KeelTestSupport
import SystemPackage
import Testing

// The embedded harness on connections without filters: the socket-layer behaviour (timeouts, resets,
// flow control, half-close, urgent data) driven deterministically, with no sockets and no sleeps.

/// Writes `times` pooled buffers of `count` copies of `byte` (on the connection's thread).
func write(repeating byte: UInt8, count: Int, times: Int, to connection: TCPConnection) {
    for _ in 0..<times {
        var buffer = try! connection.thread.bufferPool.acquire()
        buffer.append(contentsOf: repeatElement(byte, count: count))
        connection.write(buffer)
    }
}

@Suite("Connections in memory")
struct EmbeddedConnectionTests {
    @Test(arguments: [true, false])
    func echoesEverySegmentInOrder(coalescing: Bool) {
        let test = EmbeddedConnection(handler: EchoHandler(), options: .init(coalescesWrites: coalescing))
        test.receive(chunks: [Array("one ".utf8), Array("two ".utf8), Array("three".utf8)])
        #expect(test.takeWrittenString() == "one two three")
        let big = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 % 251) }
        test.receive(big)  // larger than one pool buffer: split into several receives
        #expect(test.takeWritten() == big)
        #expect(test.finish().isClean)
    }

    @Test func aCoalescingDelayHoldsWritesForItsWindowThenSendsThemTogether() {
        var options = TCPConnectionOptions()
        options.writeCoalescingDelay = .milliseconds(10)
        let test = EmbeddedConnection(handler: EchoHandler(), options: options)
        test.receive("one ")
        #expect(test.takeWrittenString() == "", "held: the window is open")
        test.advanceTime(by: .milliseconds(4))
        test.receive("two ")
        #expect(test.takeWrittenString() == "", "joins the open window")
        test.advanceTime(by: .milliseconds(8))
        #expect(test.takeWrittenString() == "one two ", "both leave when the window ends")
        test.receive("three")
        #expect(test.takeWrittenString() == "", "the next write opens a new window")
        test.advanceTime(by: .milliseconds(12))
        #expect(test.takeWrittenString() == "three")
        #expect(test.finish().isClean)
    }

    @Test(arguments: [BackendKind.epoll, .ioUring])
    func writesMadeWhileAWindowsSendIsInFlightWaitForTheNextWindow(backend: BackendKind) {
        var options = TCPConnectionOptions()
        options.writeCoalescingDelay = .milliseconds(10)
        let test = EmbeddedConnection(handler: EchoHandler(), options: options, backendKind: backend)
        test.sendWindow = 0  // the peer reads nothing: the window's send stays in flight
        test.receive("one ")
        test.advanceTime(by: .milliseconds(12))
        #expect(test.takeWrittenString() == "")
        test.receive("two ")  // queued behind the send in flight
        test.sendWindow = 4  // the send completes with "one "
        #expect(test.takeWrittenString() == "one ")
        test.sendWindow = .max
        #expect(test.takeWrittenString() == "", "not sent when the previous send completed: it waits for a window")
        test.advanceTime(by: .milliseconds(12))
        #expect(test.takeWrittenString() == "two ")
        #expect(test.finish().isClean)
    }

    @Test(arguments: [BackendKind.epoll, .ioUring])
    func aWindowsWritesAllLeaveWithItEvenPastOneSendOrWhatTheKernelTakes(backend: BackendKind) {
        var options = TCPConnectionOptions()
        options.writeCoalescingDelay = .milliseconds(10)
        let test = EmbeddedConnection(handler: EchoHandler(), options: options, backendKind: backend)
        // More buffers than one send carries (64): the rest follows at once, not a window later.
        test.withConnection { connection in write(repeating: 0x61, count: 10, times: 100, to: connection) }
        test.advanceTime(by: .milliseconds(12))
        #expect(test.takeWritten().count == 1_000)
        // The kernel takes part of a window's send: the rest goes as soon as there is room.
        test.sendWindow = 300
        test.withConnection { connection in write(repeating: 0x62, count: 10, times: 50, to: connection) }
        test.advanceTime(by: .milliseconds(12))
        #expect(test.takeWritten().count == 300)
        test.sendWindow = .max
        #expect(test.takeWritten().count == 200, "without waiting for another window")
        #expect(test.finish().isClean)
    }

    @Test func aGracefulCloseSendsTheHeldWritesBeforeItsEndOfStream() {
        var options = TCPConnectionOptions()
        options.writeCoalescingDelay = .milliseconds(10)
        let test = EmbeddedConnection(handler: EchoHandler(), options: options)
        test.withConnection { connection in
            write(repeating: 0x61, count: 3, times: 2, to: connection)
            connection.close()
        }
        test.advanceTime(by: .milliseconds(12))
        #expect(test.takeWrittenString() == "aaaaaa")
        #expect(test.peerSawEndOfStream)
        #expect(test.finish().isClean)
    }

    @Test func idleTimeoutFiresOnTheManualClockOnly() {
        let log = Collector<String>()
        let test = EmbeddedConnection(handler: EventRecorder(log: log), options: .init(idleTimeout: .seconds(30)))
        test.advanceTime(by: .seconds(29))
        #expect(!test.isClosed)
        test.receive("x")  // activity resets the timer
        test.advanceTime(by: .seconds(29))
        #expect(!test.isClosed)
        test.advanceTime(by: .seconds(2))
        #expect(test.closeReason == .idleTimeout)
        #expect(test.closedAbortively)
        #expect(log.snapshot.last == "closed idleTimeout")
        #expect(test.finish().isClean)
    }

    @Test func readTimeoutIgnoresSending() {
        let test = EmbeddedConnection(handler: EventRecorder(log: Collector()), options: .init(readTimeout: .seconds(5)))
        for _ in 0..<4 {
            test.withConnection { write(repeating: 1, count: 3, times: 1, to: $0) }
            test.advanceTime(by: .seconds(1))
        }
        #expect(!test.isClosed)
        test.advanceTime(by: .seconds(1))
        #expect(test.closeReason == .readTimeout)
        #expect(test.finish().isClean)
    }

    @Test func aResetMidWriteClosesWithReasonResetAndReturnsEveryBuffer() {
        let test = EmbeddedConnection(handler: EventRecorder(log: Collector()))
        test.sendWindow = 10
        test.withConnection { write(repeating: 7, count: 1000, times: 8, to: $0) }
        #expect(test.takeWritten().count == 10)
        #expect(test.connection.queuedWriteBytes == 7990)
        test.peerResets()
        #expect(test.closeReason == .reset)
        #expect(test.finish().isClean)
    }

    @Test func aWriteMadeWhileHandlingWritableThatFillsTheQueueAgainIsReportedNotWritable() {
        // A relay resumes its other side when this one drains; that side's stash comes straight back as
        // writes here, past the high watermark again, inside the writability callback. The second
        // "not writable" must still reach the handler, or the relay never pauses again and buffers
        // without bound (keel-gateway's stalled-client test found this).
        let flow = TCPFlowControl(highWatermark: 1000, lowWatermark: 100, hardLimit: nil)
        let events = Collector<Bool>()
        let test = EmbeddedConnection(handler: RefillingOnWritable(events: events), options: .init(flowControl: flow))
        test.sendWindow = 0
        test.withConnection { write(repeating: 1, count: 2000, times: 1, to: $0) }
        #expect(events.snapshot == [false])
        test.sendWindow = 2000  // the queue drains; the handler refills it within the callback
        #expect(test.connection.queuedWriteBytes == 2000)
        #expect(events.snapshot == [false, true, false], "the refill's crossing of the watermark was reported")
        test.sendWindow = .max
        #expect(test.finish().isClean)
    }

    @Test func aSlowConsumerIsClosedAtTheHardLimit() {
        let flow = TCPFlowControl(highWatermark: 1000, lowWatermark: 100, hardLimit: 4000, policy: .refuse)
        let test = EmbeddedConnection(handler: EventRecorder(log: Collector()), options: .init(flowControl: flow))
        test.sendWindow = 0
        test.withConnection { write(repeating: 1, count: 1000, times: 5, to: $0) }
        #expect(test.closeReason == .slowConsumer)
        #expect(test.closedAbortively)
        #expect(test.finish().isClean)
    }

    @Test func peerHalfCloseThenGracefulCloseSendsEverythingFirst() {
        let test = EmbeddedConnection(handler: EchoHandler())
        test.sendWindow = 3
        test.receive("abcdef")
        test.peerHalfCloses()
        #expect(!test.isClosed, "three bytes are still queued")
        test.sendWindow = .max
        #expect(test.takeWrittenString() == "abcdef")
        #expect(test.peerSawEndOfStream)
        #expect(test.closeReason == .peerClosed)
        #expect(test.finish().isClean)
    }

    @Test func aQueuedSendHandedBackWithEAGAINIsSentAgain() {
        // The soak found this: io_uring can complete a send on a non-blocking socket with EAGAIN (a
        // retry after the peer's FIN woke it); that closed the connection with queued bytes unsent.
        let test = EmbeddedConnection(handler: EchoHandler())
        test.sendWindow = 2
        test.failQueuedSends(with: [.resourceTemporarilyUnavailable, .interrupted])
        test.receive("abcdef")  // two go at once, the rest queue: that send fails twice, then waits for room
        test.peerHalfCloses()
        #expect(!test.isClosed)
        test.sendWindow = .max
        #expect(test.takeWrittenString() == "abcdef")
        #expect(test.closeReason == .peerClosed)
        #expect(test.finish().isClean)
    }

    @Test func urgentBytesArriveApartFromTheStream() {
        struct UrgentRecorder: TCPConnectionHandler {
            let log: Collector<String>
            mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
                log.add("in \(String(decoding: buffer.readableByteArray, as: UTF8.self))")
            }
            mutating func connectionReceivedUrgent(_ connection: TCPConnection, byte: UInt8) { log.add("urgent \(byte)") }
        }
        let log = Collector<String>()
        let test = EmbeddedConnection(handler: UrgentRecorder(log: log), options: .init(receivesUrgentData: true))
        test.receive("ab")
        test.receiveUrgent(9)
        test.receive("cd")
        #expect(log.snapshot == ["in ab", "urgent 9", "in cd"])
        test.withConnection { #expect($0.sendUrgent(5)) }
        #expect(test.urgentWritten == [5])
        #expect(test.finish().isClean)
    }

    @Test func pauseStopsDeliveryAndResumeDeliversWhatWasReadInOrder() {
        let log = Collector<String>()
        var handler = EventRecorder(log: log)
        handler.pauseAfterFirst = true
        let test = EmbeddedConnection(handler: handler)
        test.receive(chunks: [Array("a".utf8), Array("b".utf8)])
        test.receive("c")
        #expect(log.snapshot.filter { $0.hasPrefix("in ") } == ["in a"])
        test.withConnection { $0.resumeReading() }
        #expect(log.snapshot.filter { $0.hasPrefix("in ") } == ["in a", "in b", "in c"])
        #expect(test.finish().isClean)
    }

    @Test(arguments: [false, true])
    func aHalfCloseReadWhilePausedWaitsBehindTheStashedBytes(withFilters: Bool) {
        // The soak found this: an echo server paused by flow control read the peer's last bytes and its
        // end of stream together; the half-close overtook the stashed bytes and the echo lost them.
        let log = Collector<String>()
        var handler = EventRecorder(log: log)
        handler.pauseAfterFirst = true
        handler.echoes = true
        var options = TCPConnectionOptions()
        if withFilters { options.makeFilters = { _ in [PassThroughFilter()] } }
        let test = EmbeddedConnection(handler: handler, options: options)
        test.receive(chunks: [Array("a".utf8), Array("b".utf8), Array("c".utf8)], thenHalfCloses: true)
        #expect(log.snapshot.filter { $0.hasPrefix("in ") || $0 == "half-closed" } == ["in a"])
        #expect(!test.isClosed)
        test.withConnection { $0.resumeReading() }
        #expect(log.snapshot.filter { $0.hasPrefix("in ") || $0 == "half-closed" } == ["in a", "in b", "in c", "half-closed"])
        #expect(test.takeWrittenString() == "abc")
        #expect(test.peerSawEndOfStream)
        #expect(test.closeReason == .peerClosed)
        #expect(test.finish().isClean)
    }

    @Test func aHalfClosedSideStillGetsEveryStashedByteBeforeTheClose() {
        let log = Collector<String>()
        var handler = EventRecorder(log: log)
        handler.pauseAfterFirst = true
        let test = EmbeddedConnection(handler: handler)
        test.withConnection { $0.close(.halfClose) }
        #expect(test.peerSawEndOfStream)
        test.receive(chunks: [Array("a".utf8), Array("b".utf8)], thenHalfCloses: true)
        #expect(log.snapshot.filter { $0.hasPrefix("in ") } == ["in a"])
        #expect(!test.isClosed, "both sides are shut down, but \"b\" has not reached the handler")
        test.withConnection { $0.resumeReading() }
        #expect(log.snapshot.filter { $0.hasPrefix("in ") || $0.hasPrefix("closed") } == ["in a", "in b", "closed peerClosed"])
        #expect(test.finish().isClean)
    }

    @Test func continueReadingGathersAMessageInOneBuffer() {
        let log = Collector<String>()
        var handler = EventRecorder(log: log)
        handler.accumulateUntil = 6
        let test = EmbeddedConnection(handler: handler)
        test.receive("ab")
        test.receive("cd")
        test.receive("ef")
        #expect(log.snapshot.filter { $0.hasPrefix("in ") } == ["in abcdef"])
        #expect(test.finish().isClean)
    }

    @Test func pausingWhileGatheringKeepsWhatWasGathered() {
        let log = Collector<String>()
        var handler = EventRecorder(log: log)
        handler.accumulateUntil = 6
        let test = EmbeddedConnection(handler: handler)
        test.receive("ab")
        test.withConnection { $0.pauseReading() }
        test.receive("cd")
        #expect(test.unreadBytes == 2)
        test.withConnection { $0.resumeReading() }
        test.receive("ef")
        #expect(log.snapshot.filter { $0.hasPrefix("in ") } == ["in abcdef"])
        #expect(test.finish().isClean)
    }

    @Test func theEndOfStreamHandsBackWhatWasGathered() {
        let log = Collector<String>()
        var handler = EventRecorder(log: log)
        handler.accumulateUntil = 6
        let test = EmbeddedConnection(handler: handler)
        test.receive("abc")
        test.peerHalfCloses()
        // The gathered bytes come back once more (continueReading is refused now), then the half-close.
        #expect(log.snapshot.suffix(4) == ["partial 3", "partial 3", "half-closed", "closed peerClosed"])
        #expect(test.finish().isClean)
    }
}

/// The one decision TCP and UDP send queues share, without I/O.
@Suite("Send queue bound")
struct SendQueueBoundTests {
    @Test func underTheBoundEverythingQueues() {
        for policy in [SendQueuePolicy.dropNewest, .dropOldest, .refuse, .notify] {
            let bound = SendQueueBound(maximumCount: 3, maximumBytes: 100, policy: policy)
            #expect(bound.admit(size: 10, count: 2, bytes: 90) { nil } == (.queue, 0, 0))
        }
    }

    @Test func overTheBoundEachPolicyDecides() {
        func admit(_ policy: SendQueuePolicy, droppable: [Int]) -> (SendQueueBound.Verdict, Int, Int, [Int]) {
            var queue = droppable
            let bound = SendQueueBound(maximumCount: 3, maximumBytes: 100, policy: policy)
            let (verdict, items, bytes) = bound.admit(size: 30, count: 3, bytes: 90) {
                queue.isEmpty ? nil : queue.removeFirst()
            }
            return (verdict, items, bytes, queue)
        }
        #expect(admit(.dropNewest, droppable: [40, 40]) == (.drop, 0, 0, [40, 40]))
        #expect(admit(.refuse, droppable: [40, 40]) == (.refuse, 0, 0, [40, 40]))
        #expect(admit(.notify, droppable: [40, 40]) == (.queueOverBound, 0, 0, [40, 40]))
        // 3 items of 90 bytes: one dropped frees a slot, but 50 + 30 bytes fits only after it.
        #expect(admit(.dropOldest, droppable: [40, 40]) == (.queue, 1, 40, [40]))
        // Nothing droppable (all in flight): the new one goes.
        #expect(admit(.dropOldest, droppable: []) == (.drop, 0, 0, []))
    }
}

/// A filter that passes every event on (its defaults).
final class PassThroughFilter: TCPConnectionFilter {}

/// Records writability changes; each time the queue drains, writes 2,000 bytes again (once).
struct RefillingOnWritable: TCPConnectionHandler {
    let events: Collector<Bool>
    var refilled = false

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {}

    mutating func connectionWritabilityChanged(_ connection: TCPConnection, isWritable: Bool) {
        events.add(isWritable)
        if isWritable && !refilled {
            refilled = true
            write(repeating: 2, count: 2000, times: 1, to: connection)
        }
    }
}
