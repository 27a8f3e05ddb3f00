/// A connection's open/close life as a value: what a close request, a drained write queue or the
/// peer's end of stream mean, decided without I/O. ``TCPConnection`` performs the actions it returns.
///
/// ```
///  idle ─open─▶ open ─┬─ close(graceful | halfClose) ─▶ (queue drains) ─▶ shutdownWrite ─┬─▶ closing ─▶ closed
///                     │                                   halfClose, peer still sending ─┘ (stays open, reads on)
///                     ├─ close(abortive), error, timeout ────────────────────────────────▶ closing ─▶ closed
///                     └─ peer's end of stream + this side shut down ─────────────────────▶ closing (peerClosed)
/// ```
struct TCPConnectionLifecycle {
    enum Phase: UInt8 { case idle, open, closing, closed }

    /// What the connection must do.
    enum Action: Equatable {
        /// Nothing now (a graceful close waits for the write queue to drain).
        case none
        /// Shut down the sending side (the peer reads end of stream) and go on receiving.
        case shutdownWrite
        /// Shut down the sending side, then tear the connection down with the reason.
        case shutdownWriteThenTearDown(TCPCloseReason)
        /// Tear down with the reason (the sending side is already shut down).
        case tearDown(TCPCloseReason)
        /// Drop what is queued, make the close send RST, tear down.
        case abort
    }

    private(set) var phase: Phase = .idle
    /// The close asked for and not finished (nil: none, or a half close that has shut down writing).
    private(set) var closeMode: TCPCloseMode?
    /// This side shut down its sending side.
    private(set) var writeShutdown = false
    /// The peer shut down its sending side (end of stream).
    private(set) var peerHalfClosed = false

    var isOpen: Bool { phase == .open }
    /// Writes are still taken (no close has started).
    var acceptsWrites: Bool { phase == .open && !writeShutdown && closeMode == nil }

    /// The connection opened (a recycled object starts over).
    mutating func opened() {
        precondition(phase == .idle || phase == .closed, "opening a connection that is not closed")
        self = TCPConnectionLifecycle()
        phase = .open
    }

    /// A close of `mode` was asked for. `queueIsEmpty`: nothing is queued or being sent.
    mutating func closeRequested(_ mode: TCPCloseMode, queueIsEmpty: Bool) -> Action {
        if mode == .abortive {
            // An abortive close overrides a pending graceful one, once.
            guard phase == .open || (phase == .closing && closeMode != .abortive) else { return .none }
            closeMode = .abortive
            return .abort
        }
        guard phase == .open, closeMode == nil else { return .none }  // the first close's mode wins
        closeMode = mode
        return queueIsEmpty ? queueDrained() : .none
    }

    /// Everything queued has been sent: a pending graceful or half close can go on.
    mutating func queueDrained() -> Action {
        guard phase == .open, let mode = closeMode, mode != .abortive else { return .none }
        let shutsDownNow = !writeShutdown
        writeShutdown = true
        if mode == .halfClose && !peerHalfClosed {
            closeMode = nil  // keep receiving until the peer closes its side
            return shutsDownNow ? .shutdownWrite : .none
        }
        // After the peer's end of stream nothing unread is left, so the close itself sends the FIN a
        // shutdown would: one system call fewer for every connection whose peer closes first.
        if peerHalfClosed { return .tearDown(.peerClosed) }
        return shutsDownNow ? .shutdownWriteThenTearDown(.local) : .tearDown(.local)
    }

    /// The peer shut down its sending side.
    mutating func peerShutDown() {
        peerHalfClosed = true
    }

    /// Both sides have shut down sending while the connection is open: it is done.
    var bothSidesShutDown: Bool { phase == .open && peerHalfClosed && writeShutdown }

    /// Starts tearing down. - Returns: false when it already finished (nothing to do).
    mutating func beginTearDown() -> Bool {
        guard phase == .open || phase == .closing else { return false }
        phase = .closing
        return true
    }

    /// Every operation has completed and the descriptor is closed.
    mutating func finished() {
        precondition(phase == .closing)
        phase = .closed
    }
}

/// A connection's reading as a value: whether a receive should be in flight, and whose cancellation
/// a cancelled receive was. ``TCPConnection`` submits and cancels the operations.
struct TCPReadState {
    /// A receive operation is in flight.
    private(set) var receiving = false
    /// This connection cancelled its own receive (to pause, or to read into a handler's buffer), so the
    /// cancellation is not mistaken for the thread stopping.
    private(set) var cancelRequested = false
    /// Paused by ``TCPConnection/pauseReading()``.
    var pausedByUser = false
    /// Paused while the write queue is over its high watermark (``TCPFlowControl/pausesReadingWhileNotWritable``).
    var pausedByFlowControl = false

    /// The peer's end of stream was read while earlier buffers still waited in the stash: the
    /// half-close is handed on after them, never before.
    var endOfStreamPending = false

    var isPaused: Bool { pausedByUser || pausedByFlowControl }

    /// A receive should be started now.
    func shouldReceive(isOpen: Bool, peerHalfClosed: Bool) -> Bool {
        isOpen && !receiving && !peerHalfClosed && !isPaused
    }

    mutating func receiveStarted() {
        receiving = true
        cancelRequested = false
    }

    /// The connection wants its receive to stop. - Returns: true when one is in flight to cancel.
    mutating func stopRequested() -> Bool {
        guard receiving else { return false }
        cancelRequested = true
        return true
    }

    /// The receive's final completion arrived.
    mutating func receiveEnded() {
        receiving = false
    }

    /// A cancelled completion arrived. - Returns: true when this connection asked for it; false when
    /// it came from outside (the thread is stopping).
    mutating func cancellationArrived() -> Bool {
        guard cancelRequested else { return false }
        cancelRequested = false
        return true
    }

    /// A recycled connection starts reading afresh.
    mutating func reset() {
        self = TCPReadState()
    }
}
