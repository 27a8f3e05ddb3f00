import CKeelLinux
import Glibc

/// A counting semaphore over `sem_t`, for threads that must block (work-pool workers, start-up
/// handshakes). Never used on an I/O thread's loop.
public final class Semaphore: @unchecked Sendable {
    // @unchecked Sendable: sem_t is designed for concurrent use; the pointer is never reassigned.
    private let semaphore: UnsafeMutablePointer<sem_t>

    /// Creates a semaphore with `value` permits.
    public init(value: UInt32 = 0) {
        semaphore = .allocate(capacity: 1)
        sem_init(semaphore, 0, value)
    }

    deinit {
        sem_destroy(semaphore)
        semaphore.deallocate()
    }

    /// Adds a permit, waking one waiter.
    public func signal() { sem_post(semaphore) }

    /// Takes a permit, blocking until one is available.
    public func wait() {
        while sem_wait(semaphore) != 0 && ckeel_errno() == EINTR {}
    }
}
