import KeelBuffers
import KeelEngine
import KeelSockets
import KeelTestSupport
import Testing

// A receive callback's first write is held and sent when the callback ends (epoll and the in-memory
// backend): one send without the write queue. Everything else a callback does after that first write
// must still see it as queued, in order.

/// Runs a script of steps for every received buffer, and logs what the connection reports.
struct ScriptedReceiver: TCPConnectionHandler {
    enum Step: Sendable {
        /// Writes the received buffer back.
        case echo
        /// Writes `text` in a pooled buffer of its own.
        case write(String)
        /// Writes `text` as a shared payload.
        case writeShared(String)
        /// Logs ``TCPConnection/queuedWriteBytes``.
        case logQueuedBytes
        case close(TCPCloseMode)
    }

    let steps: [Step]
    let log: Collector<String>

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        var received = Optional(buffer)
        for step in steps {
            switch step {
            case .echo:
                if let buffer = received.take() { connection.write(buffer) }
            case .write(let text):
                var buffer = try! connection.thread.bufferPool.acquire()
                buffer.append(contentsOf: Array(text.utf8))
                connection.write(buffer)
            case .writeShared(let text):
                var buffer = try! connection.thread.bufferPool.acquire()
                buffer.append(contentsOf: Array(text.utf8))
                connection.write(buffer.share())
            case .logQueuedBytes:
                log.add("queued \(connection.queuedWriteBytes)")
            case .close(let mode):
                connection.close(mode)
            }
        }
        log.add("callback ended")
    }

    mutating func connectionWriteCompleted(_ connection: TCPConnection, bytes: Int) { log.add("sent \(bytes)") }
}

@Suite("Lone writes sent at the end of their callback")
struct LoneWriteTests {
    func connection(_ steps: [ScriptedReceiver.Step], backend: BackendKind = .epoll,
                    options: TCPConnectionOptions = .init()) -> (EmbeddedConnection<ScriptedReceiver>, Collector<String>) {
        let log = Collector<String>()
        return (EmbeddedConnection(handler: ScriptedReceiver(steps: steps, log: log), options: options, backendKind: backend), log)
    }

    @Test func aLoneWriteLeavesInOneSendAfterItsCallbackHasEnded() {
        let (test, log) = connection([.echo])
        test.receive("hello")
        #expect(test.takeWrittenString() == "hello")
        #expect(test.sendCalls == 1)
        #expect(log.snapshot == ["callback ended", "sent 5"])
        test.receive("again")
        #expect(test.takeWrittenString() == "again")
        #expect(test.sendCalls == 2)
        #expect(test.finish().isClean)
    }

    @Test(arguments: [BackendKind.epoll, .ioUring])
    func writesAfterTheFirstJoinItInOneSend(backend: BackendKind) {
        let (test, log) = connection([.echo, .write(" and"), .writeShared(" more")], backend: backend)
        test.receive("this")
        #expect(test.takeWrittenString() == "this and more")
        #expect(test.sendCalls == 1, "one sendmsg of the three, not a send of the first and then the rest")
        #expect(log.snapshot == ["callback ended", "sent 13"])
        #expect(test.finish().isClean)
    }

    @Test func theQueuedByteCountIncludesAHeldWrite() {
        let (test, log) = connection([.logQueuedBytes, .echo, .logQueuedBytes, .write("!"), .logQueuedBytes])
        test.receive("four")
        #expect(log.snapshot == ["queued 0", "queued 4", "queued 5", "callback ended", "sent 5"])
        #expect(test.takeWrittenString() == "four!")
        #expect(test.withConnection { $0.queuedWriteBytes } == 0)
        #expect(test.finish().isClean)
    }

    @Test func aGracefulCloseInTheCallbackSendsTheHeldWriteFirst() {
        let (test, _) = connection([.echo, .close(.graceful)])
        test.receive("last words")
        #expect(test.takeWrittenString() == "last words")
        #expect(test.peerSawEndOfStream)
        #expect(test.closeReason == .local)
        #expect(test.finish().isClean)
    }

    @Test func anAbortiveCloseInTheCallbackDropsTheHeldWriteAndReturnsItsBuffer() {
        let (test, log) = connection([.echo, .close(.abortive)])
        test.receive("never sent")
        #expect(test.takeWrittenString() == "")
        #expect(test.sendCalls == 0)
        #expect(test.closedAbortively)
        #expect(!log.snapshot.contains { $0.hasPrefix("sent") })
        #expect(test.finish().isClean, "the held buffer went back to the pool")
    }

    @Test func whatTheKernelDoesNotTakeIsQueuedAndSentWhenThereIsRoom() {
        let (test, log) = connection([.echo])
        test.sendWindow = 2
        test.receive("hello")
        #expect(test.takeWrittenString() == "he")
        #expect(test.withConnection { $0.queuedWriteBytes } == 3)
        test.sendWindow = 0
        test.receive("world")  // queued behind the rest: not held, not sent ahead of it
        #expect(test.takeWrittenString() == "")
        test.sendWindow = .max
        #expect(test.takeWrittenString() == "lloworld")
        #expect(log.snapshot.filter { $0.hasPrefix("sent") }.map { Int($0.dropFirst(5))! }.reduce(0, +) == 10)
        #expect(test.finish().isClean)
    }

    @Test func aShutWindowQueuesTheHeldWriteWhole() {
        let (test, _) = connection([.echo])
        test.sendWindow = 0
        test.receive("wait")
        #expect(test.takeWrittenString() == "")
        #expect(test.withConnection { $0.queuedWriteBytes } == 4)
        test.sendWindow = .max
        #expect(test.takeWrittenString() == "wait")
        #expect(test.finish().isClean)
    }

    @Test func buffersFilledToTheBrimLeaveTheirWritesToTheTurnsFlush() {
        // A full buffer says more is waiting: the writes of this turn's callbacks leave in one sendmsg.
        let (test, _) = connection([.echo])
        let size = test.withConnection { $0.thread.bufferPool.bufferSize }
        let bytes = (0..<(size * 2 + 100)).map { UInt8(truncatingIfNeeded: $0 % 251) }
        test.receive(bytes)
        #expect(test.takeWritten() == bytes)
        #expect(test.sendCalls == 1)
        #expect(test.finish().isClean)
    }

    @Test func aCoalescingDelayIsNotBypassed() {
        var options = TCPConnectionOptions()
        options.writeCoalescingDelay = .milliseconds(10)
        let (test, _) = connection([.echo], options: options)
        test.receive("later")
        #expect(test.takeWrittenString() == "")
        test.advanceTime(by: .milliseconds(12))
        #expect(test.takeWrittenString() == "later")
        #expect(test.finish().isClean)
    }

    @Test func withoutCoalescingEachWriteIsTriedAtOnce() {
        let (test, log) = connection([.echo, .write("!")], options: .init(coalescesWrites: false))
        test.receive("two")
        #expect(test.takeWrittenString() == "two!")
        #expect(test.sendCalls == 2)
        #expect(log.snapshot == ["callback ended", "sent 4"])
        #expect(test.finish().isClean)
    }
}
