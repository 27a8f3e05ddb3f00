/// What a bounded send queue does with a send that would take it past its bound. TCP connections
/// (``TCPFlowControl/hardLimit``) and UDP sockets (``UDPSendLimits``) share these policies, and one
/// piece of code (``SendQueueBound``) decides for both.
///
/// ```
///  queued ─┬─ bound ── a new send that does not fit:  dropNewest → dropped (counted)
///          │                                           dropOldest → oldest queued sends not in flight
///          │                                                        dropped until it fits (counted)
///          │                                           refuse     → UDP: refused; TCP: the stream cannot
///          │                                                        skip bytes, so the slow consumer is closed
///          │                                           notify     → queued past the bound, owner told
/// ```
public enum SendQueuePolicy: Sendable, Hashable {
    /// Drop the new send (message-oriented protocols where the latest matters least).
    case dropNewest
    /// Drop the oldest queued sends not yet in flight until the new one fits; if it still does not,
    /// drop the new one.
    case dropOldest
    /// Refuse the send: a UDP socket returns ``UDPSendResult/refused``; a TCP connection closes
    /// abortively with ``TCPCloseReason/slowConsumer`` (a stream with a gap is worse than none).
    case refuse
    /// Queue it past the bound anyway and tell the owner: TCP calls
    /// ``TCPConnectionHandler/connectionWriteLimitExceeded(_:queuedBytes:)``; UDP counts it in
    /// ``UDPSocketStatistics/overLimit``.
    case notify
}

/// A send queue's bound and policy: the one decision TCP connections and UDP sockets make for a send.
struct SendQueueBound {
    /// Most items queued (TCP: no bound on the count).
    let maximumCount: Int
    /// Most bytes queued.
    let maximumBytes: Int
    let policy: SendQueuePolicy

    /// What happens to the send.
    enum Verdict: Equatable {
        /// Queue it (after dropping old sends, with ``SendQueuePolicy/dropOldest``).
        case queue
        /// Queue it past the bound, and tell the owner (``SendQueuePolicy/notify``).
        case queueOverBound
        /// Drop it (counted as dropped).
        case drop
        /// Refuse it (``SendQueuePolicy/refuse``).
        case refuse
    }

    /// Decides for a send of `size` bytes into a queue holding `count` items and `bytes` bytes. With
    /// ``SendQueuePolicy/dropOldest`` it calls `dropOldest` (remove the oldest droppable item and return
    /// its size, or nil when none is left) until the send fits.
    /// - Returns: the verdict, and how many old items and bytes were dropped to make room.
    func admit(size: Int, count: Int, bytes: Int, dropOldest: () -> Int?)
        -> (verdict: Verdict, droppedItems: Int, droppedBytes: Int)
    {
        if count < maximumCount && bytes + size <= maximumBytes { return (.queue, 0, 0) }
        switch policy {
        case .dropNewest: return (.drop, 0, 0)
        case .refuse: return (.refuse, 0, 0)
        case .notify: return (.queueOverBound, 0, 0)
        case .dropOldest:
            var count = count, bytes = bytes, droppedItems = 0, droppedBytes = 0
            while !(count < maximumCount && bytes + size <= maximumBytes), let dropped = dropOldest() {
                count -= 1
                bytes -= dropped
                droppedItems += 1
                droppedBytes += dropped
            }
            let fits = count < maximumCount && bytes + size <= maximumBytes
            return (fits ? .queue : .drop, droppedItems, droppedBytes)
        }
    }
}
