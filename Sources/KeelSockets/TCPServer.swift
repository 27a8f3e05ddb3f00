import CKeelLinux
import Glibc
import KeelBuffers
import KeelEngine
import KeelSystem
import Logging
import Synchronization

/// How a ``TCPServer`` listens and treats its connections.
public struct TCPServerConfiguration: Sendable {
    /// The numeric address to bind (`127.0.0.1`, `::1`, `0.0.0.0`, `::`).
    public var host: String
    /// The port; 0 lets the kernel choose (read it back from ``TCPServer/localAddress``).
    public var port: UInt16
    /// Pending connections the kernel queues before `accept`.
    public var backlog: Int32
    /// One `SO_REUSEPORT` listener per I/O thread (accepts never hop threads) instead of one listener
    /// whose connections are spread round robin.
    public var reusePort: Bool
    /// Most connections open at once. At the limit the server stops accepting: new peers wait in the
    /// kernel's backlog, and the few a multishot accept already took wait in a short parked queue;
    /// past that queue (64 per listener) connections are closed and counted as refused.
    public var maximumConnections: Int
    /// Most connections accepted per second (nil: no limit); over it, accepting pauses until the next second.
    public var maximumAcceptRate: Int?
    /// What every accepted connection gets: timeouts, socket options, flow control, coalescing,
    /// urgent data, filters.
    public var connection: TCPConnectionOptions

    /// Creates a configuration.
    public init(
        host: String = "127.0.0.1", port: UInt16 = 0, backlog: Int32 = 1024, reusePort: Bool = true,
        maximumConnections: Int = 100_000, maximumAcceptRate: Int? = nil, connection: TCPConnectionOptions = .init()
    ) {
        self.host = host
        self.port = port
        self.backlog = backlog
        self.reusePort = reusePort
        self.maximumConnections = maximumConnections
        self.maximumAcceptRate = maximumAcceptRate
        self.connection = connection
    }
}

/// Counters of a ``TCPServer``, readable from any thread.
public struct TCPServerStatistics: Sendable, Hashable {
    /// Connections accepted and handed to a handler.
    public var accepted: Int
    /// Connections accepted and closed at once because the limit was reached and the parked queue was full.
    public var refused: Int
    /// Connections open now.
    public var active: Int
    /// Times accepting failed for lack of descriptors (EMFILE/ENFILE) and backed off.
    public var descriptorExhaustion: Int
    /// Connections accepted whose filters closed them before they opened for the handler: a missing or
    /// malformed PROXY header, a failed TLS handshake.
    public var refusedByFilters: Int = 0

    /// The counters as named values (`connections_active`, `accepted`, `refused`,
    /// `descriptor_exhaustion`, `refused_by_filters`), for statistics files and metrics.
    public var counters: [(name: String, value: Int)] {
        [("connections_active", active), ("accepted", accepted), ("refused", refused), ("descriptor_exhaustion", descriptorExhaustion),
         ("refused_by_filters", refusedByFilters)]
    }
}

/// A TCP server: listens, accepts within limits, and runs a ``TCPConnectionHandler`` value per connection
/// on the I/O threads of an ``IOPool``.
///
/// ```swift
/// struct Echo: TCPConnectionHandler {
///     mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
///         connection.write(buffer)
///     }
/// }
/// let server = try TCPServer(pool: pool, configuration: .init(port: 7007)) { Echo() }
/// print("listening on \(server.localAddress)")
/// ```
///
/// Connection objects are recycled per thread: after warm-up, accepting a connection allocates nothing
/// in the server (a struct handler allocates nothing either).
public final class TCPServer<Handler: TCPConnectionHandler>: Sendable {
    /// The bound address (with the kernel-chosen port when configured with port 0).
    public let localAddress: SocketAddress
    /// The configuration the server runs with.
    public let configuration: TCPServerConfiguration

    private let pool: IOPool
    private let acceptors: [Acceptor]
    /// Per I/O thread (by index): live and recycled connections, confined to that thread. Each is a
    /// `ConnectionRegistry<Handler>`, kept as `AnyObject`: indexing an array of the generic type in this
    /// unspecialised code looked up its metadata on every accept. Reach them through `registry(on:)`.
    private let registries: [any AnyObject & Sendable]
    /// `registries`, unretained (they own the objects): `registry(on:)` and the accept path reach a
    /// registry through these, without a retain and a release per connection. `nonisolated(unsafe)`: set once in `init`,
    /// and each is used only on its registry's thread, as the registry itself is.
    nonisolated(unsafe) private let registryReferences: [Unmanaged<AnyObject>]
    private let counters = Counters()
    private let stopped = Atomic<Bool>(false)
    private let listenersClosed = Atomic<Bool>(false)
    private let makeHandler: @Sendable () -> Handler
    private let settings: ConnectionSettings
    static var logger: Logger { Logger(label: "keel.tcp") }

