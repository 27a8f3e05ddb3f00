/// An immutable pooled payload shared by reference, for sending one message to many connections.
///
/// Created with ``IOBuffer/share()``. ARC is the reference count: every in-flight send holds a
/// reference, and the chunk goes back to its pool when the last one is released, on whatever thread
/// that happens (a foreign thread uses the pool's lock-free return queue).
///
/// **Threading:** immutable, so it may be read and released on any thread.
public final class SharedBuffer: Sendable {
    /// The chunk's pool. `nonisolated(unsafe)`: only released through, which any thread may do.
    nonisolated(unsafe) private let core: UnsafeMutablePointer<BufferPoolCore>
    private let chunk: UInt32
    /// Start of the payload. `nonisolated(unsafe)`: the bytes are immutable once shared.
    nonisolated(unsafe) private let start: UnsafeRawPointer
    /// Length of the payload in bytes.
    public let readableBytes: Int

    init(core: UnsafeMutablePointer<BufferPoolCore>, chunk: UInt32, reader: UInt32, writer: UInt32) {
        self.core = core
        self.chunk = chunk
        self.start = UnsafeRawPointer(core.pointee.addresses[Int(chunk)].unsafelyUnwrapped + Int(reader))
        self.readableBytes = Int(writer - reader)
    }

    deinit {
        BufferPoolCore.release(core, chunk: chunk)
    }

    /// Calls `body` with the payload. The pointer is valid only inside `body`.
    @inlinable
    public func withUnsafeReadableBytes<Result, Failure: Error>(
        _ body: (UnsafeRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try body(unsafeReadableBytes)
    }

    /// The payload's bytes; valid while this object is alive. For submitting sends.
    public var unsafeReadableBytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: start, count: readableBytes) }

    /// Copies the payload into an array (allocates; for tests and diagnostics).
    public var readableByteArray: [UInt8] { Array(unsafeReadableBytes) }
}
