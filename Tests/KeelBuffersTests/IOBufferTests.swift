import Glibc
import KeelBuffers
import KeelTestSupport
import Synchronization
import Testing

@Suite("IOBuffer and BufferPool")
struct IOBufferTests {
    static let small = BufferPoolConfiguration(bufferSize: 64, buffersPerSlab: 4, maximumBytes: 64 * 4 * 2)

    @Test func indicesKeepTheirInvariantsThroughAppendConsumeCompactAndReserve() throws {
        let pool = BufferPool(configuration: Self.small)
        var buffer = try pool.acquire()
        check(buffer.capacity == 64)
        check(buffer.readerIndex == 0 && buffer.writerIndex == 0 && buffer.isEmpty)

        check(buffer.append(contentsOf: Array(0..<40 as Range<UInt8>)) == 40)
        check(buffer.readableBytes == 40 && buffer.writableBytes == 24)
        buffer.consume(10)
        check(buffer.readerIndex == 10 && buffer.readableBytes == 30)
        check(buffer.readableByteArray == Array(10..<40 as Range<UInt8>))

        // Appending more than fits takes what fits and says so.
        check(buffer.append(contentsOf: [UInt8](repeating: 0xAA, count: 30)) == 24)
        check(buffer.writableBytes == 0)

        // Reserve compacts when the consumed prefix makes room, and refuses when nothing can.
        buffer.consume(20)
        check(buffer.reserve(writable: 20))
        check(buffer.readerIndex == 0 && buffer.readableBytes == 34 && buffer.writableBytes == 30)
        check(buffer.readableByteArray.prefix(10) == ArraySlice(30..<40 as Range<UInt8>))
        check(!buffer.reserve(writable: 31))

        // Consuming everything resets the indices so the whole capacity is writable again.
        buffer.consume(buffer.readableBytes)
        check(buffer.readerIndex == 0 && buffer.writerIndex == 0 && buffer.writableBytes == 64)
    }

    @Test func aReadCanContinueIntoTheSameBufferToGatherAMessage() throws {
        let pool = BufferPool(configuration: Self.small)
        var buffer = try pool.acquire()
        // Three "reads" land back to back in the writable region, as the kernel would fill them.
        for piece in [Array("HEL".utf8), Array("LO, ".utf8), Array("KEEL\n".utf8)] {
            buffer.withUnsafeMutableWritableBytes { region in
                region.copyBytes(from: piece)
            }
            buffer.moveWriterIndex(forwardBy: piece.count)
        }
        check(String(decoding: buffer.readableByteArray, as: UTF8.self) == "HELLO, KEEL\n")
        check(buffer.readerIndex == 0)
    }

    @Test func exhaustionFailsWithATypedErrorAndRecovers() throws {
        let pool = BufferPool(configuration: Self.small)  // cap: 2 slabs of 4 = 8 buffers
        var held: [Int] = []
        var buffers: [SharedBuffer] = []
        for i in 0..<8 {
            var b = try pool.acquire()
            b.append(contentsOf: [UInt8(i)])
            buffers.append(b.share())
            held.append(i)
        }
        check(pool.statistics.inUse == 8)
        check(pool.statistics.slabBytes == 64 * 8)
        do {
            _ = try pool.acquire()
            Issue.record("acquire beyond the cap succeeded")
        } catch {
            check(error.code == .exhausted)
        }
        check(pool.statistics.failedAcquisitions == 1)
        buffers.removeLast()
        let again = try pool.acquire()
        check(again.capacity == 64)
        check(pool.statistics.inUse == 8)
        check(pool.statistics.highWater == 8)
        check(pool.statistics.slabBytes == 64 * 8, "no memory beyond the cap")
        _ = consume again
        buffers.removeAll()
        check(pool.statistics.inUse == 0)
    }

