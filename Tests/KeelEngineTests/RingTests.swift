import CKeelLinux
import Glibc
import KeelBuffers
import KeelSystem
import Testing

@testable import KeelEngine
import KeelTestSupport

/// The io_uring ring itself, driven synchronously on the test's thread (a ring set up with
/// SINGLE_ISSUER may only be entered from the thread that created it, so these tests do not suspend).
@Suite("io_uring ring", .enabled(if: IOUringSupport.isAvailable && backendsUnderTest.contains(.ioUring)))
struct RingTests {
    @Test func probeUsesTheBestSetupFlagsTheKernelOffers() throws {
        let ring = try Ring(entries: 8)
        defer { ring.close() }
        #expect(ring.entries == 8)
        // Kernel 6.1+ supports both; older kernels fall back and must still work.
        #expect(ring.isSingleIssuer)
        #expect(ring.defersTaskRun)
    }

    @Test func completionQueueOverflowLosesNothing() throws {
        let ring = try Ring(entries: 4, completionMultiplier: 2)  // 4 SQEs, 8 CQEs
        defer { ring.close() }
        let total = 40
        for i in 0..<total {
            guard let entry = ring.nextSQE() else {
                try ring.submitAndWait(waitNanoseconds: 0)  // SQ full: submit without draining the CQ
                let retry = try #require(ring.nextSQE())
                ckeel_sqe_nop(retry.sqe, UInt64(i))
                continue
            }
            ckeel_sqe_nop(entry.sqe, UInt64(i))
        }
        try ring.submitAndWait(waitNanoseconds: 0)
        var seen: [UInt64] = []
        for _ in 0..<100 where seen.count < total {
            ring.forEachCompletion { userData, result, _ in
                #expect(result == 0)
                seen.append(userData)
            }
            try ring.submitAndWait(waitNanoseconds: 0)  // flushes the kernel's overflow list into the CQ
        }
        #expect(seen.count == total)
        #expect(Set(seen) == Set(0..<UInt64(total)))
    }

    @Test func providedBufferReceiveLandsInAPoolChunkWithoutCopying() throws {
        let ring = try Ring(entries: 8)
        defer { ring.close() }
        let pool = BufferPool(configuration: .init(bufferSize: 512, buffersPerSlab: 8, maximumBytes: 512 * 8))
        let provided = try ProvidedBufferRing(ring: ring, pool: pool, group: 7, entries: 4)
        #expect(pool.statistics.heldByKernel == 4)
        #expect(pool.statistics.inUse == 0, "an idle receiver holds no buffer")

        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let message = Array("provided buffers".utf8)
        #expect(write(fds[1], message, message.count) == message.count)

        let entry = try #require(ring.nextSQE())
        ckeel_sqe_recv_provided(entry.sqe, fds[0], 7, 0, 99)
        try ring.submitAndWait(waitNanoseconds: 1_000_000_000)
        var completion: IOCompletion?
        for _ in 0..<10 where completion == nil {
            ring.forEachCompletion { userData, result, flags in
                if userData == 99 { completion = IOCompletion(result: result, flags: flags) }
            }
            if completion == nil { try ring.submitAndWait(waitNanoseconds: 100_000_000) }
        }
        let received = try #require(completion)
        #expect(received.result == Int32(message.count))
        guard let buffer = provided.takeBuffer(from: received, index: 0) else {
            Issue.record("the completion carried no provided buffer")
            return
        }
        check(buffer.readableByteArray == message)
        #expect(pool.statistics.inUse == 1)
        #expect(pool.statistics.heldByKernel == 4, "the ring was replenished")
        _ = consume buffer
        provided.close()
        #expect(pool.statistics.heldByKernel == 0)
        #expect(pool.statistics.inUse == 0)
    }
}

/// The pool's slabs as the ring's fixed buffers, and which slab a send's memory lies in.
@Suite("registered pool slabs", .enabled(if: IOUringSupport.isAvailable && backendsUnderTest.contains(.ioUring)))
struct RegisteredSlabsTests {
    @Test func aSendNamesTheSlabThatHoldsAllOfItsMemoryAndNoneOtherwise() throws {
        let ring = try Ring(entries: 8, features: [.zeroCopySend, .registeredBuffers], bufferSlots: 4)
        defer { ring.close() }
        try #require(ring.featuresInUse.contains(.registeredBuffers), "kernel 6.15+ with zero-copy sendmsg")
        #expect(ring.bufferTableSlots == 4)
        let pool = BufferPool(configuration: .init(bufferSize: 4096, buffersPerSlab: 4, maximumBytes: 4096 * 4 * 8))
        let slabs = RegisteredSlabs(ringFD: ring.fd, slots: ring.bufferTableSlots)
        var bases: [UnsafeMutableRawPointer] = []
        pool.observeSlabs { index, base, length in
            #expect(index == bases.count && length == 4096 * 4)
            bases.append(base)
            slabs.register(index: index, base: base, length: length)
        }
        // Five slabs' worth: the pool maps five, the table has room for four, the fifth goes without.
        var held = BufferChain()
        for _ in 0..<20 {
            var buffer = try pool.acquire()
            buffer.moveWriterIndex(forwardBy: 1)  // a chain drops empty buffers
            held.append(buffer)
        }
        #expect(bases.count == 5)
        #expect(slabs.refused == 0)

        /// The slot named for iovecs (slab, offset, length).
        func slot(_ regions: [(Int, Int, Int)]) -> UInt16? {
            var vectors = regions.map { slab, offset, length in iovec(iov_base: bases[slab] + offset, iov_len: length) }
            return vectors.withUnsafeMutableBufferPointer { pointer in
                var header = msghdr()
                header.msg_iov = pointer.baseAddress
                header.msg_iovlen = pointer.count
                return withUnsafePointer(to: &header) { slabs.slot(holding: $0) }
            }
        }
        #expect(slot([(0, 0, 4096)]) == 0)
        #expect(slot([(1, 100, 200), (1, 8192, 4096), (1, 0, 1)]) == 1)
        #expect(slot([(3, 16383, 1)]) == 3)
        #expect(slot([(2, 0, 16384)]) == 2, "a whole slab")
        #expect(slot([(2, 0, 16385)]) == nil, "a byte past its slab")
        #expect(slot([(0, 0, 4096), (1, 0, 4096)]) == nil, "spread over two slabs")
        #expect(slot([(4, 0, 64)]) == nil, "the fifth slab is past the table")
        #expect(slot([]) == nil)
        _ = consume held
        pool.observeSlabs(nil)
    }
}
