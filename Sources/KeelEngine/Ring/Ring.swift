import CKeelLinux
import KeelSystem
import SystemPackage

/// One io_uring instance: the descriptor, the shared submission and completion rings, and the only
/// calls to `io_uring_enter` in Keel.
///
/// ```
///  user space                     kernel
///  getSQE() -> fill -> publish()  ──SQ──▶  consumes at khead
///  forEachCompletion()            ◀──CQ──  produces at ktail
/// ```
///
/// **Threading:** created and used on its I/O thread only (with `SINGLE_ISSUER`, the kernel enforces it).
/// **Lifetime:** ``close()`` unmaps and closes; memory named by an SQE must stay valid until its CQE.
final class Ring {
    let fd: Int32
    let entries: UInt32
    let setupFlags: UInt32
    let features: UInt32
    /// The optional features this ring uses: those asked for that the kernel has.
    let featuresInUse: KernelFeatures
    /// What `io_uring_enter` names: the registered index with ``KernelFeatures/registeredRing``,
    /// else the descriptor.
    private let enterFD: Int32
    /// `IORING_ENTER_REGISTERED_RING` when the index is registered, else 0.
    private let enterFlags: UInt32
    /// Slots of the registered file table (0 without ``KernelFeatures/registeredFiles``).
    let fileTableSlots: UInt32
    /// Slots of the registered buffer table (0 without ``KernelFeatures/registeredBuffers``).
    let bufferTableSlots: UInt32
    private let ringMemory: MappedMemory
    private let sqeMemory: MappedMemory

    // Shared with the kernel (pointers into the mappings).
    private let sqHead: UnsafeMutablePointer<UInt32>
    private let sqTail: UnsafeMutablePointer<UInt32>
    private let sqFlags: UnsafeMutablePointer<UInt32>
    private let sqMask: UInt32
    private let cqHead: UnsafeMutablePointer<UInt32>
    private let cqTail: UnsafeMutablePointer<UInt32>
    private let cqMask: UInt32
    private let sqes: UnsafeMutablePointer<io_uring_sqe>
    private let cqes: UnsafeMutablePointer<io_uring_cqe>

    /// User-space cursor: entries filled but not yet published to the kernel.
    private let cursor: UnsafeMutablePointer<UInt32>
    /// Timespecs for timeout SQEs, one per SQE index (the kernel copies them during submission).
    private let timespecs: UnsafeMutablePointer<__kernel_timespec>
    /// The descriptor each file-table update SQE installs, one per SQE index (read during submission).
    private let fileUpdateValues: UnsafeMutablePointer<Int32>

    /// Most slots a registered file table gets: 8 bytes of kernel memory each, per ring.
    static let maximumFileTableSlots: UInt32 = 65_536

    /// Setup flag sets to try, best first: each later one drops what an older kernel rejects.
    private static let setupAttempts: [UInt32] = [
        CKEEL_SETUP_SINGLE_ISSUER | CKEEL_SETUP_DEFER_TASKRUN | CKEEL_SETUP_SUBMIT_ALL,
        CKEEL_SETUP_SINGLE_ISSUER | CKEEL_SETUP_COOP_TASKRUN | CKEEL_SETUP_SUBMIT_ALL,
        CKEEL_SETUP_COOP_TASKRUN | CKEEL_SETUP_SUBMIT_ALL,
        0,
    ]

