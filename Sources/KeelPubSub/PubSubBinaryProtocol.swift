import KeelBuffers

/// keel-pubsub's length-prefixed binary protocol, for payloads that may hold any byte (newlines
/// included). Every frame, either way, is:
///
/// ```
///  u32 length (big-endian, of what follows) | u8 kind | u16 topic length (big-endian) | topic | payload
/// ```
///
/// Client kinds: `S` subscribe, `U` unsubscribe, `P` publish (the payload is the message), `I` ping
/// (no topic). Server kinds: `M` a delivery (the published topic and payload), `O` a reply to
/// subscribe or unsubscribe (the topic, and `SUBSCRIBE` or `UNSUBSCRIBE` as payload), `G` the answer to
/// a ping, `E` an error (no topic; the reason as payload). Topics follow the line protocol's rules
/// (UTF-8, no spaces, at most ``PubSubLineProtocol/maximumTopicBytes``, a trailing `*` for a pattern).
public enum PubSubBinaryProtocol {
    /// Bytes before the topic: the length, the kind and the topic's length.
    public static let headerBytes = 7

    /// The kinds of frame.
    public enum Kind: UInt8, Sendable {
        case subscribe = 0x53  // S
        case unsubscribe = 0x55  // U
        case publish = 0x50  // P
        case ping = 0x49  // I
        case message = 0x4D  // M
        case ok = 0x4F  // O
        case pong = 0x47  // G
        case error = 0x45  // E
    }

    /// Parses one frame's body (what follows its length field).
    /// - Returns: the command; a publication's payload range is within `body`.
    public static func parse(_ body: UnsafeRawBufferPointer) throws(PubSubProtocolError) -> PubSubCommand {
        guard body.count >= 3 else { throw PubSubProtocolError("frame shorter than its kind and topic length") }
        let topicBytes = Int(body[1]) << 8 | Int(body[2])
        guard 3 + topicBytes <= body.count else { throw PubSubProtocolError("topic length \(topicBytes) runs past the frame") }
        let topicRange = 3..<(3 + topicBytes)
        switch Kind(rawValue: body[0]) {
        case .ping:
            guard body.count == 3 else { throw PubSubProtocolError("ping takes no topic or payload") }
            return .ping
        case .subscribe, .unsubscribe:
            guard topicRange.upperBound == body.count else { throw PubSubProtocolError("subscribe and unsubscribe take no payload") }
            let verb = body[0] == Kind.subscribe.rawValue ? "SUBSCRIBE" : "UNSUBSCRIBE"
            let filter = try PubSubLineProtocol.filter(body, from: topicRange.lowerBound, to: topicRange.upperBound, verb: verb)
            return body[0] == Kind.subscribe.rawValue ? .subscribe(filter) : .unsubscribe(filter)
        case .publish:
            let topic = try PubSubLineProtocol.publishedTopic(body, from: topicRange.lowerBound, to: topicRange.upperBound)
            return .publish(topic: topic, payload: topicRange.upperBound..<body.count)
        default:
            throw PubSubProtocolError("unknown frame kind \(body[0]); kinds are S, U, P and I")
        }
    }

    /// The bytes of a frame with `topicBytes` and `payloadBytes`.
    public static func frameLength(topicBytes: Int, payloadBytes: Int) -> Int { headerBytes + topicBytes + payloadBytes }

    /// Writes one frame into `buffer` (which must have room: ``frameLength(topicBytes:payloadBytes:)``).
    public static func write(_ kind: Kind, topic: some Collection<UInt8>, payload: UnsafeRawBufferPointer, into buffer: inout IOBuffer) {
        let length = UInt32(3 + topic.count + payload.count)
        let topicLength = UInt16(topic.count)
        let header = (
            UInt8(truncatingIfNeeded: length >> 24), UInt8(truncatingIfNeeded: length >> 16),
            UInt8(truncatingIfNeeded: length >> 8), UInt8(truncatingIfNeeded: length), kind.rawValue,
            UInt8(truncatingIfNeeded: topicLength >> 8), UInt8(truncatingIfNeeded: topicLength))
        _ = withUnsafeBytes(of: header) { buffer.append($0) }  // a tuple of bytes: no array to allocate
        buffer.append(contentsOf: topic)
        buffer.append(payload)
    }
}
