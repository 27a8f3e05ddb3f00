import Glibc
import KeelBuffers
import KeelTestSupport
import Testing

@Suite("BufferChain")
struct BufferChainTests {
    static func filledBuffer(_ pool: BufferPool, _ bytes: [UInt8]) throws -> IOBuffer {
        var buffer = try pool.acquire()
        check(buffer.append(contentsOf: bytes) == bytes.count)
        return buffer
    }

    @Test func chainKeepsOrderAndCountsBytes() throws {
        let pool = BufferPool(configuration: .init(bufferSize: 16, buffersPerSlab: 8, maximumBytes: 16 * 8))
        var chain = BufferChain()
        check(chain.isEmpty)
        chain.append(try Self.filledBuffer(pool, Array(0..<10)))
        chain.append(try pool.acquire())  // empty buffers are dropped
        chain.append(try Self.filledBuffer(pool, Array(10..<26)))
        chain.append(try Self.filledBuffer(pool, Array(26..<30)))
        check(chain.count == 3)
        check(chain.readableBytes == 30)
        check(chain.readableByteArray == Array(0..<30))
        check(pool.statistics.inUse == 3)

        // Consume across a buffer boundary: the first buffer goes back to the pool.
        chain.consume(12)
        check(chain.count == 2)
        check(chain.readableBytes == 18)
        check(chain.readableByteArray == Array(12..<30))
        check(pool.statistics.inUse == 2)

        guard let first = chain.popFirst() else {
            Issue.record("popFirst returned nil")
            return
        }
        check(first.readableByteArray == Array(12..<26))
        check(chain.count == 1)
        _ = consume first
        chain.consume(4)
        check(chain.isEmpty && chain.readableBytes == 0)
        check(pool.statistics.inUse == 0)
    }

    @Test func chainIsWrittenWithOneVectoredCallAndPartialWritesResume() throws {
        let pool = BufferPool(configuration: .init(bufferSize: 4096, buffersPerSlab: 8, maximumBytes: 4096 * 8))
        var chain = BufferChain()
        var expected: [UInt8] = []
        for i in 0..<5 {
            let bytes = (0..<3000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ i) }
            expected += bytes
            chain.append(try Self.filledBuffer(pool, bytes))
        }
        var fds: [Int32] = [0, 0]
        check(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        // Limit the first write to 4 KiB to force a partial write across buffers.
        var received: [UInt8] = []
        var calls = 0
        while !chain.isEmpty {
            let written = chain.withIOVecs { vectors -> Int in
                calls += 1
                if calls == 1 {
                    check(vectors.count == 5)
                    var limited = Array(vectors)
                    var budget = 4096
                    for i in limited.indices {
                        let take = min(budget, limited[i].iov_len)
                        limited[i].iov_len = take
                        budget -= take
                    }
                    return limited.withUnsafeBufferPointer { writev(fds[0], $0.baseAddress, Int32($0.count)) }
                }
                return writev(fds[0], vectors.baseAddress, Int32(vectors.count))
            }
            check(written > 0)
            chain.consume(written)
            var scratch = [UInt8](repeating: 0, count: 65536)
            let n = read(fds[1], &scratch, scratch.count)
            received += scratch[0..<max(0, n)]
        }
        while received.count < expected.count {
            var scratch = [UInt8](repeating: 0, count: 65536)
            let n = read(fds[1], &scratch, scratch.count)
            if n <= 0 { break }
            received += scratch[0..<n]
        }
        check(received == expected)
        check(pool.statistics.inUse == 0)
    }

    @Test func droppingAChainReturnsEveryBuffer() throws {
        let pool = BufferPool(configuration: .init(bufferSize: 64, buffersPerSlab: 8, maximumBytes: 64 * 8))
        do {
            var chain = BufferChain()
            for i in 0..<6 { chain.append(try Self.filledBuffer(pool, [UInt8(i)])) }
            check(pool.statistics.inUse == 6)
        }
        check(pool.statistics.inUse == 0)
    }
}
