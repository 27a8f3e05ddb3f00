import CKeelZlib
import KeelBuffers

/// permessage-deflate (RFC 7692) as agreed in the opening handshake.
public struct WebSocketDeflateParameters: Sendable, Hashable {
    /// The server resets its compressor after each message.
    public var serverNoContextTakeover = false
    /// The client resets its compressor after each message.
    public var clientNoContextTakeover = false
    /// The server's LZ77 window (9...15 bits; 8 is not offered by zlib's compressor).
    public var serverMaxWindowBits = 15
    /// The client's LZ77 window, when the server limited it (the client may use less).
    public var clientMaxWindowBits: Int?

    /// The `Sec-WebSocket-Extensions` value that confirms these parameters.
    public var responseValue: String {
        var value = "permessage-deflate"
        if serverNoContextTakeover { value += "; server_no_context_takeover" }
        if clientNoContextTakeover { value += "; client_no_context_takeover" }
        if serverMaxWindowBits < 15 { value += "; server_max_window_bits=\(serverMaxWindowBits)" }
        if let clientMaxWindowBits { value += "; client_max_window_bits=\(clientMaxWindowBits)" }
        return value
    }

    /// The first of a client's offers (its `Sec-WebSocket-Extensions` values) a server can accept,
    /// with `serverNoContextTakeover` forced when the server wants it; nil when there is none.
    public static func negotiate(offers values: [String], serverNoContextTakeover: Bool = false) -> WebSocketDeflateParameters? {
        for offer in values.flatMap({ $0.split(separator: ",") }) {
            let parts = offer.split(separator: ";").map { $0.trimmingCharacters() }
            guard parts.first?.lowercased() == "permessage-deflate" else { continue }
            if let accepted = accept(parts.dropFirst(), forceServerNoContextTakeover: serverNoContextTakeover) { return accepted }
        }
        return nil
    }

    /// The parameters for one offer's parameters; nil when one is unknown, repeated or out of range.
    private static func accept(_ parameters: ArraySlice<String>, forceServerNoContextTakeover: Bool) -> WebSocketDeflateParameters? {
        var result = WebSocketDeflateParameters()
        result.serverNoContextTakeover = forceServerNoContextTakeover
        var seen = Set<String>()
        for parameter in parameters {
            let pair = parameter.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters() }
            let name = pair[0].lowercased()
            var value = pair.count > 1 ? pair[1] : nil
            if let quoted = value, quoted.count >= 2, quoted.first == "\"", quoted.last == "\"" { value = String(quoted.dropFirst().dropLast()) }
            guard seen.insert(name).inserted else { return nil }
            switch name {
            case "server_no_context_takeover":
                guard value == nil else { return nil }
                result.serverNoContextTakeover = true
            case "client_no_context_takeover":
                guard value == nil else { return nil }
                result.clientNoContextTakeover = true
            case "server_max_window_bits":
                // zlib's compressor cannot keep to a 256-byte window: an offer asking for it is declined.
                guard let bits = value.flatMap({ Int($0) }), (9...15).contains(bits) else { return nil }
                result.serverMaxWindowBits = bits
            case "client_max_window_bits":
                if let value {
                    guard let bits = Int(value), (8...15).contains(bits) else { return nil }
                    result.clientMaxWindowBits = bits
                }
            default:
                return nil
            }
        }
        return result
    }
}

/// One direction's compressor: a whole message into pooled buffers, the trailing empty block
/// (00 00 FF FF) left out as RFC 7692 says.
final class WebSocketDeflater {
    private let stream: UnsafeMutablePointer<z_stream>
    private let resetsAfterEachMessage: Bool

    init?(windowBits: Int, resetsAfterEachMessage: Bool, level: Int32 = 6, memoryLevel: Int32 = 8) {
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        self.resetsAfterEachMessage = resetsAfterEachMessage
        guard ckeel_deflate_init(stream, level, Int32(windowBits), memoryLevel) == Z_OK else {
            stream.deallocate()
            return nil
        }
    }

    deinit {
        deflateEnd(stream)
        stream.deallocate()
    }

