@testable import KeelSockets
import Testing

/// The connection's close and read decisions, as values, without I/O.
@Suite("Connection state machines")
struct TCPConnectionStateTests {
    func opened() -> TCPConnectionLifecycle {
        var lifecycle = TCPConnectionLifecycle()
        lifecycle.opened()
        return lifecycle
    }

    @Test func aGracefulCloseWaitsForTheQueueThenShutsDownAndTearsDown() {
        var lifecycle = opened()
        #expect(lifecycle.closeRequested(.graceful, queueIsEmpty: false) == .none)
        #expect(!lifecycle.acceptsWrites, "no writes once a close started")
        #expect(lifecycle.closeRequested(.graceful, queueIsEmpty: false) == .none, "a second close changes nothing")
        #expect(lifecycle.queueDrained() == .shutdownWriteThenTearDown(.local))
        let began = lifecycle.beginTearDown()
        #expect(began)
        lifecycle.finished()
        #expect(lifecycle.phase == .closed)
        let beganAgain = lifecycle.beginTearDown()
        #expect(!beganAgain, "a finished connection has nothing to tear down")
    }

    @Test func aGracefulCloseWithAnEmptyQueueActsAtOnce() {
        var lifecycle = opened()
        #expect(lifecycle.closeRequested(.graceful, queueIsEmpty: true) == .shutdownWriteThenTearDown(.local))
    }

    @Test func aHalfCloseKeepsReadingUntilThePeerCloses() {
        var lifecycle = opened()
        #expect(lifecycle.closeRequested(.halfClose, queueIsEmpty: true) == .shutdownWrite)
        #expect(lifecycle.isOpen && !lifecycle.acceptsWrites)
        #expect(!lifecycle.bothSidesShutDown)
        lifecycle.peerShutDown()
        #expect(lifecycle.bothSidesShutDown, "the peer's end of stream finishes it (reason peerClosed)")
    }

    @Test func aHalfCloseAfterThePeerClosedFinishesAsPeerClosed() {
        var lifecycle = opened()
        lifecycle.peerShutDown()
        #expect(lifecycle.closeRequested(.halfClose, queueIsEmpty: true) == .tearDown(.peerClosed))
    }

    /// The peer's end of stream was read: nothing unread is left, so closing sends the FIN itself and
    /// no shutdown precedes it (a system call saved per connection the peer closes first).
    @Test func aGracefulCloseAfterThePeerClosedClosesWithoutAShutdown() {
        var lifecycle = opened()
        lifecycle.peerShutDown()
        #expect(lifecycle.closeRequested(.graceful, queueIsEmpty: false) == .none)
        #expect(lifecycle.queueDrained() == .tearDown(.peerClosed))
    }

    @Test func aGracefulCloseAfterAHalfCloseTearsDownWithoutASecondShutdown() {
        var lifecycle = opened()
        #expect(lifecycle.closeRequested(.halfClose, queueIsEmpty: true) == .shutdownWrite)
        #expect(lifecycle.closeRequested(.graceful, queueIsEmpty: true) == .tearDown(.local))
    }

    @Test func anAbortiveCloseOverridesAPendingGracefulOneOnce() {
        var lifecycle = opened()
        #expect(lifecycle.closeRequested(.graceful, queueIsEmpty: false) == .none)
        #expect(lifecycle.closeRequested(.abortive, queueIsEmpty: false) == .abort)
        let began = lifecycle.beginTearDown()
        #expect(began)
        #expect(lifecycle.closeRequested(.abortive, queueIsEmpty: true) == .none, "only once")
        #expect(lifecycle.queueDrained() == .none, "an aborted close does not shut down")
    }

    @Test func nothingHappensBeforeOpenOrAfterClose() {
        var fresh = TCPConnectionLifecycle()
        #expect(fresh.closeRequested(.graceful, queueIsEmpty: true) == .none)
        #expect(fresh.closeRequested(.abortive, queueIsEmpty: true) == .none)
        var lifecycle = opened()
        _ = lifecycle.beginTearDown()
        lifecycle.finished()
        #expect(lifecycle.closeRequested(.graceful, queueIsEmpty: true) == .none)
        lifecycle.opened()
        #expect(lifecycle.acceptsWrites, "a recycled connection starts over")
    }

    @Test func readingStartsOnlyWhenOpenUnpausedAndIdle() {
        var read = TCPReadState()
        #expect(read.shouldReceive(isOpen: true, peerHalfClosed: false))
        #expect(!read.shouldReceive(isOpen: false, peerHalfClosed: false))
        #expect(!read.shouldReceive(isOpen: true, peerHalfClosed: true))
        read.receiveStarted()
        #expect(!read.shouldReceive(isOpen: true, peerHalfClosed: false), "one receive at a time")
        read.pausedByUser = true
        let stops = read.stopRequested()
        #expect(stops, "the receive in flight is cancelled")
        read.receiveEnded()
        let ours = read.cancellationArrived()
        #expect(ours, "its cancellation was ours")
        #expect(!read.shouldReceive(isOpen: true, peerHalfClosed: false), "paused")
        read.pausedByUser = false
        read.pausedByFlowControl = true
        #expect(read.isPaused)
        read.pausedByFlowControl = false
        #expect(read.shouldReceive(isOpen: true, peerHalfClosed: false))
    }

    @Test func aCancellationNobodyAskedForComesFromOutside() {
        var read = TCPReadState()
        read.receiveStarted()
        read.receiveEnded()
        let ours = read.cancellationArrived()
        #expect(!ours, "the thread is stopping: the connection must close")
        let stops = read.stopRequested()
        #expect(!stops, "nothing in flight to stop")
    }
}

/// Close-reason codes are plain 16-byte values named by static strings.
@Suite("Close reason codes")
struct TCPCloseReasonCodeTests {
    @Test func codesKeepTheirNamesAndCompareByThem() {
        let made = TCPCloseReason.Code("peerClosed")
        #expect(made == .peerClosed, "equal by name, whatever the literal's address")
        #expect(made.hashValue == TCPCloseReason.Code.peerClosed.hashValue)
        #expect(made != .local)
        #expect(TCPCloseReason.Code("tls.handshakeFailed").name == "tls.handshakeFailed")
        let oneScalar = TCPCloseReason.Code("x")
        #expect(oneScalar.name == "x")
        #expect(oneScalar == TCPCloseReason.Code("x"))
        #expect(TCPCloseReason(.protocolError, detail: "bad frame").description == "protocolError: bad frame")
        #expect(MemoryLayout<TCPCloseReason.Code>.size == 16, "no larger than the String it replaced")
    }
}
