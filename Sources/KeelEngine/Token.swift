/// What a completion belongs to; the top byte of a ``Token``.
@usableFromInline
enum OperationKind: UInt8 {
    /// A user operation with a completion closure in the operation table.
    case callback = 1
    /// The backend's wake-up eventfd read.
    case wakeup = 2
    /// A completion nobody waits for (cancel requests, timeout removals).
    case ignored = 3
}

/// A 64-bit io_uring `user_data` value: `[kind:8 | generation:24 | slot:32]`.
///
/// Completions are dispatched by decoding the token, never by dereferencing a pointer: a completion
/// arriving after its slot was reused carries an old generation and is recognised as stale.
@usableFromInline
struct Token: Hashable, Sendable {
    @usableFromInline let rawValue: UInt64

    @inlinable
    init(rawValue: UInt64) { self.rawValue = rawValue }

    @inlinable
    init(kind: OperationKind, generation: UInt32, slot: UInt32) {
        rawValue = UInt64(kind.rawValue) << 56 | UInt64(generation & Token.generationMask) << 32 | UInt64(slot)
    }

    @usableFromInline static let generationMask: UInt32 = (1 << 24) - 1

    @inlinable var kind: OperationKind? { OperationKind(rawValue: UInt8(truncatingIfNeeded: rawValue >> 56)) }
    @inlinable var generation: UInt32 { UInt32(truncatingIfNeeded: rawValue >> 32) & Token.generationMask }
    @inlinable var slot: UInt32 { UInt32(truncatingIfNeeded: rawValue) }

    static let wakeup = Token(kind: .wakeup, generation: 0, slot: 0)
    static let ignored = Token(kind: .ignored, generation: 0, slot: 0)
}
