import KeelBuffers

/// Receives the completions of the operations submitted with it (``IOThread/submit(_:handler:)``).
///
/// Subclass it and override ``complete(_:)``. One handler object serves any number of operations,
/// one after another or at once, for as long as its owner wants: make it once (per connection, say)
/// and reuse it. Dispatch then costs no allocation and no reference counting per completion: the
/// thread retains the handler once when an operation is submitted and releases it after the
/// operation's final completion, and calls it in between without touching its reference count.
/// ``IOThread/submit(_:_:)`` wraps a closure in a new handler per call instead (convenient; it
/// allocates).
///
/// **Threading:** ``complete(_:)`` and ``received(_:_:)`` run on the thread the operation was
/// submitted on.
open class IOCompletionHandler {
    public init() {}

    /// One completion of an operation submitted with this handler. A multishot operation delivers
    /// several, with ``IOCompletion/hasMore`` set on all but the last.
    open func complete(_ completion: IOCompletion) {}

    /// A completion of a pooled stream receive (``IOOperation/receivePooled(_:multishot:)``) whose
    /// buffer the backend filled itself and hands over with it: the epoll backend reads into a pool
    /// buffer when the socket is readable and calls this at once, skipping the queued completion and
    /// ``IOThread/takeReceivedBuffer(_:)``. `completion` is the receive's (its result is the buffer's
    /// readable bytes, ``IOCompletion/hasMore`` as usual). Other completions of the receive (its end,
    /// an error, and on io_uring every one) come through ``complete(_:)``.
    ///
    /// The default hands the buffer to ``complete(_:)``, where ``IOThread/takeReceivedBuffer(_:)``
    /// returns it as for any completion. Override both to take receives without that step.
    open func received(_ buffer: consuming IOBuffer, _ completion: IOCompletion) {
        guard let thread = IOThread.current else { return }  // always set: handlers run on their I/O thread
        thread.completeHandingOver(buffer, completion, to: self)
    }
}

/// The handler ``IOThread/submit(_:_:)`` makes for a closure.
final class ClosureCompletionHandler: IOCompletionHandler {
    let body: (IOCompletion) -> Void

    init(_ body: @escaping (IOCompletion) -> Void) {
        self.body = body
    }

    override func complete(_ completion: IOCompletion) {
        body(completion)
    }
}
