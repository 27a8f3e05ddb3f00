import CKeelZlib
import KeelBuffers
import KeelSockets

/// Settings of a ``DeflateFilter``.
public struct DeflateConfiguration: Sendable, Hashable {
    /// zlib's compression level, 1 (fastest) to 9 (smallest); 6 is zlib's default.
    public var level: Int32
    /// The window, 9...15 (512 B to 32 KiB of history). Deflate's state takes `2^(windowBits+2)` bytes
    /// plus `2^(memoryLevel+9)`: 256 KiB per connection at 15 and 8; lower both for many connections.
    public var windowBits: Int32
    /// zlib's memory level, 1...9.
    public var memoryLevel: Int32
    /// Most bytes one received buffer may inflate to, as a multiple of its size: past it the stream is
    /// a compression bomb and the connection closes (``TCPCloseReason/Code/compressionBomb``).
    public var maximumExpansion: Int
    /// Bytes any received buffer may inflate to whatever the ratio (a small buffer that completes a
    /// large, well-compressed write).
    public var expansionAllowance: Int

    /// A configuration; the defaults suit text and structured messages (logs, JSON, telemetry).
    public init(level: Int32 = 6, windowBits: Int32 = 15, memoryLevel: Int32 = 8, maximumExpansion: Int = 100,
                expansionAllowance: Int = 256 * 1024) {
        precondition((1...9).contains(level) && (9...15).contains(windowBits) && (1...9).contains(memoryLevel))
        self.level = level
        self.windowBits = windowBits
        self.memoryLevel = memoryLevel
        self.maximumExpansion = maximumExpansion
        self.expansionAllowance = expansionAllowance
    }
}

extension TCPCloseReason.Code {
    /// The peer's compressed bytes inflated past the filter's expansion limit (a compression bomb).
    public static let compressionBomb = Self("compression.bomb")
    /// The peer's bytes are not a deflate stream.
    public static let compressionCorrupt = Self("compression.corrupt")
}

/// Compresses what the handler writes and inflates what the peer sends: one raw deflate stream
/// (RFC 1951) each way for the life of the connection, on the system's zlib.
///
/// Every write ends with a sync flush, so the bytes of each write can be inflated as soon as they
/// arrive (the peer never waits for a later write to read an earlier one); the history carries over
/// from write to write, so small similar messages compress well. Inbound, a received buffer may inflate
/// to at most ``DeflateConfiguration/maximumExpansion`` times its size (at least
/// ``DeflateConfiguration/expansionAllowance``): a compression bomb closes the connection with
/// ``TCPCloseReason/Code/compressionBomb`` before the filter holds more than that, and bytes that are
/// not deflate close it with ``TCPCloseReason/Code/compressionCorrupt``.
///
/// Stack it above TLS (compressing ciphertext gains nothing): `makeFilters: { _ in [tls, DeflateFilter()] }`.
/// Write completions are reported to the handler in its own (uncompressed) bytes, once the whole
/// compressed form of a write has been sent.
public final class DeflateFilter: TCPConnectionFilter {
    /// The settings it runs with.
    public let configuration: DeflateConfiguration
    /// Bytes the handler wrote, and what they became on the wire, so far.
    public private(set) var bytesWritten = 0
    /// Compressed bytes sent so far.
    public private(set) var compressedBytesWritten = 0
    /// Compressed bytes received so far.
    public private(set) var compressedBytesReceived = 0
    /// Bytes they inflated to.
    public private(set) var bytesReceived = 0

    private let deflater: UnsafeMutablePointer<z_stream>
    private let inflater: UnsafeMutablePointer<z_stream>
    private var deflaterReady = false
    private var inflaterReady = false
    private var failed = false
    /// Per write not yet wholly sent: its compressed bytes still unsent, and its size before compression.
    private var unsentWrites: [(compressed: Int, original: Int)] = []
    private var unsentHead = 0

    /// A filter with `configuration`.
    public init(configuration: DeflateConfiguration = .init()) {
        self.configuration = configuration
        deflater = .allocate(capacity: 1)
        deflater.initialize(to: z_stream())
        inflater = .allocate(capacity: 1)
        inflater.initialize(to: z_stream())
        deflaterReady = ckeel_deflate_init(deflater, configuration.level, configuration.windowBits, configuration.memoryLevel) == Z_OK
        inflaterReady = ckeel_inflate_init(inflater, 15) == Z_OK  // inflate accepts any window up to 32 KiB
    }

    deinit {
        if deflaterReady { deflateEnd(deflater) }
        if inflaterReady { inflateEnd(inflater) }
        deflater.deallocate()
        inflater.deallocate()
    }

    public func connectionEstablished(context: TCPFilterContext) {
        guard deflaterReady && inflaterReady else {
            return context.close(.abortive, reason: TCPCloseReason(.resourceExhausted, detail: "zlib could not start a stream"))
        }
        context.passEstablished()
    }

    // MARK: Outbound

