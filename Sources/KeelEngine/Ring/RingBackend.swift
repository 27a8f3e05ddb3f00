import CKeelLinux
import KeelBuffers
import KeelSystem
import Logging

/// The io_uring backend: operations go to the kernel as SQEs, results come back as CQEs.
///
/// Wake-ups from other threads arrive as the completion of a read on an eventfd that this backend
/// keeps posted.
///
/// **Threading:** one per I/O thread, used only there (``wakeup()`` excepted).
final class RingBackend {
    let ring: Ring
    let wakeupFD: Int32
    /// The 8 bytes the posted eventfd read fills.
    private let wakeupValue: UnsafeMutablePointer<UInt64>
    /// The thread's buffer pool, which stocks the provided-buffer ring.
    let pool: BufferPool
    private let providedBufferCount: UInt32
    /// Registered on first use by a pooled receive, so engines without sockets hold no buffers.
    private(set) var providedBuffers: ProvidedBufferRing? {
        didSet { providedBuffersUnretained = providedBuffers.map { Unmanaged.passUnretained($0) } }
    }
    /// ``providedBuffers`` unretained, for the per-receive calls: a call through the optional stored
    /// property cost a retain and a release per received buffer (the compiler cannot tell the call
    /// leaves the property alone). Valid while ``providedBuffers`` holds the object.
    private var providedBuffersUnretained: Unmanaged<ProvidedBufferRing>?
    /// One byte per slot of the ring's registered file table (slot number = descriptor): 1 while the
    /// descriptor is entered there. Nil without ``KernelFeatures/registeredFiles``.
    private let fileSlotsInUse: UnsafeMutablePointer<UInt8>?
    /// Sockets in the registered file table now: entered by ``registerDescriptor(_:)`` or accepted there
    /// (``noteDirectDescriptor()``).
    private(set) var registeredDescriptorCount = 0
    /// True with ``KernelFeatures/directDescriptors``: direct accepts allocate slots of the file table,
    /// and ``registerDescriptor(_:)`` does nothing (it would overwrite them).
    let acceptsDirectDescriptors: Bool
    /// Per file-table slot, the ordinary descriptor installed for its direct descriptor, or -1. Made on
    /// the first install.
    private var installedDescriptors: UnsafeMutablePointer<Int32>?
    /// Numbers the installs, so each one's completion is told from an earlier one's still in the queue.
    private var installs: UInt32 = 0
    /// The pool's slabs as fixed buffers. Nil without ``KernelFeatures/registeredBuffers``.
    private let registeredSlabs: RegisteredSlabs?
    /// Zero-copy sends that named a registered slab.
    private(set) var registeredBufferSends = 0

    static let providedBufferGroup: UInt16 = 0
    /// Pool buffers one receive bundle takes at most: enough for the gain (one completion per
    /// 64 KiB rather than four), few enough that flow control still bounds what a paused connection
    /// holds to a few buffers more than without bundles.
    static let buffersPerBundle = 4
    /// ``buffersPerBundle`` in bytes.
    private let bundleLimit: UInt32
    /// ``KernelFeatures/completionSkipping`` in use: closes, table updates and cancels, which nobody
    /// waits for, post no completion when they succeed. Failures still post theirs (ignored).
    private let skipsQuietCompletions: Bool

    init(entries: UInt32, pool: BufferPool, providedBuffers: UInt32, features: KernelFeatures) throws(SystemError) {
        self.pool = pool
        bundleLimit = UInt32(pool.bufferSize * RingBackend.buffersPerBundle)
        self.providedBufferCount = providedBuffers
        // The kernel's buffer table holds at most 16,384 entries (IORING_MAX_REG_BUFFERS).
        ring = try Ring(entries: entries, features: features, bufferSlots: UInt32(min(pool.maximumSlabs, 1 << 14)))
        do {
            wakeupFD = try Descriptors.eventFD()
        } catch {
            ring.close()
            throw error
        }
        wakeupValue = .allocate(capacity: 1)
        wakeupValue.initialize(to: 0)
        acceptsDirectDescriptors = ring.featuresInUse.contains(.directDescriptors)
        skipsQuietCompletions = ring.featuresInUse.contains(.completionSkipping)
        if ring.fileTableSlots > 0 {
            let slots = UnsafeMutablePointer<UInt8>.allocate(capacity: Int(ring.fileTableSlots))
            slots.initialize(repeating: 0, count: Int(ring.fileTableSlots))
            fileSlotsInUse = slots
        } else {
            fileSlotsInUse = nil
        }
        if ring.bufferTableSlots > 0 {
            let slabs = RegisteredSlabs(ringFD: ring.fd, slots: ring.bufferTableSlots)
            registeredSlabs = slabs
            pool.observeSlabs { [weak slabs] index, base, length in slabs?.register(index: index, base: base, length: length) }
        } else {
            registeredSlabs = nil
        }
        armWakeup()
    }

