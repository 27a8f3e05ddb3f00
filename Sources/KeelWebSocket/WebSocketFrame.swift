import KeelBuffers

/// A frame's opcode (RFC 6455, 5.2).
public struct WebSocketOpcode: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// A later fragment of a message.
    public static let continuation = WebSocketOpcode(rawValue: 0x0)
    /// The first frame of a text message (UTF-8).
    public static let text = WebSocketOpcode(rawValue: 0x1)
    /// The first frame of a binary message.
    public static let binary = WebSocketOpcode(rawValue: 0x2)
    /// The closing handshake.
    public static let close = WebSocketOpcode(rawValue: 0x8)
    /// A ping, answered by a pong with the same payload.
    public static let ping = WebSocketOpcode(rawValue: 0x9)
    /// A pong.
    public static let pong = WebSocketOpcode(rawValue: 0xA)

    /// Close, ping and pong: never fragmented, at most 125 bytes of payload.
    public var isControl: Bool { rawValue & 0x8 != 0 }
    /// One of the six opcodes RFC 6455 defines.
    public var isDefined: Bool { [0x0, 0x1, 0x2, 0x8, 0x9, 0xA].contains(rawValue) }

    public var description: String {
        switch self {
        case .continuation: "continuation"
        case .text: "text"
        case .binary: "binary"
        case .close: "close"
        case .ping: "ping"
        case .pong: "pong"
        default: "opcode \(rawValue)"
        }
    }
}

/// A frame's header: everything before its payload.
public struct WebSocketFrameHeader: Sendable, Hashable {
    /// The last frame of its message (always true for control frames).
    public var fin: Bool
    /// The reserved bits RSV1, RSV2, RSV3 as bits 2, 1, 0 (RSV1 marks a compressed message under
    /// permessage-deflate).
    public var reserved: UInt8
    public var opcode: WebSocketOpcode
    /// The masking key (frames from a client carry one; frames from a server never do).
    public var maskingKey: UInt32?
    /// Payload bytes that follow the header.
    public var payloadLength: Int

    /// A header with these fields.
    public init(fin: Bool = true, reserved: UInt8 = 0, opcode: WebSocketOpcode, maskingKey: UInt32? = nil, payloadLength: Int) {
        self.fin = fin
        self.reserved = reserved
        self.opcode = opcode
        self.maskingKey = maskingKey
        self.payloadLength = payloadLength
    }

    /// Bytes the header takes on the wire.
    public var encodedSize: Int {
        let lengthBytes = payloadLength < 126 ? 0 : (payloadLength <= 0xFFFF ? 2 : 8)
        return 2 + lengthBytes + (maskingKey == nil ? 0 : 4)
    }

    /// The header's bytes: at most 14.
    public func encoded() -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: encodedSize) { storage, count in
            count = encode(into: UnsafeMutableRawBufferPointer(storage))
        }
    }

    /// Writes the header at the start of `region`, which must hold ``encodedSize`` bytes (no
    /// allocation: the send path writes headers straight into pooled buffers). - Returns: its size.
    public func encode(into region: UnsafeMutableRawBufferPointer) -> Int {
        precondition(region.count >= encodedSize, "no room for a WebSocket frame header")
        var index = 0
        func put(_ byte: UInt8) {
            region[index] = byte
            index += 1
        }
        put((fin ? 0x80 : 0) | (reserved & 0x7) << 4 | opcode.rawValue & 0xF)
        let mask: UInt8 = maskingKey == nil ? 0 : 0x80
        if payloadLength < 126 {
            put(mask | UInt8(payloadLength))
        } else if payloadLength <= 0xFFFF {
            put(mask | 126)
            put(UInt8(payloadLength >> 8))
            put(UInt8(payloadLength & 0xFF))
        } else {
            put(mask | 127)
            for shift in stride(from: 56, through: 0, by: -8) { put(UInt8(truncatingIfNeeded: payloadLength >> shift)) }
        }
        if let maskingKey {
            for shift in stride(from: 24, through: 0, by: -8) { put(UInt8(truncatingIfNeeded: maskingKey >> shift)) }
        }
        return index
    }
}

extension IOBuffer {
    /// Appends a frame header (a fresh pooled buffer always has room for one).
    mutating func append(_ header: WebSocketFrameHeader) {
        let count = withUnsafeMutableWritableBytes { header.encode(into: $0) }
        moveWriterIndex(forwardBy: count)
    }
}

