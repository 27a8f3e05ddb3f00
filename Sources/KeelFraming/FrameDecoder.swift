import KeelBuffers

/// Finds message boundaries in a byte stream.
///
/// A decoder looks at the bytes that have arrived and says where the next complete frame is, or that
/// more bytes are needed. It never copies: the ``FrameAccumulator`` hands frames to you as pointers
/// into the receive buffers.
public protocol FrameDecoder {
    /// The most bytes one frame (with its header or delimiter) may span. A frame that would be longer
    /// is an error, so a peer cannot make the server hoard memory.
    var maximumFrameBytes: Int { get }

    /// Finds the first complete frame in `bytes`.
    /// - Returns: the frame's payload range within `bytes` and how many bytes it spans in total
    ///   (payload plus framing), or nil when `bytes` holds no complete frame yet.
    /// - Throws: ``FramingError`` for malformed input or a frame over ``maximumFrameBytes``.
    mutating func nextFrame(in bytes: UnsafeRawBufferPointer) throws(FramingError) -> (payload: Range<Int>, length: Int)?

    /// Forgets any scan state (called after each frame and when input is discarded).
    mutating func reset()

    /// The total length (framing included) of the frame that starts at `bytes`, when its header says
    /// so; nil when it cannot be known yet (too few bytes, or a delimited frame). Lets the accumulator
    /// size the region for a frame longer than one buffer exactly. The default: nil.
    /// - Throws: ``FramingError`` when the header announces a frame over ``maximumFrameBytes``.
    mutating func frameLength(in bytes: UnsafeRawBufferPointer) throws(FramingError) -> Int?
}

extension FrameDecoder {
    public mutating func reset() {}
    public mutating func frameLength(in bytes: UnsafeRawBufferPointer) throws(FramingError) -> Int? { nil }
}

/// Malformed or oversized input.
public struct FramingError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What was wrong. New codes may be added without breaking callers.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// The code's name, stable across releases. Layers above may define codes of their own.
        public let name: String

        /// Creates a code (define each once, as a static constant).
        public init(_ name: String) { self.name = name }
        /// A frame is longer than the decoder's maximum.
        public static let frameTooLarge = Code("frameTooLarge")
        /// The bytes do not follow the framing (e.g. a zero or negative length where that is invalid).
        public static let malformed = Code("malformed")

        public var description: String { name }
    }

    /// The kind of error.
    public var code: Code
    /// Details for logs.
    public var context: String

    /// Creates an error.
    public init(_ code: Code, _ context: String) {
        self.code = code
        self.context = context
    }

    public var description: String { "framing \(code): \(context)" }
}

/// Frames that end with a delimiter byte (default `\n`; a preceding `\r` is stripped from the payload).
public struct LineDecoder: FrameDecoder {
    public let maximumFrameBytes: Int
    /// The byte that ends a frame.
    public let delimiter: UInt8
    /// Drop a `\r` just before the delimiter from the payload.
    public let stripsCarriageReturn: Bool
    /// How far the current partial frame has been scanned without finding a delimiter.
    private var scanned = 0

    /// Creates a line decoder.
    public init(maximumLineBytes: Int = 8192, delimiter: UInt8 = UInt8(ascii: "\n"), stripsCarriageReturn: Bool = true) {
        precondition(maximumLineBytes > 0)
        self.maximumFrameBytes = maximumLineBytes
        self.delimiter = delimiter
        self.stripsCarriageReturn = stripsCarriageReturn
    }

    public mutating func nextFrame(in bytes: UnsafeRawBufferPointer) throws(FramingError) -> (payload: Range<Int>, length: Int)? {
        var index = min(scanned, bytes.count)
        while index < bytes.count {
            if bytes[index] == delimiter {
                scanned = 0
                var end = index
                if stripsCarriageReturn && end > 0 && bytes[end - 1] == UInt8(ascii: "\r") { end -= 1 }
                return (0..<end, index + 1)
            }
            index += 1
            if index >= maximumFrameBytes {
                throw FramingError(.frameTooLarge, "no delimiter within \(maximumFrameBytes) bytes")
            }
        }
        scanned = index
        return nil
    }

    public mutating func reset() { scanned = 0 }
}

/// Frames preceded by a big-endian length of 1, 2, 4 or 8 bytes (the length counts the payload only).
/// Payloads may be longer than a pool buffer (set `maximumPayloadBytes`, e.g. 16 MiB): the accumulator
/// gathers them in a region sized from the length field.
public struct LengthPrefixedDecoder: FrameDecoder {
    public let maximumFrameBytes: Int
    /// Width of the length field in bytes.
    public let prefixBytes: Int

    /// Creates a length-prefixed decoder.
    public init(prefixBytes: Int = 4, maximumPayloadBytes: Int = 16 * 1024 - 4) {
        precondition([1, 2, 4, 8].contains(prefixBytes), "prefixBytes must be 1, 2, 4 or 8")
        self.prefixBytes = prefixBytes
        self.maximumFrameBytes = maximumPayloadBytes + prefixBytes
    }

    public mutating func nextFrame(in bytes: UnsafeRawBufferPointer) throws(FramingError) -> (payload: Range<Int>, length: Int)? {
        guard let total = try frameLength(in: bytes), bytes.count >= total else { return nil }
        return (prefixBytes..<total, total)
    }

    public mutating func frameLength(in bytes: UnsafeRawBufferPointer) throws(FramingError) -> Int? {
        guard bytes.count >= prefixBytes else { return nil }
        var length: UInt64 = 0
        for i in 0..<prefixBytes { length = length << 8 | UInt64(bytes[i]) }
        guard length <= UInt64(maximumFrameBytes - prefixBytes) else {
            throw FramingError(.frameTooLarge, "length \(length) exceeds \(maximumFrameBytes - prefixBytes)")
        }
        return prefixBytes + Int(length)
    }
}

/// Frames of one fixed size.
public struct FixedSizeDecoder: FrameDecoder {
    /// The size of every frame.
    public let frameBytes: Int
    public var maximumFrameBytes: Int { frameBytes }

    /// Creates a fixed-size decoder.
    public init(frameBytes: Int) {
        precondition(frameBytes > 0)
        self.frameBytes = frameBytes
    }

    public mutating func nextFrame(in bytes: UnsafeRawBufferPointer) throws(FramingError) -> (payload: Range<Int>, length: Int)? {
        bytes.count >= frameBytes ? (0..<frameBytes, frameBytes) : nil
    }

    public mutating func frameLength(in bytes: UnsafeRawBufferPointer) throws(FramingError) -> Int? { frameBytes }
}
