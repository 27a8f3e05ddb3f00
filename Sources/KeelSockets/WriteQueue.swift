import CKeelLinux
import Glibc
import KeelBuffers

/// A connection's queued writes, in order: owned (detached) buffers and shared broadcast buffers.
///
/// A growable ring of plain items; steady state allocates nothing. ``fillIOVecs(_:maximum:)`` describes
/// the head of the queue for one `sendmsg`, and ``consume(_:)`` drops what the kernel took, releasing
/// finished buffers.
///
/// **Zero-copy sends:** the kernel may read a zero-copy send's buffers until its notification, after
/// the send completed. Meanwhile the connection passes `retiringInto`: items leaving the queue move
/// there instead of being released, and are released together once no notification is pending.
struct WriteQueue {
    enum Item {
        case owned(DetachedBuffer)
        case shared(SharedBuffer, offset: Int)

        @inline(__always)
        var readableRegion: UnsafeRawBufferPointer {
            switch self {
            case .owned(let buffer): return buffer.readableRegion
            case .shared(let buffer, let offset):
                return UnsafeRawBufferPointer(rebasing: buffer.unsafeReadableBytes[offset...])
            }
        }
    }

    private var storage: UnsafeMutablePointer<Item>
    private var capacity: Int
    private var head = 0
    private(set) var count = 0
    /// Bytes queued and not yet sent.
    private(set) var bytes = 0

    /// Storage is allocated on the first append (an idle connection's queue costs nothing).
    init() {
        capacity = 0
        storage = UnsafeMutablePointer(bitPattern: MemoryLayout<Item>.alignment)!  // never read at capacity 0
    }

    /// Releases everything queued and frees the storage.
    mutating func deallocate() {
        removeAll()
        if capacity > 0 { storage.deallocate() }
    }

    var isEmpty: Bool { count == 0 }

    /// Queues `item`, whose readable bytes number `size` (the caller has measured it already).
    @inline(__always)
    mutating func append(_ item: consuming Item, size: Int) {
        if count == capacity { grow() }
        (storage + ((head + count) & (capacity - 1))).initialize(to: item)
        count += 1
        bytes += size
    }

    /// The bytes of the only queued item (nil unless exactly one is queued): a send of one buffer needs
    /// no iovec array.
    @inline(__always)
    var onlyRegion: UnsafeRawBufferPointer? {
        count == 1 ? storage[head].readableRegion : nil
    }

    /// Fills `vectors` with up to `maximum` leading items. - Returns: how many were filled.
    func fillIOVecs(_ vectors: UnsafeMutablePointer<iovec>, maximum: Int) -> Int {
        let n = min(count, maximum)
        for i in 0..<n {
            let region = storage[(head + i) & (capacity - 1)].readableRegion
            vectors[i] = iovec(iov_base: UnsafeMutableRawPointer(mutating: region.baseAddress), iov_len: region.count)
        }
        return n
    }

    /// Drops `sent` bytes from the front, releasing finished items (or retiring them into `retired`).
    @inline(__always)
    mutating func consume(_ sent: Int, retiringInto retired: UnsafeMutablePointer<WriteQueue>? = nil) {
        bytes -= sent
        if bytes == 0 {  // everything went (the usual case): no need to measure each item
            while count > 0 { popFront(retiringInto: retired) }
            return
        }
        consumePart(sent, retiringInto: retired)
    }

    /// ``consume(_:retiringInto:)`` when bytes stay queued: items are measured to find where the sent
    /// bytes end.
    private mutating func consumePart(_ sent: Int, retiringInto retired: UnsafeMutablePointer<WriteQueue>?) {
        var remaining = sent
        while remaining > 0 {
            let slot = storage + head
            let available = slot.pointee.readableRegion.count
            if remaining < available {
                switch slot.pointee {
                case .owned(var buffer):
                    buffer.consume(remaining)
                    slot.pointee = .owned(buffer)
                case .shared(let buffer, let offset):
                    slot.pointee = .shared(buffer, offset: offset + remaining)
                }
                return
            }
            remaining -= available
            popFront(retiringInto: retired)
        }
    }

    /// Removes and releases the oldest item at or after position `start` (items before it are part of
    /// a send in flight). - Returns: the bytes dropped, or nil when there is no such item.
    mutating func dropOldest(after start: Int, retiringInto retired: UnsafeMutablePointer<WriteQueue>? = nil) -> Int? {
        guard start < count else { return nil }
        let victim = storage + ((head + start) & (capacity - 1))
        let dropped = victim.pointee.readableRegion.count
        dispose(victim.move(), retiringInto: retired)
        // Close the gap: shift the later items one place toward the front.
        for i in start..<(count - 1) {
            (storage + ((head + i) & (capacity - 1))).moveInitialize(from: storage + ((head + i + 1) & (capacity - 1)), count: 1)
        }
        count -= 1
        bytes -= dropped
        return dropped
    }

    /// Releases the items from position `keeping` on (the first `keeping` stay: a send in flight still
    /// reads them).
    mutating func truncate(keeping: Int, retiringInto retired: UnsafeMutablePointer<WriteQueue>? = nil) {
        while count > keeping {
            let item = (storage + ((head + count - 1) & (capacity - 1))).move()
            bytes -= item.readableRegion.count
            count -= 1
            dispose(item, retiringInto: retired)
        }
    }

    /// Releases (or retires) every queued item.
    mutating func removeAll(retiringInto retired: UnsafeMutablePointer<WriteQueue>? = nil) {
        while count > 0 { popFront(retiringInto: retired) }
        bytes = 0
    }

    @inline(__always)
    private mutating func popFront(retiringInto retired: UnsafeMutablePointer<WriteQueue>?) {
        let item = (storage + head).move()
        head = (head + 1) & (capacity - 1)
        count -= 1
        dispose(item, retiringInto: retired)
    }

    /// Releases `item`, or keeps it in `retired` while the kernel may still read it.
    @inline(__always)
    private func dispose(_ item: consuming Item, retiringInto retired: UnsafeMutablePointer<WriteQueue>?) {
        if let retired {
            let size = item.readableRegion.count
            retired.pointee.append(item, size: size)
        } else if case .owned(let buffer) = item {
            buffer.release()
        }
    }

    private mutating func grow() {
        let newCapacity = max(4, capacity * 2)
        let bigger = UnsafeMutablePointer<Item>.allocate(capacity: newCapacity)
        for i in 0..<count { (bigger + i).moveInitialize(from: storage + ((head + i) & (capacity - 1)), count: 1) }
        if capacity > 0 { storage.deallocate() }
        storage = bigger
        capacity = newCapacity
        head = 0
    }
}