/// A close status code (RFC 6455, 7.4).
public struct WebSocketCloseCode: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// 1000: the purpose of the connection was fulfilled.
    public static let normalClosure = WebSocketCloseCode(rawValue: 1000)
    /// 1001: the endpoint is going away (a server shutting down).
    public static let goingAway = WebSocketCloseCode(rawValue: 1001)
    /// 1002: the peer broke the protocol.
    public static let protocolError = WebSocketCloseCode(rawValue: 1002)
    /// 1003: a message of a type the endpoint does not accept.
    public static let unsupportedData = WebSocketCloseCode(rawValue: 1003)
    /// 1005 (never on the wire): a close frame without a code.
    public static let noStatusReceived = WebSocketCloseCode(rawValue: 1005)
    /// 1006 (never on the wire): the connection ended without a closing handshake.
    public static let abnormalClosure = WebSocketCloseCode(rawValue: 1006)
    /// 1007: a text message (or close reason) that is not UTF-8.
    public static let invalidPayload = WebSocketCloseCode(rawValue: 1007)
    /// 1008: a message that violates the endpoint's policy.
    public static let policyViolation = WebSocketCloseCode(rawValue: 1008)
    /// 1009: a frame or message over the size limit (an inflated one included).
    public static let messageTooBig = WebSocketCloseCode(rawValue: 1009)
    /// 1010: (client) an extension the server did not agree to.
    public static let mandatoryExtension = WebSocketCloseCode(rawValue: 1010)
    /// 1011: the server met an unexpected condition.
    public static let internalError = WebSocketCloseCode(rawValue: 1011)

    /// True for the codes a close frame may carry: 1000–1003, 1007–1011, and 3000–4999 (registered
    /// and private use).
    public var isValidOnTheWire: Bool {
        switch rawValue {
        case 1000...1003, 1007...1011, 3000...4999: true
        default: false
        }
    }

    public var description: String { "\(rawValue)" }
}

/// A peer broke the protocol: the connection closes with ``closeCode``.
public struct WebSocketProtocolError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The close code to fail the connection with.
    public var closeCode: WebSocketCloseCode
    /// What was wrong.
    public var detail: String

    /// An error closing with `closeCode`.
    public init(_ closeCode: WebSocketCloseCode, _ detail: String) {
        self.closeCode = closeCode
        self.detail = detail
    }

    public var description: String { "\(closeCode): \(detail)" }
}

/// Which end of a connection this is: a server receives masked frames and sends unmasked ones; a
/// client the reverse.
public enum WebSocketRole: Sendable, Hashable {
    case server, client
}

/// XORs `bytes` with `key` (big-endian, as on the wire), starting `offset` bytes into the payload:
/// masking and unmasking are the same operation.
public func webSocketMask(_ bytes: UnsafeMutableRawBufferPointer, key: UInt32, offset: Int) {
    let keyBytes: (UInt8, UInt8, UInt8, UInt8) = (UInt8(key >> 24), UInt8(truncatingIfNeeded: key >> 16),
                                                  UInt8(truncatingIfNeeded: key >> 8), UInt8(truncatingIfNeeded: key))
    var index = 0
    var phase = offset & 3
    // Byte by byte up to a 4-byte phase boundary, then a word at a time.
    while index < bytes.count && phase != 0 {
        bytes[index] ^= phase == 1 ? keyBytes.1 : (phase == 2 ? keyBytes.2 : keyBytes.3)
        index += 1
        phase = (phase + 1) & 3
    }
    // The key repeated over 8 bytes, in memory order (so it works whatever the byte order).
    let pattern = (keyBytes.0, keyBytes.1, keyBytes.2, keyBytes.3, keyBytes.0, keyBytes.1, keyBytes.2, keyBytes.3)
    let word = withUnsafeBytes(of: pattern) { $0.loadUnaligned(as: UInt64.self) }
    while index + 8 <= bytes.count {
        let value = bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self)
        bytes.storeBytes(of: value ^ word, toByteOffset: index, as: UInt64.self)
        index += 8
    }
    var tailPhase = 0
    while index < bytes.count {
        bytes[index] ^= tailPhase == 0 ? keyBytes.0 : (tailPhase == 1 ? keyBytes.1 : (tailPhase == 2 ? keyBytes.2 : keyBytes.3))
        index += 1
        tailPhase = (tailPhase + 1) & 3
    }
}
