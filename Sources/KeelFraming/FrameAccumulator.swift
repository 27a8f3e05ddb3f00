import KeelBuffers

/// Turns received buffers into complete frames, copying only when a frame straddles two reads.
///
/// ```
///  read 1: [ frame A | frame B | fram ]   A and B are handed out in place (no copy);
///  read 2: [ e C tail | frame D ]          "fram" stays in read 1's buffer, which takes "e C tail"
///                                          (a copy of at most one frame), then D is handed out in place.
///
///  a frame longer than one buffer:         gathered in one region of its own, sized from its header
///  read 1: [ X | header, part 1 ]           (or, for delimited frames, up to the decoder's maximum,
///  read 2: [ part 2 ]                        which the system commits only as it is written); each
///  read 3: [ part 3 | Y ]                    byte is copied into it once; Y is handed out in place.
/// ```
///
/// A partial frame that fits in one buffer is kept in the buffer it arrived in (no allocation); the
/// next read's bytes are appended to it until the frame completes. A longer frame (up to the
/// decoder's ``FrameDecoder/maximumFrameBytes``, e.g. 16 MiB) costs one allocation, freed when the
/// frame has been handed out. Frames longer than the maximum are refused with ``FramingError``
/// rather than accumulated without bound.
///
/// **Threading:** one accumulator per connection, used on the connection's thread.
public struct FrameAccumulator<Decoder: FrameDecoder>: ~Copyable {
    private var decoder: Decoder
    private var pending: IOBuffer?
    /// The frame being gathered when it is longer than one buffer.
    private var large: LargeFrame?

    /// A region holding one frame longer than a pool buffer.
    private struct LargeFrame {
        let base: UnsafeMutableRawPointer
        let capacity: Int
        var filled: Int

        var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: filled) }
    }

    /// Creates an accumulator around `decoder`.
    public init(decoder: Decoder) {
        self.decoder = decoder
    }

    deinit {
        large?.base.deallocate()
    }

    /// Bytes of an incomplete frame held back.
    public var pendingBytes: Int {
        if let large { return large.filled }
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
        if large != nil {
            guard try continueLargeFrame(with: &incoming, onFrame) else { return }
        }
        if var partial = pending.take() {
            // Complete the pending frame with bytes from the new buffer.
            while true {
                if partial.writableBytes == 0 { partial.compact() }
                let tooLong = try exceedsOneBuffer(partial)
                if partial.writableBytes == 0 || tooLong {
                    // Longer than one buffer: gather it in a region of its own.
                    try partial.withUnsafeReadableBytes { (bytes) throws(FramingError) in try startLargeFrame(with: bytes) }
                    guard try continueLargeFrame(with: &incoming, onFrame) else { return }
                    break
                }
                let moved = incoming.withUnsafeReadableBytes { partial.append($0) }
                incoming.consume(moved)
                try emitFrames(from: &partial, onFrame)
                if partial.isEmpty { break }
                if incoming.isEmpty {
                    if try exceedsOneBuffer(partial) {
                        try partial.withUnsafeReadableBytes { (bytes) throws(FramingError) in try startLargeFrame(with: bytes) }
                    } else {
                        pending = consume partial
                    }
                    return
                }
            }
        }
        try emitFrames(from: &incoming, onFrame)
        if incoming.isEmpty { return }
        if try exceedsOneBuffer(incoming) {
            try incoming.withUnsafeReadableBytes { (bytes) throws(FramingError) in try startLargeFrame(with: bytes) }
        } else {
            pending = consume incoming
        }
    }

    /// True when the frame starting in `buffer` is known (from its header) to be longer than the buffer can hold.
    private mutating func exceedsOneBuffer(_ buffer: borrowing IOBuffer) throws(FramingError) -> Bool {
        let length = try buffer.withUnsafeReadableBytes { (bytes) throws(FramingError) in try decoder.frameLength(in: bytes) }
        return length.map { $0 > buffer.capacity } ?? false
    }

    /// Starts gathering a frame longer than a buffer from its first `bytes`.
    private mutating func startLargeFrame(with bytes: UnsafeRawBufferPointer) throws(FramingError) {
        decoder.reset()
        let capacity = try decoder.frameLength(in: bytes) ?? decoder.maximumFrameBytes
        guard capacity <= decoder.maximumFrameBytes, bytes.count <= capacity else {
            throw FramingError(.frameTooLarge, "frame of \(capacity) bytes exceeds \(decoder.maximumFrameBytes)")
        }
        let base = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
        base.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        large = LargeFrame(base: base, capacity: capacity, filled: bytes.count)
    }

    /// Copies what `incoming` adds to the large frame; hands the frame out once complete and leaves the
    /// bytes after it in `incoming`. - Returns: true when the frame completed (go on with `incoming`).
    private mutating func continueLargeFrame(
        with incoming: inout IOBuffer, _ onFrame: (UnsafeRawBufferPointer) -> Void
    ) throws(FramingError) -> Bool {
        guard var frame = large else { return true }
        let before = frame.filled
        let count = min(incoming.readableBytes, frame.capacity - before)
        incoming.withUnsafeReadableBytes { (frame.base + before).copyMemory(from: $0.baseAddress!, byteCount: count) }
        frame.filled += count
        large = frame
        guard let found = try decoder.nextFrame(in: frame.bytes) else {
            if frame.filled == frame.capacity {
                throw FramingError(.frameTooLarge, "no complete frame within \(frame.capacity) bytes")
            }
            return false  // every byte of `incoming` is in the region now
        }
        onFrame(UnsafeRawBufferPointer(rebasing: frame.bytes[found.payload]))
        decoder.reset()
        // Of what was copied, only the frame's own bytes are used; the rest is read in place.
        incoming.consume(found.length - before)
        frame.base.deallocate()
        large = nil
        return true
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
        large?.base.deallocate()
        large = nil
        decoder.reset()
    }
}
