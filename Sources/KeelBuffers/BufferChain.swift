#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An ordered chain of pooled buffers from one pool, written with a single vectored operation.
///
/// The chain is intrusive: links and indices live in the pool's per-chunk metadata, so appending,
/// consuming and releasing allocate nothing. Use it for messages larger than one buffer and for write
/// queues: ``withIOVecs(maximumCount:_:)`` builds the iovec array on the stack, and
/// ``consume(_:)`` drops what a (possibly partial) write sent.
///
/// **Threading:** like ``IOBuffer``, a chain has one owner and may move between threads.
public struct BufferChain: ~Copyable, @unchecked Sendable {
    // @unchecked Sendable: the chunks and their metadata entries belong to this chain alone.
    private var pool: UnsafeMutablePointer<BufferPoolCore>?
    private var head: UInt32 = BufferPool.none
    private var tail: UInt32 = BufferPool.none
    /// Number of buffers in the chain.
    public private(set) var count: Int = 0
    /// Total readable bytes across all buffers.
    public private(set) var readableBytes: Int = 0

    /// Creates an empty chain.
    public init() {}

    deinit {
        guard let pool else { return }
        var chunk = head
        while chunk != BufferPool.none {
            let next = pool.pointee.links[Int(chunk)]
            BufferPoolCore.release(pool, chunk: chunk)
            chunk = next
        }
    }

    /// True when the chain holds no buffers.
    public var isEmpty: Bool { count == 0 }

    /// Copies all of `region` onto the end of the chain, in as many buffers from `pool` as it takes.
    /// - Returns: false when the pool ran dry (the chain then holds what was copied so far).
    @discardableResult
    public mutating func append(copying region: UnsafeRawBufferPointer, from pool: BufferPool) -> Bool {
        var remaining = region
        while !remaining.isEmpty {
            guard var buffer = try? pool.acquire() else { return false }
            let count = buffer.append(remaining)
            remaining = UnsafeRawBufferPointer(rebasing: remaining[count...])
            append(buffer)
        }
        return true
    }

    /// Appends `buffer` (its readable bytes) at the end of the chain. Empty buffers are dropped.
    /// - Precondition: every buffer of a chain comes from the same pool.
    public mutating func append(_ buffer: consuming IOBuffer) {
        if buffer.isEmpty { return }
        let parts = buffer._detach()
        if let pool {
            precondition(pool == parts.core, "a BufferChain holds buffers of one pool")
        } else {
            pool = parts.core
        }
        let owner = parts.core
        owner.pointee.links[Int(parts.chunk)] = BufferPool.none
        owner.pointee.chainIndices[Int(parts.chunk)] = (parts.reader, parts.writer)
        if tail == BufferPool.none {
            head = parts.chunk
        } else {
            owner.pointee.links[Int(tail)] = parts.chunk
        }
        tail = parts.chunk
        count += 1
        readableBytes += Int(parts.writer - parts.reader)
    }

    /// Removes and returns the first buffer, with its indices as they stand.
    public mutating func popFirst() -> IOBuffer? {
        guard let pool, head != BufferPool.none else { return nil }
        let owner = pool
        let chunk = head
        let (reader, writer) = owner.pointee.chainIndices[Int(chunk)]
        head = owner.pointee.links[Int(chunk)]
        if head == BufferPool.none { tail = BufferPool.none }
        count -= 1
        readableBytes -= Int(writer - reader)
        let buffer = IOBuffer(core: pool, chunk: chunk, reader: reader, writer: writer)
        if count == 0 { self.pool = nil }
        return buffer
    }

    /// Drops `byteCount` bytes from the front, releasing buffers that become empty. Use after a
    /// vectored write reports how much it sent.
    public mutating func consume(_ byteCount: Int) {
        precondition(byteCount >= 0 && byteCount <= readableBytes, "consume(\(byteCount)) past readable bytes")
        guard let pool else { return }
        let owner = pool
        var remaining = byteCount
        while remaining > 0 {
            let chunk = head
            let (reader, writer) = owner.pointee.chainIndices[Int(chunk)]
            let available = Int(writer - reader)
            if remaining < available {
                owner.pointee.chainIndices[Int(chunk)].reader = reader + UInt32(remaining)
                readableBytes -= remaining
                return
            }
            remaining -= available
            readableBytes -= available
            head = owner.pointee.links[Int(chunk)]
            count -= 1
            BufferPoolCore.release(owner, chunk: chunk)
        }
        if head == BufferPool.none {
            tail = BufferPool.none
            self.pool = nil
        }
    }

    /// Calls `body` with each buffer's readable bytes, in order.
    public func forEachReadableRegion(_ body: (UnsafeRawBufferPointer) -> Void) {
        guard let pool else { return }
        let owner = pool
        var chunk = head
        while chunk != BufferPool.none {
            let (reader, writer) = owner.pointee.chainIndices[Int(chunk)]
            body(UnsafeRawBufferPointer(start: owner.pointee.addresses[Int(chunk)].unsafelyUnwrapped + Int(reader), count: Int(writer - reader)))
            chunk = owner.pointee.links[Int(chunk)]
        }
    }

    /// Calls `body` with an iovec array describing up to `maximumCount` leading buffers (built on the
    /// stack, no allocation), for `writev`/`sendmsg`/io_uring `WRITEV`. Pointers are valid only inside
    /// `body`, and only while the chain is not modified.
    public func withIOVecs<Result>(
        maximumCount: Int = 64, _ body: (UnsafeBufferPointer<iovec>) throws -> Result
    ) rethrows -> Result {
        let capacity = max(1, min(count, maximumCount))
        return try withUnsafeTemporaryAllocation(of: iovec.self, capacity: capacity) { vectors in
            var filled = 0
            if let pool {
                let owner = pool
                var chunk = head
                while chunk != BufferPool.none && filled < capacity {
                    let (reader, writer) = owner.pointee.chainIndices[Int(chunk)]
                    vectors[filled] = iovec(
                        iov_base: owner.pointee.addresses[Int(chunk)].unsafelyUnwrapped + Int(reader), iov_len: Int(writer - reader))
                    filled += 1
                    chunk = owner.pointee.links[Int(chunk)]
                }
            }
            return try body(UnsafeBufferPointer(rebasing: vectors[0..<filled]))
        }
    }

    /// Copies all readable bytes into an array (allocates; for tests and diagnostics).
    public var readableByteArray: [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(readableBytes)
        forEachReadableRegion { bytes.append(contentsOf: $0) }
        return bytes
    }
}