    /// Sets up a ring with `entries` submission entries and `entries × completionMultiplier` completion
    /// entries, probing for SINGLE_ISSUER / DEFER_TASKRUN / COOP_TASKRUN and falling back to plain setup,
    /// and then for each of `wanted` (left out where the kernel lacks it). With
    /// ``KernelFeatures/registeredBuffers``, the buffer table has `bufferSlots` empty slots.
    /// - Important: with ``KernelFeatures/registeredRing``, only the calling thread may submit.
    init(entries requested: UInt32, completionMultiplier: UInt32 = 4, features wanted: KernelFeatures = [],
         bufferSlots: UInt32 = 0) throws(SystemError) {
        var lastError = SystemError(.invalidArgument, call: "io_uring_setup")
        var params = io_uring_params()
        var ringFD: Int32 = -1
        for flags in Ring.setupAttempts {
            params = io_uring_params()
            params.flags = flags | CKEEL_SETUP_CQSIZE | CKEEL_SETUP_CLAMP
            params.cq_entries = requested * completionMultiplier
            ringFD = ckeel_io_uring_setup(requested, &params)
            if ringFD >= 0 { break }
            let code = ckeel_errno()
            lastError = SystemError(code: code, call: "io_uring_setup", context: "flags 0x\(String(flags, radix: 16))")
            if code != EINVAL { break }  // EPERM/ENOSYS/ENOMEM: no point trying other flags
        }
        if ringFD < 0 { throw lastError }
        guard params.features & CKEEL_FEAT_SINGLE_MMAP != 0, params.features & CKEEL_FEAT_EXT_ARG != 0 else {
            _ = CKeelLinux.close(ringFD)
            throw SystemError(.notSupported, call: "io_uring_setup", context: "kernel lacks SINGLE_MMAP/EXT_ARG")
        }
        fd = ringFD
        entries = params.sq_entries
        setupFlags = params.flags
        features = params.features

        let sqSize = Int(params.sq_off.array) + Int(params.sq_entries) * MemoryLayout<UInt32>.stride
        let cqSize = Int(params.cq_off.cqes) + Int(params.cq_entries) * MemoryLayout<io_uring_cqe>.stride
        do {
            ringMemory = try MappedMemory.shared(fd: ringFD, offset: CKEEL_OFF_SQ_RING, length: max(sqSize, cqSize))
        } catch {
            _ = CKeelLinux.close(ringFD)
            throw error
        }
        do {
            sqeMemory = try MappedMemory.shared(
                fd: ringFD, offset: CKEEL_OFF_SQES, length: Int(params.sq_entries) * MemoryLayout<io_uring_sqe>.stride)
        } catch {
            ringMemory.unmap()
            _ = CKeelLinux.close(ringFD)
            throw error
        }
        let base = ringMemory.pointer
        func field(_ offset: UInt32) -> UnsafeMutablePointer<UInt32> {
            (base + Int(offset)).assumingMemoryBound(to: UInt32.self)
        }
        sqHead = field(params.sq_off.head)
        sqTail = field(params.sq_off.tail)
        sqFlags = field(params.sq_off.flags)
        sqMask = field(params.sq_off.ring_mask).pointee
        cqHead = field(params.cq_off.head)
        cqTail = field(params.cq_off.tail)
        cqMask = field(params.cq_off.ring_mask).pointee
        cqes = (base + Int(params.cq_off.cqes)).assumingMemoryBound(to: io_uring_cqe.self)
        sqes = sqeMemory.pointer.assumingMemoryBound(to: io_uring_sqe.self)
        // Identity-map the SQ index array once: SQE i is always submitted from array slot i.
        let array = field(params.sq_off.array)
        for i in 0..<Int(params.sq_entries) { array[i] = UInt32(i) }

        var inUse: KernelFeatures = []
        var registeredIndex: Int32 = -1
        if wanted.contains(.registeredRing) {
            registeredIndex = ckeel_register_ring_fd(ringFD)
            if registeredIndex >= 0 { inUse.insert(.registeredRing) }
        }
        if wanted.contains(.zeroCopySend) && ckeel_probe_opcode(ringFD, CKEEL_OP_SENDMSG_ZC) == 1 {
            inUse.insert(.zeroCopySend)
        }
        // Bundles need a per-completion cap (Linux 6.17), or one receive may take the whole socket
        // queue (up to 256 buffers) past a connection's flow control.
        if wanted.contains(.receiveBundles) && params.features & CKEEL_FEAT_RECVSEND_BUNDLE != 0
            && ckeel_kernel_at_least(6, 17) == 1
        {
            inUse.insert(.receiveBundles)
        }
        if wanted.contains(.completionSkipping) && params.features & CKEEL_FEAT_CQE_SKIP != 0 {
            inUse.insert(.completionSkipping)
        }
        var slots: UInt32 = 0
        let descriptorLimit = ckeel_descriptor_limit()
        if wanted.contains(.registeredFiles) && descriptorLimit > 0 {
            let wantedSlots = UInt32(min(descriptorLimit, Int(Ring.maximumFileTableSlots)))
            if ckeel_register_files_sparse(ringFD, wantedSlots) == 0 {
                slots = wantedSlots
                inUse.insert(.registeredFiles)
            }
        }
        fileTableSlots = slots
        if wanted.contains(.directDescriptors) && inUse.contains(.registeredFiles)
            && ckeel_probe_opcode(ringFD, CKEEL_OP_FIXED_FD_INSTALL) == 1
        {
            inUse.insert(.directDescriptors)
        }
        // A zero-copy sendmsg reads registered buffers from Linux 6.15 (before, only a single-buffer send).
        if wanted.contains(.registeredBuffers) && inUse.contains(.zeroCopySend) && bufferSlots > 0
            && ckeel_kernel_at_least(6, 15) == 1 && ckeel_register_buffers_sparse(ringFD, bufferSlots) == 0
        {
            bufferTableSlots = bufferSlots
            inUse.insert(.registeredBuffers)
        } else {
            bufferTableSlots = 0
        }
        featuresInUse = inUse
        enterFD = registeredIndex >= 0 ? registeredIndex : ringFD
        enterFlags = registeredIndex >= 0 ? CKEEL_ENTER_REGISTERED_RING : 0

        cursor = .allocate(capacity: 1)
        cursor.initialize(to: sqTail.pointee)
        timespecs = .allocate(capacity: Int(params.sq_entries))
        timespecs.initialize(repeating: __kernel_timespec(), count: Int(params.sq_entries))
        fileUpdateValues = .allocate(capacity: Int(params.sq_entries))
        fileUpdateValues.initialize(repeating: -1, count: Int(params.sq_entries))
    }

