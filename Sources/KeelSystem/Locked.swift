import Glibc

/// A value guarded by a `pthread_mutex_t`.
///
/// For state shared by blocking threads (work-pool queues, test collectors). The standard library's
/// `Mutex` is preferred elsewhere, but its lock is invisible to ThreadSanitizer (the runtime is not
/// instrumented), so code that TSan must check uses this instead: pthread locks are intercepted.
public final class Locked<Value>: @unchecked Sendable {
    // @unchecked Sendable: `value` is only touched while `mutex` is held.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    /// Creates a lock around `value`.
    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value.
    public func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
