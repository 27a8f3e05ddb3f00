import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Synchronization
import Testing

/// The rolling pattern every echo test sends: byte `i` of stream `stream`.
@inline(__always)
func patternByte(stream: Int, offset: Int) -> UInt8 {
    UInt8(truncatingIfNeeded: (stream &* 31 &+ offset) % 251)
}

/// Echoes every buffer back without copying.
struct EchoHandler: TCPConnectionHandler {
    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        connection.write(buffer)
    }
}

/// Sum of buffers in use over every thread of `pool` (0 when nothing leaked).
func buffersInUse(_ pool: IOPool) -> Int {
    pool.threads.reduce(0) { $0 + $1.bufferPool.statistics.inUse }
}

/// A blocking client socket for tests that need a misbehaving peer. A class whose close happens once,
/// like ``TestClient``'s: a second close could hit a descriptor another test has since opened.
final class RawClient: Sendable {
    let fd: Int32
    private let closed = Atomic<Bool>(false)

    init(connectingTo address: SocketAddress) throws {
        fd = socket(address.addressFamily, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        let rc = address.withSockAddr { sa, length in Glibc.connect(fd, sa, length) }
        if rc != 0 {
            let code = errno
            Glibc.close(fd)
            throw SystemError(code: code, call: "connect")
        }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        // Sends give up too (a peer that stops reading must not hang a test past its time limit: a
        // thread blocked in send cannot be cancelled).
        var sendTimeout = timeval(tv_sec: 15, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &sendTimeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Sends `bytes`: the count sent (short when the 15 s send timeout passed), or -1.
    func send(_ bytes: [UInt8]) -> Int { bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }

    /// Reads until `count` bytes, end of stream, an error or the 10 s receive timeout.
    func receive(count: Int) -> [UInt8] {
        var result: [UInt8] = []
        var scratch = [UInt8](repeating: 0, count: 65536)
        while result.count < count {
            let n = recv(fd, &scratch, min(scratch.count, count - result.count), 0)
            if n <= 0 { break }
            result += scratch[0..<n]
        }
        return result
    }

    /// Reads until end of stream (0), returning what came and the final recv result.
    func receiveUntilClosed() -> (bytes: [UInt8], end: Int) {
        var result: [UInt8] = []
        var scratch = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &scratch, scratch.count, 0)
            if n <= 0 { return (result, n == 0 ? 0 : -Int(errno)) }
            result += scratch[0..<n]
        }
    }

    func shutdownWrite() { Glibc.shutdown(fd, Int32(SHUT_WR)) }

    func resetAndClose() {
        var value = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &value, socklen_t(MemoryLayout<linger>.size))
        close()
    }

    func close() {
        if !closed.exchange(true, ordering: .acquiringAndReleasing) { Glibc.close(fd) }
    }
}
