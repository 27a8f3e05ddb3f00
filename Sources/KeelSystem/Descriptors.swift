import CKeelLinux
import Glibc
import SystemPackage

/// Thin, typed wrappers over the descriptor calls the engine makes. Each retries EINTR and throws
/// ``SystemError``; none of them allocates.
public enum Descriptors {
    /// Closes `fd`. EINTR is not retried (on Linux the descriptor is released even then).
    public static func close(_ fd: Int32) {
        _ = ckeel_close(fd)
    }

    /// Creates a non-blocking, close-on-exec eventfd with initial value 0.
    public static func eventFD() throws(SystemError) -> Int32 {
        try retryingSyscall("eventfd") { eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC)) }
    }

    /// Adds 1 to an eventfd's counter, waking whoever waits on it. A full counter (EAGAIN) already wakes.
    public static func signal(eventFD fd: Int32) {
        var one: UInt64 = 1
        while true {
            let written = withUnsafeBytes(of: &one) { CKeelLinux.write(fd, $0.baseAddress, 8) }
            if written == 8 { return }
            let code = ckeel_errno()
            if code == EINTR { continue }
            return  // EAGAIN: the counter is saturated, the reader is woken anyway
        }
    }

    /// Reads and resets an eventfd's counter. Returns 0 when it was already zero.
    @discardableResult
    public static func drain(eventFD fd: Int32) -> UInt64 {
        var value: UInt64 = 0
        let count = withUnsafeMutableBytes(of: &value) { CKeelLinux.read(fd, $0.baseAddress, 8) }
        return count == 8 ? value : 0
    }

    /// Creates a non-blocking, close-on-exec pipe. Returns (read end, write end).
    public static func pipe() throws(SystemError) -> (read: Int32, write: Int32) {
        var fds: (Int32, Int32) = (-1, -1)
        _ = try withUnsafeMutableBytes(of: &fds) { (raw) throws(SystemError) -> Int32 in
            let p = raw.baseAddress!.assumingMemoryBound(to: Int32.self)
            return try retryingSyscall("pipe2") { ckeel_pipe2(p, Int32(O_NONBLOCK | O_CLOEXEC)) }
        }
        return (fds.0, fds.1)
    }

    /// The descriptors this process has open, read from `/proc/self/fd`, sorted.
    ///
    /// Used by tests and diagnostics to prove that nothing leaked.
    public static func openDescriptors() -> [Int32] {
        guard let dir = opendir("/proc/self/fd") else { return [] }
        defer { closedir(dir) }
        let own = dirfd(dir)
        var result: [Int32] = []
        while let entry = readdir(dir) {
            // The name in place: loading `entry.pointee` would copy a whole `dirent`, past the end of a
            // short last record in the directory buffer (AddressSanitizer caught it).
            let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
            let name = String(cString: (UnsafeRawPointer(entry) + nameOffset).assumingMemoryBound(to: CChar.self))
            if let fd = Int32(name), fd != own { result.append(fd) }
        }
        return result.sorted()
    }
}
