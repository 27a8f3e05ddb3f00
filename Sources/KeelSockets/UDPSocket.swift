import CKeelLinux
import Glibc
import KeelBuffers
import KeelEngine
import KeelSystem
import Logging
import Synchronization
import SystemPackage

/// Your logic for a ``UDPSocket``: a value stored in the socket, called on its I/O thread.
public protocol UDPHandler: SendableMetatype {
    /// A datagram arrived from `sender`, in a pooled buffer you now own. `truncated` is true when it
    /// was longer than a buffer and was cut (never silently).
    mutating func datagramReceived(_ datagram: consuming IOBuffer, from sender: SocketAddress, truncated: Bool, on socket: UDPSocket)

    /// A run of datagrams from `sender` that the kernel coalesced into one receive (UDP GRO, see
    /// ``UDPSocketConfiguration/receivesDatagramRuns``): `segmentSize` bytes each, the last one
    /// possibly shorter, back to back in `run`. Echo or relay it whole with
    /// ``UDPSocket/send(run:segmentSize:to:)``. The default hands each datagram to
    /// ``datagramReceived(_:from:truncated:on:)``, copied into a buffer of its own (the last one in
    /// `run` itself).
    mutating func datagramRunReceived(_ run: consuming IOBuffer, segmentSize: Int, from sender: SocketAddress, on socket: UDPSocket)
}

extension UDPHandler {
    /// Hands each datagram of `run` to ``datagramReceived(_:from:truncated:on:)`` in order: all but the
    /// last copied into a pooled buffer of its own (a datagram the pool has no buffer for is dropped
    /// and counted in ``UDPSocketStatistics/receiveDrops``), the last in `run` itself.
    public mutating func datagramRunReceived(_ run: consuming IOBuffer, segmentSize: Int, from sender: SocketAddress, on socket: UDPSocket) {
        UDPSocket.forEachDatagram(of: run, segmentSize: segmentSize, pool: socket.thread.bufferPool) { datagram in
            switch consume datagram {
            case .some(let datagram): datagramReceived(datagram, from: sender, truncated: false, on: socket)
            case .none: socket.noteReceiveDrop()  // the pool is dry: UDP drops, and says so
            }
        }
    }
}

/// Bounds on datagrams waiting to be sent. The kernel does not drop for a UDP sender: without a bound,
/// pending sends would exhaust memory.
public struct UDPSendLimits: Sendable, Hashable {
    /// Most datagrams queued.
    public var maximumDatagrams: Int
    /// Most bytes queued.
    public var maximumBytes: Int
    /// What to do with a send when the queue is full (see ``SendQueuePolicy``).
    public var policy: SendQueuePolicy
    /// Send without waiting for an operation's completion: each datagram at once, or (with
    /// ``UDPSocketConfiguration/coalescesSends``) a loop iteration's datagrams together before the
    /// thread waits. Turning it off sends every datagram through the queue (one operation per loop
    /// turn), e.g. to pace bursts.
    public var sendsInline: Bool

    /// Creates limits.
    public init(maximumDatagrams: Int = 1024, maximumBytes: Int = 4 * 1024 * 1024, policy: SendQueuePolicy = .dropNewest,
                sendsInline: Bool = true) {
        self.maximumDatagrams = maximumDatagrams
        self.maximumBytes = maximumBytes
        self.policy = policy
        self.sendsInline = sendsInline
    }
}

/// What happened to one ``UDPSocket/send(_:to:)``.
public enum UDPSendResult: Sendable, Hashable {
    /// Handed to the kernel at once.
    case sent
    /// Queued; it will be sent in order.
    case queued
    /// Dropped by the ``SendQueuePolicy/dropNewest`` (or ``SendQueuePolicy/dropOldest``) policy.
    case dropped
    /// Refused by the ``SendQueuePolicy/refuse`` policy, or the socket is closed.
    case refused

    /// Orders outcomes from best to worst (the outcome of several sends is the worst of them).
    var severity: Int {
        switch self {
        case .sent: 0
        case .queued: 1
        case .dropped: 2
        case .refused: 3
        }
    }
}

/// Counters of a ``UDPSocket`` (read them on its thread).
public struct UDPSocketStatistics: Sendable, Hashable {
    /// Datagrams the kernel accepted.
    public var sent = 0
    /// Datagrams dropped by the send policy (newest or oldest).
    public var dropped = 0
    /// Sends refused by the ``SendQueuePolicy/refuse`` policy or failed in the kernel.
    public var failed = 0
    /// Sends queued past the limits by the ``SendQueuePolicy/notify`` policy.
    public var overLimit = 0
    /// Datagrams received.
    public var received = 0
    /// Datagrams received truncated.
    public var truncated = 0
    /// Receives that carried a run of datagrams (UDP GRO); their datagrams count in ``received``.
    public var receivedRuns = 0
    /// Datagrams of received runs dropped because the pool had no buffer to split them into.
    public var receiveDrops = 0
    /// Sends that carried several datagrams as one packet through the kernel (UDP segmentation
    /// offload, ``KernelFeatures/udpSegmentation``).
    public var segmentedSends = 0
    /// Datagrams those sends carried.
    public var segmentedDatagrams = 0
    /// Datagrams queued now.
    public var queued = 0
    /// Bytes queued now.
    public var queuedBytes = 0
}