    /// Unmaps the rings and closes the descriptor. In-flight operations are cancelled by the kernel.
    func close() {
        if enterFlags != 0 { _ = ckeel_unregister_ring_fd(fd, enterFD) }
        sqeMemory.unmap()
        ringMemory.unmap()
        _ = CKeelLinux.close(fd)
        cursor.deallocate()
        timespecs.deallocate()
        fileUpdateValues.deallocate()
    }

    /// True when the kernel was set up with `IORING_SETUP_SINGLE_ISSUER`.
    var isSingleIssuer: Bool { setupFlags & CKEEL_SETUP_SINGLE_ISSUER != 0 }
    /// True when the kernel was set up with `IORING_SETUP_DEFER_TASKRUN`.
    var defersTaskRun: Bool { setupFlags & CKEEL_SETUP_DEFER_TASKRUN != 0 }

    // MARK: Submission

    /// The next free SQE, or nil when the submission queue is full (submit first, then retry).
    @inline(__always)
    func nextSQE() -> (sqe: UnsafeMutablePointer<io_uring_sqe>, index: Int)? {
        let tail = cursor.pointee
        let head = ckeel_load_acquire(sqHead)
        if tail &- head >= entries { return nil }
        cursor.pointee = tail &+ 1
        let index = Int(tail & sqMask)
        return (sqes + index, index)
    }

    /// Storage for a timeout SQE's timespec at SQE `index`.
    @inline(__always)
    func timespec(at index: Int, nanoseconds: UInt64) -> UnsafeMutablePointer<__kernel_timespec> {
        timespecs[index] = __kernel_timespec(
            tv_sec: Int64(nanoseconds / 1_000_000_000), tv_nsec: Int64(nanoseconds % 1_000_000_000))
        return timespecs + index
    }

    /// Storage for a file-table update SQE's descriptor at SQE `index`.
    @inline(__always)
    func fileUpdateValue(at index: Int, descriptor: Int32) -> UnsafeMutablePointer<Int32> {
        fileUpdateValues[index] = descriptor
        return fileUpdateValues + index
    }

