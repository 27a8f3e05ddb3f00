/// An exclusively owned, fixed-capacity I/O buffer from a ``BufferPool``.
///
/// ```
/// +-------------------+------------------+------------------+
/// | consumed bytes    |  readable bytes  |  writable bytes  |
/// +-------------------+------------------+------------------+
/// 0      <=      readerIndex   <=   writerIndex    <=    capacity
/// ```
///
/// Reads land in the writable region (``withUnsafeMutableWritableBytes(_:)`` then
/// ``moveWriterIndex(forwardBy:)``); handlers take bytes from the readable region and ``consume(_:)``
/// them. A read can continue into the free space of the same buffer, so a message that arrives in
/// pieces is gathered without copying. When a message outgrows one buffer, either ``compact()`` it
/// (moving the unread tail to the front) or append the full buffer to a ``BufferChain`` and continue
/// reading into a fresh one; framing code sees the chain's bytes in order.
///
/// **Ownership:** `~Copyable`, so exactly one owner exists and the chunk goes back to the pool exactly
/// once, when the buffer is dropped. No reference counting on the data path, not even of the pool: a
/// pool's memory outlives its buffers by itself (see ``BufferPool``). To send one payload to many
/// connections, ``share()`` it.
///
/// **Threading:** a buffer may move to and be dropped on any thread; acquiring happens on the pool's
/// owner thread.
public struct IOBuffer: ~Copyable, @unchecked Sendable {
    // @unchecked Sendable: the chunk's bytes are owned exclusively by this value (it is ~Copyable), and
    // releasing from a foreign thread goes through the pool's lock-free return queue.
    @usableFromInline let _core: UnsafeMutablePointer<BufferPoolCore>
    @usableFromInline let _base: UnsafeMutableRawPointer
    @usableFromInline let _chunk: UInt32
    @usableFromInline let _capacity: UInt32
    @usableFromInline var _reader: UInt32
    @usableFromInline var _writer: UInt32

    @usableFromInline
    init(core: UnsafeMutablePointer<BufferPoolCore>, chunk: UInt32, base: UnsafeMutableRawPointer) {
        self._core = core
        self._base = base
        self._chunk = chunk
        self._capacity = UInt32(truncatingIfNeeded: core.pointee.bufferSize)
        self._reader = 0
        self._writer = 0
    }

    @usableFromInline
    init(core: UnsafeMutablePointer<BufferPoolCore>, chunk: UInt32, reader: UInt32, writer: UInt32) {
        self._core = core
        self._base = core.pointee.addresses[Int(chunk)].unsafelyUnwrapped
        self._chunk = chunk
        self._capacity = UInt32(truncatingIfNeeded: core.pointee.bufferSize)
        self._reader = reader
        self._writer = writer
    }

    deinit {
        BufferPoolCore.release(_core, chunk: _chunk)
    }

    /// Gives up ownership without returning the chunk: the caller takes over the chunk.
    @usableFromInline
    consuming func _detach() -> (core: UnsafeMutablePointer<BufferPoolCore>, base: UnsafeMutableRawPointer, chunk: UInt32, reader: UInt32, writer: UInt32) {
        let parts = (_core, _base, _chunk, _reader, _writer)
        discard self
        return parts
    }

    // MARK: Indices

    /// Total bytes the buffer can hold.
    @inlinable public var capacity: Int { Int(_capacity) }
    /// Offset of the first unread byte.
    @inlinable public var readerIndex: Int { Int(_reader) }
    /// Offset one past the last written byte.
    @inlinable public var writerIndex: Int { Int(_writer) }
    /// Bytes written and not yet consumed.
    @inlinable public var readableBytes: Int { Int(_writer &- _reader) }
    /// Bytes that can still be written without compacting.
    @inlinable public var writableBytes: Int { Int(_capacity &- _writer) }
    /// True when there is nothing to read.
    @inlinable public var isEmpty: Bool { _reader == _writer }
    /// The chunk id in the pool (the provided-buffer id the kernel uses).
    public var chunk: UInt32 { _chunk }

    // MARK: Access

