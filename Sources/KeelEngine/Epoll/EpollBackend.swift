import CKeelLinux
import KeelBuffers
import KeelSystem
import SystemPackage

/// The epoll backend: the same completion model as io_uring, produced in user space.
///
/// Each operation is tried at once (non-blocking); when it would block, the descriptor is registered
/// for the readiness it needs, and on readiness the operation is performed and a completion produced.
/// Completions are delivered from the loop, never from inside `push`, so callers see the same ordering
/// guarantees as on io_uring.
///
/// Registrations are level-triggered and stay as they are while they match what waits: a connection's
/// receive, armed for good, costs no `epoll_ctl` per message (one-shot registrations needed one per
/// readiness), and a short read ends a burst without the `recv` that would only say EAGAIN, since a
/// socket with more to read is reported again. The backend changes a registration when what waits
/// on the descriptor changes, and removes it when readiness arrives with nothing waiting.
///
/// Pooled receives lend a chunk of the thread's buffer pool only when the socket is readable, like
/// io_uring's provided buffers, and multishot accept/receive stay armed until they end or are
/// cancelled, with ``IOCompletion/hasMore`` set as on io_uring.
///
/// Limits: at most one readable-side and one writable-side operation in flight per descriptor (a
/// second gets `-EBUSY`).
///
/// **Threading:** one per I/O thread, used only there (``wakeup()`` excepted).
final class EpollBackend {
    let epollFD: Int32
    let wakeupFD: Int32
    private let events: UnsafeMutableRawPointer
    private let eventCapacity: Int32 = 256
    private let state: UnsafeMutablePointer<State>
    /// The thread's buffer pool, for pooled receives.
    let pool: BufferPool
    /// Completions one readiness event may produce for a multishot operation before yielding to the
    /// loop (so handlers see data, and flow control can pause a connection, every few receives).
    private static let multishotBurst = 4
    /// Datagrams one `recvmmsg` takes for a multishot pooled RECVMSG (one system call for a batch).
    private static let datagramBatch = 16
    /// The headers of one `recvmmsg` batch and the chunks lent for it, allocated once.
    private let batchMessages = UnsafeMutablePointer<ckeel_mmsghdr>.allocate(capacity: EpollBackend.datagramBatch)
    private let batchVectors = UnsafeMutablePointer<iovec>.allocate(capacity: EpollBackend.datagramBatch)
    private let batchChunks = UnsafeMutablePointer<UInt32>.allocate(capacity: EpollBackend.datagramBatch)

    private static let wakeupMarker = UInt64.max

    /// `epoll_ctl` calls made for operations (adding, changing and removing registrations), for tests:
    /// a receive that stays armed makes none per message.
    private(set) var registrationCalls = 0
    /// Readiness events handled (the wake-up descriptor's excepted), for tests: a descriptor with
    /// nothing waiting is not reported again and again.
    var readinessEvents: Int { state.pointee.readinessEvents }

    private struct PendingIO {
        var token: Token
        var operation: IOOperation.Core
    }

    /// Per descriptor: the tokens of its pending readable- and writable-side operations (0: none).
    /// 16 bytes per descriptor; the operations themselves live in `operations`, by token slot, so the
    /// table that grows with descriptors stays small.
    private struct Interest: Equatable {
        var read: UInt64 = 0
        var write: UInt64 = 0
    }

    /// What a descriptor's epoll registration asks for, as far as the backend knows (one byte per
    /// descriptor, in `State.registered`).
    private struct Registration: Equatable {
        var bits: UInt8
        static let none = Registration(bits: 0)
        static let readable = Registration(bits: 1)
        static let writable = Registration(bits: 2)
        static let urgent = Registration(bits: 4)
        /// Registered with some mask, or not at all: once nothing waits on a descriptor, it may be
        /// closed (removing its registration) and its number reused without the backend seeing it.
        static let unsure = Registration(bits: 0x80)

        func union(_ other: Registration) -> Registration { Registration(bits: bits | other.bits) }