/// How a ``UDPSocket`` binds and behaves.
public struct UDPSocketConfiguration: Sendable {
    /// The numeric address to bind.
    public var host: String
    /// The port (0: the kernel chooses).
    public var port: UInt16
    /// `SO_RCVBUF` (nil: the kernel's default).
    public var receiveBufferSize: Int32?
    /// `SO_SNDBUF` (nil: the kernel's default).
    public var sendBufferSize: Int32?
    /// Bounds on pending sends.
    public var sendLimits: UDPSendLimits
    /// `SO_REUSEPORT`: several sockets (one per I/O thread) share the port; the kernel spreads
    /// datagrams over them by sender. Only sockets of the same user can join. With port 0 the
    /// first socket gets a port no other socket holds, and the others bind its port.
    public var reusePort: Bool
    /// `SO_REUSEADDR`: any socket that also asks may bind this socket's address and port, and a
    /// unicast datagram then goes to only one of them. For several receivers of one multicast
    /// group's port; off by default. With port 0 the socket gets a port no other socket holds.
    public var reuseAddress: Bool
    /// Datagrams sent during one loop iteration leave together, just before the thread waits: a run
    /// of equal-sized datagrams (at most 1,452 bytes each) to one destination as one `sendmsg` with UDP
    /// segmentation offload where the kernel has it (``KernelFeatures/udpSegmentation``: the kernel
    /// carries them as one packet and splits them at the end), the rest up to 64 at a time with
    /// `sendmmsg`. Off: each datagram is tried at once. Default on; needs
    /// ``UDPSendLimits/sendsInline``.
    public var coalescesSends: Bool
    /// Let the kernel hand a run of datagrams from one sender over in one receive (UDP GRO,
    /// ``KernelFeatures/udpReceiveCoalescing``), delivered through
    /// ``UDPHandler/datagramRunReceived(_:segmentSize:from:on:)``. A run can be 64 KiB, so this
    /// applies only where the thread's pool buffers are at least ``UDPSocket/runBufferSize`` bytes
    /// (`BufferPoolConfiguration.bufferSize`; keel-udp-echo `--buffer-kib 68`); with the default
    /// 16 KiB buffers, datagrams arrive one by one (logged once per process).
    /// ``UDPSocket/receivesDatagramRuns`` says what a bound socket got. Default on.
    public var receivesDatagramRuns: Bool

    /// Creates a configuration.
    public init(host: String = "127.0.0.1", port: UInt16 = 0, receiveBufferSize: Int32? = nil,
                sendBufferSize: Int32? = nil, sendLimits: UDPSendLimits = .init(), reusePort: Bool = false,
                reuseAddress: Bool = false, coalescesSends: Bool = true, receivesDatagramRuns: Bool = true) {
        self.reuseAddress = reuseAddress
        self.coalescesSends = coalescesSends
        self.receivesDatagramRuns = receivesDatagramRuns
        self.reusePort = reusePort
        self.host = host
        self.port = port
        self.receiveBufferSize = receiveBufferSize
        self.sendBufferSize = sendBufferSize
        self.sendLimits = sendLimits
    }
}

/// A UDP socket on one I/O thread: datagrams arrive in pooled buffers with their sender (multishot
/// RECVMSG with provided buffers on io_uring), and sends go out at once or through a bounded queue.
///
/// **Threading:** use it on ``thread`` (inside handler callbacks or ``IOThread/execute(_:)``).
public class UDPSocket: @unchecked Sendable {
    // @unchecked Sendable: all mutable state is touched only on `thread` (checked at entry points).

    /// The socket's I/O thread.
    public let thread: IOThread
    /// The bound address.
    public let localAddress: SocketAddress
    /// The socket descriptor (-1 once closed).
    public private(set) var descriptor: Int32
    /// The send bounds.
    public let sendLimits: UDPSendLimits
    private(set) var counters = UDPSocketStatistics()

    private struct Pending {
        var payload: WriteQueue.Item
        var destination: SocketAddress?
        /// A run of datagrams of this size back to back in `payload` (0: one datagram).
        var segmentSize = 0
    }

