/// Checks bytes for UTF-8 incrementally (a text message arrives in fragments and pieces), failing at
/// the first byte that cannot be part of valid UTF-8 (RFC 3629: no overlong forms, no surrogates,
/// nothing above U+10FFFF), so a connection can be failed without waiting for the rest.
public struct UTF8Validator: Sendable, Hashable {
    /// Continuation bytes the current character still needs.
    private var remaining = 0
    /// The range the next continuation byte must fall in (narrower after E0, ED, F0 and F4).
    private var lower: UInt8 = 0x80
    private var upper: UInt8 = 0xBF

    /// A validator at the start of a text.
    public init() {}

    /// True when the bytes so far end on a character boundary.
    public var isAtCharacterBoundary: Bool { remaining == 0 }

    /// Feeds `bytes`; false at the first byte that makes the text invalid (feed no more after that).
    public mutating func validate(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var index = 0
        let count = bytes.count
        while index < count {
            if remaining == 0 {
                // ASCII runs, eight bytes at a time.
                while index + 8 <= count && bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self) & 0x8080_8080_8080_8080 == 0 {
                    index += 8
                }
                guard index < count else { return true }
                let byte = bytes[index]
                index += 1
                if byte < 0x80 { continue }
                switch byte {
                case 0xC2...0xDF: start(1, 0x80, 0xBF)
                case 0xE0: start(2, 0xA0, 0xBF)  // no overlong three-byte forms
                case 0xE1...0xEC, 0xEE...0xEF: start(2, 0x80, 0xBF)
                case 0xED: start(2, 0x80, 0x9F)  // no UTF-16 surrogates
                case 0xF0: start(3, 0x90, 0xBF)  // no overlong four-byte forms
                case 0xF1...0xF3: start(3, 0x80, 0xBF)
                case 0xF4: start(3, 0x80, 0x8F)  // nothing above U+10FFFF
                default: return false
                }
            } else {
                let byte = bytes[index]
                guard byte >= lower && byte <= upper else { return false }
                index += 1
                remaining -= 1
                lower = 0x80
                upper = 0xBF
            }
        }
        return true
    }

    private mutating func start(_ continuations: Int, _ low: UInt8, _ high: UInt8) {
        remaining = continuations
        lower = low
        upper = high
    }
}