    func close() {
        // Closes queued through the ring (``closeDescriptor(_:)``) must still happen.
        try? ring.submitAndWait(waitNanoseconds: 0)
        fileSlotsInUse?.deallocate()
        installedDescriptors?.deallocate()
        if registeredSlabs != nil { pool.observeSlabs(nil) }
        providedBuffers?.close()
        providedBuffers = nil
        ring.close()
        Descriptors.close(wakeupFD)
        wakeupValue.deallocate()
    }

    /// Wakes the I/O thread from any thread.
    func wakeup() { Descriptors.signal(eventFD: wakeupFD) }

    /// Re-posts the eventfd read after its completion.
    func armWakeup() {
        let sqe = nextSQE()
        ckeel_sqe_read(sqe.sqe, wakeupFD, wakeupValue, 8, Token.wakeup.rawValue)
    }

    /// A free SQE; when the queue is full, submits what is queued first (the kernel consumes entries
    /// synchronously on submit, so space appears).
    @inline(__always)
    private func nextSQE() -> (sqe: UnsafeMutablePointer<io_uring_sqe>, index: Int) {
        while true {
            if let entry = ring.nextSQE() { return entry }
            do {
                try ring.submitAndWait(waitNanoseconds: 0)
            } catch {
                preconditionFailure("io_uring submit failed while the SQ was full: \(error)")
            }
        }
    }

    /// Queues `operation` under `token`; it is submitted at the next ``submitAndWait(waitNanoseconds:)``.
    func push(_ operation: IOOperation, token: Token) {
        let (sqe, index) = nextSQE()
        switch operation.core {
        case .nop:
            ckeel_sqe_nop(sqe, token.rawValue)
        case .timeout(let nanoseconds):
            ckeel_sqe_timeout(sqe, ring.timespec(at: index, nanoseconds: nanoseconds), token.rawValue)
        case .read(let fd, let address, let length):
            ckeel_sqe_read(sqe, fd, UnsafeMutableRawPointer(bitPattern: address), length, token.rawValue)
        case .write(let fd, let address, let length):
            ckeel_sqe_write(sqe, fd, UnsafeRawPointer(bitPattern: address), length, token.rawValue)
        case .accept(let fd, let multishot, let direct):
            if direct && acceptsDirectDescriptors {
                ckeel_sqe_accept_direct(sqe, fd, multishot ? 1 : 0, token.rawValue)
            } else {
                ckeel_sqe_accept(sqe, fd, multishot ? 1 : 0, token.rawValue)
            }
        case .receive(let fd, let address, let length):
            ckeel_sqe_recv(sqe, fd, UnsafeMutableRawPointer(bitPattern: address), length, 0, token.rawValue)
        case .receivePooled(let fd, let multishot):
            let group = ensureProvidedBuffers()
            if multishot {
                ckeel_sqe_recv_multishot(sqe, fd, group, token.rawValue)
                if ring.featuresInUse.contains(.receiveBundles) { ckeel_sqe_recv_bundle(sqe, bundleLimit) }
            } else {
                ckeel_sqe_recv_provided(sqe, fd, group, 0, token.rawValue)
            }
        case .receiveMessagePooled(let fd, let template, let multishot):
            let group = ensureProvidedBuffers()
            ckeel_sqe_recvmsg_multishot(sqe, fd, UnsafeMutablePointer(bitPattern: template), group, token.rawValue)
            if !multishot { sqe.pointee.ioprio = 0 }
        case .pollReadable(let fd):
            ckeel_sqe_poll(sqe, fd, CKEEL_POLLIN | CKEEL_POLLPRI | CKEEL_POLLRDHUP, token.rawValue)
        case .send(let fd, let address, let length, let flags):
            ckeel_sqe_send(sqe, fd, UnsafeRawPointer(bitPattern: address), length, flags, token.rawValue)
        case .sendMessage(let fd, let message, let flags):
            ckeel_sqe_sendmsg(sqe, fd, UnsafePointer(bitPattern: message), flags, token.rawValue)
        case .sendMessageZeroCopy(let fd, let message, let flags):
            if ring.featuresInUse.contains(.zeroCopySend) {
                let header = UnsafePointer<msghdr>(bitPattern: message)
                ckeel_sqe_sendmsg_zc(sqe, fd, header, flags, token.rawValue)
                if let registeredSlabs, let header, let slot = registeredSlabs.slot(holding: header) {
                    ckeel_sqe_use_fixed_buffer(sqe, slot)
                    registeredBufferSends += 1
                }
            } else {
                ckeel_sqe_sendmsg(sqe, fd, UnsafePointer(bitPattern: message), flags, token.rawValue)
            }
        case .connect(let fd, let address, let length):
            ckeel_sqe_connect(sqe, fd, UnsafeRawPointer(bitPattern: address), length, token.rawValue)
        }
        if let fileSlotsInUse {
            let fd = sqe.pointee.fd
            if IOThread.isDirectDescriptor(fd) {
                sqe.pointee.fd = fd & ~IOThread.directDescriptorFlag
                ckeel_sqe_use_fixed_file(sqe)
            } else if fd >= 0 && UInt32(fd) < ring.fileTableSlots && fileSlotsInUse[Int(fd)] != 0 {
                ckeel_sqe_use_fixed_file(sqe)
            }
        }
    }