    private var queue: [Pending] = []
    private var queueHead = 0
    private var queuedBytes = 0
    private var sendInFlight = false
    private var receiveOperation: OperationID?
    private var sendOperation: OperationID?
    private var pendingOperations = 0
    private var closed = false
    /// Keeps the socket alive from close() until its cancelled operations have completed (their
    /// completion closures reference it unowned).
    private var lifeline: UDPSocket?
    /// The thread's shutdown hook that closes this socket; removed once the socket has closed, so the
    /// thread stops holding it.
    fileprivate var shutdownHook: IOThreadHook?
    private var connectedPeer: SocketAddress?
    private let template: UnsafeMutablePointer<msghdr>
    private let sendMessage: UnsafeMutablePointer<msghdr>
    private let sendVector: UnsafeMutablePointer<iovec>
    private let sendAddress: UnsafeMutablePointer<sockaddr_storage>
    private var onReceive: Completions!
    private var onSend: Completions!
    private static let addressSpace = MemoryLayout<sockaddr_storage>.size
    /// Sends wait for ``flushCoalescedSends()``, just before the thread waits.
    private let coalescesSends: Bool
    /// Runs to one destination go out as one segmented send (cleared if the kernel refuses one).
    private var segmentsSends: Bool
    private var flushScheduled = false
    /// The thread's before-wait hook that flushes; removed once the socket has closed.
    fileprivate var flushHook: IOThreadHook?
    /// The message headers of a flush, made on the first one.
    private var batch: SendBatch?
    /// Whether the kernel may hand this socket a run of datagrams in one receive (UDP GRO is on): the
    /// configuration asked for runs (``UDPSocketConfiguration/receivesDatagramRuns``), the kernel has
    /// ``KernelFeatures/udpReceiveCoalescing`` and it is not turned off, and the thread's pool buffers
    /// hold a run (``runBufferSize``). False means datagrams arrive one by one.
    public let receivesDatagramRuns: Bool
    /// The pool buffer size from which a socket asks for runs: a 64 KiB run, the kernel's header, an
    /// address and a control message.
    public static let runBufferSize = 65_536 + 1024
    private static let loggedBuffersTooSmall = Atomic<Bool>(false)

    /// Says once per process that sockets asking for runs get datagrams one by one, and why: the
    /// start-up line lists `udp-gro` whenever the kernel has it.
    private static func noteBuffersTooSmallForRuns(_ bufferSize: Int) {
        guard !loggedBuffersTooSmall.exchange(true, ordering: .relaxed) else { return }
        Logger(label: "keel.udp").info(
            "UDP sockets receive datagrams one by one: runs (udp-gro) need pool buffers of at least \(runBufferSize) bytes, these hold \(bufferSize) (BufferPoolConfiguration.bufferSize)")
    }

    /// Counts a datagram of a run dropped for want of a buffer (``UDPHandler``'s default splitting).
    func noteReceiveDrop() { counters.receiveDrops += 1 }

    init(thread: IOThread, descriptor: Int32, localAddress: SocketAddress, sendLimits: UDPSendLimits, coalescesSends: Bool = false,
         receivesRuns: Bool = false) {
        self.thread = thread
        self.descriptor = descriptor
        self.localAddress = localAddress
        self.sendLimits = sendLimits
        self.coalescesSends = coalescesSends && sendLimits.sendsInline
        segmentsSends = thread.kernelFeatures.contains(.udpSegmentation)
        self.receivesDatagramRuns = receivesRuns
        template = .allocate(capacity: 1)
        template.initialize(to: msghdr())
        template.pointee.msg_namelen = socklen_t(Self.addressSpace)
        // With UDP_GRO on, room for its control message (the segment size of a run).
        template.pointee.msg_controllen = receivesRuns ? ckeel_udp_gro_control_size() : 0
        sendMessage = .allocate(capacity: 1)
        sendMessage.initialize(to: msghdr())
        sendVector = .allocate(capacity: 1)
        sendVector.initialize(to: iovec())
        sendAddress = .allocate(capacity: 1)
        sendAddress.initialize(to: sockaddr_storage())
        onReceive = Completions(self, isSend: false)
        onSend = Completions(self, isSend: true)
    }

    /// Routes the socket's receive or send completions to it (made once per socket).
    private final class Completions: IOCompletionHandler {
        /// Unretained, like a TCP connection's handlers: the socket outlives its operations (its
        /// thread's shutdown hook holds it while it is open, `lifeline` while it closes), and a counted
        /// reference would cost an atomic retain and release on every datagram.
        let socket: Unmanaged<UDPSocket>
        let isSend: Bool

        init(_ socket: UDPSocket, isSend: Bool) {
            self.socket = .passUnretained(socket)
            self.isSend = isSend
        }

        override func complete(_ completion: IOCompletion) {
            socket._withUnsafeGuaranteedRef { socket in
                if isSend { socket.sendCompleted(completion) } else { socket.receiveCompleted(completion) }
            }
        }
    }

    deinit {
        template.deallocate()
        sendMessage.deallocate()
        sendVector.deallocate()
        sendAddress.deallocate()
    }

    /// Overridden by the handler-storing subclass.
    func deliver(_ datagram: consuming IOBuffer, from sender: SocketAddress, truncated: Bool) {}
    /// Overridden by the handler-storing subclass.
    func deliverRun(_ run: consuming IOBuffer, segmentSize: Int, from sender: SocketAddress) {}
    /// The socket has closed: the subclass drops its handler (which may refer back to the socket, as a
    /// session server's sessions do).
    func didClose() {}