        var events: UInt32 {
            var mask: UInt32 = 0
            if bits & Self.readable.bits != 0 { mask |= CKEEL_EPOLLIN | CKEEL_EPOLLRDHUP }
            if bits & Self.writable.bits != 0 { mask |= CKEEL_EPOLLOUT }
            if bits & Self.urgent.bits != 0 { mask |= CKEEL_EPOLLPRI }
            return mask
        }
    }

    /// What one attempt at an operation produced.
    private enum Attempt {
        /// A result; `final` is false for a multishot operation that stays armed.
        case completed(result: Int32, flags: UInt32, final: Bool)
        case wouldBlock
    }

    private struct State {
        /// Sized for the descriptors a busy process reaches without growing (16 KiB); grows by doubling.
        var interests = DenseTable<Interest>(count: 1024, filler: Interest())
        /// Per descriptor, beside `interests`: its registration.
        var registered = DenseTable<Registration>(count: 1024, filler: .unsure)
        /// Pending operations by token slot (dense: at most the operations in flight).
        var operations = DenseTable<IOOperation.Core?>(count: 0, filler: nil)
        var completed = CompletionQueue()
        var timeouts: [(deadline: UInt64, token: Token)] = []
        /// The thread this backend serves, which receives at readiness hand their buffers to
        /// (``receiveStreamAtReadiness``). Unretained: the thread owns the backend and closes it.
        var thread: Unmanaged<IOThread>?
        /// Readiness events handled (see ``readinessEvents``).
        var readinessEvents = 0
    }

    /// Completions produced and not yet delivered: a growable ring of plain values (no Array, so no
    /// copy-on-write or retain traffic on the hot path).
    struct CompletionQueue {
        private var storage: UnsafeMutablePointer<(token: UInt64, result: Int32, flags: UInt32)>
        private var capacity = 256
        private var head = 0
        private(set) var count = 0

        init() {
            storage = .allocate(capacity: capacity)
        }

        func deallocate() { storage.deallocate() }

        var isEmpty: Bool { count == 0 }

        @inline(__always)
        mutating func append(_ token: Token, _ result: Int32, _ flags: UInt32) {
            if count == capacity { grow() }
            storage[(head + count) & (capacity - 1)] = (token.rawValue, result, flags)
            count += 1
        }

        mutating func popFirst() -> (token: UInt64, result: Int32, flags: UInt32) {
            let entry = storage[head]
            head = (head + 1) & (capacity - 1)
            count -= 1
            return entry
        }

        private mutating func grow() {
            let bigger = UnsafeMutablePointer<(token: UInt64, result: Int32, flags: UInt32)>.allocate(capacity: capacity * 2)
            for i in 0..<count { bigger[i] = storage[(head + i) & (capacity - 1)] }
            storage.deallocate()
            storage = bigger
            capacity *= 2
            head = 0
        }
    }