    /// The compressed form of `payload`.
    func compress(_ payload: borrowing BufferChain, pool: BufferPool) throws(WebSocketProtocolError) -> BufferChain {
        var output = BufferChain()
        var previous: IOBuffer?
        guard var current = try? pool.acquire() else { throw WebSocketProtocolError(.internalError, "no buffer to compress into") }
        var failed = false
        payload.forEachReadableRegion { region in
            guard !failed else { return }
            failed = !run(region, flush: Z_NO_FLUSH, output: &output, previous: &previous, current: &current, pool: pool)
        }
        if failed || !run(UnsafeRawBufferPointer(start: nil, count: 0), flush: Z_SYNC_FLUSH, output: &output,
                          previous: &previous, current: &current, pool: pool) {
            throw WebSocketProtocolError(.internalError, "compression failed")
        }
        // Leave out the 4-byte trailer, which may straddle the last two buffers.
        let fromCurrent = min(4, current.readableBytes)
        current.removeLast(fromCurrent)
        if var last = previous.take() {
            last.removeLast(4 - fromCurrent)
            output.append(last)
        }
        output.append(current)
        if resetsAfterEachMessage { deflateReset(stream) }
        return output
    }

    /// Deflates `input` with `flush`, filling `current` and moving full buffers on; false on error.
    private func run(_ input: UnsafeRawBufferPointer, flush: Int32, output: inout BufferChain, previous: inout IOBuffer?,
                     current: inout IOBuffer, pool: BufferPool) -> Bool {
        stream.pointee.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: Bytef.self))
        stream.pointee.avail_in = UInt32(input.count)
        while true {
            if current.writableBytes == 0 {
                guard let fresh = try? pool.acquire() else { return false }
                if let full = previous.take() { output.append(full) }
                previous = consume current
                current = fresh
            }
            let (status, produced) = current.withUnsafeMutableWritableBytes { region -> (Int32, Int) in
                stream.pointee.next_out = region.baseAddress?.assumingMemoryBound(to: Bytef.self)
                stream.pointee.avail_out = UInt32(region.count)
                let status = deflate(stream, flush)
                return (status, region.count - Int(stream.pointee.avail_out))
            }
            current.moveWriterIndex(forwardBy: produced)
            guard status == Z_OK || status == Z_BUF_ERROR else { return false }
            // Done when the input is used up and the last call had room left (nothing pending).
            if stream.pointee.avail_in == 0 && current.writableBytes > 0 { return true }
        }
    }
}

/// One direction's decompressor, fed a compressed message in pieces; its output goes into the
/// regions the caller hands it.
final class WebSocketInflater {
    private let stream: UnsafeMutablePointer<z_stream>
    private let resetsAfterEachMessage: Bool
    static let trailer: [UInt8] = [0x00, 0x00, 0xFF, 0xFF]

    init?(resetsAfterEachMessage: Bool) {
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        self.resetsAfterEachMessage = resetsAfterEachMessage
        guard ckeel_inflate_init(stream, 15) == Z_OK else {
            stream.deallocate()
            return nil
        }
    }

    deinit {
        inflateEnd(stream)
        stream.deallocate()
    }

    /// Inflates `input`, asking `region()` for room and telling `produced(count)` what was written,
    /// until the input is used up and nothing is pending.
    func inflate(_ input: UnsafeRawBufferPointer, region: () throws(WebSocketProtocolError) -> UnsafeMutableRawBufferPointer,
                 produced: (Int) throws(WebSocketProtocolError) -> Void) throws(WebSocketProtocolError) {
        stream.pointee.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: Bytef.self))
        stream.pointee.avail_in = UInt32(input.count)
        while true {
            let room = try region()
            stream.pointee.next_out = room.baseAddress?.assumingMemoryBound(to: Bytef.self)
            stream.pointee.avail_out = UInt32(room.count)
            let status = CKeelZlib.inflate(stream, Z_SYNC_FLUSH)
            let count = room.count - Int(stream.pointee.avail_out)
            guard status == Z_OK || status == Z_BUF_ERROR || status == Z_STREAM_END else {
                throw WebSocketProtocolError(.invalidPayload, "a compressed message that does not inflate")
            }
            try produced(count)
            if stream.pointee.avail_in == 0 && stream.pointee.avail_out > 0 { return }
        }
    }

    /// The message ended: its trailer goes in (handled by the caller through `inflate`); then the
    /// stream resets if the peer does not keep its context.
    func messageEnded() {
        if resetsAfterEachMessage { inflateReset(stream) }
    }
}
