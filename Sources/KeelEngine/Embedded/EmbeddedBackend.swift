import CKeelLinux
import KeelBuffers
import KeelSystem

/// A backend that plays the kernel in memory, for deterministic tests of connections, their filters
/// and their handlers: no sockets, no threads, no real time.
///
/// Its descriptors are numbers it hands out (``makeStream(local:remote:)``), far above any real
/// descriptor, and never reach the kernel: the socket calls a connection makes go to the
/// ``EmbeddedStream`` behind the number instead (``IOThread``'s socket calls route them here). A test
/// feeds inbound bytes chunk by chunk, reads what was sent, limits how much the "kernel" accepts, and
/// makes the peer half-close or reset. Time moves only when the test advances ``nowNanoseconds``.
///
/// Completions are produced by ``submitAndWait(waitNanoseconds:)`` and delivered by ``drain(_:)``,
/// never inside ``push(_:token:)``, as on the real backends.
///
/// **Threading:** owned by one embedded ``IOThread``, used on the test's thread only.
@usableFromInline
package final class EmbeddedBackend {
    /// The thread's buffer pool, for pooled receives.
    let pool: BufferPool
    /// The manual clock: monotonic nanoseconds as the embedded thread sees them.
    package var nowNanoseconds: UInt64 = 1_000_000_000
    private var streams: [Int32: EmbeddedStream] = [:]
    private var nextDescriptor: Int32 = 1 << 28
    private var pending: [(token: Token, operation: IOOperation.Core)] = []
    private var timeouts: [(deadline: UInt64, token: Token)] = []
    private var completed: [(token: Token, completion: IOCompletion)] = []
    private var head = 0
    /// Plays a kernel with zero-copy send: a ``IOOperation/sendMessageZeroCopy(_:_:)`` completes with
    /// `IORING_CQE_F_MORE` and its notification waits for ``releaseZeroCopyNotifications(copied:)``.
    /// Off: it is a plain send. Set it before connections open (they read it as a feature).
    package var simulatesZeroCopySend = false
    /// Zero-copy sends whose notification the test has not released.
    private(set) var heldZeroCopyNotifications: [Token] = []
    /// How many there are.
    package var heldZeroCopyNotificationCount: Int { heldZeroCopyNotifications.count }

    init(pool: BufferPool) {
        self.pool = pool
    }

    /// A new in-memory stream socket. - Returns: its descriptor (not a kernel descriptor).
    package func makeStream(local: SocketAddress, remote: SocketAddress) -> Int32 {
        let fd = nextDescriptor
        nextDescriptor += 1
        streams[fd] = EmbeddedStream(descriptor: fd, local: local, remote: remote)
        return fd
    }

    /// The stream behind `fd` (nil once it was closed).
    package func stream(_ fd: Int32) -> EmbeddedStream? { streams[fd] }

    /// Descriptors made and not yet closed.
    package var openDescriptors: Int { streams.count }

    /// Operations waiting for data, room or time.
    package var pendingOperations: Int { pending.count + timeouts.count }

    // MARK: The backend interface (see `Backend`)

    func push(_ operation: IOOperation, token: Token) {
        switch operation.core {
        case .nop:
            complete(token, 0)
        case .timeout(let nanoseconds):
            timeouts.append((nowNanoseconds &+ nanoseconds, token))
        case .receive, .receivePooled, .pollReadable, .send, .sendMessage:
            pending.append((token, operation.core))
        case .sendMessageZeroCopy(let fd, let message, let flags):
            pending.append((token, simulatesZeroCopySend ? operation.core : .sendMessage(fd: fd, message: message, flags: flags)))
        case .read, .write, .accept, .connect, .receiveMessagePooled:
            complete(token, -EOPNOTSUPP)  // embedded streams are connected TCP sockets only
        }
    }

    func cancel(_ token: Token) {
        if let index = pending.firstIndex(where: { $0.token == token }) {
            pending.remove(at: index)
            complete(token, -ECANCELED)
        } else if let index = timeouts.firstIndex(where: { $0.token == token }) {
            timeouts.remove(at: index)
            complete(token, -ECANCELED)
        }
    }

    /// Makes progress on every pending operation that can: data, end of stream or resets reach
    /// receives, room in the send window reaches sends, due timeouts expire. Never blocks.
    func submitAndWait(waitNanoseconds: UInt64?) {
        var index = 0
        while index < pending.count {
            let (token, operation) = pending[index]
            if progress(operation, token: token) {
                pending.remove(at: index)
            } else {
                index += 1
            }
        }
        timeouts.removeAll { entry in
            guard entry.deadline <= nowNanoseconds else { return false }
            complete(entry.token, -ETIME)
            return true
        }
    }

    func drain(_ body: (Token, IOCompletion) -> Void) {
        while head < completed.count {
            let entry = completed[head]
            head += 1
            body(entry.token, entry.completion)
        }
        completed.removeAll(keepingCapacity: true)
        head = 0
    }

    /// Completions produced and not yet drained.
    var hasCompletions: Bool { head < completed.count }

    func wakeup() {}

    func close() {
        streams.removeAll()
        pending.removeAll()
        timeouts.removeAll()
    }

    /// Queues the notifications of every zero-copy send so far (`copied`: the kernel reports that it
    /// copied, as on loopback).
    package func releaseZeroCopyNotifications(copied: Bool) {
        for token in heldZeroCopyNotifications {
            complete(token, copied ? Int32(bitPattern: CKEEL_NOTIF_USAGE_ZC_COPIED) : 0, flags: CKEEL_CQE_F_NOTIF)
        }
        heldZeroCopyNotifications.removeAll()
    }

    private func complete(_ token: Token, _ result: Int32, flags: UInt32 = 0) {
        completed.append((token, IOCompletion(result: result, flags: flags)))
    }

    /// One pending operation's progress. - Returns: true when it has ended (its final completion queued).
    private func progress(_ operation: IOOperation.Core, token: Token) -> Bool {
        switch operation {
        case .receivePooled(let fd, let multishot):
            guard let stream = streams[fd] else { complete(token, -EBADF); return true }
            while stream.hasInboundBytes {
                guard let chunk = pool.lendToKernel() else { complete(token, -ENOBUFS); return true }
                let n = stream.readInbound(into: UnsafeMutableRawBufferPointer(start: chunk.address, count: pool.bufferSize))
                let flags = CKEEL_CQE_F_BUFFER | chunk.chunk << CKEEL_CQE_BUFFER_SHIFT
                complete(token, Int32(n), flags: multishot ? flags | CKEEL_CQE_F_MORE : flags)
                if !multishot { return true }
            }
            return endOfInbound(stream, token: token)
        case .receive(let fd, let address, let length):
            guard let stream = streams[fd] else { complete(token, -EBADF); return true }
            if stream.hasInboundBytes {
                let target = UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: address), count: Int(length))
                complete(token, Int32(stream.readInbound(into: target)))
                return true
            }
            return endOfInbound(stream, token: token)
        case .pollReadable(let fd):
            guard let stream = streams[fd] else { complete(token, -EBADF); return true }
            let mask = stream.readinessMask
            guard mask != 0 else { return false }
            complete(token, mask)
            return true
        case .send(let fd, let address, let length, let flags):
            let bytes = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: address), count: Int(length))
            return progressSend(fd, token: token) { stream in stream.write(bytes, urgent: flags & CKEEL_MSG_OOB != 0) }
        case .sendMessage(let fd, let message, _):
            return progressSend(fd, token: token) { stream in
                stream.write(message: UnsafePointer<msghdr>(bitPattern: message)!)
            }
        case .sendMessageZeroCopy(let fd, let message, _):
            guard let stream = streams[fd] else { complete(token, -EBADF); return true }
            let result = stream.write(message: UnsafePointer<msghdr>(bitPattern: message)!)
            if result == -EAGAIN { return false }
            if result < 0 {
                complete(token, result)  // a failed zero-copy send has no notification
            } else {
                complete(token, result, flags: CKEEL_CQE_F_MORE)
                heldZeroCopyNotifications.append(token)
            }
            return true
        default:
            complete(token, -EOPNOTSUPP)
            return true
        }
    }

    /// A receive found no bytes: it ends at end of stream or a reset, or keeps waiting.
    private func endOfInbound(_ stream: EmbeddedStream, token: Token) -> Bool {
        if stream.isReset {
            complete(token, -ECONNRESET)
            return true
        }
        if stream.peerShutDownWrite {
            complete(token, 0)
            return true
        }
        return false
    }

    private func progressSend(_ fd: Int32, token: Token, _ send: (EmbeddedStream) -> Int32) -> Bool {
        guard let stream = streams[fd] else { complete(token, -EBADF); return true }
        if !stream.queuedSendFailures.isEmpty {
            complete(token, -stream.queuedSendFailures.removeFirst())
            return true
        }
        let result = send(stream)
        if result == -EAGAIN { return false }
        complete(token, result)
        return true
    }

    // MARK: Socket calls made at once (routed here by IOThread's socket calls)

    @usableFromInline package func send(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, urgent: Bool) throws(SystemError) -> IOOutcome<Int> {
        try outcome(streams[fd]?.write(bytes, urgent: urgent) ?? -EBADF, call: "send")
    }

    /// ``IOThread/sendBytes(_:_:)``: bytes taken or -errno.
    @usableFromInline package func sendBytes(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Int {
        Int(streams[fd]?.write(bytes, urgent: false) ?? -EBADF)
    }

    @usableFromInline package func sendMessage(_ fd: Int32, _ message: UnsafePointer<msghdr>) throws(SystemError) -> IOOutcome<Int> {
        try outcome(streams[fd]?.write(message: message) ?? -EBADF, call: "sendmsg")
    }

    @usableFromInline package func receive(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, urgent: Bool) throws(SystemError) -> IOOutcome<Int> {
        guard let stream = streams[fd] else { throw SystemError(code: EBADF, call: "recv") }
        if urgent {
            guard let byte = stream.takeUrgentInbound() else { throw SystemError(code: EINVAL, call: "recv") }
            buffer[0] = byte
            return .completed(1)
        }
        if stream.isReset { throw SystemError(code: ECONNRESET, call: "recv") }
        if stream.hasInboundBytes { return .completed(stream.readInbound(into: buffer)) }
        return stream.peerShutDownWrite ? .completed(0) : .wouldBlock
    }

    @usableFromInline package func shutdownWrite(_ fd: Int32) {
        streams[fd]?.shutDownWrite = true
    }

    @usableFromInline package func setAbortiveClose(_ fd: Int32) {
        streams[fd]?.abortiveClose = true
    }

    @usableFromInline package func closeDescriptor(_ fd: Int32) {
        guard let stream = streams.removeValue(forKey: fd) else { return }
        stream.isClosed = true
    }

    private func outcome(_ result: Int32, call: String) throws(SystemError) -> IOOutcome<Int> {
        if result == -EAGAIN { return .wouldBlock }
        if result < 0 { throw SystemError(code: -result, call: call) }
        return .completed(Int(result))
    }
}