    @Test(.timeLimit(.minutes(1)))
    func buffersReleasedOnOtherThreadsReturnThroughTheReturnQueue() throws {
        let pool = BufferPool(configuration: .init(bufferSize: 256, buffersPerSlab: 64, maximumBytes: 256 * 256))
        // Four foreign threads each take a quarter of the buffers and drop them.
        let quarters = (0..<4).map { _ in ThreadConfined<[SharedBuffer]>([]) }
        for i in 0..<200 {
            var b = try pool.acquire()
            b.append(contentsOf: [UInt8(truncatingIfNeeded: i)])
            quarters[i % 4].value.append(b.share())
        }
        check(pool.statistics.inUse == 200)
        let releasers = quarters.map { quarter in
            SystemThreadForTests.spawn { quarter.value.removeAll() }
        }
        releasers.forEach { $0.join() }
        // Foreign releases are pending until the owner drains them.
        check(pool.statistics.inUse == 200)
        check(pool.drainReturns() == 200)
        let stats = pool.statistics
        check(stats.inUse == 0)
        check(stats.crossThreadReturns == 200)
        // The returned chunks are reused: no new slab is needed for another 200.
        let slabBytes = stats.slabBytes
        var again: [SharedBuffer] = []
        for _ in 0..<200 { again.append(try pool.acquire().share()) }
        check(pool.statistics.slabBytes == slabBytes)
    }

    @Test(.timeLimit(.minutes(1)))
    func sharedBufferOutlivesItsSendersAcrossThreadsAndReturnsOnce() throws {
        let pool = BufferPool(configuration: .init(bufferSize: 1024, buffersPerSlab: 8, maximumBytes: 1024 * 8))
        var buffer = try pool.acquire()
        buffer.append(contentsOf: Array("broadcast payload".utf8))
        let payload = buffer.share()
        check(pool.statistics.inUse == 1)
        let receivers = 16
        let mismatches = Atomic<Int>(0)
        let threads = (0..<receivers).map { _ in
            let reference = payload  // one reference per receiver, as an in-flight send holds
            return SystemThreadForTests.spawn {
                for _ in 0..<1_000 {
                    if reference.readableByteArray != Array("broadcast payload".utf8) {
                        mismatches.wrappingAdd(1, ordering: .relaxed)
                    }
                }
            }
        }
        threads.forEach { $0.join() }
        check(mismatches.load(ordering: .relaxed) == 0)
        check(pool.statistics.inUse == 1, "still referenced here")
        _ = consume payload
        pool.drainReturns()
        check(pool.statistics.inUse == 0)
    }

    @Test func kernelLendingIsCountedApartFromInUse() throws {
        let pool = BufferPool(configuration: Self.small)
        let lent = try #require(pool.lendToKernel())
        check(pool.statistics.heldByKernel == 1 && pool.statistics.inUse == 0)
        // The kernel filled 5 bytes into the lent chunk.
        lent.address.copyMemory(from: Array("hello".utf8), byteCount: 5)
        let buffer = pool.adoptFromKernel(chunk: lent.chunk, length: 5)
        check(buffer.readableByteArray == Array("hello".utf8))
        check(buffer.chunk == lent.chunk)
        check(pool.statistics.heldByKernel == 0 && pool.statistics.inUse == 1)
        _ = consume buffer
        let again = try #require(pool.lendToKernel())
        pool.reclaimFromKernel(chunk: again.chunk)
        check(pool.statistics.heldByKernel == 0 && pool.statistics.inUse == 0)
        check(UInt(bitPattern: again.address) % 64 == 0)
    }

    @Test func slabsArePageAligned() throws {
        let pool = BufferPool(configuration: .init(bufferSize: 4096, buffersPerSlab: 4, maximumBytes: 4096 * 16))
        var addresses: [UInt] = []
        for _ in 0..<4 {
            let b = try pool.acquire()
            addresses.append(UInt(bitPattern: b.unsafeWritableAddress))
            _ = consume b
        }
        let page = UInt(sysconf(Int32(_SC_PAGESIZE)))
        check(addresses.allSatisfy { $0 % page == 0 })
    }

    @Test(.enabled(if: AllocationCounter.isActive, "malloc is not interposed (sanitizer build)"))
    func steadyStateAcquireAndReleaseAllocateNothing() throws {
        // The counter sees real allocations (so a zero below means something).
        let control = AllocationCounter.count { blackHole(Array(repeating: 1, count: 100 + Int.random(in: 0..<10))) }
        check(control >= 1, "the allocation counter missed an Array allocation")
        let pool = BufferPool(configuration: .init(bufferSize: 2048, buffersPerSlab: 16, maximumBytes: 2048 * 64))
        func cycle() throws {
            var buffer = try pool.acquire()
            buffer.append(contentsOf: CollectionOfOne(UInt8(7)))
            buffer.consume(1)
            var chain = BufferChain()
            chain.append(try pool.acquire())
            var second = try pool.acquire()
            second.moveWriterIndex(forwardBy: 100)
            chain.append(second)
            chain.withIOVecs { vectors in precondition(vectors.count == 1) }
            chain.consume(50)
        }
        for _ in 0..<100 { try cycle() }  // warm-up: slabs mapped, metadata touched
        let allocations = try AllocationCounter.count {
            for _ in 0..<10_000 { try cycle() }
        }
        check(allocations == 0, "acquire/append/consume/chain/release allocated \(allocations) times")
        check(pool.statistics.inUse == 0)
    }
}