    public func filterOutbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        guard !failed else { return }
        let original = buffer.readableBytes
        guard original > 0 else { return }
        var compressed = 0
        let ok = buffer.withUnsafeReadableBytes { input in
            deflate(input, context: context, produced: &compressed)
        }
        _ = consume buffer
        guard ok else {
            return fail(.resourceExhausted, "no buffer to compress into, or zlib failed", context: context)
        }
        bytesWritten &+= original
        compressedBytesWritten &+= compressed
        unsentWrites.append((compressed, original))
    }

    /// Deflates `input` with a sync flush into pooled buffers, passing each down as it fills.
    private func deflate(_ input: UnsafeRawBufferPointer, context: TCPFilterContext, produced: inout Int) -> Bool {
        deflater.pointee.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: Bytef.self))
        deflater.pointee.avail_in = UInt32(input.count)
        while true {
            guard var output = try? context.bufferPool.acquire() else { return false }
            let (status, count) = output.withUnsafeMutableWritableBytes { region -> (Int32, Int) in
                deflater.pointee.next_out = region.baseAddress?.assumingMemoryBound(to: Bytef.self)
                deflater.pointee.avail_out = UInt32(region.count)
                let status = CKeelZlib.deflate(deflater, Z_SYNC_FLUSH)
                return (status, region.count - Int(deflater.pointee.avail_out))
            }
            output.moveWriterIndex(forwardBy: count)
            let roomLeft = output.writableBytes > 0
            if count > 0 {
                produced += count
                context.passOutbound(output)
            } else {
                _ = consume output
            }
            guard status == Z_OK || status == Z_BUF_ERROR else { return false }
            // Done once the input is used up and the flush fitted (room was left in the last buffer).
            if deflater.pointee.avail_in == 0 && roomLeft { return true }
        }
    }

    public func writeCompleted(_ bytes: Int, context: TCPFilterContext) {
        var remaining = bytes
        var completedOriginal = 0
        while remaining > 0 && unsentHead < unsentWrites.count {
            let taken = min(remaining, unsentWrites[unsentHead].compressed)
            unsentWrites[unsentHead].compressed -= taken
            remaining -= taken
            if unsentWrites[unsentHead].compressed == 0 {
                completedOriginal += unsentWrites[unsentHead].original
                unsentHead += 1
            }
        }
        if unsentHead == unsentWrites.count {
            unsentWrites.removeAll(keepingCapacity: true)
            unsentHead = 0
        } else if unsentHead >= 64 {
            unsentWrites.removeFirst(unsentHead)
            unsentHead = 0
        }
        if completedOriginal > 0 { context.passWriteCompleted(completedOriginal) }
    }

    // MARK: Inbound

    public func filterInbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        guard !failed else { return }
        let received = buffer.readableBytes
        compressedBytesReceived &+= received
        let allowance = max(configuration.expansionAllowance, received &* configuration.maximumExpansion)
        let outcome = buffer.withUnsafeReadableBytes { input in inflate(input, allowance: allowance, context: context) }
        _ = consume buffer
        switch outcome {
        case .done: break
        case .bomb: fail(.compressionBomb, "\(received) bytes inflated past \(allowance) (limit: \(configuration.maximumExpansion)×)", context: context)
        case .corrupt(let message): fail(.compressionCorrupt, message, context: context)
        case .noBuffer: fail(.resourceExhausted, "no buffer to inflate into", context: context)
        }
    }

    private enum InflateOutcome {
        case done, bomb, noBuffer
        case corrupt(String)
    }

    /// Inflates `input` into pooled buffers, passing each up as it fills, until the input is used up;
    /// stops at `allowance` inflated bytes.
    private func inflate(_ input: UnsafeRawBufferPointer, allowance: Int, context: TCPFilterContext) -> InflateOutcome {
        inflater.pointee.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: Bytef.self))
        inflater.pointee.avail_in = UInt32(input.count)
        var produced = 0
        while true {
            guard produced < allowance || inflater.pointee.avail_in == 0 else { return .bomb }
            guard var output = try? context.bufferPool.acquire() else { return .noBuffer }
            let room = min(output.writableBytes, allowance - produced + 1)  // one byte past the allowance shows a bomb
            let (status, count) = output.withUnsafeMutableWritableBytes { region -> (Int32, Int) in
                inflater.pointee.next_out = region.baseAddress?.assumingMemoryBound(to: Bytef.self)
                inflater.pointee.avail_out = UInt32(max(0, room))
                let status = CKeelZlib.inflate(inflater, Z_SYNC_FLUSH)
                return (status, max(0, room) - Int(inflater.pointee.avail_out))
            }
            output.moveWriterIndex(forwardBy: count)
            produced += count
            let filled = inflater.pointee.avail_out == 0
            if produced > allowance {
                _ = consume output
                return .bomb
            }
            if count > 0 {
                bytesReceived &+= count
                context.passInbound(output)
                if failed { return .done }
            } else {
                _ = consume output
            }
            switch status {
            case Z_OK, Z_BUF_ERROR:
                break
            case Z_STREAM_END:
                // The peer finished its stream; another may follow.
                inflateReset(inflater)
            default:
                let message = inflater.pointee.msg.map { String(cString: $0) } ?? "zlib error \(status)"
                return .corrupt("not a deflate stream: \(message)")
            }
            if inflater.pointee.avail_in == 0 && !filled { return .done }
        }
    }

    private func fail(_ code: TCPCloseReason.Code, _ detail: String, context: TCPFilterContext) {
        guard !failed else { return }
        failed = true
        context.close(.abortive, reason: TCPCloseReason(code, detail: detail))
    }
}