    /// Binds a socket on `thread` (the next thread of `pool` when nil) and starts receiving into `handler`.
    public static func bind<Handler: UDPHandler>(
        pool: IOPool, on thread: IOThread? = nil, configuration: UDPSocketConfiguration, handler: Handler
    ) throws(SystemError) -> UDPSocket {
        let address = try SocketAddress(host: configuration.host, port: configuration.port)
        let fd = try Sockets.makeDatagramSocket(family: address.addressFamily)
        let bound: SocketAddress
        do {
            // Linux's search for a free port (port 0) counts a port held only by sockets this one may
            // share with as free, so a sharing option set before such a bind can land on another
            // socket's port and lose every datagram to it. Set after the bind, the options still let
            // later sockets join the port the kernel picked.
            func allowSharing() throws(SystemError) {
                if configuration.reuseAddress { try Sockets.setReuseAddress(fd) }
                if configuration.reusePort { try Sockets.setReusePort(fd) }
            }
            let kernelPicksPort = configuration.port == 0
            if !kernelPicksPort { try allowSharing() }
            if address.family == .ipv6 { try Sockets.setIPv6Only(fd, true) }
            try Sockets.setBufferSizes(fd, send: configuration.sendBufferSize, receive: configuration.receiveBufferSize)
            try Sockets.bind(fd, to: address)
            if kernelPicksPort { try allowSharing() }
            bound = try Sockets.localAddress(fd)
        } catch {
            Descriptors.close(fd)
            throw error
        }
        let target = thread ?? pool.next()
        let wantsRuns = configuration.receivesDatagramRuns && target.kernelFeatures.contains(.udpReceiveCoalescing)
        let buffersHoldRuns = target.bufferPool.bufferSize >= runBufferSize
        if wantsRuns && !buffersHoldRuns { noteBuffersTooSmallForRuns(target.bufferPool.bufferSize) }
        let receivesRuns = wantsRuns && buffersHoldRuns && ckeel_enable_udp_gro(fd) == 0
        let socket = HandledUDPSocket<Handler>(thread: target, descriptor: fd, localAddress: bound, sendLimits: configuration.sendLimits,
                                               coalescesSends: configuration.coalescesSends, receivesRuns: receivesRuns)
        socket.handler = handler
        target.execute {
            socket.shutdownHook = target.onShutdown { socket.close() }  // the pool's shutdown closes the socket cleanly
            target.registerDescriptor(fd)
            if configuration.coalescesSends && configuration.sendLimits.sendsInline {
                socket.flushHook = target.beforeEachWait { socket.flushCoalescedSends() }
            }
            socket.startReceiving()
        }
        return socket
    }

    /// Counters (read on ``thread``).
    public var statistics: UDPSocketStatistics {
        var snapshot = counters
        snapshot.queued = queue.count - queueHead
        snapshot.queuedBytes = queuedBytes
        return snapshot
    }

    // MARK: Receiving

    func startReceiving() {
        guard !closed, receiveOperation == nil else { return }
        pendingOperations += 1
        receiveOperation = thread.submit(.receiveMessagePooled(descriptor, template: template, multishot: true), handler: onReceive)
    }

    private func receiveCompleted(_ completion: IOCompletion) {
        if !completion.hasMore {
            receiveOperation = nil
            pendingOperations -= 1
        }
        if var buffer = thread.takeReceivedBuffer(completion) {
            let controlSpace = Int(template.pointee.msg_controllen)
            let parsed = buffer.withUnsafeReadableBytes { bytes -> (sender: SocketAddress, truncated: Bool, headers: Int, segment: Int) in
                let base = bytes.baseAddress!
                let nameLength = ReceivedMessageLayout.addressLength(base)
                var storage = sockaddr_storage()
                withUnsafeMutableBytes(of: &storage) {
                    $0.copyMemory(from: UnsafeRawBufferPointer(start: base + ReceivedMessageLayout.headerBytes,
                                                               count: min(nameLength, Self.addressSpace)))
                }
                let headers = ReceivedMessageLayout.headerBytes + Self.addressSpace + controlSpace
                let stored = bytes.count - headers
                let truncated = ReceivedMessageLayout.isTruncated(base) || ReceivedMessageLayout.payloadLength(base) > stored
                var segment = 0
                if controlSpace > 0 {
                    let control = UnsafeMutableRawPointer(mutating: base + ReceivedMessageLayout.headerBytes + Self.addressSpace)
                    segment = Int(ckeel_udp_gro_segment_size(control, min(ReceivedMessageLayout.controlLength(base), controlSpace)))
                }
                return (SocketAddress(storage: storage, length: socklen_t(nameLength)), truncated, headers, segment)
            }
            buffer.consume(parsed.headers)
            if parsed.truncated { counters.truncated += 1 }
            if parsed.segment > 0 && buffer.readableBytes > parsed.segment && !parsed.truncated {
                counters.receivedRuns += 1
                counters.received += (buffer.readableBytes + parsed.segment - 1) / parsed.segment
                if !closed { deliverRun(buffer, segmentSize: parsed.segment, from: parsed.sender) }
            } else {
                counters.received += 1
                if !closed { deliver(buffer, from: parsed.sender, truncated: parsed.truncated) }
            }
        }
        if receiveOperation == nil && !closed && !completion.isCancelled {
            if completion.result == -ENOBUFS {
                thread.scheduleTimer(after: .milliseconds(1)) { [self] in startReceiving() }
            } else {
                startReceiving()
            }
        }
        finishIfClosed()
    }

    // MARK: Sending

    /// Connects the socket to `peer`: only its datagrams are received, and ``send(_:)`` needs no address.
    public func connect(to peer: SocketAddress) throws(SystemError) {
        try Sockets.connectDatagram(descriptor, to: peer)
        connectedPeer = peer
    }

