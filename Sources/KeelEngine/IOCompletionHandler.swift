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
/// **Threading:** ``complete(_:)`` runs on the thread the operation was submitted on.
open class IOCompletionHandler {
    public init() {}

    /// One completion of an operation submitted with this handler. A multishot operation delivers
    /// several, with ``IOCompletion/hasMore`` set on all but the last.
    open func complete(_ completion: IOCompletion) {}
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