    /// Calls `body` with the readable bytes. The pointer is valid only inside `body`.
    @inlinable
    public func withUnsafeReadableBytes<Result, Failure: Error>(
        _ body: (UnsafeRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try body(UnsafeRawBufferPointer(start: _base + Int(_reader), count: Int(_writer &- _reader)))
    }

    /// Calls `body` with the readable bytes, mutable in place (unmasking, decrypting, case folding).
    /// The pointer is valid only inside `body`.
    @inlinable
    public mutating func withUnsafeMutableReadableBytes<Result, Failure: Error>(
        _ body: (UnsafeMutableRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try body(UnsafeMutableRawBufferPointer(start: _base + Int(_reader), count: Int(_writer &- _reader)))
    }

    /// Calls `body` with the writable region; after filling `n` bytes call ``moveWriterIndex(forwardBy:)``.
    /// The pointer is valid only inside `body`.
    @inlinable
    public mutating func withUnsafeMutableWritableBytes<Result, Failure: Error>(
        _ body: (UnsafeMutableRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try body(UnsafeMutableRawBufferPointer(start: _base + Int(_writer), count: Int(_capacity &- _writer)))
    }

    /// The address of the readable bytes, for submitting a send to the kernel. Valid while the buffer
    /// is owned and unmodified; an in-flight operation must own the buffer until it completes.
    @inlinable public var unsafeReadableAddress: UnsafeRawPointer { UnsafeRawPointer(_base + Int(_reader)) }
    /// The address of the writable region, for submitting a receive. Same rules as ``unsafeReadableAddress``.
    @inlinable public var unsafeWritableAddress: UnsafeMutableRawPointer { _base + Int(_writer) }

    /// Marks `count` more bytes as written (after the kernel or `withUnsafeMutableWritableBytes` filled them).
    @inlinable
    public mutating func moveWriterIndex(forwardBy count: Int) {
        precondition(count >= 0 && count <= writableBytes, "moveWriterIndex(\(count)) past capacity")
        _writer &+= UInt32(truncatingIfNeeded: count)
    }

    /// Marks `count` readable bytes as consumed. When everything is consumed the indices reset to 0,
    /// so the whole capacity is writable again.
    @inlinable
    public mutating func consume(_ count: Int) {
        precondition(count >= 0 && count <= readableBytes, "consume(\(count)) past readable bytes")
        _reader &+= UInt32(truncatingIfNeeded: count)
        if _reader == _writer {
            _reader = 0
            _writer = 0
        }
    }

    /// Drops the last `count` readable bytes (a trailer a codec appended and the wire leaves out).
    @inlinable
    public mutating func removeLast(_ count: Int) {
        precondition(count >= 0 && count <= readableBytes, "removeLast(\(count)) past readable bytes")
        _writer &-= UInt32(truncatingIfNeeded: count)
    }

    /// Copies as much of `bytes` as fits into the writable region.
    /// - Returns: the number of bytes appended (less than `bytes.count` when the buffer is full).
    @inlinable
    @discardableResult
    public mutating func append(_ bytes: UnsafeRawBufferPointer) -> Int {
        let count = min(bytes.count, writableBytes)
        if count > 0 {
            (_base + Int(_writer)).copyMemory(from: bytes.baseAddress!, byteCount: count)
            _writer &+= UInt32(truncatingIfNeeded: count)
        }
        return count
    }

    /// Copies as much of `bytes` as fits. Returns the number of bytes appended.
    @inlinable
    @discardableResult
    public mutating func append<Bytes: Collection<UInt8>>(contentsOf bytes: Bytes) -> Int {
        if let done = bytes.withContiguousStorageIfAvailable({ append(UnsafeRawBufferPointer($0)) }) {
            return done
        }
        var written = 0
        for byte in bytes {
            guard _writer < _capacity else { break }
            _base.storeBytes(of: byte, toByteOffset: Int(_writer), as: UInt8.self)
            _writer &+= 1
            written += 1
        }
        return written
    }

    /// Makes at least `count` bytes writable, compacting if needed.
    /// - Returns: false when even a compacted buffer cannot hold `count` more bytes (move to a chain).
    @inlinable
    @discardableResult
    public mutating func reserve(writable count: Int) -> Bool {
        if writableBytes >= count { return true }
        if Int(_capacity) - readableBytes < count { return false }
        compact()
        return true
    }

    /// Moves the readable bytes to the start of the buffer, maximising the writable region.
    @inlinable
    public mutating func compact() {
        guard _reader > 0 else { return }
        let readable = Int(_writer &- _reader)
        if readable > 0 {
            _base.copyMemory(from: _base + Int(_reader), byteCount: readable)
        }
        _reader = 0
        _writer = UInt32(truncatingIfNeeded: readable)
    }

    /// Discards all bytes.
    @inlinable
    public mutating func clear() {
        _reader = 0
        _writer = 0
    }

    /// Copies the readable bytes into an array (allocates; for tests and diagnostics).
    public var readableByteArray: [UInt8] { withUnsafeReadableBytes { Array($0) } }

    /// Turns this buffer into an immutable, reference-counted ``SharedBuffer`` for broadcast: one
    /// payload, any number of concurrent sends, and the chunk returns to the pool when the last
    /// reference goes. Costs one object allocation per payload, not per receiver.
    public consuming func share() -> SharedBuffer {
        let parts = _detach()
        return SharedBuffer(core: parts.core, chunk: parts.chunk, reader: parts.reader, writer: parts.writer)
    }
}