    /// Sends a datagram to the connected peer (see ``connect(to:)``).
    @discardableResult
    public func send(_ datagram: consuming IOBuffer) -> UDPSendResult {
        precondition(connectedPeer != nil, "send(_:) without an address needs connect(to:) first")
        return enqueue(.owned(datagram.detach()), to: nil)
    }

    /// Sends a datagram to `destination`.
    @discardableResult
    public func send(_ datagram: consuming IOBuffer, to destination: SocketAddress) -> UDPSendResult {
        enqueue(.owned(datagram.detach()), to: destination)
    }

    /// Sends a shared payload to `destination` without copying it (one payload, many receivers).
    @discardableResult
    public func send(_ datagram: SharedBuffer, to destination: SocketAddress) -> UDPSendResult {
        enqueue(.shared(datagram, offset: 0), to: destination)
    }

    /// Sends a run of datagrams of `segmentSize` bytes each (the last may be shorter), back to back in
    /// `run`, to `destination`: as one segmented send where the socket coalesces sends and the kernel
    /// has ``KernelFeatures/udpSegmentation`` (and `segmentSize` is at most 1,452), otherwise datagram
    /// by datagram. At most 64 datagrams, the kernel's limit for one segmented send; a longer run is
    /// refused. A run received by ``UDPHandler/datagramRunReceived(_:segmentSize:from:on:)`` goes back
    /// out whole this way.
    @discardableResult
    public func send(run: consuming IOBuffer, segmentSize: Int, to destination: SocketAddress) -> UDPSendResult {
        precondition(thread.isCurrent, "UDPSocket.send must run on the socket's I/O thread")
        let bytes = run.readableBytes
        guard segmentSize > 0, bytes <= segmentSize * Self.maximumBatch else {
            counters.failed += 1
            return .refused
        }
        if bytes <= segmentSize { return send(run, to: destination) }
        if coalescesSends && segmentsSends && segmentSize <= Self.maximumSegmentSize {
            return enqueue(.owned(run.detach()), to: destination, segmentSize: segmentSize)
        }
        // Datagram by datagram; the outcome is the worst of theirs.
        var outcome = UDPSendResult.sent
        Self.forEachDatagram(of: run, segmentSize: segmentSize, pool: thread.bufferPool) { datagram in
            let result: UDPSendResult
            switch consume datagram {
            case .some(let datagram): result = send(datagram, to: destination)
            case .none:
                counters.failed += 1
                result = .refused
            }
            if result.severity > outcome.severity { outcome = result }
        }
        return outcome
    }

    /// Splits a run into one buffer per datagram, in order: copies of all but the last (nil where the
    /// pool had no buffer for one), then the last in `run` itself.
    static func forEachDatagram(of run: consuming IOBuffer, segmentSize: Int, pool: BufferPool, _ body: (consuming IOBuffer?) -> Void) {
        var rest = run
        while rest.readableBytes > segmentSize {
            if var datagram = try? pool.acquire() {
                _ = rest.withUnsafeReadableBytes { datagram.append(UnsafeRawBufferPointer(rebasing: $0[..<segmentSize])) }
                rest.consume(segmentSize)
                body(datagram)
            } else {
                rest.consume(segmentSize)
                body(nil)
            }
        }
        body(rest)
    }

    private func enqueue(_ payload: WriteQueue.Item, to destination: SocketAddress?, segmentSize: Int = 0) -> UDPSendResult {
        precondition(thread.isCurrent, "UDPSocket.send must run on the socket's I/O thread")
        let size = payload.readableRegion.count
        guard !closed else {
            Self.release(payload)
            counters.failed += 1
            return .refused
        }
        let queued = queue.count - queueHead
        if queued == 0 && !sendInFlight && sendLimits.sendsInline && !coalescesSends {
            switch sendNow(payload.readableRegion, to: destination) {
            case .some(true):
                Self.release(payload)
                counters.sent += 1
                return .sent
            case .some(false):
                Self.release(payload)
                counters.failed += 1
                return .refused
            case .none:
                break  // would block: queue it
            }
        }
        let bound = SendQueueBound(maximumCount: sendLimits.maximumDatagrams, maximumBytes: sendLimits.maximumBytes,
                                   policy: sendLimits.policy)
        let (verdict, droppedItems, _) = bound.admit(size: size, count: queued, bytes: queuedBytes) {
            // The head may be in flight; drop the oldest after it.
            let oldest = queueHead + (sendInFlight ? 1 : 0)
            guard oldest < queue.count else { return nil }
            let dropped = queue[oldest].payload.readableRegion.count
            queuedBytes -= dropped
            Self.release(queue[oldest].payload)
            queue.remove(at: oldest)
            return dropped
        }
        counters.dropped += droppedItems
        switch verdict {
        case .queue:
            break
        case .queueOverBound:
            counters.overLimit += 1
        case .drop:
            Self.release(payload)
            counters.dropped += 1
            return .dropped
        case .refuse:
            Self.release(payload)
            counters.failed += 1
            return .refused
        }
        queue.append(Pending(payload: payload, destination: destination, segmentSize: segmentSize))
        queuedBytes += size
        if coalescesSends {
            flushScheduled = true
        } else if !sendInFlight {
            submitNext()
        }
        return .queued
    }

