import CKeelLinux
import KeelBuffers
import KeelSystem

/// A provided-buffer ring (`IORING_REGISTER_PBUF_RING`) stocked with chunks of a ``BufferPool``.
///
/// Receives submitted with this ring's group let the kernel pick a buffer only when data arrives, so
/// an idle connection holds no buffer. The buffer id the kernel reports is the pool's chunk id, and
/// the filled chunk becomes an ``IOBuffer`` without a copy; a fresh chunk takes its place in the ring.
///
/// **Threading:** the ring's I/O thread only (it owns the pool and the ring).
final class ProvidedBufferRing {
    let group: UInt16
    let entries: UInt32
    private let ringFD: Int32
    private let pool: BufferPool
    private let memory: MappedMemory
    private let bufferRing: UnsafeMutablePointer<io_uring_buf_ring>
    /// Chunks currently lent to the kernel through this ring, by chunk id.
    private let lent: UnsafeMutablePointer<Bool>
    /// The ring position (wrapping at 2^16) each lent chunk was put at, by chunk id: a bundle's later
    /// buffers are the ones after its first in ring order.
    private let positions: UnsafeMutablePointer<UInt16>
    /// The ring position of the first buffer of the completion being taken: read when its first buffer
    /// is, as that chunk may go back to the pool, and be lent again, before the bundle's next is taken.
    private var bundleStart: UInt16 = 0
    private let bufferSize: Int
    private let chunkLimit: Int
    /// Ring slots left empty because the pool had no chunk when one was taken (its cap was reached):
    /// ``refill()`` stocks them once chunks are back, or the ring would shrink for good.
    private(set) var emptySlots = 0

    /// Registers a ring of `entries` (a power of two, at most 32768) under `group` and stocks it with
    /// as many pool chunks as it takes (fewer if the pool is capped lower).
    init(ring: Ring, pool: BufferPool, group: UInt16, entries: UInt32) throws(SystemError) {
        precondition(entries > 0 && entries & (entries - 1) == 0 && entries <= 32768, "entries must be a power of two")
        precondition(pool.configuration.maximumBuffers <= 65536, "io_uring buffer ids are 16 bits")
        self.group = group
        self.entries = entries
        self.ringFD = ring.fd
        self.pool = pool
        let bytes = Int(entries) * ckeel_buf_ring_entry_size()
        memory = try MappedMemory.anonymous(length: (bytes + 4095) & ~4095)
        bufferRing = memory.pointer.assumingMemoryBound(to: io_uring_buf_ring.self)
        ckeel_buf_ring_init(bufferRing)
        chunkLimit = pool.configuration.maximumBuffers
        bufferSize = pool.bufferSize
        lent = .allocate(capacity: chunkLimit)
        lent.initialize(repeating: false, count: chunkLimit)
        positions = .allocate(capacity: chunkLimit)
        positions.initialize(repeating: 0, count: chunkLimit)
        if ckeel_register_buf_ring(ring.fd, memory.pointer, entries, group) != 0 {
            let error = SystemError(code: ckeel_errno(), call: "io_uring_register(PBUF_RING)", context: "group \(group)")
            memory.unmap()
            lent.deallocate()
            positions.deallocate()
            throw error
        }
        var added: UInt16 = 0
        while UInt32(added) < entries, let chunk = pool.lendToKernel() {
            add(chunk, at: added)
            added += 1
        }
        ckeel_buf_ring_advance(bufferRing, added)
    }

    /// Puts `chunk` in the slot `offset` past the tail (published by the caller's advance).
    @inline(__always)
    private func add(_ chunk: (chunk: UInt32, address: UnsafeMutableRawPointer), at offset: UInt16) {
        ckeel_buf_ring_add(bufferRing, entries - 1, offset, chunk.address, UInt32(bufferSize), UInt16(chunk.chunk))
        lent[Int(chunk.chunk)] = true
        positions[Int(chunk.chunk)] = ckeel_buf_ring_tail(bufferRing) &+ offset
    }

    /// How many buffers a receive completion filled: more than one only for a bundle (each full but
    /// the last).
    @inline(__always)
    func bufferCount(_ completion: IOCompletion) -> Int {
        let bytes = Int(completion.result)
        return bytes > bufferSize ? (bytes + bufferSize - 1) / bufferSize : 1
    }

    /// Takes buffer `index` of those a receive completion filled (flag `IORING_CQE_F_BUFFER`; index 0
    /// is the one the completion names, later ones of a bundle follow it in ring order) and puts a
    /// fresh chunk in its place. Take a bundle's buffers in order, before the next completion's.
    /// - Returns: nil when the completion carries no buffer (an error or end of stream) or no such one.
    func takeBuffer(from completion: IOCompletion, index: Int) -> IOBuffer? {
        guard completion.flags & CKEEL_CQE_F_BUFFER != 0 else { return nil }
        let chunk: Int
        if index == 0 {
            chunk = Int(completion.flags >> CKEEL_CQE_BUFFER_SHIFT)
            if chunk < chunkLimit { bundleStart = positions[chunk] }
        } else {
            // A later buffer's slot still names it: each restock writes the slot of the buffer taken
            // just before, as completions (and a bundle's buffers) are taken in ring order.
            chunk = Int(ckeel_buf_ring_bid_at(bufferRing, entries - 1, UInt32(bundleStart &+ UInt16(truncatingIfNeeded: index))))
        }
        guard chunk < chunkLimit, lent[chunk] else { return nil }
        lent[chunk] = false
        let length = max(0, min(bufferSize, Int(completion.result) - index * bufferSize))
        let buffer = pool.adoptFromKernel(chunk: UInt32(chunk), length: length)
        replenish()
        return buffer
    }

    /// Lends one more chunk to the kernel, if the pool has one; otherwise the slot stays empty until
    /// ``refill()``.
    func replenish() {
        guard let chunk = pool.lendToKernel() else {
            emptySlots += 1
            return
        }
        add(chunk, at: 0)
        ckeel_buf_ring_advance(bufferRing, 1)
    }

    /// Stocks the slots left empty while the pool was at its cap, as far as the pool now allows.
    /// Called before each pooled receive is submitted (a receive that failed with -ENOBUFS is retried
    /// that way), so the ring recovers once buffers come back.
    func refill() {
        var added: UInt16 = 0
        while emptySlots > 0, let chunk = pool.lendToKernel() {
            add(chunk, at: added)
            emptySlots -= 1
            added += 1
        }
        if added > 0 { ckeel_buf_ring_advance(bufferRing, added) }
    }

    /// Unregisters the ring and takes every lent chunk back into the pool.
    func close() {
        _ = ckeel_unregister_buf_ring(ringFD, group)
        for chunk in 0..<chunkLimit where lent[chunk] {
            pool.reclaimFromKernel(chunk: UInt32(chunk))
        }
        lent.deallocate()
        positions.deallocate()
        memory.unmap()
    }
}
