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
        lent = .allocate(capacity: chunkLimit)
        lent.initialize(repeating: false, count: chunkLimit)
        if ckeel_register_buf_ring(ring.fd, memory.pointer, entries, group) != 0 {
            let error = SystemError(code: ckeel_errno(), call: "io_uring_register(PBUF_RING)", context: "group \(group)")
            memory.unmap()
            lent.deallocate()
            throw error
        }
        var added: UInt16 = 0
        while UInt32(added) < entries, let chunk = pool.lendToKernel() {
            ckeel_buf_ring_add(bufferRing, entries - 1, added, chunk.address, UInt32(pool.bufferSize), UInt16(chunk.chunk))
            lent[Int(chunk.chunk)] = true
            added += 1
        }
        ckeel_buf_ring_advance(bufferRing, added)
    }

    /// Takes the buffer a receive completion filled (flag `IORING_CQE_F_BUFFER`) and puts a fresh chunk
    /// in its place. - Returns: nil when the completion carries no buffer (an error or end of stream).
    func takeBuffer(from completion: IOCompletion) -> IOBuffer? {
        guard completion.flags & CKEEL_CQE_F_BUFFER != 0 else { return nil }
        let chunk = UInt32(completion.flags >> CKEEL_CQE_BUFFER_SHIFT)
        lent[Int(chunk)] = false
        let buffer = pool.adoptFromKernel(chunk: chunk, length: max(0, Int(completion.result)))
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
        ckeel_buf_ring_add(bufferRing, entries - 1, 0, chunk.address, UInt32(pool.bufferSize), UInt16(chunk.chunk))
        lent[Int(chunk.chunk)] = true
        ckeel_buf_ring_advance(bufferRing, 1)
    }

    /// Stocks the slots left empty while the pool was at its cap, as far as the pool now allows.
    /// Called before each pooled receive is submitted (a receive that failed with -ENOBUFS is retried
    /// that way), so the ring recovers once buffers come back.
    func refill() {
        var added: UInt16 = 0
        while emptySlots > 0, let chunk = pool.lendToKernel() {
            ckeel_buf_ring_add(bufferRing, entries - 1, added, chunk.address, UInt32(pool.bufferSize), UInt16(chunk.chunk))
            lent[Int(chunk.chunk)] = true
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
        memory.unmap()
    }
}
