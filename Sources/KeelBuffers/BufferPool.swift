import CKeelLinux
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A pool of fixed-size I/O buffers carved from page-aligned slabs, owned by one thread.
///
/// ```
///  slab 0 (mmap, page-aligned)            slab 1
///  +---------+---------+-----+---------+  +---------+-----
///  | chunk 0 | chunk 1 | ... | chunk63 |  | chunk64 | ...
///  +---------+---------+-----+---------+  +---------+-----
///  free stack (owner only):  [63, 62, ...]    return queue (any thread → owner): lock-free stack
/// ```
///
/// Chunks are identified by a 32-bit index; the kernel sees the same index as a provided-buffer id,
/// and slabs never move, so a chunk's address is stable for the pool's lifetime.
///
/// **Threading:** create the pool on the thread that will own it. ``acquire()`` and the kernel-lending
/// calls run on the owner thread only. Buffers may be released on any thread: a release off the owner
/// thread pushes the chunk onto a lock-free return queue that the owner drains, so the owner's hot path
/// never takes a lock. Statistics can be read from any thread; the owner publishes them
/// (``publishStatistics()``) rather than storing atomics on every acquire and release.
///
/// **Lifetime:** every buffer retains its pool, so a pool lives until its last buffer is released.
public final class BufferPool: @unchecked Sendable {
    // @unchecked Sendable: `state` is touched only on the owner thread (asserted in debug builds);
    // the return queue and statistics are atomics; everything else is immutable after init.

    /// The configuration the pool was made with.
    public let configuration: BufferPoolConfiguration
    /// Capacity in bytes of every buffer.
    public let bufferSize: Int

    @usableFromInline let maximumChunks: Int
    /// The owner thread's ``ckeel_thread_identity()`` (an inline read, unlike `pthread_self()`).
    private let owner: UInt
    /// Owner-thread-only state, behind a pointer so mutation costs no exclusivity checks.
    @usableFromInline let state: UnsafeMutablePointer<OwnerState>
    /// Address of every chunk, indexed by chunk (valid for chunks of mapped slabs).
    @usableFromInline let addresses: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    /// Per-chunk link used by the return queue and by ``BufferChain`` (only the chunk's owner touches it).
    @usableFromInline let links: UnsafeMutablePointer<UInt32>
    /// Per-chunk reader/writer indices while a chunk sits in a chain.
    @usableFromInline let chainIndices: UnsafeMutablePointer<(reader: UInt32, writer: UInt32)>
    private let slabs: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    #if DEBUG
    /// Debug builds: who holds each chunk (``ChunkHolder``), to trap a double release or the use of a
    /// released chunk (copyable ``DetachedBuffer``s make both possible) at the moment it happens.
    private let holders: UnsafeMutablePointer<Atomic<UInt8>>
    #endif

    /// Told of every slab the pool maps (``observeSlabs(_:)``). Owner thread only.
    private var slabObserver: ((Int, UnsafeMutableRawPointer, Int) -> Void)?

    /// Head of the cross-thread return stack; `UInt32.max` when empty.
    private let returnHead = Atomic<UInt32>(BufferPool.none)
    private let counters = Counters()

    @usableFromInline static let none = UInt32.max

    @usableFromInline struct OwnerState {
        var freeCount: Int = 0
        var free: UnsafeMutablePointer<UInt32>
        var mappedSlabs: Int = 0
        var inUse: Int = 0
        var heldByKernel: Int = 0
        var highWater: Int = 0
        var acquisitions: Int = 0
    }

    private final class Counters: Sendable {
        let inUse = Atomic<Int>(0)
        let highWater = Atomic<Int>(0)
        let heldByKernel = Atomic<Int>(0)
        let slabBytes = Atomic<Int>(0)
        let acquisitions = Atomic<Int>(0)
        let failed = Atomic<Int>(0)
        let crossThreadReturns = Atomic<Int>(0)
    }

