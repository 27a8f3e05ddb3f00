import Glibc
import KeelSystem
import Synchronization

/// A blocking socket client for the tests (TCP or UDP, 5 s receive timeout unless told). A class, so that closing
/// twice (an early close and a `defer`) closes once: a second close of a number the process has since
/// reused would close another test's socket or ring.
public final class TestClient: Sendable {
    /// The socket.
    public let fd: Int32
    private let closed = Atomic<Bool>(false)

    /// Connects to `address` (a UDP socket connected to it with `udp`). `receiveBuffer` sets SO_RCVBUF
    /// before connecting, so the window the peer sees is small from the start (a slow reader).
    /// `receiveTimeout`: how long a read waits for bytes before giving up.
    public init(_ address: SocketAddress, udp: Bool = false, receiveBuffer: Int32? = nil, receiveTimeout: Int = 5) throws {
        fd = socket(AF_INET, Int32(udp ? SOCK_DGRAM.rawValue : SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if var size = receiveBuffer {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        guard address.withSockAddr({ Glibc.connect(fd, $0, $1) }) == 0 else {
            let code = errno
            Glibc.close(fd)
            throw SystemError(code: code, call: "connect")
        }
        var timeout = timeval(tv_sec: receiveTimeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Sends `bytes` (blocking until the kernel took them).
    public func send(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
    /// Sends `text`.
    public func send(_ text: String) { send(Array(text.utf8)) }

    /// Sends `line` and a newline.
    public func sendLine(_ line: String) { send(line + "\n") }

    /// Reads until `count` bytes arrived, the peer closed or the timeout passed.
    public func read(_ count: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        var scratch = [UInt8](repeating: 0, count: 65536)
        while bytes.count < count {
            let n = recv(fd, &scratch, scratch.count, 0)
            if n <= 0 { break }
            bytes += scratch[0..<n]
        }
        return bytes
    }

    /// Reads until `count` lines arrived (or the peer closed, or the timeout passed).
    public func lines(_ count: Int) -> [String] {
        var text = ""
        var scratch = [UInt8](repeating: 0, count: 4096)
        while text.filter({ $0 == "\n" }).count < count {
            let n = recv(fd, &scratch, scratch.count, 0)
            if n <= 0 { break }
            text += String(decoding: scratch[0..<n], as: UTF8.self)
        }
        return text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
    }

    /// True when the peer closes (end of stream or reset) within `timeout`, with no more data. The wait
    /// is long by default: a close that is due comes at once, and a machine loaded with other tests can
    /// delay it by seconds; a peer that never closes costs the caller the whole wait.
    public func closedByPeer(within timeout: Duration = .seconds(15)) -> Bool {
        let deadline = ContinuousClock.now + timeout
        var byte: UInt8 = 0
        while true {
            let n = recv(fd, &byte, 1, 0)
            if n == 0 { return true }
            if n > 0 { return false }
            let code = errno
            if code == ECONNRESET { return true }
            guard code == EAGAIN || code == EWOULDBLOCK || code == EINTR, ContinuousClock.now < deadline else { return false }
        }
    }

    /// Closes the socket (once, however often it is called).
    public func close() {
        if !closed.exchange(true, ordering: .acquiringAndReleasing) { Glibc.close(fd) }
    }
}
