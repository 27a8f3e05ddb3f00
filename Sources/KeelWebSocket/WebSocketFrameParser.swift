/// An incremental WebSocket frame parser (RFC 6455, 5): give it bytes as they arrive, in pieces of
/// any size; it returns each frame's header, then its payload as ranges of the input (unmasked in
/// place, never copied), then the frame's end.
///
/// It refuses, as a ``WebSocketProtocolError`` with the close code to fail the connection with:
/// reserved bits no extension allows, undefined opcodes, fragmented or over-125-byte control frames,
/// a 64-bit length with its top bit set, frames from a client that are not masked (or from a server
/// that are), all 1002; frames over the size limit, 1009. Messages (fragments, UTF-8) are the
/// assembler's business (``WebSocketMessageAssembler``).
public struct WebSocketFrameParser: Sendable {
    /// One step of a frame.
    public enum Part: Sendable, Hashable {
        case header(WebSocketFrameHeader)
        /// Payload bytes: this range of the input, already unmasked.
        case payload(Range<Int>)
        /// The frame is complete.
        case end
    }

    /// The side this parser reads for (a server expects masked frames).
    public let role: WebSocketRole
    /// The largest frame payload accepted (1009 beyond it).
    public let maximumFrameSize: Int
    /// Reserved bits an extension gave meaning to (RSV1 = 0b100 under permessage-deflate).
    public var allowedReservedBits: UInt8

    private enum State: Sendable {
        case header
        case payload(remaining: Int)
        case end
        case failed(WebSocketProtocolError)
    }

    private var state = State.header
    /// Header bytes gathered across inputs when a header arrives split (at most 14), inline: the
    /// parser allocates nothing.
    private var heldHeader: (UInt64, UInt64) = (0, 0)
    private var heldCount = 0
    private var maskingKey: UInt32?
    /// Payload bytes of the current frame already unmasked (the mask's phase).
    private var payloadOffset = 0

    /// A parser for `role` refusing frames over `maximumFrameSize` bytes.
    public init(role: WebSocketRole, maximumFrameSize: Int = 16 << 20, allowedReservedBits: UInt8 = 0) {
        self.role = role
        self.maximumFrameSize = maximumFrameSize
        self.allowedReservedBits = allowedReservedBits
    }

    /// True between frames.
    public var isBetweenFrames: Bool {
        if case .header = state { return heldCount == 0 }
        return false
    }

    /// The next part found in `input[consumed...]`, advancing `consumed`; nil when every byte is
    /// consumed and more input is needed. Unmasks payload bytes in place.
    /// - Throws: ``WebSocketProtocolError`` (and again on every later call).
    public mutating func next(_ input: UnsafeMutableRawBufferPointer, consumed: inout Int) throws(WebSocketProtocolError) -> Part? {
        do throws(WebSocketProtocolError) {
            switch state {
            case .failed(let error):
                throw error
            case .end:
                state = .header
                return .end
            case .header:
                guard let header = try readHeader(UnsafeRawBufferPointer(input), &consumed) else { return nil }
                maskingKey = header.maskingKey
                payloadOffset = 0
                state = header.payloadLength == 0 ? .end : .payload(remaining: header.payloadLength)
                return .header(header)
            case .payload(let remaining):
                guard consumed < input.count else { return nil }
                let count = min(remaining, input.count - consumed)
                let range = consumed..<(consumed + count)
                if let maskingKey {
                    webSocketMask(UnsafeMutableRawBufferPointer(rebasing: input[range]), key: maskingKey, offset: payloadOffset)
                }
                payloadOffset += count
                consumed += count
                state = remaining == count ? .end : .payload(remaining: remaining - count)
                return .payload(range)
            }
        } catch {
            state = .failed(error)
            throw error
        }
    }