    /// Creates a pool owned by the calling thread. No memory is mapped until the first acquisition.
    public init(configuration: BufferPoolConfiguration = .default) {
        self.configuration = configuration
        self.bufferSize = configuration.bufferSize
        self.maximumChunks = configuration.maximumBuffers
        precondition(maximumChunks < Int(BufferPool.none), "too many buffers for 32-bit chunk ids")
        self.owner = ckeel_thread_identity()
        let slabCount = maximumChunks / configuration.buffersPerSlab
        self.slabs = .allocate(capacity: slabCount)
        self.slabs.initialize(repeating: nil, count: slabCount)
        self.addresses = .allocate(capacity: maximumChunks)
        self.addresses.initialize(repeating: nil, count: maximumChunks)
        self.links = .allocate(capacity: maximumChunks)
        self.links.initialize(repeating: BufferPool.none, count: maximumChunks)
        self.chainIndices = .allocate(capacity: maximumChunks)
        self.chainIndices.initialize(repeating: (0, 0), count: maximumChunks)
        let free = UnsafeMutablePointer<UInt32>.allocate(capacity: maximumChunks)
        self.state = .allocate(capacity: 1)
        self.state.initialize(to: OwnerState(free: free))
        #if DEBUG
        holders = .allocate(capacity: maximumChunks)
        for i in 0..<maximumChunks { (holders + i).initialize(to: Atomic(ChunkHolder.pool.rawValue)) }
        #endif
    }

    deinit {
        let slabBytes = configuration.bufferSize * configuration.buffersPerSlab
        for i in 0..<state.pointee.mappedSlabs {
            munmap(slabs[i], slabBytes)
        }
        state.pointee.free.deallocate()
        state.deallocate()
        slabs.deallocate()
        addresses.deallocate()
        links.deallocate()
        chainIndices.deallocate()
        #if DEBUG
        holders.deinitialize(count: maximumChunks)
        holders.deallocate()
        #endif
    }

    /// Debug builds: who holds a chunk.
    enum ChunkHolder: UInt8 {
        case pool, application, kernel
    }

    /// Debug builds: moves `chunk` from holder `from` to `to`, trapping with `message` if it was elsewhere.
    @inline(__always)
    func debugMove(_ chunk: UInt32, from: ChunkHolder, to: ChunkHolder, _ message: @autoclosure () -> String) {
        #if DEBUG
        let (exchanged, found) = holders[Int(chunk)].compareExchange(
            expected: from.rawValue, desired: to.rawValue, ordering: .acquiringAndReleasing)
        if !exchanged {
            preconditionFailure("\(message()) (chunk \(chunk) is held by \(ChunkHolder(rawValue: found).map { "\($0)" } ?? "?"))")
        }
        #endif
    }

    /// Debug builds: traps unless `chunk` is held by the application (not released, not lent to the kernel).
    package func debugCheckHeld(_ chunk: UInt32, _ what: StaticString) {
        #if DEBUG
        let holder = holders[Int(chunk)].load(ordering: .acquiring)
        precondition(holder == ChunkHolder.application.rawValue, "\(what): pooled buffer chunk \(chunk) was already released")
        #endif
    }

    // MARK: Acquire and release

    /// Hands out an empty buffer of ``bufferSize`` bytes.
    ///
    /// Steady state allocates nothing: the chunk comes from the free stack (refilled from the return
    /// queue), and a new slab is mapped only while the pool grows toward its cap.
    ///
    /// **Threading:** owner thread only.
    /// - Throws: ``BufferPoolError`` with code `exhausted` when the cap is reached and no buffer is free.
    @inlinable
    public func acquire() throws(BufferPoolError) -> IOBuffer {
        let chunk = try takeChunk()
        noteAcquired()
        return IOBuffer(pool: self, chunk: chunk, base: addresses[Int(chunk)].unsafelyUnwrapped)
    }

    @usableFromInline
    func takeChunk() throws(BufferPoolError) -> UInt32 {
        assertOwner()
        if state.pointee.freeCount == 0 {
            drainReturns()
            if state.pointee.freeCount == 0 {
                try mapSlab()
            }
        }
        state.pointee.freeCount -= 1
        let chunk = state.pointee.free[state.pointee.freeCount]
        debugMove(chunk, from: .pool, to: .application, "a free chunk was taken twice")
        return chunk
    }

    @usableFromInline
    func noteAcquired() {
        let inUse = state.pointee.inUse + 1
        state.pointee.inUse = inUse
        if inUse > state.pointee.highWater { state.pointee.highWater = inUse }
        state.pointee.acquisitions &+= 1
    }

    /// Returns a chunk to the pool. On the owner thread it goes straight onto the free stack; on any
    /// other thread it goes onto the lock-free return queue.
    @usableFromInline
    func release(chunk: UInt32) {
        debugMove(chunk, from: .application, to: .pool, "double release of a pooled buffer")
        #if DEBUG
        // Poison freed memory so use-after-release shows up as garbage, not as plausible data.
        addresses[Int(chunk)].unsafelyUnwrapped.initializeMemory(as: UInt8.self, repeating: 0xDD, count: bufferSize)
        #endif
        if ckeel_thread_identity() == owner {
            pushFree(chunk)
            state.pointee.inUse -= 1
        } else {
            var head = returnHead.load(ordering: .relaxed)
            while true {
                links[Int(chunk)] = head
                let (exchanged, current) = returnHead.compareExchange(
                    expected: head, desired: chunk, successOrdering: .releasing, failureOrdering: .relaxed)
                if exchanged { break }
                head = current
            }
        }
    }