    // MARK: Coalesced sends

    /// The most datagrams one segmented send or one `sendmmsg` carries.
    static let maximumBatch = 64
    /// The largest datagram sent segmented: one that fits a 1,500-byte MTU over IPv6 (a larger one
    /// would be refused by a device with that MTU).
    static let maximumSegmentSize = 1452
    /// The most bytes one segmented send carries (a UDP datagram's limit, with room for headers).
    static let maximumSegmentedBytes = 65_000

    /// Preallocated headers for one flush: iovecs, `mmsghdr`s, their addresses and a control message.
    private final class SendBatch {
        let vectors = UnsafeMutablePointer<iovec>.allocate(capacity: UDPSocket.maximumBatch)
        let messages = UnsafeMutablePointer<ckeel_mmsghdr>.allocate(capacity: UDPSocket.maximumBatch)
        let addresses = UnsafeMutablePointer<sockaddr_storage>.allocate(capacity: UDPSocket.maximumBatch)
        let control = UnsafeMutableRawPointer.allocate(byteCount: ckeel_udp_segment_control_size(), alignment: 8)

        deinit {
            vectors.deallocate()
            messages.deallocate()
            addresses.deallocate()
            control.deallocate()
        }

        /// Points message `index` at `destination` (or none: a connected socket) and its iovecs.
        func prepare(_ index: Int, destination: SocketAddress?, vectors first: Int, count: Int) {
            messages[index] = ckeel_mmsghdr()
            messages[index].msg_hdr.msg_iov = vectors + first
            messages[index].msg_hdr.msg_iovlen = count
            if let destination {
                destination.withSockAddr { address, length in
                    UnsafeMutableRawPointer(addresses + index).copyMemory(from: address, byteCount: Int(length))
                    messages[index].msg_hdr.msg_namelen = length
                }
                messages[index].msg_hdr.msg_name = UnsafeMutableRawPointer(addresses + index)
            }
        }
    }

    /// What one batched system call did.
    private enum BatchOutcome {
        /// The first `count` queued items (datagrams or runs) went out.
        case sent(count: Int)
        /// The run at the head went out datagram by datagram, only its first `datagrams` of them.
        case partialRun(datagrams: Int)
        /// The kernel has no room: the rest waits for an operation.
        case wouldBlock
        /// The first queued datagram failed (it is dropped and counted).
        case failed
    }

    /// Sends what the loop iteration queued, in order, with as few system calls as the destinations
    /// and sizes allow; what the kernel has no room for goes on as queued operations.
    func flushCoalescedSends() {
        guard flushScheduled else { return }
        flushScheduled = false
        while !closed, !sendInFlight, queueHead < queue.count {
            switch sendBatch() {
            case .sent(let count):
                for _ in 0..<count { finishHead(succeeded: true) }
            case .partialRun(let datagrams):
                finishHead(succeeded: true, datagramsSent: datagrams)
            case .failed:
                finishHead(succeeded: false)
            case .wouldBlock:
                submitNext()
                return
            }
        }
        compactQueue()
    }

    /// One system call for the datagrams at the head of the queue: a segmented send of a run to one
    /// destination, else a `sendmmsg` of up to 64.
    private func sendBatch() -> BatchOutcome {
        let batch = self.batch ?? SendBatch()
        self.batch = batch
        let first = queue[queueHead]
        if first.segmentSize > 0 { return sendRun(first, batch: batch) }
        let size = first.payload.readableRegion.count
        // A run: one destination, equal sizes (a shorter datagram may end it), within the limits.
        var run = 1
        if segmentsSends && size <= Self.maximumSegmentSize && size > 0 {
            var total = size
            while queueHead + run < queue.count && run < Self.maximumBatch {
                let next = queue[queueHead + run]
                let nextSize = next.payload.readableRegion.count
                guard next.segmentSize == 0, nextSize <= size, nextSize > 0, total + nextSize <= Self.maximumSegmentedBytes,
                    next.destination == first.destination
                else { break }
                run += 1
                total += nextSize
                if nextSize < size { break }
            }
        }
        if run > 1 {
            for i in 0..<run {
                let region = queue[queueHead + i].payload.readableRegion
                batch.vectors[i] = iovec(iov_base: UnsafeMutableRawPointer(mutating: region.baseAddress), iov_len: region.count)
            }
            if let outcome = sendSegmented(batch, vectors: run, segmentSize: size, datagrams: run, to: first.destination) {
                if case .sent = outcome { return .sent(count: run) }
                return outcome
            }
        }
        var count = 0
        while queueHead + count < queue.count && count < Self.maximumBatch && queue[queueHead + count].segmentSize == 0 {
            let item = queue[queueHead + count]
            let region = item.payload.readableRegion
            batch.vectors[count] = iovec(iov_base: UnsafeMutableRawPointer(mutating: region.baseAddress), iov_len: region.count)
            batch.prepare(count, destination: item.destination, vectors: count, count: 1)
            count += 1
        }
        return sendPrepared(batch, count: count)
    }