    // Not nested types: a class nested in this generic one is generic too, and its every use in the
    // accept path cost a runtime metadata look-up (callgrind: thousands of instructions per connection).
    typealias Counters = TCPServerCounters
    typealias Acceptor = TCPAcceptor

    /// Binds, listens and starts accepting.
    /// - Throws: ``SystemError`` when binding or listening fails (address in use, permission...).
    public init(
        pool: IOPool, configuration: TCPServerConfiguration, makeHandler: @escaping @Sendable () -> Handler
    ) throws(SystemError) {
        self.pool = pool
        self.configuration = configuration
        self.makeHandler = makeHandler
        settings = ConnectionSettings(options: configuration.connection, kernelFeatures: pool.kernelFeatures)
        var address = try SocketAddress(host: configuration.host, port: configuration.port)
        let listenerCount = configuration.reusePort ? pool.threads.count : 1
        var listeners: [Int32] = []
        do {
            for _ in 0..<listenerCount {
                let fd = try Sockets.makeStreamSocket(family: address.addressFamily)
                listeners.append(fd)
                try Sockets.setReuseAddress(fd)
                if configuration.reusePort { try Sockets.setReusePort(fd) }
                if address.family == .ipv6 { try Sockets.setIPv6Only(fd, true) }
                // Accepted sockets inherit these from the listener (Linux), so connections skip them.
                try Sockets.configureStream(
                    fd, noDelay: configuration.connection.noDelay,
                    keepAliveIdleSeconds: configuration.connection.keepAliveIdleSeconds,
                    receiveBufferSize: configuration.connection.receiveBufferSize)
                try Sockets.bind(fd, to: address)
                try Sockets.listen(fd, backlog: configuration.backlog)
                address = try Sockets.localAddress(fd)  // later listeners bind the same (chosen) port
            }
        } catch {
            for fd in listeners { Descriptors.close(fd) }
            throw error
        }
        localAddress = address
        let coalesces = configuration.connection.coalescesWrites
        let coalescingDelay = configuration.connection.writeCoalescingDelay
        acceptors = listeners.enumerated().map { index, fd in
            Acceptor(listener: fd, thread: pool.threads[index])
        }
        let finished = FinishedConnectionCounter(counters: counters, acceptors: acceptors, maximum: configuration.maximumConnections)
        registries = pool.threads.map {
            ConnectionRegistry<Handler>(thread: $0, coalescesWrites: coalesces, coalescingDelay: coalescingDelay) {
                finished.connectionFinished(closedBeforeOpening: $0)
            } as any AnyObject & Sendable
        }
        registryReferences = registries.map { Unmanaged.passUnretained($0 as AnyObject) }
        // The server is reached (weakly: the application may drop it while connections are open, which
        // still finish) only to wake an acceptor that waits for room.
        finished.bindWake { [weak self] in self?.wakeAcceptorsWaitingForRoom() }
        for acceptor in acceptors {
            acceptor.thread.execute { [self] in self.startAccepting(acceptor) }
        }
        // When the pool shuts down, close listeners and connections on each thread first. (Stopping the
        // server removes these hooks, so a stopped server is not kept alive by its threads.)
        for thread in pool.threads {
            thread.execute { [self] in
                self.registry(on: thread).ownerShutdownHook = thread.onShutdown { [self] in
                    self.stopped.store(true, ordering: .relaxed)
                    for acceptor in self.acceptors where acceptor.thread === thread && !acceptor.closed {
                        self.closeListener(acceptor)
                    }
                    self.closeConnections(on: thread, mode: .abortive)
                }
            }
        }
    }

    /// Counters, readable from any thread.
    public var statistics: TCPServerStatistics {
        TCPServerStatistics(
            accepted: counters.accepted.load(ordering: .relaxed), refused: counters.refused.load(ordering: .relaxed),
            active: counters.active.load(ordering: .relaxed), descriptorExhaustion: counters.exhaustion.load(ordering: .relaxed),
            refusedByFilters: counters.refusedByFilters.load(ordering: .relaxed))
    }

