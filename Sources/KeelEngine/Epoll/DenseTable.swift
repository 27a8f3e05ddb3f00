/// A table of plain values indexed by descriptor or token slot, grown by doubling. Plain memory rather
/// than an Array: each write to an Array kept in the epoll backend's state checked that its buffer
/// was unshared (five such calls per connection opened and closed, callgrind), which a table owned
/// by one backend on one thread never needs.
struct DenseTable<Element: BitwiseCopyable> {
    private var base: UnsafeMutablePointer<Element>
    /// Entries in the table (all initialized).
    private(set) var count: Int

    init(count: Int, filler: Element) {
        base = .allocate(capacity: max(count, 1))
        base.initialize(repeating: filler, count: count)
        self.count = count
    }

    /// Frees the storage; the table must not be used after.
    func deallocate() { base.deallocate() }

    subscript(index: Int) -> Element {
        get {
            precondition(index >= 0 && index < count, "table index out of range")
            return base[index]
        }
        nonmutating set {
            precondition(index >= 0 && index < count, "table index out of range")
            base[index] = newValue
        }
    }

    /// Grows the table so `index` fits, at least doubling it (a process whose descriptor numbers
    /// climb pays a logarithmic number of allocations); new entries are `filler`.
    mutating func grow(toHold index: Int, filler: Element) {
        guard index >= count else { return }
        let newCount = max(index + 1, count * 2, 256)
        let bigger = UnsafeMutablePointer<Element>.allocate(capacity: newCount)
        bigger.moveInitialize(from: base, count: count)
        (bigger + count).initialize(repeating: filler, count: newCount - count)
        base.deallocate()
        base = bigger
        count = newCount
    }
}