    /// The run at the head of the queue: one segmented send, or (where the kernel refused
    /// segmentation) one `sendmmsg` of its datagrams, pointing into the run.
    private func sendRun(_ run: Pending, batch: SendBatch) -> BatchOutcome {
        let region = run.payload.readableRegion
        let segments = Self.datagrams(in: run)
        batch.vectors[0] = iovec(iov_base: UnsafeMutableRawPointer(mutating: region.baseAddress), iov_len: region.count)
        if segmentsSends, let outcome = sendSegmented(batch, vectors: 1, segmentSize: run.segmentSize, datagrams: segments, to: run.destination) {
            return outcome
        }
        for i in 0..<segments {
            let offset = i * run.segmentSize
            batch.vectors[i] = iovec(iov_base: UnsafeMutableRawPointer(mutating: region.baseAddress! + offset),
                                     iov_len: min(run.segmentSize, region.count - offset))
            batch.prepare(i, destination: run.destination, vectors: i, count: 1)
        }
        switch sendPrepared(batch, count: segments) {
        case .sent(let sent) where sent == segments: return .sent(count: 1)
        case .sent(let sent) where sent > 0: return .partialRun(datagrams: sent)  // the rest is dropped, and counted
        case let outcome: return outcome
        }
    }

    /// One `sendmsg` of `vectors` prepared iovecs to `destination`, which the kernel splits into
    /// `datagrams` datagrams of `segmentSize` bytes. - Returns: `.sent(count: 1)`, `.wouldBlock` or
    /// `.failed`; nil when this route or device refuses segmentation (an MTU below 1,500, no checksum
    /// offload), after which the socket sends datagram by datagram.
    private func sendSegmented(_ batch: SendBatch, vectors: Int, segmentSize: Int, datagrams: Int,
                               to destination: SocketAddress?) -> BatchOutcome? {
        batch.prepare(0, destination: destination, vectors: 0, count: vectors)
        ckeel_set_udp_segment(&batch.messages[0].msg_hdr, batch.control, UInt16(segmentSize))
        switch Result(catching: { () throws(SystemError) in try Sockets.sendMessage(descriptor, &batch.messages[0].msg_hdr) }) {
        case .success(.completed):
            counters.segmentedSends += 1
            counters.segmentedDatagrams += datagrams
            return .sent(count: 1)
        case .success(.wouldBlock):
            return .wouldBlock
        case .failure(let error):
            switch error.errno {
            case .invalidArgument, .ioError, .messageTooLong, .notSupported:
                segmentsSends = false
                return nil
            default:
                return .failed
            }
        }
    }

    /// One `sendmmsg` of the first `count` prepared messages. - Returns: `.sent(count:)` with how many
    /// went out (0 when interrupted), `.wouldBlock`, or `.failed` when the first failed.
    private func sendPrepared(_ batch: SendBatch, count: Int) -> BatchOutcome {
        let sent = ckeel_sendmmsg(descriptor, batch.messages, UInt32(count), Int32(CKEEL_MSG_NOSIGNAL))
        if sent > 0 { return .sent(count: Int(sent)) }
        let code = ckeel_errno()
        if code == EAGAIN || code == EWOULDBLOCK || code == ENOBUFS { return .wouldBlock }
        if code == EINTR { return .sent(count: 0) }
        return .failed
    }

    /// Datagrams in a queued item: one, or a run's segments.
    private static func datagrams(in item: Pending) -> Int {
        guard item.segmentSize > 0 else { return 1 }
        return (item.payload.readableRegion.count + item.segmentSize - 1) / item.segmentSize
    }

    /// Releases the item at the head of the queue, counting its datagrams sent or failed (a run sent
    /// in part: `datagramsSent` of them sent, the rest failed).
    private func finishHead(succeeded: Bool, datagramsSent: Int? = nil) {
        let done = queue[queueHead]
        queueHead += 1
        queuedBytes -= done.payload.readableRegion.count
        Self.release(done.payload)
        let datagrams = Self.datagrams(in: done)
        let sent = succeeded ? min(datagramsSent ?? datagrams, datagrams) : 0
        counters.sent += sent
        counters.failed += datagrams - sent
    }

    private func compactQueue() {
        if queueHead == queue.count && queueHead > 0 {
            queue.removeAll(keepingCapacity: true)
            queueHead = 0
        }
    }

    /// One non-blocking sendmsg. - Returns: true sent, false failed, nil would block.
    private func sendNow(_ bytes: UnsafeRawBufferPointer, to destination: SocketAddress?) -> Bool? {
        var vector = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
        return withUnsafeMutablePointer(to: &vector) { vectorPointer -> Bool? in
            var message = msghdr()
            message.msg_iov = vectorPointer
            message.msg_iovlen = 1
            let attempt = { (message: inout msghdr) -> Bool? in
                switch Result(catching: { () throws(SystemError) in try Sockets.sendMessage(self.descriptor, &message) }) {
                case .success(.completed): return true
                case .success(.wouldBlock): return nil
                case .failure: return false
                }
            }
            guard let destination else { return attempt(&message) }
            return destination.withSockAddr { sa, length in
                message.msg_name = UnsafeMutableRawPointer(mutating: sa)
                message.msg_namelen = length
                return attempt(&message)
            }
        }
    }

