/// Work an I/O thread runs every loop turn just before it submits and waits
/// (``IOThread/beforeEachWait(running:)``): subclass it and override ``beforeWait()``.
/// The thread retains the object while it is registered and calls it without reference counting,
/// which matters for hooks that run on every turn of a busy loop (flushing coalesced writes).
open class IOThreadWaitHook {
    public init() {}

    /// Called on the hook's thread once per loop turn, before the thread waits.
    open func beforeWait() {}
}

/// The hook ``IOThread/beforeEachWait(_:)`` makes for a closure.
final class ClosureWaitHook: IOThreadWaitHook {
    let body: () -> Void

    init(_ body: @escaping () -> Void) {
        self.body = body
        super.init()
    }

    override func beforeWait() {
        body()
    }
}