    // MARK: Registered file table

    /// Enters `fd` in the registered file table (slot `fd`), so later operations on it skip the kernel's
    /// per-operation file look-up. The update goes out ahead of them in the same submission. Does
    /// nothing without the feature, for a descriptor past the table, or one already entered.
    func registerDescriptor(_ fd: Int32) {
        guard !acceptsDirectDescriptors, let fileSlotsInUse, fd >= 0, UInt32(fd) < ring.fileTableSlots, fileSlotsInUse[Int(fd)] == 0 else { return }
        fileSlotsInUse[Int(fd)] = 1
        registeredDescriptorCount += 1
        queueFileTableUpdate(slot: fd, descriptor: fd)
    }

    /// Closes `fd` through the ring (`IORING_OP_CLOSE`), after emptying its registered-table slot: both
    /// go out with the next submission, which the loop makes anyway, so closing a connection costs no
    /// system call of its own. The number stays taken until then, so no new socket can get it early.
    func closeDescriptor(_ fd: Int32) {
        if IOThread.isDirectDescriptor(fd) {
            let slot = fd & ~IOThread.directDescriptorFlag
            if let installedDescriptors, UInt32(slot) < ring.fileTableSlots, installedDescriptors[Int(slot)] >= 0 {
                let (sqe, _) = nextSQE()
                ckeel_sqe_close(sqe, installedDescriptors[Int(slot)], Token.ignored.rawValue)
                quieten(sqe)
                installedDescriptors[Int(slot)] = -1
            }
            let (sqe, _) = nextSQE()
            ckeel_sqe_close_direct(sqe, UInt32(slot), Token.ignored.rawValue)
            quieten(sqe)
            registeredDescriptorCount -= 1
            return
        }
        unregisterDescriptor(fd)
        let (sqe, _) = nextSQE()
        ckeel_sqe_close(sqe, fd, Token.ignored.rawValue)
        quieten(sqe)
    }

    /// Asks for no completion when the operation in `sqe` succeeds, where the kernel can
    /// (``skipsQuietCompletions``). Only for operations under `Token.ignored`.
    @inline(__always)
    private func quieten(_ sqe: UnsafeMutablePointer<io_uring_sqe>) {
        if skipsQuietCompletions { ckeel_sqe_skip_success(sqe) }
    }

    /// Counts a socket a direct accept put in the table (until ``closeDescriptor(_:)``).
    func noteDirectDescriptor() { registeredDescriptorCount += 1 }

