import CKeelLinux
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What a ``BufferPool``'s buffers use, in memory the pool allocates by hand: the owner's free stack
/// and counts, chunk addresses and links, the cross-thread return queue.
///
/// Buffers point here without reference counting. The ``BufferPool`` object owns it while it lives;
/// when it goes (``orphan(_:)``) the core is freed at once if every buffer is back, or else by the
/// release of the last one out:
/// - the return queue's head is swapped for the ``orphaned`` mark, which takes the chunks queued so
///   far and fails every later push, so no chunk can be queued after the swap and missed;
/// - the orphaning thread adds the buffers still out to ``outstanding``; a release that finds the mark
///   subtracts its one; whichever brings the count to zero frees the core (a release may come first
///   and take it below zero, which is why nothing is freed until the count is exactly zero).
///
/// **Threading:** the owner state (free stack, counts) is the owner thread's; `links` entries belong
/// to whoever holds their chunk; the rest is atomic or immutable.
@usableFromInline
struct BufferPoolCore: ~Copyable {
    /// Capacity in bytes of every buffer.
    @usableFromInline let bufferSize: Int
    let maximumChunks: Int
    let slabBytes: Int
    /// The owner thread's ``ckeel_thread_identity()``; 0 once the pool object is gone, so that every
    /// later release goes through the return queue (and finds it orphaned).
    let owner: Atomic<UInt>

    /// The owner thread's state, in memory of its own: the core itself is only read once made (a
    /// mutating access to it would overlap other threads' reads of its fields).
    @usableFromInline let owned: UnsafeMutablePointer<OwnerState>

    /// Address of every chunk, indexed by chunk (valid for chunks of mapped slabs).
    @usableFromInline let addresses: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    /// Per-chunk link used by the return queue and by ``BufferChain`` (only the chunk's holder touches it).
    @usableFromInline let links: UnsafeMutablePointer<UInt32>
    /// Per-chunk reader/writer indices while a chunk sits in a chain.
    @usableFromInline let chainIndices: UnsafeMutablePointer<(reader: UInt32, writer: UInt32)>
    let slabs: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    let slabCount: Int

    /// Head of the cross-thread return stack: a chunk, ``none`` when empty, ``orphaned`` for good once
    /// the pool object is gone.
    let returnHead = Atomic<UInt32>(BufferPoolCore.none)
    /// After orphaning: buffers still out (see the type's comment).
    let outstanding = Atomic<Int>(0)

    #if DEBUG
    /// Debug builds: who holds each chunk (``ChunkHolder``), to trap a double release or the use of a
    /// released chunk (copyable ``DetachedBuffer``s make both possible) at the moment it happens.
    let holders: UnsafeMutablePointer<Atomic<UInt8>>
    #endif

    /// The owner thread's state (and, once the pool object is gone, the orphaning thread's).
    @usableFromInline struct OwnerState {
        var freeCount = 0
        let free: UnsafeMutablePointer<UInt32>
        var mappedSlabs = 0
        var inUse = 0
        var heldByKernel = 0
        var highWater = 0
        var acquisitions = 0
        /// Called when the core is freed, for tests (``BufferPool/whenMemoryFreed(_:)``).
        var onDeallocate: (@Sendable () -> Void)?
    }

    @usableFromInline static let none = UInt32.max
    /// The return queue's head once the pool object is gone.
    static let orphaned = UInt32.max - 1

    /// Debug builds: who holds a chunk.
    enum ChunkHolder: UInt8 {
        case pool, application, kernel
    }

    init(configuration: BufferPoolConfiguration, owner: UInt) {
        bufferSize = configuration.bufferSize
        maximumChunks = configuration.maximumBuffers
        slabBytes = configuration.bufferSize * configuration.buffersPerSlab
        self.owner = Atomic(owner)
        slabCount = maximumChunks / configuration.buffersPerSlab
        slabs = .allocate(capacity: slabCount)
        slabs.initialize(repeating: nil, count: slabCount)
        addresses = .allocate(capacity: maximumChunks)
        addresses.initialize(repeating: nil, count: maximumChunks)
        links = .allocate(capacity: maximumChunks)
        links.initialize(repeating: Self.none, count: maximumChunks)
        chainIndices = .allocate(capacity: maximumChunks)
        chainIndices.initialize(repeating: (0, 0), count: maximumChunks)
        owned = .allocate(capacity: 1)
        owned.initialize(to: OwnerState(free: .allocate(capacity: maximumChunks)))
        #if DEBUG
        holders = .allocate(capacity: maximumChunks)
        for i in 0..<maximumChunks { (holders + i).initialize(to: Atomic(ChunkHolder.pool.rawValue)) }
        #endif
    }

