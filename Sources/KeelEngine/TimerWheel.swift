/// Identifies a timer on its ``IOThread``, for cancelling and resetting it. A handle whose timer has
/// fired (one-shot) or been cancelled is stale: using it does nothing.
public struct TimerHandle: Hashable, Sendable {
    let index: Int32
    let generation: UInt32
}

/// A hashed timing wheel on the monotonic clock with 1 ms ticks: O(1) set, reset and cancel.
///
/// ```
///  slots (4096 × 1 ms)              due list (fired in order)
///  [t0] -> a -> b        tick ─▶    head -> a -> b
///  [t1]                              (re-armed repeating timers go back into the wheel)
///  ...   timers further out than one turn wait in their slot for later rounds
/// ```
///
/// Timers live in a flat node table (index + generation handles, free list); each slot is an
/// intrusive doubly linked list, so cancel unlinks in O(1). A bitmap of non-empty slots finds the
/// next deadline in at most 64 word scans. Deadlines round up to the next tick, so a timer never
/// fires early; it fires within about a millisecond of its deadline when the loop is not busy.
///
/// **Threading:** owned by one ``IOThread``.
struct TimerWheel {
    static let tickNanoseconds: UInt64 = 1_000_000
    static let slotCount = 4096
    private static let dueList = slotCount  // index of the due list in heads/tails

    private struct Node {
        var deadline: UInt64 = 0  // in ticks
        var interval: UInt64 = 0  // in ticks, 0 for one-shot
        var generation: UInt32 = 0
        var list: Int32 = -1  // slot index, dueList, or -1 when free
        var previous: Int32 = -1
        var next: Int32 = -1
        var callback: (() -> Void)? = nil
    }

    private var nodes: UnsafeMutablePointer<Node>
    private var nodeCapacity: Int
    private var freeHead: Int32
    private let heads: UnsafeMutablePointer<Int32>
    private let tails: UnsafeMutablePointer<Int32>
    private let occupied: UnsafeMutablePointer<UInt64>  // one bit per slot
    /// The last tick processed; deadlines at or before it are due.
    private(set) var currentTick: UInt64
    /// Timers pending (armed).
    private(set) var count = 0

    init(nowNanoseconds: UInt64, initialCapacity: Int = 1024) {
        nodeCapacity = initialCapacity
        nodes = .allocate(capacity: initialCapacity)
        for i in 0..<initialCapacity {
            (nodes + i).initialize(to: Node(next: i + 1 < initialCapacity ? Int32(i + 1) : -1))
        }
        freeHead = 0
        heads = .allocate(capacity: Self.slotCount + 1)
        heads.initialize(repeating: -1, count: Self.slotCount + 1)
        tails = .allocate(capacity: Self.slotCount + 1)
        tails.initialize(repeating: -1, count: Self.slotCount + 1)
        occupied = .allocate(capacity: Self.slotCount / 64)
        occupied.initialize(repeating: 0, count: Self.slotCount / 64)
        currentTick = nowNanoseconds / Self.tickNanoseconds
    }

    /// Frees the storage; pending callbacks are dropped without running.
    mutating func deallocate() {
        nodes.deinitialize(count: nodeCapacity)
        nodes.deallocate()
        heads.deallocate()
        tails.deallocate()
        occupied.deallocate()
        count = 0
    }

    // MARK: Set, reset, cancel

    /// Arms a timer `delay` nanoseconds after `now`, repeating every `interval` nanoseconds if not nil.
    mutating func schedule(
        nowNanoseconds now: UInt64, delay: UInt64, interval: UInt64?, _ callback: @escaping () -> Void
    ) -> TimerHandle {
        if freeHead < 0 { grow() }
        // With no timer armed the loop does not read the clock, so the wheel's tick may lag: catch up
        // (nothing can be due in the ticks skipped).
        if count == 0 && now / Self.tickNanoseconds > currentTick { currentTick = now / Self.tickNanoseconds }
        let index = freeHead
        freeHead = nodes[Int(index)].next
        nodes[Int(index)].callback = callback
        nodes[Int(index)].interval = interval.map { max(1, Self.ticks(roundingUp: $0)) } ?? 0
        nodes[Int(index)].deadline = deadlineTick(now: now, delay: delay)
        link(index)
        count += 1
        return TimerHandle(index: index, generation: nodes[Int(index)].generation)
    }

    /// Moves a pending timer's deadline to `delay` after `now` (repeating timers keep their interval).
    /// - Returns: false when the handle is stale.
    mutating func reset(_ handle: TimerHandle, nowNanoseconds now: UInt64, delay: UInt64) -> Bool {
        guard isPending(handle) else { return false }
        unlink(handle.index)
        nodes[Int(handle.index)].deadline = deadlineTick(now: now, delay: delay)
        link(handle.index)
        return true
    }

    /// Disarms a timer. - Returns: false when the handle is stale (already fired or cancelled).
    @discardableResult
    mutating func cancel(_ handle: TimerHandle) -> Bool {
        guard isPending(handle) else { return false }
        unlink(handle.index)
        release(handle.index)
        return true
    }

    /// True while the timer is armed.
    func isPending(_ handle: TimerHandle) -> Bool {
        handle.index >= 0 && Int(handle.index) < nodeCapacity && nodes[Int(handle.index)].generation == handle.generation
            && nodes[Int(handle.index)].list >= 0
    }

    // MARK: Time

