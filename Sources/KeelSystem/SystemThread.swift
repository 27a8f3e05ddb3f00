import CKeelLinux
import Glibc

/// A joinable OS thread running a Swift closure.
///
/// Keel's I/O and work-pool threads are plain pthreads: their loops block in the kernel, which Swift
/// concurrency's cooperative pool must never do. Threads are started through a C-convention entry point
/// (a closure literal passed to `pthread_create` from top-level code would be treated as main-actor code).
public struct SystemThread: Sendable {
    /// Not `pthread_t` directly: it is an integer on Linux, but kept opaque to callers.
    private let handle: pthread_t

    /// Starts a thread named `name` (truncated to 15 bytes) that runs `body` and then exits.
    public static func spawn(name: String, _ body: @escaping @Sendable () -> Void) -> SystemThread {
        let box = Unmanaged.passRetained(ThreadStart(name: name, body: body))
        var thread = pthread_t()
        let rc = ckeel_thread_create(&thread, systemThreadEntry, box.toOpaque())
        precondition(rc == 0, "pthread_create failed: \(rc)")
        return SystemThread(handle: thread)
    }

    /// Waits for the thread to finish.
    public func join() {
        _ = pthread_join(handle, nil)
    }

    /// Lets the thread finish on its own; it cannot be joined afterwards.
    public func detach() {
        _ = pthread_detach(handle)
    }

    /// The kernel thread id of the calling thread.
    public static var currentID: UInt64 { ckeel_thread_id() }
}

private final class ThreadStart {
    let name: String
    let body: @Sendable () -> Void
    init(name: String, body: @escaping @Sendable () -> Void) {
        self.name = name
        self.body = body
    }
}

private func systemThreadEntry(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    let start = Unmanaged<ThreadStart>.fromOpaque(context!).takeRetainedValue()
    start.name.withCString { ckeel_thread_set_name($0) }
    start.body()
    return nil
}