    @inline(__always)
    private func pushFree(_ chunk: UInt32) {
        state.pointee.free[state.pointee.freeCount] = chunk
        state.pointee.freeCount += 1
    }

    /// Moves buffers released on other threads back onto the free stack. Cheap when there are none
    /// (one atomic load). The engine calls it once per loop iteration; ``acquire()`` calls it when the
    /// free stack is empty.
    ///
    /// **Threading:** owner thread only.
    /// - Returns: how many buffers came back.
    @discardableResult
    public func drainReturns() -> Int {
        assertOwner()
        if returnHead.load(ordering: .relaxed) == BufferPool.none { return 0 }
        var chunk = returnHead.exchange(BufferPool.none, ordering: .acquiring)
        var count = 0
        while chunk != BufferPool.none {
            let next = links[Int(chunk)]
            pushFree(chunk)
            chunk = next
            count += 1
        }
        state.pointee.inUse -= count
        counters.crossThreadReturns.store(
            counters.crossThreadReturns.load(ordering: .relaxed) &+ count, ordering: .relaxed)
        return count
    }

    /// Copies the owner's counts (in use, high water, held by the kernel, acquisitions) where
    /// ``statistics`` reads them from any thread: cheaper than an atomic store on every acquire and
    /// release. I/O threads call it before each wait; ``statistics`` calls it itself on the owner thread.
    ///
    /// **Threading:** owner thread only.
    public func publishStatistics() {
        assertOwner()
        counters.inUse.store(state.pointee.inUse, ordering: .relaxed)
        counters.highWater.store(state.pointee.highWater, ordering: .relaxed)
        counters.heldByKernel.store(state.pointee.heldByKernel, ordering: .relaxed)
        counters.acquisitions.store(state.pointee.acquisitions, ordering: .relaxed)
    }