    /// Entries filled and not yet consumed by the kernel.
    @inline(__always)
    var unsubmitted: UInt32 { cursor.pointee &- ckeel_load_acquire(sqHead) }

    /// Publishes filled SQEs and enters the kernel: submits them and, when `waitNanoseconds` is not
    /// zero, waits until at least one completion is ready or the time passes (nil: no limit).
    ///
    /// EINTR, ETIME (the wait timed out), EBUSY and EAGAIN (the kernel is short of completion space or
    /// memory; the caller drains completions and comes back) are not errors here.
    func submitAndWait(waitNanoseconds: UInt64?) throws(SystemError) {
        ckeel_store_release(sqTail, cursor.pointee)
        let toSubmit = unsubmitted
        let overflowed = ckeel_load_relaxed(sqFlags) & CKEEL_SQ_CQ_OVERFLOW != 0
        let wait = waitNanoseconds != 0
        if toSubmit == 0 && !wait && !overflowed && !(defersTaskRun && hasPendingTaskWork) { return }
        var flags = enterFlags
        if wait || overflowed || defersTaskRun { flags |= CKEEL_ENTER_GETEVENTS }
        var rc: Int32
        if let waitNanoseconds, wait {
            var ts = __kernel_timespec(
                tv_sec: Int64(waitNanoseconds / 1_000_000_000), tv_nsec: Int64(waitNanoseconds % 1_000_000_000))
            rc = withUnsafeMutablePointer(to: &ts) { tsp in
                var arg = io_uring_getevents_arg()
                arg.ts = UInt64(UInt(bitPattern: tsp))
                return withUnsafePointer(to: &arg) { argp in
                    ckeel_io_uring_enter(enterFD, toSubmit, 1, flags | CKEEL_ENTER_EXT_ARG, argp,
                                         MemoryLayout<io_uring_getevents_arg>.size)
                }
            }
        } else {
            rc = ckeel_io_uring_enter(enterFD, toSubmit, wait ? 1 : 0, flags, nil, 0)
        }
        if rc >= 0 { return }
        let code = ckeel_errno()
        switch code {
        case EINTR, ETIME, EBUSY, EAGAIN: return
        default: throw SystemError(code: code, call: "io_uring_enter", context: "submit \(toSubmit)")
        }
    }

    /// Submits what is queued and returns the result of the completion with `userData`, which must be
    /// of an operation the kernel completes while submitting. The completion stays in the queue (for the
    /// loop to drain and drop); nil when it did not appear.
    func submitForResult(of userData: UInt64) -> Int32? {
        for _ in 0..<3 {
            try? submitAndWait(waitNanoseconds: 0)
            var head = cqHead.pointee
            let tail = ckeel_load_acquire(cqTail)
            while head != tail {
                let cqe = cqes + Int(head & cqMask)
                if cqe.pointee.user_data == userData { return cqe.pointee.res }
                head &+= 1
            }
        }
        return nil
    }

    /// True when the kernel has task work queued for this ring (DEFER_TASKRUN/COOP_TASKRUN).
    private var hasPendingTaskWork: Bool { ckeel_load_relaxed(sqFlags) & CKEEL_SQ_TASKRUN != 0 }

    // MARK: Completion

    /// True when completions are waiting in the CQ.
    var hasCompletions: Bool { ckeel_load_acquire(cqTail) != cqHead.pointee }

    /// Calls `body` for every completion in the CQ and releases them to the kernel.
    /// - Returns: how many completions were handled.
    @inline(__always)
    @discardableResult
    func forEachCompletion(_ body: (UInt64, Int32, UInt32) -> Void) -> Int {
        var head = cqHead.pointee
        let tail = ckeel_load_acquire(cqTail)
        let count = Int(tail &- head)
        while head != tail {
            let cqe = cqes + Int(head & cqMask)
            let userData = cqe.pointee.user_data
            let result = cqe.pointee.res
            let flags = cqe.pointee.flags
            head &+= 1
            // Release each entry before running the handler: handlers may submit and wait again.
            ckeel_store_release(cqHead, head)
            body(userData, result, flags)
        }
        return count
    }
}
