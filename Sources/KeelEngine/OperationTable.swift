/// The in-flight operations of one I/O thread: a flat table of slots addressed by ``Token``.
///
/// A slot holds the operation's completion handler, retained (or, for handlers their owner keeps
/// alive, unretained), until the kernel (or the epoll backend) reports the final result; dispatch
/// borrows it without reference counting.
/// Each reuse of a slot bumps its 24-bit generation, so a stale completion for an earlier use is
/// detected and ignored. The table grows by doubling and never shrinks, so steady state allocates
/// nothing here.
///
/// **Threading:** owned by one ``IOThread``; stored inside its loop state (behind a pointer) so
/// mutation costs no exclusivity checks.
struct OperationTable {
    struct Slot {
        var generation: UInt32
        var nextFree: UInt32
        var handler: Unmanaged<IOCompletionHandler>?
    }

    private var slots: UnsafeMutablePointer<Slot>
    private var capacity: Int
    private var freeHead: UInt32
    /// Operations submitted and not yet completed.
    private(set) var inFlight: Int = 0

    private static let end = UInt32.max
    /// A slot in use keeps `end` in `nextFree` when it retains its handler, this when it does not.
    private static let inUseUnretained = UInt32.max - 1

    init(initialCapacity: Int = 256) {
        capacity = initialCapacity
        slots = .allocate(capacity: initialCapacity)
        for i in 0..<initialCapacity {
            (slots + i).initialize(to: Slot(generation: 0, nextFree: i + 1 < initialCapacity ? UInt32(i + 1) : Self.end))
        }
        freeHead = 0
    }

    /// Frees the storage. Handlers still held are released (those retained) without being called.
    mutating func deallocate() {
        for i in 0..<capacity where slots[i].nextFree == Self.end { slots[i].handler?.release() }
        slots.deinitialize(count: capacity)
        slots.deallocate()
        capacity = 0
    }

    /// Reserves a slot for `handler` (retaining it unless `retains` is false: then its owner keeps it
    /// alive until the final completion) and returns its token.
    @inline(__always)
    mutating func insert(_ handler: IOCompletionHandler, retains: Bool = true) -> Token {
        if freeHead == Self.end { grow() }
        let slot = freeHead
        freeHead = slots[Int(slot)].nextFree
        slots[Int(slot)].handler = retains ? .passRetained(handler) : .passUnretained(handler)
        slots[Int(slot)].nextFree = retains ? Self.end : Self.inUseUnretained
        inFlight += 1
        return Token(kind: .callback, generation: slots[Int(slot)].generation, slot: slot)
    }

    /// Takes the handler for `token` and frees its slot, or returns nil for a stale or unknown token.
    /// `retained`: the table held it retained, and the caller releases it.
    mutating func remove(_ token: Token) -> (handler: Unmanaged<IOCompletionHandler>, retained: Bool)? {
        let slot = Int(token.slot)
        guard slot < capacity, slots[slot].generation == token.generation,
            let handler = slots[slot].handler
        else { return nil }
        let retained = slots[slot].nextFree == Self.end
        slots[slot].handler = nil
        slots[slot].generation = (slots[slot].generation &+ 1) & Token.generationMask
        slots[slot].nextFree = freeHead
        freeHead = token.slot
        inFlight -= 1
        return (handler, retained)
    }

    /// The handler for `token` without freeing its slot (a multishot operation that stays armed).
    /// Unretained: the slot keeps it alive until the operation's final completion.
    func lookup(_ token: Token) -> Unmanaged<IOCompletionHandler>? {
        let slot = Int(token.slot)
        guard slot < capacity, slots[slot].generation == token.generation else { return nil }
        return slots[slot].handler
    }

    /// True when `token` names an operation still in flight.
    func contains(_ token: Token) -> Bool {
        let slot = Int(token.slot)
        return slot < capacity && slots[slot].generation == token.generation && slots[slot].handler != nil
    }

    /// The tokens of all operations in flight.
    func inFlightTokens() -> [Token] {
        var tokens: [Token] = []
        for i in 0..<capacity where slots[i].handler != nil {
            tokens.append(Token(kind: .callback, generation: slots[i].generation, slot: UInt32(i)))
        }
        return tokens
    }

    private mutating func grow() {
        let newCapacity = capacity * 2
        let newSlots = UnsafeMutablePointer<Slot>.allocate(capacity: newCapacity)
        newSlots.moveInitialize(from: slots, count: capacity)
        for i in capacity..<newCapacity {
            (newSlots + i).initialize(
                to: Slot(generation: 0, nextFree: i + 1 < newCapacity ? UInt32(i + 1) : Self.end))
        }
        slots.deallocate()
        freeHead = UInt32(capacity)
        slots = newSlots
        capacity = newCapacity
    }
}