    private mutating func readHeader(_ input: UnsafeRawBufferPointer, _ offset: inout Int) throws(WebSocketProtocolError) -> WebSocketFrameHeader? {
        // The common case: the whole header is in this input; decode it where it lies.
        if heldCount == 0 && input.count - offset >= 2 {
            let size = Self.headerSize(input[offset + 1])
            try validateStart(input[offset], input[offset + 1])
            if input.count - offset >= size {
                let header = try decodeHeader(UnsafeRawBufferPointer(rebasing: input[offset..<(offset + size)]))
                offset += size
                return header
            }
        }
        // A header split across inputs: gather it (in a local copy of the inline storage).
        var storage = heldHeader
        var count = heldCount
        defer {
            heldHeader = storage
            heldCount = count
        }
        return try withUnsafeMutableBytes(of: &storage) { held throws(WebSocketProtocolError) -> WebSocketFrameHeader? in
            while offset < input.count {
                let needed = count < 2 ? 2 : Self.headerSize(held[1])
                if count >= needed { break }
                let take = min(needed - count, input.count - offset)
                UnsafeMutableRawBufferPointer(rebasing: held[count..<(count + take)])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: input[offset..<(offset + take)]))
                let before = count
                count += take
                offset += take
                if before < 2 && count >= 2 { try validateStart(held[0], held[1]) }
            }
            guard count >= 2, count == Self.headerSize(held[1]) else { return nil }
            let header = try decodeHeader(UnsafeRawBufferPointer(rebasing: held[..<count]))
            count = 0
            return header
        }
    }

    /// The header's size, from its second byte.
    private static func headerSize(_ second: UInt8) -> Int {
        let length = second & 0x7F
        return 2 + (length == 126 ? 2 : (length == 127 ? 8 : 0)) + (second & 0x80 != 0 ? 4 : 0)
    }

    /// Checks what the first two bytes say, as soon as they are here.
    private func validateStart(_ first: UInt8, _ second: UInt8) throws(WebSocketProtocolError) {
        let reserved = (first >> 4) & 0x7
        if reserved & ~allowedReservedBits != 0 {
            throw WebSocketProtocolError(.protocolError, "reserved bits \(reserved) set without an extension that defines them")
        }
        let opcode = WebSocketOpcode(rawValue: first & 0xF)
        guard opcode.isDefined else { throw WebSocketProtocolError(.protocolError, "reserved \(opcode)") }
        if opcode.isControl {
            if first & 0x80 == 0 { throw WebSocketProtocolError(.protocolError, "a fragmented \(opcode) frame") }
            if second & 0x7F > 125 { throw WebSocketProtocolError(.protocolError, "a \(opcode) frame over 125 bytes") }
        }
        let masked = second & 0x80 != 0
        if role == .server && !masked { throw WebSocketProtocolError(.protocolError, "an unmasked frame from a client") }
        if role == .client && masked { throw WebSocketProtocolError(.protocolError, "a masked frame from a server") }
    }

    /// Decodes a whole header (`headerBytes` holds exactly its bytes, already validated by ``validateStart``).
    private func decodeHeader(_ headerBytes: UnsafeRawBufferPointer) throws(WebSocketProtocolError) -> WebSocketFrameHeader {
        let first = headerBytes[0], second = headerBytes[1]
        var length = Int(second & 0x7F)
        var index = 2
        if length == 126 {
            length = Int(headerBytes[2]) << 8 | Int(headerBytes[3])
            index = 4
        } else if length == 127 {
            if headerBytes[2] & 0x80 != 0 { throw WebSocketProtocolError(.protocolError, "a 64-bit length with its top bit set") }
            var value: UInt64 = 0
            for index in 2..<10 { value = value << 8 | UInt64(headerBytes[index]) }
            guard value <= UInt64(maximumFrameSize) else {
                throw WebSocketProtocolError(.messageTooBig, "a frame of \(value) bytes exceeds \(maximumFrameSize)")
            }
            length = Int(value)
            index = 10
        }
        guard length <= maximumFrameSize else {
            throw WebSocketProtocolError(.messageTooBig, "a frame of \(length) bytes exceeds \(maximumFrameSize)")
        }
        var key: UInt32?
        if second & 0x80 != 0 {
            key = UInt32(headerBytes[index]) << 24 | UInt32(headerBytes[index + 1]) << 16
                | UInt32(headerBytes[index + 2]) << 8 | UInt32(headerBytes[index + 3])
        }
        return WebSocketFrameHeader(fin: first & 0x80 != 0, reserved: (first >> 4) & 0x7, opcode: WebSocketOpcode(rawValue: first & 0xF),
                                    maskingKey: key, payloadLength: length)
    }
}
