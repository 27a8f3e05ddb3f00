import CKeelLinux
import Glibc
import KeelEngine
import KeelSystem
import SystemPackage
import Synchronization

/// Why an outbound connection could not be made.
public struct TCPConnectError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What failed. New codes may be added without breaking callers.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// The code's name, stable across releases. Layers above may define codes of their own.
        public let name: String

        /// Creates a code (define each once, as a static constant).
        public init(_ name: String) { self.name = name }
        /// No answer within the connect timeout.
        public static let timedOut = Code("timedOut")
        /// The peer answered with a reset: nobody listens on that port.
        public static let refused = Code("refused")
        /// No route to the host or network.
        public static let unreachable = Code("unreachable")
        /// The host name did not resolve.
        public static let resolution = Code("resolution")
        /// Another system error (see ``TCPConnectError/errno``).
        public static let system = Code("system")

        public var description: String { name }
    }

    /// The kind of failure.
    public var code: Code
    /// The kernel's errno, when one applies.
    public var errno: Errno?
    /// What was being connected to.
    public var target: String

    public var description: String {
        errno.map { "connect to \(target): \(code) (\($0))" } ?? "connect to \(target): \(code)"
    }

    init(errno code: Int32, target: String) {
        let errno = Errno(rawValue: code)
        self.errno = errno
        self.target = target
        switch errno {
        case .connectionRefused: self.code = .refused
        case .timedOut: self.code = .timedOut
        case .noRouteToHost, .networkUnreachable, .hostIsDown: self.code = .unreachable
        default: self.code = .system
        }
    }

    init(code: Code, target: String) {
        self.code = code
        self.errno = nil
        self.target = target
    }
}

/// Options for outbound connections.
public struct TCPConnectorConfiguration: Sendable {
    /// Give up a connection attempt after this long.
    public var connectTimeout: Duration
    /// What every connection gets: timeouts, socket options, flow control, coalescing, urgent data,
    /// filters (a client-side TLS filter, say).
    public var connection: TCPConnectionOptions

    /// Creates a configuration.
    public init(connectTimeout: Duration = .seconds(10), connection: TCPConnectionOptions = .init()) {
        self.connectTimeout = connectTimeout
        self.connection = connection
    }
}

/// Makes outbound TCP connections on an ``IOPool``'s threads, each run by a ``TCPConnectionHandler``
/// value, exactly like accepted ones. Thousands may be in progress at once: a connect is one
/// operation in flight and a timer, no thread.
public final class TCPConnector<Handler: TCPConnectionHandler>: Sendable {
    /// The options every connection uses.
    public let configuration: TCPConnectorConfiguration
    private let pool: IOPool
    private let registries: [ConnectionRegistry<Handler>]
    private let settings: ConnectionSettings
    private let active = Counter()

    /// Creates a connector over `pool`.
    public init(pool: IOPool, configuration: TCPConnectorConfiguration = .init()) {
        self.pool = pool
        self.configuration = configuration
        settings = ConnectionSettings(options: configuration.connection, kernelFeatures: pool.kernelFeatures)
        let active = self.active
        let coalesces = configuration.connection.coalescesWrites
        let coalescingDelay = configuration.connection.writeCoalescingDelay
        let registries = pool.threads.map {
            ConnectionRegistry<Handler>(thread: $0, coalescesWrites: coalesces, coalescingDelay: coalescingDelay) { _ in active.decrement() }
        }
        self.registries = registries
        for (index, thread) in pool.threads.enumerated() {
            thread.execute { thread.onShutdown { registries[index].closeAll(.abortive) } }
        }
    }

    /// Connections made by this connector and still open.
    public var activeConnections: Int { active.current }

    /// Closes every connection this connector made that is still open (`mode` as in
    /// ``TCPConnection/close(_:)``), on each I/O thread; returns once each thread has been asked.
    /// Connects still in flight are not affected.
    public func closeAll(_ mode: TCPCloseMode) async {
        for thread in pool.threads {
            let registry = registries[thread.index]
            _ = try? await thread.submit { registry.closeAll(mode) }
        }
    }

