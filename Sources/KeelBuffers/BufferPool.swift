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
/// **Lifetime:** buffers do not retain the pool (no reference counting per buffer). What they use
/// lives in memory the pool allocates by hand (``BufferPoolCore``), which outlives this object while
/// buffers are out: when the pool goes, that memory is freed at once if every buffer is back, else by
/// the release of the last one. Drop the pool's last reference on its owner thread, or once that
/// thread no longer touches the pool's buffers (an I/O thread's pool: after its loop ended).
public final class BufferPool: @unchecked Sendable {
    // @unchecked Sendable: the core's owner state is touched only on the owner thread (asserted in
    // debug builds); the return queue and statistics are atomics; everything else is immutable after init.

    /// The configuration the pool was made with.
    public let configuration: BufferPoolConfiguration
    /// Capacity in bytes of every buffer.
    public let bufferSize: Int

    @usableFromInline let maximumChunks: Int
    /// Everything buffers use (owner state, chunk addresses, the return queue), by hand-allocated
    /// pointer so that it can outlive this object.
    @usableFromInline let core: UnsafeMutablePointer<BufferPoolCore>
    /// The core's owner state (``BufferPoolCore/owned``).
    @usableFromInline let state: UnsafeMutablePointer<BufferPoolCore.OwnerState>

    /// Told of every slab the pool maps (``observeSlabs(_:)``). Owner thread only.
    private var slabObserver: ((Int, UnsafeMutableRawPointer, Int) -> Void)?

    private let counters = Counters()

    @usableFromInline static let none = BufferPoolCore.none

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
        precondition(maximumChunks < Int(BufferPoolCore.orphaned), "too many buffers for 32-bit chunk ids")
        core = .allocate(capacity: 1)
        core.initialize(to: BufferPoolCore(configuration: configuration, owner: ckeel_thread_identity()))
        state = core.pointee.owned
    }

    deinit {
        BufferPoolCore.orphan(core)
    }

    /// Has `body` called when the pool's memory is freed: with this object when every buffer is back
    /// by then, else on the release of the last one (on whatever thread that happens). For tests.
    package func whenMemoryFreed(_ body: @escaping @Sendable () -> Void) {
        state.pointee.onDeallocate = body
    }

    /// Chunk addresses, by chunk (valid for chunks of mapped slabs).
    @usableFromInline var addresses: UnsafeMutablePointer<UnsafeMutableRawPointer?> { core.pointee.addresses }
    /// Per-chunk links (the return queue's and ``BufferChain``'s).
    @usableFromInline var links: UnsafeMutablePointer<UInt32> { core.pointee.links }

    /// Debug builds: moves `chunk` from holder `from` to `to`, trapping with `message` if it was elsewhere.
    @inline(__always)
    func debugMove(_ chunk: UInt32, from: BufferPoolCore.ChunkHolder, to: BufferPoolCore.ChunkHolder,
                   _ message: @autoclosure () -> String) {
        core.pointee.debugMove(chunk, from: from, to: to, message())
    }

    /// Debug builds: traps unless `chunk` is held by the application (not released, not lent to the kernel).
    package func debugCheckHeld(_ chunk: UInt32, _ what: StaticString) {
        core.pointee.debugCheckHeld(chunk, what)
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
        return IOBuffer(core: core, chunk: chunk, base: addresses[Int(chunk)].unsafelyUnwrapped)
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
        BufferPoolCore.release(core, chunk: chunk)
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
        let count = core.pointee.drainReturns()
        if count > 0 {
            counters.crossThreadReturns.store(
                counters.crossThreadReturns.load(ordering: .relaxed) &+ count, ordering: .relaxed)
        }
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
        core.pointee.slabs[slabIndex] = memory
        let first = slabIndex * perSlab
        for i in 0..<perSlab {
            addresses[first + i] = memory! + i * bufferSize
        }
        // Push in reverse so the lowest chunk is handed out first.
        for i in stride(from: perSlab - 1, through: 0, by: -1) {
            core.pointee.pushFree(UInt32(first + i))
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
            observer(index, core.pointee.slabs[index]!, slabBytes)
        }
    }

    @inline(__always)
    @usableFromInline
    func assertOwner() {
        assert(isOwnedByCurrentThread, "BufferPool used off its owner thread")
    }

    /// True when the calling thread owns this pool.
    public var isOwnedByCurrentThread: Bool { ckeel_thread_identity() == core.pointee.owner.load(ordering: .relaxed) }

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
        var buffer = IOBuffer(core: core, chunk: chunk, base: addresses[Int(chunk)].unsafelyUnwrapped)
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
        precondition(buffer._core == core, "lending back a buffer of another pool")
        let chunk = buffer._detach().chunk
        debugMove(chunk, from: .application, to: .kernel, "lending back a chunk the application does not hold")
        state.pointee.inUse -= 1
        state.pointee.acquisitions &-= 1  // adopting it again counts the one acquisition
        state.pointee.heldByKernel += 1
        return chunk
    }

    /// Takes back a chunk the kernel no longer holds (its buffer ring was unregistered) without use.
    ///
    /// **Threading:** owner thread only.
    public func reclaimFromKernel(chunk: UInt32) {
        assertOwner()
        debugMove(chunk, from: .kernel, to: .pool, "reclaiming a chunk the kernel does not hold")
        state.pointee.heldByKernel -= 1
        core.pointee.pushFree(chunk)
    }

    /// The stable address of a chunk.
    public func address(ofChunk chunk: UInt32) -> UnsafeMutableRawPointer {
        addresses[Int(chunk)].unsafelyUnwrapped
    }
}
