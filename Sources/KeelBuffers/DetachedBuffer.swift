/// A pooled buffer taken out of its ``IOBuffer`` owner so it can sit in a queue of copyable values
/// (a connection's write queue) or cross threads inside a `@Sendable` closure.
///
/// It is a plain value: whoever holds it must eventually call exactly one of ``release()`` or
/// ``reattach()``. Keel's own layers use it; applications use ``IOBuffer``.
package struct DetachedBuffer: @unchecked Sendable {
    // @unchecked Sendable: the chunk is owned by exactly one holder at a time (by contract).
    @usableFromInline let core: UnsafeMutablePointer<BufferPoolCore>
    /// The chunk's address, kept so the write path (which asks for the readable region several times
    /// per message) does not look it up in the pool each time.
    @usableFromInline let base: UnsafeMutableRawPointer
    @usableFromInline let chunk: UInt32
    @usableFromInline private(set) var reader: UInt32
    @usableFromInline private(set) var writer: UInt32

    init(core: UnsafeMutablePointer<BufferPoolCore>, base: UnsafeMutableRawPointer, chunk: UInt32, reader: UInt32, writer: UInt32) {
        self.core = core
        self.base = base
        self.chunk = chunk
        self.reader = reader
        self.writer = writer
    }

    /// Bytes not yet consumed.
    @inlinable package var readableBytes: Int { Int(writer &- reader) }

    /// The readable bytes; valid until the buffer is released.
    @inlinable package var readableRegion: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + Int(reader), count: readableBytes)
    }

    /// The free space after the readable bytes; valid until the buffer is released.
    package var writableRegion: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base + Int(writer), count: core.pointee.bufferSize - Int(writer))
    }

    /// Marks `count` more bytes as written (after a receive filled them).
    package mutating func moveWriterIndex(forwardBy count: Int) {
        precondition(count >= 0 && count <= writableRegion.count)
        writer += UInt32(count)
    }

    /// Marks `count` bytes as sent.
    @inlinable package mutating func consume(_ count: Int) {
        precondition(count >= 0 && count <= readableBytes)
        reader += UInt32(count)
    }

    /// Returns the chunk to its pool (on any thread).
    package func release() {
        BufferPoolCore.release(core, chunk: chunk)
    }

    /// Turns it back into an owning ``IOBuffer``.
    package func reattach() -> IOBuffer {
        core.pointee.debugCheckHeld(chunk, "reattach")
        return IOBuffer(core: core, chunk: chunk, reader: reader, writer: writer)
    }
}

extension IOBuffer {
    /// Gives up ownership as a ``DetachedBuffer`` (see its contract).
    package consuming func detach() -> DetachedBuffer {
        let parts = _detach()
        return DetachedBuffer(core: parts.core, base: parts.base, chunk: parts.chunk, reader: parts.reader, writer: parts.writer)
    }
}