    /// Stops accepting and closes the listeners, then closes every open connection with `mode`.
    /// Returns when the listeners are closed; connections finish closing on their threads. Once they
    /// have, the threads let go of the server: dropping it then frees it while the pool runs on.
    public func stop(closing mode: TCPCloseMode = .graceful) async {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        await stopAccepting()
        for thread in pool.threads {
            _ = try? await thread.submit { [self] in self.closeConnections(on: thread, mode: mode) }
        }
    }

    /// Stops accepting and closes the listeners, leaving open connections as they are (a draining
    /// server: close them yourself, then call ``stop(closing:)`` to close whatever is left). Returns
    /// once the kernel has let go of the listening sockets, so the port can be bound again.
    public func stopAccepting() async {
        guard !listenersClosed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        for acceptor in acceptors {
            do {
                try await acceptor.thread.submit { [self] in self.closeListener(acceptor) }
                await acceptor.stopped.wait()
            } catch {}  // the thread has stopped: the pool's shutdown closed the listener
        }
    }

    // MARK: Accepting (on the acceptor's thread)

    private func startAccepting(_ acceptor: Acceptor) {
        guard !acceptor.closed, acceptor.acceptOperation == nil else { return }
        let direct = acceptsDirect(acceptor)
        acceptor.acceptOperation = acceptor.thread.submit(.accept(acceptor.listener, multishot: true, direct: direct)) { [self] completion in
            self.acceptCompleted(completion, acceptor, direct: direct)
        }
    }

    /// Whether `acceptor` accepts into its thread's file table (``KernelFeatures/directDescriptors``):
    /// only when its connections stay on its thread, as a direct descriptor is its ring's alone, and
    /// have no filters, whose setup asks for both addresses at once (an ordinary descriptor installed
    /// per connection would cost a system call more than accepting one).
    private func acceptsDirect(_ acceptor: Acceptor) -> Bool {
        acceptor.thread.acceptsDirectDescriptors && (acceptors.count > 1 || pool.threads.count == 1)
            && configuration.connection.makeFilters == nil
    }

    private func acceptCompleted(_ completion: IOCompletion, _ acceptor: Acceptor, direct: Bool) {
        if !completion.hasMore {
            acceptor.acceptOperation = nil
            if acceptor.closed { acceptor.stopped.open() }
        }
        if completion.result >= 0 {
            acceptor.backoff = .milliseconds(10)
            admit(descriptor: direct ? acceptor.thread.acceptedDescriptor(completion.result) : completion.result, acceptor)
        } else if completion.result == -EMFILE || completion.result == -ENFILE || completion.result == -ENOBUFS
            || completion.result == -ENOMEM
        {
            // Out of descriptors or memory: pause, then try again, doubling the pause up to a second.
            counters.exhaustion.wrappingAdd(1, ordering: .relaxed)
            Self.logger.warning("accept: \(completion) — pausing \(acceptor.backoff)")
            pause(acceptor, for: acceptor.backoff)
            acceptor.backoff = min(acceptor.backoff * 2, .seconds(1))
            return
        } else if acceptor.closed {
            return
        } else if completion.isCancelled {
            // Cancelled to pause. If accepting resumed before this completion arrived (io_uring
            // cancels asynchronously), the resume could not re-arm the accept: do it now.
        } else if completion.result != -ECONNABORTED && completion.result != -EAGAIN {
            Self.logger.error("accept on \(localAddress): \(completion)")
        }
        if acceptor.acceptOperation == nil && !acceptor.paused { startAccepting(acceptor) }
    }