    private func mapSlab() throws(BufferPoolError) {
        let perSlab = configuration.buffersPerSlab
        let slabIndex = state.pointee.mappedSlabs
        guard (slabIndex + 1) * perSlab <= maximumChunks else {
            counters.failed.store(counters.failed.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
            throw BufferPoolError(
                code: .exhausted,
                context: "all \(maximumChunks) buffers of \(bufferSize) bytes in use (cap \(configuration.maximumBytes) bytes)")
        }
        let slabBytes = bufferSize * perSlab
        // MAP_POPULATE faults the whole slab in now, while the pool grows, rather than one page at a
        // time on the I/O path later; and it makes the pool's resident memory equal `slabBytes`, so a
        // process's RSS beyond its slabs is what a leak check watches.
        let memory = mmap(nil, slabBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0)
        if memory == MAP_FAILED || memory == nil {
            counters.failed.store(counters.failed.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
            throw BufferPoolError(code: .outOfMemory, context: "mmap of a \(slabBytes)-byte slab failed")
        }
        slabs[slabIndex] = memory
        let first = slabIndex * perSlab
        for i in 0..<perSlab {
            addresses[first + i] = memory! + i * bufferSize
        }
        // Push in reverse so the lowest chunk is handed out first.
        for i in stride(from: perSlab - 1, through: 0, by: -1) {
            pushFree(UInt32(first + i))
        }
        state.pointee.mappedSlabs = slabIndex + 1
        counters.slabBytes.store((slabIndex + 1) * slabBytes, ordering: .relaxed)
        slabObserver?(slabIndex, memory!, slabBytes)
    }

    /// The most slabs the pool can map (``BufferPoolConfiguration/maximumBuffers`` over
    /// ``BufferPoolConfiguration/buffersPerSlab``).
    public var maximumSlabs: Int { maximumChunks / configuration.buffersPerSlab }

    /// Has `observer` called with each slab's index, address and length in bytes: at once for the slabs
    /// mapped so far, then for each one as the pool maps it (an engine registers them with its kernel
    /// ring this way). One observer at a time; nil removes it. Owner thread only, and the observer runs
    /// there, inside the acquisition that mapped the slab.
    public func observeSlabs(_ observer: ((_ index: Int, _ base: UnsafeMutableRawPointer, _ length: Int) -> Void)?) {
        assertOwner()
        slabObserver = observer
        guard let observer else { return }
        let slabBytes = bufferSize * configuration.buffersPerSlab
        for index in 0..<state.pointee.mappedSlabs {
            observer(index, slabs[index]!, slabBytes)
        }
    }

    @inline(__always)
    @usableFromInline
    func assertOwner() {
        assert(ckeel_thread_identity() == owner, "BufferPool used off its owner thread")
    }

    /// True when the calling thread owns this pool.
    public var isOwnedByCurrentThread: Bool { ckeel_thread_identity() == owner }

    // MARK: Statistics

    /// A snapshot of the counters. Buffers released on other threads but not yet drained still count
    /// as in use. Read on another thread, the owner's counts are those it last published (an I/O
    /// thread publishes before each wait).
    public var statistics: BufferPoolStatistics {
        if isOwnedByCurrentThread { publishStatistics() }
        return BufferPoolStatistics(
            inUse: counters.inUse.load(ordering: .relaxed),
            highWater: counters.highWater.load(ordering: .relaxed),
            heldByKernel: counters.heldByKernel.load(ordering: .relaxed),
            slabBytes: counters.slabBytes.load(ordering: .relaxed),
            acquisitions: counters.acquisitions.load(ordering: .relaxed),
            failedAcquisitions: counters.failed.load(ordering: .relaxed),
            crossThreadReturns: counters.crossThreadReturns.load(ordering: .relaxed))
    }

    // MARK: Lending chunks to the kernel (provided buffer rings)

    /// Takes a free chunk to hand to the kernel as a provided buffer, e.g. in an io_uring buffer ring.
    /// The chunk id fits in 16 bits when the pool has at most 65,536 buffers (io_uring's buffer-id width).
    ///
    /// **Threading:** owner thread only.
    /// - Returns: the chunk id and its stable address, or `nil` when the pool is exhausted.
    public func lendToKernel() -> (chunk: UInt32, address: UnsafeMutableRawPointer)? {
        guard let chunk = try? takeChunk() else { return nil }
        debugMove(chunk, from: .application, to: .kernel, "lending a chunk to the kernel")
        state.pointee.heldByKernel += 1
        return (chunk, addresses[Int(chunk)].unsafelyUnwrapped)
    }

    /// Wraps a chunk the kernel has filled with `length` bytes (a provided-buffer receive completed)
    /// into an ``IOBuffer``, without copying.
    ///
    /// **Threading:** owner thread only.
    public func adoptFromKernel(chunk: UInt32, length: Int) -> IOBuffer {
        assertOwner()
        precondition(length >= 0 && length <= bufferSize, "kernel reported \(length) bytes in a \(bufferSize)-byte buffer")
        debugMove(chunk, from: .kernel, to: .application, "adopting a chunk the kernel does not hold")
        state.pointee.heldByKernel -= 1
        noteAcquired()
        var buffer = IOBuffer(pool: self, chunk: chunk, base: addresses[Int(chunk)].unsafelyUnwrapped)
        buffer.moveWriterIndex(forwardBy: length)
        return buffer
    }

    /// Puts a buffer of this pool back in the state of a chunk lent to the kernel and filled with its
    /// readable bytes (which must start at offset 0), for a completion that names it by chunk:
    /// ``adoptFromKernel(chunk:length:)`` makes the buffer again. For a backend that reads into buffers
    /// itself and then has to hand one over the way the kernel hands provided buffers.
    ///
    /// **Threading:** owner thread only.
    /// - Returns: the chunk.
    package func lendBack(_ buffer: consuming IOBuffer) -> UInt32 {
        assertOwner()
        precondition(buffer.readerIndex == 0, "only a buffer read from its start can be lent back")
        let parts = buffer.detach()
        debugMove(parts.chunk, from: .application, to: .kernel, "lending back a chunk the application does not hold")
        state.pointee.inUse -= 1
        state.pointee.acquisitions &-= 1  // adopting it again counts the one acquisition
        state.pointee.heldByKernel += 1
        parts.pool.release()
        return parts.chunk
    }

    /// Takes back a chunk the kernel no longer holds (its buffer ring was unregistered) without use.
    ///
    /// **Threading:** owner thread only.
    public func reclaimFromKernel(chunk: UInt32) {
        assertOwner()
        debugMove(chunk, from: .kernel, to: .pool, "reclaiming a chunk the kernel does not hold")
        state.pointee.heldByKernel -= 1
        pushFree(chunk)
    }

    /// The stable address of a chunk.
    public func address(ofChunk chunk: UInt32) -> UnsafeMutableRawPointer {
        addresses[Int(chunk)].unsafelyUnwrapped
    }
}