    /// Nanoseconds from `now` until the next slot with timers is due; nil when no timer is armed.
    /// May be earlier than the real deadline (a slot can hold timers of later rounds), never later.
    func nanosecondsUntilNextTimer(nowNanoseconds now: UInt64) -> UInt64? {
        if count == 0 { return nil }
        if heads[Self.dueList] >= 0 { return 0 }
        let nowTick = now / Self.tickNanoseconds
        guard let distance = distanceToNextOccupiedSlot() else { return nil }
        let dueTick = currentTick + UInt64(distance)
        if dueTick <= nowTick { return 0 }
        return dueTick * Self.tickNanoseconds - now
    }

    /// Fires every timer whose deadline is at or before `now`, in deadline order (insertion order within
    /// a tick). Callbacks may set, reset and cancel timers, including their own.
    /// - Returns: how many callbacks ran.
    @discardableResult
    mutating func fireExpired(nowNanoseconds now: UInt64) -> Int {
        let target = now / Self.tickNanoseconds
        var fired = 0
        while currentTick < target || heads[Self.dueList] >= 0 {
            if heads[Self.dueList] < 0 {
                guard count > 0 else {
                    currentTick = target
                    break
                }
                // Skip empty slots quickly; a full turn without finding work jumps straight to `target`.
                let distance = distanceToNextOccupiedSlot() ?? Self.slotCount
                if currentTick + UInt64(distance) > target {
                    currentTick = target
                    break
                }
                currentTick += UInt64(distance)
                collectDue(slot: Int(currentTick % UInt64(Self.slotCount)), upTo: currentTick)
                continue
            }
            let index = heads[Self.dueList]
            unlink(index)
            if nodes[Int(index)].interval > 0 {
                nodes[Int(index)].deadline = max(nodes[Int(index)].deadline + nodes[Int(index)].interval, currentTick + 1)
                link(index)
                let callback = nodes[Int(index)].callback
                callback?()
            } else {
                let callback = nodes[Int(index)].callback
                release(index)
                callback?()
            }
            fired += 1
        }
        return fired
    }

    // MARK: Internals

    private static func ticks(roundingUp nanoseconds: UInt64) -> UInt64 {
        (nanoseconds + tickNanoseconds - 1) / tickNanoseconds
    }

    private func deadlineTick(now: UInt64, delay: UInt64) -> UInt64 {
        max(Self.ticks(roundingUp: now &+ delay), currentTick + 1)
    }

    /// Moves the timers of `slot` due at or before `tick` to the due list, keeping their order.
    private mutating func collectDue(slot: Int, upTo tick: UInt64) {
        var index = heads[slot]
        while index >= 0 {
            let next = nodes[Int(index)].next
            if nodes[Int(index)].deadline <= tick {
                unlink(index)
                append(index, to: Self.dueList)
            }
            index = next
        }
    }

    private func distanceToNextOccupiedSlot() -> Int? {
        // Scan the bitmap from the slot after currentTick, wrapping once.
        let start = Int((currentTick + 1) % UInt64(Self.slotCount))
        var offset = 0
        while offset < Self.slotCount {
            let slot = (start + offset) % Self.slotCount
            let word = occupied[slot / 64] >> UInt64(slot % 64)
            if word != 0 {
                let found = offset + word.trailingZeroBitCount
                return found < Self.slotCount ? found + 1 : nil
            }
            offset += 64 - slot % 64
        }
        return nil
    }

    private mutating func link(_ index: Int32) {
        let deadline = nodes[Int(index)].deadline
        let slot = deadline <= currentTick ? Self.dueList : Int(deadline % UInt64(Self.slotCount))
        append(index, to: slot)
    }

    private mutating func append(_ index: Int32, to list: Int) {
        nodes[Int(index)].list = Int32(list)
        nodes[Int(index)].next = -1
        nodes[Int(index)].previous = tails[list]
        if tails[list] >= 0 { nodes[Int(tails[list])].next = index } else { heads[list] = index }
        tails[list] = index
        if list < Self.slotCount { occupied[list / 64] |= 1 << UInt64(list % 64) }
    }

    private mutating func unlink(_ index: Int32) {
        let list = Int(nodes[Int(index)].list)
        let previous = nodes[Int(index)].previous
        let next = nodes[Int(index)].next
        if previous >= 0 { nodes[Int(previous)].next = next } else { heads[list] = next }
        if next >= 0 { nodes[Int(next)].previous = previous } else { tails[list] = previous }
        if list < Self.slotCount && heads[list] < 0 { occupied[list / 64] &= ~(1 << UInt64(list % 64)) }
        nodes[Int(index)].list = -1
    }

    private mutating func release(_ index: Int32) {
        nodes[Int(index)].callback = nil
        nodes[Int(index)].generation &+= 1
        nodes[Int(index)].list = -1
        nodes[Int(index)].next = freeHead
        freeHead = index
        count -= 1
    }

    private mutating func grow() {
        let newCapacity = nodeCapacity * 2
        let newNodes = UnsafeMutablePointer<Node>.allocate(capacity: newCapacity)
        newNodes.moveInitialize(from: nodes, count: nodeCapacity)
        for i in nodeCapacity..<newCapacity {
            (newNodes + i).initialize(to: Node(next: i + 1 < newCapacity ? Int32(i + 1) : -1))
        }
        nodes.deallocate()
        freeHead = Int32(nodeCapacity)
        nodes = newNodes
        nodeCapacity = newCapacity
    }
}