    init(pool: BufferPool) throws(SystemError) {
        self.pool = pool
        let epollFD = try retryingSyscall("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
        let wakeupFD: Int32
        do {
            wakeupFD = try Descriptors.eventFD()
        } catch {
            Descriptors.close(epollFD)
            throw error
        }
        do {
            _ = try retryingSyscall("epoll_ctl(ADD eventfd)") {
                ckeel_epoll_ctl(epollFD, EPOLL_CTL_ADD, wakeupFD, CKEEL_EPOLLIN, EpollBackend.wakeupMarker)
            }
        } catch {
            Descriptors.close(wakeupFD)
            Descriptors.close(epollFD)
            throw error
        }
        self.epollFD = epollFD
        self.wakeupFD = wakeupFD
        events = .allocate(byteCount: Int(eventCapacity) * ckeel_epoll_event_size(), alignment: 8)
        state = .allocate(capacity: 1)
        state.initialize(to: State())
    }

    func close() {
        Descriptors.close(wakeupFD)
        Descriptors.close(epollFD)
        events.deallocate()
        batchMessages.deallocate()
        batchVectors.deallocate()
        batchChunks.deallocate()
        state.pointee.completed.deallocate()
        state.pointee.interests.deallocate()
        state.pointee.registered.deallocate()
        state.pointee.operations.deallocate()
        state.deinitialize(count: 1)
        state.deallocate()
    }

    /// Makes `thread` the one receives hand their buffers to at readiness. Called once, by the thread.
    func serve(_ thread: IOThread) {
        state.pointee.thread = .passUnretained(thread)
    }

    /// Wakes the I/O thread from any thread.
    func wakeup() { Descriptors.signal(eventFD: wakeupFD) }

    /// Starts `operation` under `token`. A result that is ready at once is still delivered by ``drain(_:)``.
    func push(_ operation: IOOperation, token: Token) {
        switch operation.core {
        case .nop:
            complete(token, 0)
        case .timeout(let nanoseconds):
            state.pointee.timeouts.append((ckeel_monotonic_ns() &+ nanoseconds, token))
        case .connect(let fd, let address, let length):
            startConnect(fd: fd, address: address, length: length, token: token)
        case .sendMessageZeroCopy(let fd, let message, let flags):
            // No zero-copy on epoll: a plain send, with one completion.
            startIO(PendingIO(token: token, operation: .sendMessage(fd: fd, message: message, flags: flags)))
        case let core:
            startIO(PendingIO(token: token, operation: core))
        }
    }

    @inline(__always)
    private func complete(_ token: Token, _ result: Int32, flags: UInt32 = 0) {
        state.pointee.completed.append(token, result, flags)
    }

    private static func descriptor(of operation: IOOperation.Core) -> Int32 {
        switch operation {
        case .read(let fd, _, _), .write(let fd, _, _), .accept(let fd, _, _), .receive(let fd, _, _),
            .receivePooled(let fd, _), .send(let fd, _, _, _), .sendMessage(let fd, _, _), .connect(let fd, _, _), .sendMessageZeroCopy(let fd, _, _),
            .receiveMessagePooled(let fd, _, _), .pollReadable(let fd):
            return fd
        case .nop, .timeout:
            return -1
        }
    }

    private func pending(_ raw: UInt64) -> PendingIO? {
        guard raw != 0 else { return nil }
        let token = Token(rawValue: raw)
        guard let operation = state.pointee.operations[Int(token.slot)] else { return nil }
        return PendingIO(token: token, operation: operation)
    }

    private func pendingRead(_ fd: Int32) -> PendingIO? { pending(state.pointee.interests[Int(fd)].read) }
    private func pendingWrite(_ fd: Int32) -> PendingIO? { pending(state.pointee.interests[Int(fd)].write) }

    /// Records (or clears, with nil) the pending operation on one side of `fd`.
    private func setPending(_ fd: Int32, readable: Bool, _ io: PendingIO?) {
        let previous = readable ? state.pointee.interests[Int(fd)].read : state.pointee.interests[Int(fd)].write
        if previous != 0 { state.pointee.operations[Int(Token(rawValue: previous).slot)] = nil }
        if let io {
            let slot = Int(io.token.slot)
            if slot >= state.pointee.operations.count { state.pointee.operations.grow(toHold: slot, filler: nil) }
            state.pointee.operations[slot] = io.operation
        }
        if readable {
            state.pointee.interests[Int(fd)].read = io?.token.rawValue ?? 0
        } else {
            state.pointee.interests[Int(fd)].write = io?.token.rawValue ?? 0
        }
        let interest = state.pointee.interests[Int(fd)]
        if interest.read == 0 && interest.write == 0 { state.pointee.registered[Int(fd)] = .unsure }
    }

    private func startIO(_ io: PendingIO) {
        let fd = Self.descriptor(of: io.operation)
        guard fd >= 0 else { return complete(io.token, -EBADF) }
        ensureInterestSlot(fd)
        let readable = io.operation.waitsForReadable
        let busy = readable ? state.pointee.interests[Int(fd)].read != 0 : state.pointee.interests[Int(fd)].write != 0
        if busy { return complete(io.token, -EBUSY) }
        if run(io, fd: fd) {
            setPending(fd, readable: readable, io)
            arm(fd)
        }
    }

    /// Attempts `io` (repeatedly for multishot operations). - Returns: true when it must wait for readiness.
    private func run(_ io: PendingIO, fd: Int32) -> Bool {
        switch io.operation {
        case .receivePooled(_, let multishot):
            return receiveStream(io.token, fd: fd, multishot: multishot)
        case .receiveMessagePooled(_, let template, true):
            return receiveDatagrams(io.token, fd: fd, template: UnsafeMutablePointer(bitPattern: template)!)
        default:
            break
        }
        let multishot = io.operation.isMultishot
        for _ in 0..<(multishot ? Self.multishotBurst : 1) {
            switch attempt(io.operation) {
            case .wouldBlock:
                return true
            case .completed(let result, let flags, let final):
                let ends = final || !multishot
                complete(io.token, result, flags: ends ? flags : flags | CKEEL_CQE_F_MORE)
                if ends { return false }
            }
        }
        return true  // a busy multishot yields to other descriptors; level-triggered readiness brings it back
    }

    /// A pooled stream receive (every connection has one armed): each `recv` into a chunk lent from the
    /// pool, as io_uring's provided buffers, up to ``multishotBurst`` of them for a multishot one.
    /// The busiest path of the backend, so it skips ``attempt(_:)``'s general dispatch.
    /// - Returns: true when it must wait for readiness again.
    private func receiveStream(_ token: Token, fd: Int32, multishot: Bool) -> Bool {
        for _ in 0..<(multishot ? Self.multishotBurst : 1) {
            guard let (chunk, address) = pool.lendToKernel() else {
                complete(token, -ENOBUFS)
                return false
            }
            var n: Int
            repeat {
                n = ckeel_recv(fd, address, pool.bufferSize, 0)
            } while n < 0 && ckeel_errno() == EINTR
            if n > 0 {
                let more = multishot ? CKEEL_CQE_F_MORE : 0
                complete(token, Int32(n), flags: CKEEL_CQE_F_BUFFER | chunk << CKEEL_CQE_BUFFER_SHIFT | more)
                if !multishot { return false }
                // A read that did not fill its buffer emptied the socket: trying again would only get
                // EAGAIN, and level-triggered readiness reports anything that arrives since.
                if n < pool.bufferSize { return true }
                continue
            }
            let code = n < 0 ? ckeel_errno() : 0
            pool.reclaimFromKernel(chunk: chunk)
            if n < 0 && (code == EAGAIN || code == EWOULDBLOCK) { return true }
            complete(token, n == 0 ? 0 : -code)  // end of stream, or the error
            return false
        }
        return true  // a busy multishot yields to other descriptors; level-triggered readiness brings it back
    }

    /// A pooled stream receive on a readable socket, with no completion queued (any queued one might
    /// be this receive's, and must be delivered first): each `recv` goes into a buffer acquired from the
    /// pool and handed straight to the thread (``IOThread/dispatchReceived(_:_:_:)``), up to
    /// ``multishotBurst`` of them. The end of the stream or an error is queued as usual.
    ///
    /// It keeps the descriptor's pending read itself: the handler, called in between, may cancel the
    /// receive, or (after its final completion) submit the next, so the read is cleared before a final
    /// completion and left alone once the handler changed it.
    private func receiveStreamAtReadiness(_ token: Token, fd: Int32, multishot: Bool, thread: Unmanaged<IOThread>) {
        for _ in 0..<(multishot ? Self.multishotBurst : 1) {
            guard var buffer = try? pool.acquire() else {
                setPending(fd, readable: true, nil)
                return complete(token, -ENOBUFS)
            }
            var n: Int
            repeat {
                n = ckeel_recv(fd, buffer.unsafeWritableAddress, pool.bufferSize, 0)
            } while n < 0 && ckeel_errno() == EINTR
            if n > 0 {
                buffer.moveWriterIndex(forwardBy: n)
                let flags = CKEEL_CQE_F_BUFFER | buffer.chunk << CKEEL_CQE_BUFFER_SHIFT | (multishot ? CKEEL_CQE_F_MORE : 0)
                if !multishot { setPending(fd, readable: true, nil) }
                var handedOver: IOBuffer? = buffer  // moved through the borrowing closure
                thread._withUnsafeGuaranteedRef {
                    $0.dispatchReceived(token, handedOver.take()!, IOCompletion(result: Int32(n), flags: flags))
                }
                // Cancelled (or ended and replaced) by the handler: nothing more for this receive.
                guard multishot, state.pointee.interests[Int(fd)].read == token.rawValue else { return }
                // A read that did not fill its buffer emptied the socket (see receiveStream).
                if n < pool.bufferSize { return }
                continue
            }
            let code = n < 0 ? ckeel_errno() : 0
            _ = consume buffer
            if n < 0 && (code == EAGAIN || code == EWOULDBLOCK) { return }
            setPending(fd, readable: true, nil)
            return complete(token, n == 0 ? 0 : -code)  // end of stream, or the error
        }
    }

    /// A multishot pooled RECVMSG on a readable socket: up to ``datagramBatch`` datagrams with one
    /// `recvmmsg`, each into its own lent chunk in io_uring's layout, one completion each.
    /// - Returns: true when it must wait for readiness again.
    private func receiveDatagrams(_ token: Token, fd: Int32, template: UnsafeMutablePointer<msghdr>) -> Bool {
        let header = ckeel_recvmsg_out_size()
        let nameSpace = Int(template.pointee.msg_namelen)
        let controlSpace = Int(template.pointee.msg_controllen)
        let payloadStart = header + nameSpace + controlSpace
        var count = 0
        while count < Self.datagramBatch, let chunk = pool.lendToKernel() {
            batchChunks[count] = chunk.chunk
            batchVectors[count] = iovec(iov_base: chunk.address + payloadStart, iov_len: pool.bufferSize - payloadStart)
            batchMessages[count] = ckeel_mmsghdr()
            batchMessages[count].msg_hdr.msg_name = chunk.address + header
            batchMessages[count].msg_hdr.msg_namelen = socklen_t(nameSpace)
            if controlSpace > 0 {
                batchMessages[count].msg_hdr.msg_control = chunk.address + header + nameSpace
                batchMessages[count].msg_hdr.msg_controllen = controlSpace
            }
            batchMessages[count].msg_hdr.msg_iov = batchVectors + count
            batchMessages[count].msg_hdr.msg_iovlen = 1
            count += 1
        }
        if count == 0 {
            complete(token, -ENOBUFS)
            return false
        }
        var received: Int32
        repeat {
            // MSG_TRUNC: each message's length is the datagram's real one, even when it did not fit.
            received = ckeel_recvmmsg(fd, batchMessages, UInt32(count), Int32(CKEEL_MSG_TRUNC))
        } while received < 0 && ckeel_errno() == EINTR
        let code = received < 0 ? ckeel_errno() : 0
        let taken = max(0, Int(received))
        for i in 0..<taken {
            let length = Int(batchMessages[i].msg_len)
            let truncated = batchMessages[i].msg_hdr.msg_flags & Int32(CKEEL_MSG_TRUNC) != 0
            ckeel_recvmsg_out_write(pool.address(ofChunk: batchChunks[i]), UInt32(batchMessages[i].msg_hdr.msg_namelen),
                                    UInt32(batchMessages[i].msg_hdr.msg_controllen), UInt32(length), truncated ? CKEEL_MSG_TRUNC : 0)
            complete(token, Int32(payloadStart + min(length, pool.bufferSize - payloadStart)),
                     flags: CKEEL_CQE_F_BUFFER | batchChunks[i] << CKEEL_CQE_BUFFER_SHIFT | CKEEL_CQE_F_MORE)
        }
        for i in taken..<count { pool.reclaimFromKernel(chunk: batchChunks[i]) }
        if received < 0 && code != EAGAIN && code != EWOULDBLOCK {
            complete(token, -code)
            return false
        }
        return true  // level-triggered: a socket with more datagrams is ready again at once
    }

    /// One non-blocking syscall for `operation` (not a pooled stream receive: ``receiveStream``).
    private func attempt(_ operation: IOOperation.Core) -> Attempt {
        while true {
            var lentChunk: UInt32?
            let n: Int
            switch operation {
            case .read(let fd, let address, let length):
                n = CKeelLinux.read(fd, UnsafeMutableRawPointer(bitPattern: address), Int(length))
            case .write(let fd, let address, let length):
                n = CKeelLinux.write(fd, UnsafeRawPointer(bitPattern: address), Int(length))
            case .receive(let fd, let address, let length):
                n = ckeel_recv(fd, UnsafeMutableRawPointer(bitPattern: address), Int(length), 0)
            case .send(let fd, let address, let length, let flags):
                n = ckeel_send(fd, UnsafeRawPointer(bitPattern: address), Int(length), Int32(flags))
            case .sendMessage(let fd, let message, let flags), .sendMessageZeroCopy(let fd, let message, let flags):
                n = ckeel_sendmsg(fd, UnsafePointer(bitPattern: message), Int32(flags))
            case .accept(let fd, _, _):
                n = Int(ckeel_accept4(fd))
            case .receivePooled:
                preconditionFailure("pooled stream receives go through receiveStream")
            case .receiveMessagePooled(let fd, let template, _):
                guard let chunk = pool.lendToKernel() else {
                    return .completed(result: -ENOBUFS, flags: 0, final: true)
                }
                lentChunk = chunk.chunk
                n = receiveMessage(fd, template: UnsafeMutablePointer(bitPattern: template)!, into: chunk.address)
            case .connect(let fd, _, _):
                return .completed(result: Self.pendingSocketError(fd), flags: 0, final: true)
            case .pollReadable(let fd):
                let ready = ckeel_poll_now(fd, Int16(CKEEL_POLLIN | CKEEL_POLLPRI | CKEEL_POLLRDHUP))
                return ready == 0 ? .wouldBlock : .completed(result: ready, flags: 0, final: true)
            case .nop, .timeout:
                return .completed(result: 0, flags: 0, final: true)
            }
            let code = n < 0 ? ckeel_errno() : 0
            if let chunk = lentChunk {
                if n > 0 {
                    return .completed(result: Int32(n), flags: CKEEL_CQE_F_BUFFER | chunk << CKEEL_CQE_BUFFER_SHIFT, final: false)
                }
                pool.reclaimFromKernel(chunk: chunk)
                if n == 0 { return .completed(result: 0, flags: 0, final: true) }
            } else if n >= 0 {
                return .completed(result: Int32(n), flags: 0, final: false)
            }
            if code == EINTR { continue }
            if code == EAGAIN || code == EWOULDBLOCK { return .wouldBlock }
            return .completed(result: -code, flags: 0, final: true)
        }
    }

    /// recvmsg into `chunk` with io_uring's multishot RECVMSG layout: header, address, payload.
    /// - Returns: the bytes stored (header + address space + payload), or -1 with errno.
    private func receiveMessage(_ fd: Int32, template: UnsafeMutablePointer<msghdr>, into chunk: UnsafeMutableRawPointer) -> Int {
        let header = ckeel_recvmsg_out_size()
        let nameSpace = Int(template.pointee.msg_namelen)
        let controlSpace = Int(template.pointee.msg_controllen)
        let payloadStart = header + nameSpace + controlSpace
        var vector = iovec(iov_base: chunk + payloadStart, iov_len: pool.bufferSize - payloadStart)
        var message = msghdr()
        message.msg_name = chunk + header
        message.msg_namelen = socklen_t(nameSpace)
        if controlSpace > 0 {
            message.msg_control = chunk + header + nameSpace
            message.msg_controllen = controlSpace
        }
        return withUnsafeMutablePointer(to: &vector) { vectorPointer in
            message.msg_iov = vectorPointer
            message.msg_iovlen = 1
            // MSG_TRUNC: return the datagram's real length even when it did not fit.
            let n = ckeel_recvmsg(fd, &message, Int32(CKEEL_MSG_TRUNC))
            guard n >= 0 else { return -1 }
            let truncated = message.msg_flags & Int32(CKEEL_MSG_TRUNC) != 0
            ckeel_recvmsg_out_write(chunk, UInt32(message.msg_namelen), UInt32(message.msg_controllen), UInt32(n),
                                    truncated ? CKEEL_MSG_TRUNC : 0)
            return payloadStart + min(n, pool.bufferSize - payloadStart)
        }
    }

    private static func pendingSocketError(_ fd: Int32) -> Int32 {
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0 { return -ckeel_errno() }
        return -error
    }

    private func startConnect(fd: Int32, address: UInt, length: UInt32, token: Token) {
        guard fd >= 0 else { return complete(token, -EBADF) }
        ensureInterestSlot(fd)
        if state.pointee.interests[Int(fd)].write != 0 { return complete(token, -EBUSY) }
        while true {
            if CKeelLinux.connect(fd, UnsafePointer(bitPattern: address), socklen_t(length)) == 0 {
                return complete(token, 0)
            }
            let code = ckeel_errno()
            if code == EINTR { continue }
            if code == EINPROGRESS || code == EAGAIN {
                setPending(fd, readable: false, PendingIO(
                    token: token, operation: .connect(fd: fd, address: address, length: length)))
                return arm(fd)
            }
            return complete(token, -code)
        }
    }

    private func ensureInterestSlot(_ fd: Int32) {
        if Int(fd) >= state.pointee.interests.count {
            state.pointee.interests.grow(toHold: Int(fd), filler: Interest())
            state.pointee.registered.grow(toHold: Int(fd), filler: .unsure)
        }
    }

    /// Makes `fd`'s registration ask for the readiness its pending operations need; no system call when
    /// it already does. With nothing pending the registration is removed (level-triggered, it would
    /// report a readable socket on every wait).
    private func arm(_ fd: Int32) {
        let read = pendingRead(fd)
        let write = pendingWrite(fd)
        var wanted = Registration.none
        if read != nil { wanted = wanted.union(.readable) }
        if write != nil { wanted = wanted.union(.writable) }
        if case .pollReadable? = read?.operation { wanted = wanted.union(.urgent) }
        let current = state.pointee.registered[Int(fd)]
        if wanted == current { return }
        registrationCalls += 1
        if wanted == .none {
            _ = ckeel_epoll_ctl(epollFD, EPOLL_CTL_DEL, fd, 0, 0)
            state.pointee.registered[Int(fd)] = .none
            return
        }
        let events = wanted.events
        let known = current != .none && current != .unsure
        // A known registration is changed; otherwise added, and changed if it turns out to exist.
        let done = known
            ? ckeel_epoll_ctl(epollFD, EPOLL_CTL_MOD, fd, events, UInt64(fd)) == 0
                || (ckeel_errno() == ENOENT && ckeel_epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, events, UInt64(fd)) == 0)
            : ckeel_epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, events, UInt64(fd)) == 0
                || (ckeel_errno() == EEXIST && ckeel_epoll_ctl(epollFD, EPOLL_CTL_MOD, fd, events, UInt64(fd)) == 0)
        if done {
            state.pointee.registered[Int(fd)] = wanted
            return
        }
        // The descriptor cannot be watched (closed, or a regular file): fail what waits on it.
        let code = ckeel_errno()
        if let read { complete(read.token, -code) }
        if let write { complete(write.token, -code) }
        setPending(fd, readable: true, nil)
        setPending(fd, readable: false, nil)
    }

    /// Cancels the operation under `token`: it completes with `-ECANCELED`. Unknown tokens are ignored.
    /// The descriptor's registration stays until readiness finds nothing waiting (a cancelled receive
    /// is usually followed by a close, which removes it).
    func cancel(_ token: Token) {
        if let index = state.pointee.timeouts.firstIndex(where: { $0.token == token }) {
            state.pointee.timeouts.remove(at: index)
            return complete(token, -ECANCELED)
        }
        let slot = Int(token.slot)
        guard slot < state.pointee.operations.count, let operation = state.pointee.operations[slot] else { return }
        let fd = Self.descriptor(of: operation)
        guard fd >= 0, Int(fd) < state.pointee.interests.count else { return }
        if state.pointee.interests[Int(fd)].read == token.rawValue {
            setPending(fd, readable: true, nil)
            return complete(token, -ECANCELED)
        }
        if state.pointee.interests[Int(fd)].write == token.rawValue {
            setPending(fd, readable: false, nil)
            return complete(token, -ECANCELED)
        }
    }

    /// Waits for readiness up to `waitNanoseconds` (nil: no limit; 0: poll) and performs what became ready.
    func submitAndWait(waitNanoseconds: UInt64?) throws(SystemError) {
        var wait = waitNanoseconds
        if !state.pointee.completed.isEmpty { wait = 0 }
        if !state.pointee.timeouts.isEmpty {
            let now = ckeel_monotonic_ns()
            // Index loop, not for-in: an unspecialised array iterator allocates in debug builds.
            var index = 0
            while index < state.pointee.timeouts.count {
                let deadline = state.pointee.timeouts[index].deadline
                let remaining = deadline > now ? deadline - now : 0
                wait = min(wait ?? remaining, remaining)
                index += 1
            }
        }
        let timeoutMS: Int32 = wait.map { Int32(clamping: ($0 + 999_999) / 1_000_000) } ?? -1
        let count = ckeel_epoll_wait(epollFD, events, eventCapacity, timeoutMS)
        if count < 0 {
            let code = ckeel_errno()
            if code != EINTR { throw SystemError(code: code, call: "epoll_wait") }
        }
        // An Int range: iterating a Range<Int32> goes through an unspecialised iterator that
        // allocates in debug builds.
        for index in 0..<Int(max(0, count)) {
            let i = Int32(index)
            let data = ckeel_epoll_event_data(events, i)
            if data == EpollBackend.wakeupMarker {
                Descriptors.drain(eventFD: wakeupFD)
                continue
            }
            handleReadiness(fd: Int32(truncatingIfNeeded: data), events: ckeel_epoll_event_events(events, i))
        }
        expireTimeouts()
    }

    private func handleReadiness(fd: Int32, events: UInt32) {
        guard Int(fd) < state.pointee.interests.count else { return }
        state.pointee.readinessEvents += 1
        let failed = events & (CKEEL_EPOLLERR | CKEEL_EPOLLHUP) != 0
        let before = state.pointee.interests[Int(fd)]
        if events & (CKEEL_EPOLLIN | CKEEL_EPOLLRDHUP | CKEEL_EPOLLPRI) != 0 || failed, let io = pendingRead(fd) {
            if case .receivePooled(_, let multishot) = io.operation, state.pointee.completed.isEmpty,
                let thread = state.pointee.thread
            {
                // Nothing queued that must come first: the data goes to the handler now.
                receiveStreamAtReadiness(io.token, fd: fd, multishot: multishot, thread: thread)
            } else if !run(io, fd: fd) {
                setPending(fd, readable: true, nil)
            }
        }
        if events & CKEEL_EPOLLOUT != 0 || failed, let io = pendingWrite(fd) {
            if !run(io, fd: fd) { setPending(fd, readable: false, nil) }
        }
        let after = state.pointee.interests[Int(fd)]
        // While something waits, the registration changes only if what waits did (a connection's
        // receive stays armed: no call). When the last operation ended just now the registration
        // stays (the descriptor is usually closed next); readiness with nothing waiting before or
        // after removes it.
        let waiting = after.read != 0 || after.write != 0
        if waiting ? after != before : after == before { arm(fd) }
    }

    private func expireTimeouts() {
        guard !state.pointee.timeouts.isEmpty else { return }
        let now = ckeel_monotonic_ns()
        var i = 0
        while i < state.pointee.timeouts.count {
            if state.pointee.timeouts[i].deadline <= now {
                complete(state.pointee.timeouts[i].token, -ETIME)
                state.pointee.timeouts.remove(at: i)
            } else {
                i += 1
            }
        }
    }

    /// Delivers the completions produced so far. Completions produced while delivering (by handlers
    /// that submit again) wait for the next call.
    func drain(_ body: (Token, IOCompletion) -> Void) {
        var remaining = state.pointee.completed.count
        while remaining > 0 {
            let entry = state.pointee.completed.popFirst()
            remaining -= 1
            body(Token(rawValue: entry.token), IOCompletion(result: entry.result, flags: entry.flags))
        }
    }
}