/// One in-memory connected stream: what the peer sent (in the chunks the test chose), what this side
/// sent, and the state of both directions.
///
/// **Threading:** used on the test's thread only, like its backend.
package final class EmbeddedStream {
    /// The descriptor number the backend gave it.
    package let descriptor: Int32
    /// The addresses the kernel would report.
    package var localAddress: SocketAddress
    package var remoteAddress: SocketAddress
    /// Chunks the peer sent and this side has not read: each receive takes from one chunk only, so a
    /// test decides exactly how the bytes are split.
    private var inbound: [[UInt8]] = []
    private var inboundOffset = 0
    private var urgentInbound: [UInt8] = []
    /// Bytes this side sent, in order, not yet taken by the test.
    package var outbound: [UInt8] = []
    /// Urgent bytes this side sent.
    package var urgentOutbound: [UInt8] = []
    /// Bytes the "kernel" still accepts before sends would block (the peer's unread window).
    package var sendWindow = Int.max
    /// Errors (errno values) the next queued send operations complete with, one each, without sending.
    package var queuedSendFailures: [Int32] = []
    /// The peer shut down its sending side: reads end with end of stream once the chunks are read.
    package var peerShutDownWrite = false
    /// The peer reset the connection: reads and sends fail with ECONNRESET / EPIPE.
    package var isReset = false
    /// This side shut down its sending side.
    package var shutDownWrite = false
    /// This side asked for an abortive close (SO_LINGER 0).
    package var abortiveClose = false
    /// This side closed the descriptor.
    package var isClosed = false
    /// Sends of stream bytes asked of the "kernel" (each `send` or `sendmsg`, made at once or by a
    /// queued operation), refused ones included.
    package private(set) var sendCalls = 0

    init(descriptor: Int32, local: SocketAddress, remote: SocketAddress) {
        self.descriptor = descriptor
        self.localAddress = local
        self.remoteAddress = remote
    }

    /// Queues one chunk as the peer's next segment.
    package func appendInbound(_ bytes: [UInt8]) {
        if !bytes.isEmpty { inbound.append(bytes) }
    }

    /// Queues an urgent byte from the peer.
    package func appendUrgentInbound(_ byte: UInt8) { urgentInbound.append(byte) }

    /// Inbound bytes not yet read.
    package var unreadInboundBytes: Int { inbound.reduce(0) { $0 + $1.count } - inboundOffset }

    var hasInboundBytes: Bool { !inbound.isEmpty }

    var readinessMask: Int32 {
        var mask: Int32 = 0
        if hasInboundBytes || peerShutDownWrite || isReset { mask |= Int32(CKEEL_POLLIN) }
        if !urgentInbound.isEmpty { mask |= Int32(CKEEL_POLLPRI) }
        return mask
    }

    /// Copies from the first chunk into `target`. - Returns: the bytes copied.
    func readInbound(into target: UnsafeMutableRawBufferPointer) -> Int {
        let chunk = inbound[0]
        let count = min(target.count, chunk.count - inboundOffset)
        chunk.withUnsafeBytes { source in
            target.baseAddress!.copyMemory(from: source.baseAddress! + inboundOffset, byteCount: count)
        }
        inboundOffset += count
        if inboundOffset == chunk.count {
            inbound.removeFirst()
            inboundOffset = 0
        }
        return count
    }

    func takeUrgentInbound() -> UInt8? { urgentInbound.isEmpty ? nil : urgentInbound.removeFirst() }

    /// A send of `bytes`: the result a syscall would give (`-EAGAIN` when the window is shut).
    func write(_ bytes: UnsafeRawBufferPointer, urgent: Bool) -> Int32 {
        if !urgent { sendCalls += 1 }
        return take(bytes, urgent: urgent)
    }

    private func take(_ bytes: UnsafeRawBufferPointer, urgent: Bool) -> Int32 {
        if let failure = sendFailure { return failure }
        if urgent {
            guard let byte = bytes.first else { return 0 }
            urgentOutbound.append(byte)
            return 1
        }
        if bytes.isEmpty { return 0 }
        guard sendWindow > 0 else { return -EAGAIN }
        let count = min(bytes.count, sendWindow)
        outbound.append(contentsOf: bytes[..<count])
        if sendWindow != .max { sendWindow -= count }
        return Int32(count)
    }

    /// A `sendmsg` of the message's iovecs, in order, as far as the window allows.
    func write(message: UnsafePointer<msghdr>) -> Int32 {
        sendCalls += 1
        if let failure = sendFailure { return failure }
        var total: Int32 = 0
        for index in 0..<Int(message.pointee.msg_iovlen) {
            let vector = message.pointee.msg_iov[index]
            let bytes = UnsafeRawBufferPointer(start: vector.iov_base, count: vector.iov_len)
            let n = take(bytes, urgent: false)
            if n < 0 { return total > 0 ? total : n }
            total += n
            if n < bytes.count { break }
        }
        return total
    }

    private var sendFailure: Int32? {
        if isReset { return -ECONNRESET }
        if shutDownWrite || isClosed { return -EPIPE }
        return nil
    }
}
