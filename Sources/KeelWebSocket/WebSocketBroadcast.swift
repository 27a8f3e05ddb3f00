import KeelBuffers

/// A server message framed once, and compressed once, for sending to many WebSocket connections
/// without a copy per connection: every connection's send holds a reference to the same pooled
/// frame (``SharedBuffer``), released when the last send completes.
///
/// ```swift
/// let compressor = WebSocketBroadcastCompressor()          // one per thread that prepares messages
/// let message = try WebSocketBroadcast(.text, bytes: Array("news".utf8), pool: thread.bufferPool,
///                                      compressor: compressor)
/// for socket in members { socket.send(message) }           // each on its own I/O thread
/// ```
///
/// A connection that agreed on permessage-deflate without server context takeover (and the full
/// 15-bit window) gets the compressed frame; any other server connection gets the plain frame (an
/// uncompressed message is always allowed, RFC 7692 section 6). A client connection must mask its
/// frames, so there the payload is copied and framed for that connection alone.
///
/// **Threading:** immutable once made; send it from any connection's I/O thread.
public final class WebSocketBroadcast: Sendable {
    /// Text or binary.
    public let kind: WebSocketMessageAssembler.Kind
    /// The payload's size in bytes (before compression).
    public let payloadSize: Int
    /// The unmasked frame: header and payload, across as few pooled buffers as hold it.
    let plainFrame: [SharedBuffer]
    /// The plain frame's header size (the payload follows it).
    let plainHeaderSize: Int
    /// The frame with the compressed payload (RSV1 set, made with a fresh context and a 15-bit window),
    /// when a compressor was given and the payload was long enough to be worth it.
    let compressedFrame: [SharedBuffer]?

    /// Frames `bytes` once, in buffers from `pool`, and compresses them once when `compressor` is given.
    /// - Throws: ``BufferPoolError`` when the pool cannot hold the frame, or ``WebSocketProtocolError``
    ///   when compression failed.
    public convenience init(_ kind: WebSocketMessageAssembler.Kind, bytes: some Collection<UInt8>, pool: BufferPool,
                compressor: WebSocketBroadcastCompressor? = nil) throws {
        var payload = BufferChain()
        var remaining = bytes[...]
        while !remaining.isEmpty {
            var buffer = try pool.acquire()
            let count = buffer.append(contentsOf: remaining.prefix(buffer.writableBytes))
            remaining = remaining.dropFirst(count)
            payload.append(buffer)
        }
        try self.init(kind, payload: payload, pool: pool, compressor: compressor)
    }

    /// Frames a payload already in pooled buffers (consumed: its bytes are copied behind the frame
    /// header once), and compresses it once when `compressor` is given.
    public init(_ kind: WebSocketMessageAssembler.Kind, payload: consuming BufferChain, pool: BufferPool,
                compressor: WebSocketBroadcastCompressor? = nil) throws {
        self.kind = kind
        payloadSize = payload.readableBytes
        let opcode: WebSocketOpcode = kind == .text ? .text : .binary
        if let compressor, payload.readableBytes >= compressor.minimumMessageSize {
            let compressed = try compressor.deflater.compress(payload, pool: pool)
            let header = WebSocketFrameHeader(reserved: 0b100, opcode: opcode, payloadLength: compressed.readableBytes)
            compressedFrame = try Self.frame(header, payload: compressed, pool: pool)
        } else {
            compressedFrame = nil
        }
        let header = WebSocketFrameHeader(opcode: opcode, payloadLength: payload.readableBytes)
        plainHeaderSize = header.encodedSize
        plainFrame = try Self.frame(header, payload: payload, pool: pool)
    }

    /// `header` then `payload`, packed into full pooled buffers and shared.
    private static func frame(_ header: WebSocketFrameHeader, payload: consuming BufferChain, pool: BufferPool) throws -> [SharedBuffer] {
        var frame: [SharedBuffer] = []
        var current = try pool.acquire()
        current.append(header)
        while let next = payload.popFirst() {
            // The buffer stays alive (and its bytes valid) until the end of this iteration.
            var remaining = UnsafeRawBufferPointer(start: next.unsafeReadableAddress, count: next.readableBytes)
            while !remaining.isEmpty {
                if current.writableBytes == 0 {
                    let fresh = try pool.acquire()
                    frame.append(current.share())
                    current = fresh
                }
                let count = current.append(remaining)
                remaining = UnsafeRawBufferPointer(rebasing: remaining[count...])
            }
            _ = consume next
        }
        frame.append(current.share())
        return frame
    }

    /// The frame a server connection with `compression` should get.
    func frame(for compression: WebSocketDeflateParameters?) -> [SharedBuffer] {
        if let compressedFrame, let compression, compression.serverNoContextTakeover, compression.serverMaxWindowBits == 15 {
            return compressedFrame
        }
        return plainFrame
    }

    /// The payload's bytes, region by region (for a connection that must frame it itself).
    func forEachPayloadRegion(_ body: (UnsafeRawBufferPointer) -> Void) {
        var skip = plainHeaderSize
        for buffer in plainFrame {
            let bytes = buffer.unsafeReadableBytes
            let start = min(skip, bytes.count)
            skip -= start
            if start < bytes.count { body(UnsafeRawBufferPointer(rebasing: bytes[start...])) }
        }
    }
}

/// The compressor a thread uses to prepare ``WebSocketBroadcast`` messages: deflate with a fresh
/// context per message and a 15-bit window, so one compressed frame suits every connection that
/// agreed on `server_no_context_takeover`. Holds zlib's state (a few hundred KiB): make one per
/// thread and keep it.
///
/// **Threading:** use it on one thread at a time.
public final class WebSocketBroadcastCompressor {
    let deflater: WebSocketDeflater
    /// Payloads shorter than this are not compressed.
    public let minimumMessageSize: Int

    /// A compressor at zlib `level` (1 fastest ... 9 smallest) for payloads from `minimumMessageSize` bytes.
    /// Returns nil when zlib cannot be initialised (out of memory).
    public init?(level: Int = 6, minimumMessageSize: Int = 64) {
        guard let deflater = WebSocketDeflater(windowBits: 15, resetsAfterEachMessage: true, level: Int32(level)) else { return nil }
        self.deflater = deflater
        self.minimumMessageSize = minimumMessageSize
    }
}
