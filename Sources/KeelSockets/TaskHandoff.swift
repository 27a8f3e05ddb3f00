import KeelSystem

/// Orders what an I/O thread built before its hand-over to an awaiting task (a connector's new
/// connection or socket, resumed through a continuation) in a way ThreadSanitizer sees. The
/// continuation's resume goes through the concurrency runtime, which TSan does not always see as
/// synchronising: it reported a new connection's fields, and a new WebSocket's `compression`, as raced.
/// Each side passes through one pthread lock (which TSan intercepts): ``beforeResuming()`` on the I/O
/// thread, ``afterResuming()`` in the task. Once per connect, never per message.
package enum TaskHandoff {
    private static let lock = Locked(0)  // a counter, not Void: TSan reported accesses to a zero-sized value as racing

    /// On the I/O thread, just before resuming the waiting task with what it built.
    package static func beforeResuming() { lock.withLock { $0 &+= 1 } }

    /// In the task, just after its continuation returned, before it touches what it got.
    package static func afterResuming() { lock.withLock { $0 &+= 1 } }
}
