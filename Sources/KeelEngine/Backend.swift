import KeelBuffers
import KeelSystem

/// The backend of one I/O thread. An enum rather than a protocol existential: dispatch is a `switch`,
/// which the compiler inlines (an existential call costs ~90 instructions per completion).
enum Backend {
    case ring(RingBackend)
    case epoll(EpollBackend)
    /// In memory, for deterministic tests (``EmbeddedBackend``): never chosen by a pool.
    case embedded(EmbeddedBackend)

    init(kind: BackendKind, ringEntries: UInt32, pool: BufferPool, providedBuffers: UInt32,
         kernelFeatures: KernelFeatures) throws(SystemError) {
        switch kind {
        case .ioUring:
            self = .ring(try RingBackend(entries: ringEntries, pool: pool, providedBuffers: providedBuffers, features: kernelFeatures))
        case .epoll: self = .epoll(try EpollBackend(pool: pool))
        }
    }

    /// Pooled buffer `index` of those a receive completion carries, as an ``IOBuffer``. Inlined into the
    /// loop's one caller: the call and the switch's set-up cost ~20 instructions per receive (callgrind).
    @inline(__always)
    func takeBuffer(_ completion: IOCompletion, index: Int) -> IOBuffer? {
        switch self {
        case .ring(let ring):
            return ring.takeBuffer(completion, index: index)
        case .epoll(let epoll):
            guard completion.hasBuffer, index == 0 else { return nil }
            return epoll.pool.adoptFromKernel(chunk: completion.bufferChunk, length: Int(completion.result))
        case .embedded(let embedded):
            guard completion.hasBuffer, index == 0 else { return nil }
            return embedded.pool.adoptFromKernel(chunk: completion.bufferChunk, length: Int(completion.result))
        }
    }

    /// How many pooled buffers a receive completion carries: more than one only for an io_uring bundle.
    @inline(__always)
    func bufferCount(_ completion: IOCompletion) -> Int {
        if case .ring(let ring) = self { return ring.bufferCount(completion) }
        return 1
    }

    @inline(__always)
    func push(_ operation: IOOperation, token: Token) {
        switch self {
        case .ring(let ring): ring.push(operation, token: token)
        case .epoll(let epoll): epoll.push(operation, token: token)
        case .embedded(let embedded): embedded.push(operation, token: token)
        }
    }

    /// Enters a socket in the ring's registered file table (io_uring only).
    func registerDescriptor(_ fd: Int32) {
        if case .ring(let ring) = self { ring.registerDescriptor(fd) }
    }

    /// True when direct accepts put connections in the ring's file table.
    var acceptsDirectDescriptors: Bool {
        if case .ring(let ring) = self { return ring.acceptsDirectDescriptors }
        return false
    }

    /// Counts a direct descriptor a direct accept made (io_uring only).
    func noteDirectDescriptor() {
        if case .ring(let ring) = self { ring.noteDirectDescriptor() }
    }

    /// An ordinary descriptor for direct descriptor `fd` (io_uring only; -1 elsewhere, which has none).
    func installedDescriptor(forDirect fd: Int32) -> Int32 {
        if case .ring(let ring) = self { return ring.installedDescriptor(forDirect: fd) }
        return -1
    }

    /// Closes a socket this backend ran operations on (on io_uring, out of the registered file table
    /// and then closed, both with the next submission).
    func closeDescriptor(_ fd: Int32) {
        switch self {
        case .ring(let ring): ring.closeDescriptor(fd)
        case .epoll: Descriptors.close(fd)
        case .embedded(let embedded): embedded.closeDescriptor(fd)
        }
    }

    func cancel(_ token: Token) {
        switch self {
        case .ring(let ring): ring.cancel(token)
        case .epoll(let epoll): epoll.cancel(token)
        case .embedded(let embedded): embedded.cancel(token)
        }
    }

    @inline(__always)
    func submitAndWait(waitNanoseconds: UInt64?) throws(SystemError) {
        switch self {
        case .ring(let ring): try ring.submitAndWait(waitNanoseconds: waitNanoseconds)
        case .epoll(let epoll): try epoll.submitAndWait(waitNanoseconds: waitNanoseconds)
        case .embedded(let embedded): embedded.submitAndWait(waitNanoseconds: waitNanoseconds)
        }
    }

    @inline(__always)
    func drain(_ body: (Token, IOCompletion) -> Void) {
        switch self {
        case .ring(let ring): ring.drain(body)
        case .epoll(let epoll): epoll.drain(body)
        case .embedded(let embedded): embedded.drain(body)
        }
    }

    func wakeup() {
        switch self {
        case .ring(let ring): ring.wakeup()
        case .epoll(let epoll): epoll.wakeup()
        case .embedded(let embedded): embedded.wakeup()
        }
    }

    /// The descriptors the backend itself holds (its ring or epoll instance and its wake-up eventfd).
    var descriptors: [Int32] {
        switch self {
        case .ring(let ring): return [ring.ring.fd, ring.wakeupFD]
        case .epoll(let epoll): return [epoll.epollFD, epoll.wakeupFD]
        case .embedded: return []
        }
    }

    /// The optional io_uring features in use (none on other backends; the embedded one plays zero-copy
    /// send when a test asks).
    var kernelFeatures: KernelFeatures {
        switch self {
        case .ring(let ring): return ring.ring.featuresInUse
        case .epoll: return []
        case .embedded(let embedded): return embedded.simulatesZeroCopySend ? .zeroCopySend : []
        }
    }

    func close() {
        switch self {
        case .ring(let ring): ring.close()
        case .epoll(let epoll): epoll.close()
        case .embedded(let embedded): embedded.close()
        }
    }
}
