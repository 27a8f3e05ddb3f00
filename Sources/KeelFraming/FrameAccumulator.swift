import KeelBuffers

/// Turns received buffers into complete frames, copying only when a frame straddles two reads.
///
/// ```
///  read 1: [ frame A | frame B | fram ]   A and B are handed out in place (no copy);
///  read 2: [ e C tail | frame D ]          "fram" stays in read 1's buffer, which takes "e C tail"
///                                          (a copy of at most one frame), then D is handed out in place.
/// ```
///
/// A partial frame is kept in the buffer it arrived in (no allocation); the next read's bytes are
/// appended to it until the frame completes. Frames longer than the decoder's maximum, or than one
/// pool buffer, are refused with ``FramingError`` rather than accumulated without bound.
///
/// **Threading:** one accumulator per connection, used on the connection's thread.
public struct FrameAccumulator<Decoder: FrameDecoder>: ~Copyable {
    private var decoder: Decoder
    private var pending: IOBuffer?

    /// Creates an accumulator around `decoder`.
    public init(decoder: Decoder) {
        self.decoder = decoder
    }

    /// Bytes of an incomplete frame held back.
    public var pendingBytes: Int {
        switch pending {
        case .some(let buffer): return buffer.readableBytes
        case .none: return 0
        }
    }

    /// Feeds one received buffer and calls `onFrame` with each complete frame's payload, in order.
    /// The payload pointer is valid only during the call.
    /// - Throws: ``FramingError`` on malformed or oversized input; the connection should then close.
    public mutating func feed(
        _ buffer: consuming IOBuffer, _ onFrame: (UnsafeRawBufferPointer) -> Void
    ) throws(FramingError) {
        var incoming = buffer
        if var partial = pending.take() {
            // Complete the pending frame with bytes from the new buffer.
            while true {
                if partial.writableBytes == 0 { partial.compact() }
                if partial.writableBytes == 0 {
                    throw FramingError(.frameTooLarge, "frame longer than one \(partial.capacity)-byte buffer")
                }
                let moved = incoming.withUnsafeReadableBytes { partial.append($0) }
                incoming.consume(moved)
                try emitFrames(from: &partial, onFrame)
                if partial.isEmpty { break }
                if incoming.isEmpty {
                    pending = consume partial
                    return
                }
            }
        }
        try emitFrames(from: &incoming, onFrame)
        if !incoming.isEmpty { pending = consume incoming }
    }

    /// Hands out every complete frame in `buffer` and consumes them.
    private mutating func emitFrames(
        from buffer: inout IOBuffer, _ onFrame: (UnsafeRawBufferPointer) -> Void
    ) throws(FramingError) {
        while !buffer.isEmpty {
            let found = try buffer.withUnsafeReadableBytes { (bytes) throws(FramingError) -> Int? in
                guard let frame = try decoder.nextFrame(in: bytes) else { return nil }
                onFrame(UnsafeRawBufferPointer(rebasing: bytes[frame.payload]))
                return frame.length
            }
            guard let length = found else { return }
            decoder.reset()
            buffer.consume(length)
        }
    }

    /// Drops any partial frame (e.g. when the connection closes).
    public mutating func discard() {
        pending = nil
        decoder.reset()
    }
}