    /// An ordinary descriptor for direct descriptor `fd`: the one installed before, or a new one
    /// (`IORING_OP_FIXED_FD_INSTALL`, which the kernel completes while submitting, so the answer is in
    /// the completion queue when the submission returns). Submits what is queued. -1 when the kernel
    /// refuses (descriptor limit) or `fd` is not a direct descriptor of this ring. The caller checked
    /// that `fd` is direct (``IOThread/systemDescriptor(_:)``).
    func installedDescriptor(forDirect fd: Int32) -> Int32 {
        let slot = fd & ~IOThread.directDescriptorFlag
        guard acceptsDirectDescriptors, UInt32(slot) < ring.fileTableSlots else { return -1 }
        let installed: UnsafeMutablePointer<Int32>
        if let installedDescriptors {
            installed = installedDescriptors
        } else {
            installed = .allocate(capacity: Int(ring.fileTableSlots))
            installed.initialize(repeating: -1, count: Int(ring.fileTableSlots))
            installedDescriptors = installed
        }
        if installed[Int(slot)] >= 0 { return installed[Int(slot)] }
        installs &+= 1
        // An ignored-kind token: the loop drops the completion when it drains it later.
        let token = Token(kind: .ignored, generation: installs, slot: UInt32(slot))
        let (sqe, _) = nextSQE()
        ckeel_sqe_install_direct(sqe, UInt32(slot), token.rawValue)
        let result = ring.submitForResult(of: token.rawValue) ?? -1
        if result >= 0 { installed[Int(slot)] = result }
        return result
    }

    /// Empties `fd`'s slot; call it before closing the descriptor. The ring's own reference to the socket
    /// goes with the update at the next submission (operations in flight keep theirs until they end).
    private func unregisterDescriptor(_ fd: Int32) {
        guard let fileSlotsInUse, fd >= 0, UInt32(fd) < ring.fileTableSlots, fileSlotsInUse[Int(fd)] != 0 else { return }
        fileSlotsInUse[Int(fd)] = 0
        registeredDescriptorCount -= 1
        queueFileTableUpdate(slot: fd, descriptor: -1)
    }

    private func queueFileTableUpdate(slot: Int32, descriptor: Int32) {
        let (sqe, index) = nextSQE()
        ckeel_sqe_files_update(sqe, ring.fileUpdateValue(at: index, descriptor: descriptor), 1, UInt32(slot),
                               Token.ignored.rawValue)
        quieten(sqe)
    }

    /// Registers the provided-buffer ring on first use. A failure leaves no ring: pooled receives then
    /// complete with -ENOBUFS from the kernel, which callers already handle.
    private func ensureProvidedBuffers() -> UInt16 {
        if let providedBuffers {
            if providedBuffers.emptySlots > 0 { providedBuffers.refill() }
            return RingBackend.providedBufferGroup
        }
        if providedBuffers == nil {
            do {
                providedBuffers = try ProvidedBufferRing(
                    ring: ring, pool: pool, group: RingBackend.providedBufferGroup, entries: providedBufferCount)
            } catch {
                BackendKind.logger.error("registering the provided-buffer ring failed: \(error)")
            }
        }
        return RingBackend.providedBufferGroup
    }

    /// Turns buffer `index` of a receive completion (more than one only in a bundle) into an
    /// ``IOBuffer`` and restocks the ring.
    func takeBuffer(_ completion: IOCompletion, index: Int) -> IOBuffer? {
        guard let provided = providedBuffersUnretained else { return nil }
        var buffer: IOBuffer?
        provided._withUnsafeGuaranteedRef { buffer = $0.takeBuffer(from: completion, index: index) }
        return buffer
    }

    /// How many pool buffers a receive completion carries (1 unless it is a bundle).
    func bufferCount(_ completion: IOCompletion) -> Int {
        providedBuffersUnretained?._withUnsafeGuaranteedRef { $0.bufferCount(completion) } ?? 1
    }

    /// Asks the kernel to cancel the operation under `token`. Its completion arrives with -ECANCELED
    /// (or its real result, if it finished first).
    func cancel(_ token: Token) {
        let (sqe, _) = nextSQE()
        ckeel_sqe_cancel(sqe, token.rawValue, Token.ignored.rawValue)
        quieten(sqe)
    }

    /// Submits queued SQEs and waits up to `waitNanoseconds` (nil: no limit; 0: don't wait).
    func submitAndWait(waitNanoseconds: UInt64?) throws(SystemError) {
        try ring.submitAndWait(waitNanoseconds: ring.hasCompletions ? 0 : waitNanoseconds)
    }

    /// Delivers every completion in the CQ to `body`.
    @inline(__always)
    func drain(_ body: (Token, IOCompletion) -> Void) {
        ring.forEachCompletion { userData, result, flags in
            body(Token(rawValue: userData), IOCompletion(result: result, flags: flags))
        }
    }
}