    // MARK: Debug checks

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
    func debugCheckHeld(_ chunk: UInt32, _ what: StaticString) {
        #if DEBUG
        let holder = holders[Int(chunk)].load(ordering: .acquiring)
        precondition(holder == ChunkHolder.application.rawValue, "\(what): pooled buffer chunk \(chunk) was already released")
        #endif
    }

    // MARK: Free stack and return queue

    @inline(__always)
    func pushFree(_ chunk: UInt32) {
        owned.pointee.free[owned.pointee.freeCount] = chunk
        owned.pointee.freeCount += 1
    }

    /// Moves chunks released on other threads onto the free stack. Owner thread only.
    /// - Returns: how many came back.
    func drainReturns() -> Int {
        let head = returnHead.load(ordering: .relaxed)
        if head == Self.none || head == Self.orphaned { return 0 }
        var chunk = returnHead.exchange(Self.none, ordering: .acquiring)
        var count = 0
        while chunk != Self.none {
            let next = links[Int(chunk)]
            pushFree(chunk)
            chunk = next
            count += 1
        }
        owned.pointee.inUse -= count
        return count
    }

    /// Returns `chunk`: onto the free stack on the owner thread, else onto the return queue; once the
    /// pool object is gone, it counts down the buffers out and the last one frees the core.
    @usableFromInline
    static func release(_ core: UnsafeMutablePointer<BufferPoolCore>, chunk: UInt32) {
        core.pointee.debugMove(chunk, from: .application, to: .pool, "double release of a pooled buffer")
        #if DEBUG
        // Poison freed memory so use-after-release shows up as garbage, not as plausible data.
        core.pointee.addresses[Int(chunk)].unsafelyUnwrapped.initializeMemory(
            as: UInt8.self, repeating: 0xDD, count: core.pointee.bufferSize)
        #endif
        if ckeel_thread_identity() == core.pointee.owner.load(ordering: .relaxed) {
            core.pointee.pushFree(chunk)
            core.pointee.owned.pointee.inUse -= 1
            return
        }
        var head = core.pointee.returnHead.load(ordering: .relaxed)
        while head != orphaned {
            core.pointee.links[Int(chunk)] = head
            let (exchanged, current) = core.pointee.returnHead.compareExchange(
                expected: head, desired: chunk, successOrdering: .releasing, failureOrdering: .relaxed)
            if exchanged { return }  // the core may be gone from here on: touch nothing
            head = current
        }
        if core.pointee.outstanding.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { deallocate(core) }
    }

    /// The pool object is gone: takes what the return queue holds, closes it for good, and frees the
    /// core now if no buffer is out (else the last release does). On the owner thread, or once it no
    /// longer touches the pool's buffers.
    static func orphan(_ core: UnsafeMutablePointer<BufferPoolCore>) {
        core.pointee.owner.store(0, ordering: .relaxed)
        var chunk = core.pointee.returnHead.exchange(orphaned, ordering: .acquiring)
        while chunk != none {
            let next = core.pointee.links[Int(chunk)]
            core.pointee.owned.pointee.inUse -= 1
            chunk = next
        }
        let out = core.pointee.owned.pointee.inUse
        if core.pointee.outstanding.add(out, ordering: .acquiringAndReleasing).newValue == 0 { deallocate(core) }
    }

    /// Unmaps the slabs and frees the core.
    private static func deallocate(_ core: UnsafeMutablePointer<BufferPoolCore>) {
        let owned = core.pointee.owned
        owned.pointee.onDeallocate?()
        for i in 0..<owned.pointee.mappedSlabs {
            munmap(core.pointee.slabs[i], core.pointee.slabBytes)
        }
        owned.pointee.free.deallocate()
        owned.deinitialize(count: 1)
        owned.deallocate()
        core.pointee.slabs.deallocate()
        core.pointee.addresses.deallocate()
        core.pointee.links.deallocate()
        core.pointee.chainIndices.deallocate()
        #if DEBUG
        core.pointee.holders.deinitialize(count: core.pointee.maximumChunks)
        core.pointee.holders.deallocate()
        #endif
        core.deinitialize(count: 1)
        core.deallocate()
    }
}
