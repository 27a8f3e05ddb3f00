/// How a ``BufferPool`` carves and caps its memory.
public struct BufferPoolConfiguration: Sendable, Hashable {
    /// Bytes per buffer. Every buffer of a pool has this capacity. Default 16 KiB.
    public var bufferSize: Int
    /// Buffers per slab; a slab is one page-aligned mapping of `bufferSize × buffersPerSlab` bytes.
    /// Default 64 (1 MiB slabs at the default buffer size).
    public var buffersPerSlab: Int
    /// The most slab memory the pool may map, in bytes. Acquiring beyond it fails with
    /// ``BufferPoolError/Code-swift.struct/exhausted``. Default 256 MiB. Rounded down to whole slabs
    /// (at least one).
    public var maximumBytes: Int

    /// Creates a configuration.
    public init(bufferSize: Int = 16 * 1024, buffersPerSlab: Int = 64, maximumBytes: Int = 256 * 1024 * 1024) {
        precondition(bufferSize > 0 && bufferSize <= Int(UInt32.max), "bufferSize must fit in 32 bits")
        precondition(buffersPerSlab > 0, "buffersPerSlab must be positive")
        self.bufferSize = bufferSize
        self.buffersPerSlab = buffersPerSlab
        self.maximumBytes = maximumBytes
    }

    /// The default: 16 KiB buffers in 1 MiB slabs, capped at 256 MiB.
    public static let `default` = BufferPoolConfiguration()

    /// The most buffers the pool can hold: whole slabs within ``maximumBytes``, at least one slab.
    public var maximumBuffers: Int {
        let slabBytes = bufferSize * buffersPerSlab
        return max(1, maximumBytes / slabBytes) * buffersPerSlab
    }
}

/// A snapshot of a ``BufferPool``'s counters. Safe to read from any thread.
public struct BufferPoolStatistics: Sendable, Hashable, CustomStringConvertible {
    /// Buffers handed out and not yet returned (owned buffers, shared buffers and chains).
    public var inUse: Int
    /// The largest ``inUse`` seen.
    public var highWater: Int
    /// Buffers lent to the kernel for provided-buffer receives, not yet filled or reclaimed.
    public var heldByKernel: Int
    /// Bytes of slab memory mapped.
    public var slabBytes: Int
    /// Successful acquisitions since the pool was made.
    public var acquisitions: Int
    /// Acquisitions refused because the memory cap was reached.
    public var failedAcquisitions: Int
    /// Buffers released on another thread and returned through the return queue.
    public var crossThreadReturns: Int

    public var description: String {
        "inUse=\(inUse) highWater=\(highWater) heldByKernel=\(heldByKernel) slabBytes=\(slabBytes) "
            + "acquisitions=\(acquisitions) failed=\(failedAcquisitions) crossThreadReturns=\(crossThreadReturns)"
    }
}

/// Why a ``BufferPool`` could not hand out a buffer.
public struct BufferPoolError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong. New codes may be added without breaking callers.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// The code's name, stable across releases. Layers above may define codes of their own.
        public let name: String

        /// Creates a code (define each once, as a static constant).
        public init(_ name: String) { self.name = name }
        /// The pool's memory cap is reached and every buffer is in use. Back off (pause reading) and
        /// retry once buffers come back.
        public static let exhausted = Code("exhausted")
        /// The kernel refused to map another slab (mmap failed).
        public static let outOfMemory = Code("outOfMemory")

        public var description: String { name }
    }

    /// The kind of failure.
    public var code: Code
    /// What the pool was doing, for logs.
    public var context: String

    public var description: String { "buffer pool \(code): \(context)" }
}