/// Buffers hold no reference to their pool: its memory outlives the pool object while buffers are out.
@Suite("BufferPool lifetime")
struct BufferPoolLifetimeTests {
    static let small = BufferPoolConfiguration(bufferSize: 64, buffersPerSlab: 4, maximumBytes: 64 * 4 * 2)

    @Test func aPoolWhoseBuffersAreAllBackIsFreedWithTheObject() throws {
        let freed = Atomic<Int>(0)
        do {
            let pool = BufferPool(configuration: Self.small)
            pool.whenMemoryFreed { freed.wrappingAdd(1, ordering: .relaxed) }
            var buffer = try pool.acquire()
            buffer.append(contentsOf: [1, 2, 3])
            _ = consume buffer
            check(freed.load(ordering: .relaxed) == 0, "the pool object still lives")
        }
        check(freed.load(ordering: .relaxed) == 1)
    }

    @Test func buffersChainsAndSharedPayloadsOutliveThePoolAndTheLastOneFreesItsMemory() throws {
        let freed = Atomic<Int>(0)
        var pool: BufferPool? = BufferPool(configuration: Self.small)
        pool!.whenMemoryFreed { freed.wrappingAdd(1, ordering: .relaxed) }
        var buffer = try pool!.acquire()
        var chain = BufferChain()
        [UInt8](repeating: 7, count: 100).withUnsafeBytes { check(chain.append(copying: $0, from: pool!)) }
        var payload = try pool!.acquire()
        payload.append(contentsOf: Array("payload".utf8))
        let shared = payload.share()
        pool = nil
        check(freed.load(ordering: .relaxed) == 0, "buffers are still out")
        // Their memory is still theirs: writable and readable as before.
        buffer.append(contentsOf: Array("still here".utf8))
        check(buffer.readableByteArray == Array("still here".utf8))
        check(chain.readableBytes == 100 && chain.readableByteArray.allSatisfy { $0 == 7 })
        check(shared.readableByteArray == Array("payload".utf8))
        _ = consume buffer
        chain.consume(64)
        check(freed.load(ordering: .relaxed) == 0)
        _ = consume chain
        check(freed.load(ordering: .relaxed) == 0)
        blackHole(shared)
        _ = consume shared
        check(freed.load(ordering: .relaxed) == 1, "the last release freed the memory, once")
    }

    @Test(.timeLimit(.minutes(1)))
    func releasesOnOtherThreadsBeforeAndAfterThePoolGoesFreeItsMemoryOnce() throws {
        for _ in 0..<20 {
            let freed = Atomic<Int>(0)
            var pool: BufferPool? = BufferPool(configuration: .init(bufferSize: 256, buffersPerSlab: 64, maximumBytes: 256 * 256))
            pool!.whenMemoryFreed { freed.wrappingAdd(1, ordering: .relaxed) }
            let quarters = (0..<4).map { _ in ThreadConfined<[SharedBuffer]>([]) }
            for i in 0..<200 { quarters[i % 4].value.append(try pool!.acquire().share()) }
            // Foreign threads drop their buffers while the pool object goes: some releases reach the
            // return queue before it closes, the others count down after.
            let releasers = quarters.map { quarter in SystemThreadForTests.spawn { quarter.value.removeAll() } }
            pool = nil
            releasers.forEach { $0.join() }
            check(freed.load(ordering: .relaxed) == 1)
        }
    }
}

/// A plain thread for tests that need a real foreign thread (not a Swift concurrency task).
enum SystemThreadForTests {
    final class Handle: @unchecked Sendable {
        // @unchecked Sendable: `thread` is written once before `join` reads it.
        var thread = pthread_t()
        func join() { pthread_join(thread, nil) }
    }

    static func spawn(_ body: @escaping @Sendable () -> Void) -> Handle {
        let handle = Handle()
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        pthread_create(&handle.thread, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        return handle
    }

    final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
}

@inline(never)
func blackHole<T>(_ value: T) {
    withExtendedLifetime(value) {}
}