    private func admit(descriptor fd: Int32, _ acceptor: Acceptor, wasParked: Bool = false) {
        if stopped.load(ordering: .relaxed) {
            acceptor.thread.closeDescriptor(fd)
            return
        }
        // Over the accept rate: hold it until the next one-second window.
        if let rate = configuration.maximumAcceptRate {
            let now = acceptor.thread.nowNanoseconds
            if now - acceptor.windowStart >= 1_000_000_000 {
                acceptor.windowStart = now
                acceptor.acceptedInWindow = 0
            }
            if acceptor.acceptedInWindow >= rate {
                park(fd, acceptor, atFront: wasParked)
                pause(acceptor, for: .nanoseconds(Int64(1_000_000_000 - (now - acceptor.windowStart))))
                return
            }
        }
        // At the connection limit: hold it until a connection closes.
        let active = counters.active.wrappingAdd(1, ordering: .relaxed).newValue
        if active > configuration.maximumConnections {
            counters.active.wrappingSubtract(1, ordering: .relaxed)
            park(fd, acceptor, atFront: wasParked)
            pause(acceptor, for: nil)
            return
        }
        counters.accepted.wrappingAdd(1, ordering: .relaxed)
        if active >= configuration.maximumConnections { pause(acceptor, for: nil) }
        if let rate = configuration.maximumAcceptRate {
            acceptor.acceptedInWindow += 1
            if acceptor.acceptedInWindow >= rate {
                let elapsed = acceptor.thread.nowNanoseconds - acceptor.windowStart
                pause(acceptor, for: .nanoseconds(Int64(1_000_000_000 - min(elapsed, 999_000_000))))
            }
        }
        // With one listener, spread connections round robin; with SO_REUSEPORT the kernel already did.
        // (The common case apart: a `target` variable for both cost a retain and a release per connection.)
        guard acceptors.count == 1 && pool.threads.count > 1 else { return establish(descriptor: fd, on: acceptor.thread) }
        let target = pool.threads[acceptor.nextThread % pool.threads.count]
        acceptor.nextThread &+= 1
        if target === acceptor.thread {
            establish(descriptor: fd, on: target)
        } else {
            target.execute { [self] in self.establish(descriptor: fd, on: target) }
        }
    }

    /// Holds an accepted connection that cannot be admitted yet, or refuses it when the parked queue is full.
    private func park(_ fd: Int32, _ acceptor: Acceptor, atFront: Bool) {
        if atFront {
            acceptor.parked.insert(fd, at: 0)  // it was first in line and stays first
        } else if acceptor.parked.count < Acceptor.maximumParked {
            acceptor.parked.append(fd)
        } else {
            counters.refused.wrappingAdd(1, ordering: .relaxed)
            acceptor.thread.closeDescriptor(fd)
        }
    }

    /// Stops accepting for `duration` (nil: until the connection count drops below the limit).
    private func pause(_ acceptor: Acceptor, for duration: Duration?) {
        if duration == nil { acceptor.waitingForRoom.store(true, ordering: .relaxed) }
        guard !acceptor.paused else { return }
        acceptor.paused = true
        if let operation = acceptor.acceptOperation { acceptor.thread.cancel(operation) }
        if let duration {
            acceptor.resumeTimer = acceptor.thread.scheduleTimer(after: duration) { [self] in
                acceptor.resumeTimer = nil
                self.resume(acceptor)
            }
        }
    }

    private func resume(_ acceptor: Acceptor) {
        guard acceptor.paused, !acceptor.closed else { return }
        acceptor.paused = false
        acceptor.waitingForRoom.store(false, ordering: .relaxed)
        // Parked connections go first, in arrival order, until a limit pauses accepting again.
        while !acceptor.parked.isEmpty && !acceptor.paused {
            admit(descriptor: acceptor.parked.removeFirst(), acceptor, wasParked: true)
        }
        if !acceptor.paused { startAccepting(acceptor) }
    }

    /// Lets paused acceptors that waited for room go on (on their threads).
    private func wakeAcceptorsWaitingForRoom() {
        for acceptor in acceptors where acceptor.waitingForRoom.load(ordering: .relaxed) {
            acceptor.thread.execute { [self] in
                if acceptor.paused && acceptor.resumeTimer == nil { self.resume(acceptor) }
            }
        }
    }

    private func closeListener(_ acceptor: Acceptor) {
        guard !acceptor.closed else { return }
        acceptor.closed = true
        if let operation = acceptor.acceptOperation { acceptor.thread.cancel(operation) }
        if let timer = acceptor.resumeTimer { acceptor.thread.cancelTimer(timer) }
        for fd in acceptor.parked { acceptor.thread.closeDescriptor(fd) }
        acceptor.parked = []
        // Closing the listener now is safe: the cancelled accept holds its own file reference (io_uring)
        // or is no longer armed (epoll). The socket is gone once that accept has completed.
        Descriptors.close(acceptor.listener)
        if acceptor.acceptOperation == nil { acceptor.stopped.open() }
    }

    // MARK: Connections (on their threads)

