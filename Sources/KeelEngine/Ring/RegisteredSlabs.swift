import CKeelLinux
import Glibc
import Logging

/// The buffer pool's slabs registered with one ring as fixed buffers (``KernelFeatures/registeredBuffers``):
/// slab N in buffer-table slot N, entered as the pool maps it. Looks up which slot holds all of a send's
/// memory, so a zero-copy send can name it and the kernel need not pin the pages of each send.
///
/// **Threading:** the ring's thread only (the pool's owner, which maps slabs there).
final class RegisteredSlabs {
    /// One registered slab: its address range and table slot.
    private struct Region {
        let start: UInt
        let end: UInt
        let slot: UInt16
    }

    private let ringFD: Int32
    private let slots: UInt32
    /// Registered slabs, sorted by address.
    private var regions: [Region] = []
    /// Slabs the kernel refused (past the memlock limit, say): their sends go without.
    private(set) var refused = 0

    init(ringFD: Int32, slots: UInt32) {
        self.ringFD = ringFD
        self.slots = slots
    }

    /// Enters a slab in slot `index` (a synchronous `io_uring_register`). A refusal is logged once and
    /// leaves the slab out.
    func register(index: Int, base: UnsafeMutableRawPointer, length: Int) {
        guard index >= 0, UInt32(index) < slots else { return }
        guard ckeel_register_buffer(ringFD, UInt32(index), base, length) == 0 else {
            if refused == 0 {
                BackendKind.logger.notice(
                    "registering pool slab \(index) with the ring failed (errno \(ckeel_errno())): its zero-copy sends pin pages per send")
            }
            refused += 1
            return
        }
        let region = Region(start: UInt(bitPattern: base), end: UInt(bitPattern: base) + UInt(length), slot: UInt16(index))
        let position = regions.firstIndex { $0.start > region.start } ?? regions.endIndex
        regions.insert(region, at: position)
    }

    /// The slot whose slab holds every byte `message`'s iovecs name, or nil (memory from another
    /// thread's pool, or spread over several slabs).
    func slot(holding message: UnsafePointer<msghdr>) -> UInt16? {
        let count = Int(message.pointee.msg_iovlen)
        guard count > 0, let vectors = message.pointee.msg_iov else { return nil }
        guard let region = region(containing: UInt(bitPattern: vectors[0].iov_base)) else { return nil }
        for i in 0..<count {
            let start = UInt(bitPattern: vectors[i].iov_base)
            guard start >= region.start, start + UInt(vectors[i].iov_len) <= region.end else { return nil }
        }
        return region.slot
    }

    /// Binary search for the region whose range holds `address`.
    private func region(containing address: UInt) -> Region? {
        var low = 0
        var high = regions.count
        while low < high {
            let middle = (low + high) / 2
            if regions[middle].start <= address { low = middle + 1 } else { high = middle }
        }
        guard low > 0 else { return nil }
        let candidate = regions[low - 1]
        return address < candidate.end ? candidate : nil
    }
}