    private func submitNext() {
        guard !sendInFlight, queueHead < queue.count, !closed else { return }
        let next = queue[queueHead]
        let region = next.payload.readableRegion
        sendVector.pointee = iovec(iov_base: UnsafeMutableRawPointer(mutating: region.baseAddress), iov_len: region.count)
        sendMessage.pointee = msghdr()
        sendMessage.pointee.msg_iov = sendVector
        sendMessage.pointee.msg_iovlen = 1
        if let destination = next.destination {
            destination.withSockAddr { sa, length in
                UnsafeMutableRawPointer(sendAddress).copyMemory(from: sa, byteCount: Int(length))
                sendMessage.pointee.msg_namelen = length
            }
            sendMessage.pointee.msg_name = UnsafeMutableRawPointer(sendAddress)
        }
        if next.segmentSize > 0 {
            // A run waiting for room: one segmented send; where segmentation was refused meanwhile,
            // it cannot go as one operation, and is dropped (counted failed).
            guard segmentsSends else {
                finishHead(succeeded: false)
                compactQueue()
                return submitNext()
            }
            let batch = self.batch ?? SendBatch()
            self.batch = batch
            ckeel_set_udp_segment(sendMessage, batch.control, UInt16(next.segmentSize))
        }
        sendInFlight = true
        pendingOperations += 1
        sendOperation = thread.submit(.sendMessage(descriptor, UnsafePointer(sendMessage)), handler: onSend)
    }

    private func sendCompleted(_ completion: IOCompletion) {
        sendInFlight = false
        sendOperation = nil
        pendingOperations -= 1
        if queueHead < queue.count {
            finishHead(succeeded: completion.result >= 0)
            compactQueue()
        }
        if coalescesSends {
            flushScheduled = true  // the rest leaves batched, before the thread next waits
        } else {
            submitNext()
        }
        finishIfClosed()
    }

    private static func release(_ item: WriteQueue.Item) {
        if case .owned(let buffer) = item { buffer.release() }
    }

    // MARK: Multicast

    /// Joins the IPv4 multicast `group` on the interface with index `interfaceIndex` (0: the default).
    public func joinMulticastGroup(_ group: SocketAddress, interfaceIndex: Int32 = 0) throws(SystemError) {
        try changeMembership(group, interfaceIndex: interfaceIndex, join: true)
    }

    /// Leaves a multicast group joined with ``joinMulticastGroup(_:interfaceIndex:)``.
    public func leaveMulticastGroup(_ group: SocketAddress, interfaceIndex: Int32 = 0) throws(SystemError) {
        try changeMembership(group, interfaceIndex: interfaceIndex, join: false)
    }

    private func changeMembership(_ group: SocketAddress, interfaceIndex: Int32, join: Bool) throws(SystemError) {
        try Sockets.changeMulticastMembership(descriptor, group: group, interfaceIndex: interfaceIndex, join: join)
    }

    // MARK: Closing

    /// Stops receiving, drops queued sends and closes the descriptor once in-flight operations finish.
    public func close() {
        if !thread.isCurrent {
            thread.execute { [self] in close() }
            return
        }
        guard !closed else { return }
        closed = true
        lifeline = self
        if let receiveOperation { thread.cancel(receiveOperation) }
        if let sendOperation { thread.cancel(sendOperation) }
        let keep = sendInFlight ? queueHead + 1 : queueHead
        for index in keep..<queue.count { Self.release(queue[index].payload) }
        queue.removeSubrange(keep..<queue.count)
        finishIfClosed()
    }

    private func finishIfClosed() {
        guard closed, pendingOperations == 0, descriptor >= 0 else { return }
        for index in queueHead..<queue.count { Self.release(queue[index].payload) }
        queue.removeAll()
        queueHead = 0
        queuedBytes = 0
        thread.closeDescriptor(descriptor)
        descriptor = -1
        didClose()
        if let shutdownHook {
            // On a later loop turn: the hook may hold the last reference to this socket.
            let thread = self.thread
            thread.schedule { thread.removeHook(shutdownHook) }
            self.shutdownHook = nil
        }
        if let flushHook {
            let thread = self.thread
            thread.schedule { thread.removeHook(flushHook) }
            self.flushHook = nil
        }
        lifeline = nil
    }
}

/// A UDP socket storing its handler value inline (generic, so calls specialise).
final class HandledUDPSocket<Handler: UDPHandler>: UDPSocket, @unchecked Sendable {
    // @unchecked Sendable: as UDPSocket, confined to its I/O thread.
    var handler: Handler?

    override func deliver(_ datagram: consuming IOBuffer, from sender: SocketAddress, truncated: Bool) {
        handler!.datagramReceived(datagram, from: sender, truncated: truncated, on: self)
    }

    override func deliverRun(_ run: consuming IOBuffer, segmentSize: Int, from sender: SocketAddress) {
        handler!.datagramRunReceived(run, segmentSize: segmentSize, from: sender, on: self)
    }

    override func didClose() {
        handler = nil
    }
}