    private func establish(descriptor fd: Int32, on thread: IOThread) {
        registryReferences[thread.index]._withUnsafeGuaranteedRef { object in
            unsafeDowncast(object, to: ConnectionRegistry<Handler>.self).takeUnretained()._withUnsafeGuaranteedRef { connection in
                connection.install(makeHandler())
                connection.open(descriptor: fd, settings: settings, inheritedSocketOptions: true, endpoint: .listener(localAddress))
            }
        }
    }

    /// `thread`'s registry.
    @inline(__always)
    private func registry(on thread: IOThread) -> ConnectionRegistry<Handler> {
        unsafeDowncast(registryReferences[thread.index].takeUnretainedValue(), to: ConnectionRegistry<Handler>.self)
    }

    /// Closes this server's connections on `thread` and retires its registry there (the server has stopped).
    private func closeConnections(on thread: IOThread, mode: TCPCloseMode) {
        let registry = registry(on: thread)
        registry.closeAll(mode)
        registry.retire()
    }
}

/// Counts a server's connections that finished (on any thread) and, when an acceptor paused at the
/// connection limit, wakes it. Allocation-free and without reference counting per connection: the
/// registries' closure calls it with what it holds (a closure or weak reference loaded per finished
/// connection cost a retain and release, or ~150 instructions, each; callgrind).
final class FinishedConnectionCounter: @unchecked Sendable {
    // @unchecked Sendable: `wake` is written once, in the server's init, before any connection exists
    // (thread starts and `execute` publish it to the I/O threads); the rest is immutable or atomic.
    private let counters: TCPServerCounters
    private let acceptors: [TCPAcceptor]
    private let maximum: Int
    private var wake: @Sendable () -> Void = {}

    init(counters: TCPServerCounters, acceptors: [TCPAcceptor], maximum: Int) {
        self.counters = counters
        self.acceptors = acceptors
        self.maximum = maximum
    }

    /// Sets what wakes the acceptors waiting for room (once, before any connection exists).
    func bindWake(_ wake: @escaping @Sendable () -> Void) { self.wake = wake }

    /// One connection finished (`closedBeforeOpening`: its filters refused it).
    func connectionFinished(closedBeforeOpening: Bool) {
        if closedBeforeOpening { counters.refusedByFilters.wrappingAdd(1, ordering: .relaxed) }
        let active = counters.active.wrappingSubtract(1, ordering: .relaxed).newValue
        guard active < maximum else { return }
        var index = 0
        while index < acceptors.count {
            if acceptors[index].waitingForRoom.load(ordering: .relaxed) { return wake() }
            index += 1
        }
    }
}

/// A one-way gate for async waiters: ``wait()`` returns once ``open()`` was called (before or after).
final class AsyncLatch: Sendable {
    // A pthread lock (`Locked`), which ThreadSanitizer sees, rather than the standard library's Mutex.
    private let state = Locked<(isOpen: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    /// Opens the gate and resumes every waiter. Later calls do nothing.
    func open() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            guard !state.isOpen else { return [] }
            state.isOpen = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once the gate is open.
    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = state.withLock { state -> Bool in
                if state.isOpen { return true }
                state.waiters.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }
}

/// One listener and its accept loop, confined to `thread`.
final class TCPAcceptor: @unchecked Sendable {
    // @unchecked Sendable: mutable state is touched only on `thread`.
    let listener: Int32
    let thread: IOThread
    var acceptOperation: OperationID?
    var paused = false
    var resumeTimer: TimerHandle?
    var backoff: Duration = .milliseconds(10)
    var windowStart: UInt64 = 0
    var acceptedInWindow = 0
    var closed = false
    var nextThread = 0
    /// Set while paused for lack of room, so closing connections know to wake this acceptor.
    let waitingForRoom = Atomic<Bool>(false)
    /// Accepted while at the connection limit: admitted in order as room frees up.
    var parked: [Int32] = []
    /// Opens once the listener is closed and its accept has finished: only then has the kernel let
    /// go of the listening socket (io_uring holds it while the accept is in flight).
    let stopped = AsyncLatch()
    static var maximumParked: Int { 64 }

    init(listener: Int32, thread: IOThread) {
        self.listener = listener
        self.thread = thread
    }
}

/// A server's counters, shared by its threads.
final class TCPServerCounters: Sendable {
    let accepted = Atomic<Int>(0)
    let refused = Atomic<Int>(0)
    let active = Atomic<Int>(0)
    let exhaustion = Atomic<Int>(0)
    let refusedByFilters = Atomic<Int>(0)
}
