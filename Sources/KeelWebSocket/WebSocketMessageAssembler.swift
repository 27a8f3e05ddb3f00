/// The message rules over a connection's frames (RFC 6455, 5.4–5.6): fragments continue the message
/// in progress and nothing else, text is UTF-8 (checked as it arrives, failing fast), a message stays
/// under the size limit; control frames may come between fragments.
public struct WebSocketMessageAssembler: Sendable {
    /// The kind of a data message.
    public enum Kind: Sendable, Hashable {
        case text, binary
    }

    /// The largest message accepted, all fragments together (1009 beyond it).
    public let maximumMessageSize: Int
    /// The kind of the message in progress (nil between messages).
    public private(set) var current: Kind?
    private var size = 0
    private var validator = UTF8Validator()
    /// The frame being read: a data frame (of the current message) or a control frame.
    private var frameIsData = false
    private var frameIsFinal = false

    /// An assembler refusing messages over `maximumMessageSize` bytes.
    public init(maximumMessageSize: Int = 16 << 20) {
        self.maximumMessageSize = maximumMessageSize
    }

    /// A frame begins. - Returns: for a data frame, its message's kind and whether it starts that
    /// message; nil for a control frame.
    /// - Throws: 1002 for a continuation with no message in progress, or a new message before the
    ///   last one ended.
    public mutating func frameStarted(_ header: WebSocketFrameHeader) throws(WebSocketProtocolError) -> (kind: Kind, starts: Bool)? {
        frameIsFinal = header.fin
        guard !header.opcode.isControl else {
            frameIsData = false
            return nil
        }
        frameIsData = true
        let starts: Bool
        switch header.opcode {
        case .continuation:
            guard current != nil else { throw WebSocketProtocolError(.protocolError, "a continuation frame with no message to continue") }
            starts = false
        default:
            guard current == nil else { throw WebSocketProtocolError(.protocolError, "a new \(header.opcode) message before the last one ended") }
            current = header.opcode == .text ? .text : .binary
            size = 0
            validator = UTF8Validator()
            starts = true
        }
        return (current!, starts)
    }

    /// Payload bytes of a data frame, after unmasking and, for a compressed message, after inflation
    /// (so the size limit bounds the inflated message, and UTF-8 is checked on the text itself).
    /// - Throws: 1009 past the size limit, 1007 at the first byte of a text message that is not UTF-8.
    public mutating func dataReceived(_ bytes: UnsafeRawBufferPointer) throws(WebSocketProtocolError) {
        guard frameIsData else { return }
        size += bytes.count
        guard size <= maximumMessageSize else {
            throw WebSocketProtocolError(.messageTooBig, "a message over \(maximumMessageSize) bytes")
        }
        if current == .text && !validator.validate(bytes) {
            throw WebSocketProtocolError(.invalidPayload, "a text message that is not UTF-8")
        }
    }

    /// The frame ended. - Returns: true when it completed a data message.
    /// - Throws: 1007 when a text message ends inside a character.
    public mutating func frameEnded() throws(WebSocketProtocolError) -> Bool {
        guard frameIsData else { return false }
        frameIsData = false
        guard frameIsFinal else { return false }
        defer { current = nil }
        if current == .text && !validator.isAtCharacterBoundary {
            throw WebSocketProtocolError(.invalidPayload, "a text message that ends inside a UTF-8 character")
        }
        return true
    }
}

/// A close frame's payload: an optional code and a UTF-8 reason (RFC 6455, 5.5.1).
public struct WebSocketClose: Sendable, Hashable {
    /// The code (nil: the frame had none, reported locally as 1005).
    public var code: WebSocketCloseCode?
    /// Why, in UTF-8 (at most 123 bytes on the wire).
    public var reason: String

    /// A close with `code` and `reason`.
    public init(code: WebSocketCloseCode?, reason: String = "") {
        self.code = code
        self.reason = reason
    }

    /// Reads a close frame's payload.
    /// - Throws: 1002 for a one-byte payload or a code not valid on the wire; 1007 for a reason
    ///   that is not UTF-8.
    public init(payload: UnsafeRawBufferPointer) throws(WebSocketProtocolError) {
        guard payload.count != 1 else { throw WebSocketProtocolError(.protocolError, "a close frame with a one-byte payload") }
        guard payload.count >= 2 else {
            self.init(code: nil)
            return
        }
        let code = WebSocketCloseCode(rawValue: UInt16(payload[0]) << 8 | UInt16(payload[1]))
        guard code.isValidOnTheWire else { throw WebSocketProtocolError(.protocolError, "close code \(code) is not valid on the wire") }
        let reason = UnsafeRawBufferPointer(rebasing: payload[2...])
        var validator = UTF8Validator()
        guard validator.validate(reason), validator.isAtCharacterBoundary else {
            throw WebSocketProtocolError(.invalidPayload, "a close reason that is not UTF-8")
        }
        self.init(code: code, reason: String(decoding: reason, as: UTF8.self))
    }

    /// The payload bytes: the code (if any) and the reason, cut to fit 125 bytes on a character boundary.
    public var payload: [UInt8] {
        guard let code else { return [] }
        var bytes = [UInt8(code.rawValue >> 8), UInt8(code.rawValue & 0xFF)]
        var fitting = 0
        for scalar in reason.unicodeScalars {
            let width = UTF8.width(scalar)
            if fitting + width > 123 { break }
            fitting += width
        }
        let reasonBytes = reason.utf8.prefix(fitting)
        bytes += reasonBytes
        return bytes
    }
}