    /// A shareable atomic counter.
    final class Counter: Sendable {
        private let value = Atomic<Int>(0)
        var current: Int { value.load(ordering: .relaxed) }
        func increment() { value.wrappingAdd(1, ordering: .relaxed) }
        func decrement() { value.wrappingSubtract(1, ordering: .relaxed) }
    }

    /// Connects to `address` on the next I/O thread (or `thread`). On success a connection opens with
    /// the handler `makeHandler` returns; on failure `failed` runs on that I/O thread.
    /// - Parameter source: the local address to connect from (e.g. one of 127.0.0.x, so that many
    ///   connections to one server are not limited by one source address's ephemeral ports).
    public func connect(
        to address: SocketAddress, from source: SocketAddress? = nil, on thread: IOThread? = nil,
        makeHandler: @escaping @Sendable () -> Handler,
        failed: @escaping @Sendable (TCPConnectError) -> Void = { _ in }
    ) {
        let thread = thread ?? pool.next()
        thread.execute { [self] in
            self.start(address, from: source, on: thread, makeHandler: makeHandler, failed: failed)
        }
    }

    /// Resolves `host` off the I/O threads (on the work pool), then connects to its first address.
    public func connect(
        host: String, port: UInt16, makeHandler: @escaping @Sendable () -> Handler,
        failed: @escaping @Sendable (TCPConnectError) -> Void = { _ in }
    ) {
        let thread = pool.next()
        thread.runBlocking({ () throws -> SocketAddress in try Resolver.resolve(host: host, port: port) }) { [self] result in
            switch result {
            case .success(let address):
                self.start(address, from: nil, on: thread, makeHandler: makeHandler, failed: failed)
            case .failure:
                failed(TCPConnectError(code: .resolution, target: "\(host):\(port)"))
            }
        }
    }

    /// State of one attempt, kept alive by its completion and timer closures.
    private final class Attempt {
        let fd: Int32
        let address: UnsafeMutableRawPointer
        var timer: TimerHandle?
        var operation: OperationID?
        var timedOut = false
        init(fd: Int32, length: Int) {
            self.fd = fd
            address = .allocate(byteCount: length, alignment: 8)
        }
        deinit { address.deallocate() }
    }

    private func start(
        _ target: SocketAddress, from source: SocketAddress?, on thread: IOThread,
        makeHandler: @escaping @Sendable () -> Handler, failed: @escaping @Sendable (TCPConnectError) -> Void
    ) {
        let fd: Int32
        do {
            fd = try Sockets.makeStreamSocket(family: target.addressFamily)
        } catch {
            return failed(TCPConnectError(errno: error.errno.rawValue, target: "\(target)"))
        }
        if let source {
            do {
                try Sockets.bind(fd, to: source)
            } catch {
                Descriptors.close(fd)
                return failed(TCPConnectError(errno: error.errno.rawValue, target: "\(target) from \(source)"))
            }
        }
        let attempt = Attempt(fd: fd, length: Int(target.length))
        target.withSockAddr { sa, length in attempt.address.copyMemory(from: sa, byteCount: Int(length)) }
        attempt.timer = thread.scheduleTimer(after: configuration.connectTimeout) {
            attempt.timer = nil
            attempt.timedOut = true
            if let operation = attempt.operation { thread.cancel(operation) }
        }
        attempt.operation = thread.submit(.connect(fd, to: attempt.address, length: Int(target.length))) { [self] completion in
            attempt.operation = nil
            if let timer = attempt.timer { thread.cancelTimer(timer) }
            if completion.result == 0 && !attempt.timedOut {
                self.active.increment()
                let connection = self.registries[thread.index].take()
                connection.install(makeHandler())
                connection.open(descriptor: fd, settings: self.settings, endpoint: .target("\(target)"))
                return
            }
            Descriptors.close(fd)
            if attempt.timedOut || completion.isCancelled {
                failed(TCPConnectError(code: .timedOut, target: "\(target)"))
            } else {
                failed(TCPConnectError(errno: -completion.result, target: "\(target)"))
            }
        }
    }
}

/// Host name resolution with `getaddrinfo` (blocking: run it on the work pool).
public enum Resolver {
    /// The first address `host` resolves to (numeric hosts are parsed without a lookup).
    public static func resolve(host: String, port: UInt16) throws(SystemError) -> SocketAddress {
        try Sockets.resolve(host: host, port: port)
    }
}
