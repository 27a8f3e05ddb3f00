// Allocation benchmarks for Keel's steady-state paths, counted by ordo-one/benchmark's malloc
// interposer (process-wide: the I/O thread and the driving client together). Each path runs on both
// backends. TLS echo runs between a Keel TLS client and server on the one I/O thread, so both ends
// of every record are counted; WebSocket echo likewise runs a Keel WebSocket client (masking its
// frames) against a Keel WebSocket server (no compression). The stored thresholds (Benchmarks/Thresholds) are 0 for every Keel
// path and 1,000 for the two controls that prove the counter sees both threads;
// `Benchmarks/check-allocations.sh` checks them.
import Benchmark
import Glibc
import KeelBuffers
import KeelEngine
import KeelHTTP
import KeelProxyProtocol
import KeelSockets
import KeelSystem
import KeelTLS
import KeelWebSocket
import Synchronization

/// Echoes every buffer back on the connection it came from.
struct EchoHandler: TCPConnectionHandler {
    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        connection.write(buffer)
    }
}

/// Echoes every datagram back to its sender.
struct UDPEchoHandler: UDPHandler {
    mutating func datagramReceived(_ datagram: consuming IOBuffer, from sender: SocketAddress, truncated: Bool, on socket: UDPSocket) {
        socket.send(datagram, to: sender)
    }
}

/// What a ping-pong client (TLS, WebSocket) shares with the benchmark thread: how many round trips
/// remain, and whether it connected, finished or failed.
class PingPong: @unchecked Sendable {
    // @unchecked Sendable: subclasses' connection state is touched on the I/O thread only; the
    // benchmark thread reads the atomics.
    let message: UnsafeRawBufferPointer
    let remaining = Atomic<Int>(0)
    let established = Atomic<Int>(0)
    let finished = Atomic<Int>(0)
    let failed = Atomic<Int>(0)

    init(message: UnsafeRawBufferPointer) { self.message = message }

    /// Sends the next message (on the I/O thread).
    func sendNext() {}

    /// One whole echo arrived: sends the next message, or marks the run finished.
    func echoed() {
        let left = remaining.load(ordering: .relaxed) - 1
        remaining.store(left, ordering: .relaxed)
        if left > 0 { sendNext() } else { finished.store(1, ordering: .releasing) }
    }

    func fail() { failed.store(1, ordering: .releasing) }
}

/// A Keel TLS client that, once told to, sends a 64-byte message, waits for its echo, checks it and
/// sends the next, `remaining` times; it runs on the I/O thread and allocates nothing of its own.
final class TLSPingPong: PingPong, @unchecked Sendable {
    // @unchecked Sendable: `connection` and `received` are touched on the I/O thread only.
    var connection: TCPConnection?
    var received = 0

    override func sendNext() {
        guard let connection, var buffer = try? connection.thread.bufferPool.acquire() else { return fail() }
        _ = buffer.append(message)
        connection.write(buffer)
    }

    struct Handler: TCPConnectionHandler {
        let pingPong: TLSPingPong

        mutating func connectionEstablished(_ connection: TCPConnection) {
            pingPong.connection = connection
            pingPong.established.store(1, ordering: .releasing)
        }

        mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
            let matches = buffer.withUnsafeReadableBytes { bytes in
                bytes.count + pingPong.received <= 64
                    && memcmp(bytes.baseAddress!, pingPong.message.baseAddress! + pingPong.received, bytes.count) == 0
            }
            guard matches else { return pingPong.fail() }
            pingPong.received += buffer.readableBytes
            guard pingPong.received == 64 else { return }
            pingPong.received = 0
            pingPong.echoed()
        }

        mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
            pingPong.connection = nil
            pingPong.fail()
        }
    }
}

/// Echoes every WebSocket message back without copying it.
struct WebSocketEcho: WebSocketHandler {
    mutating func messageReceived(_ message: consuming WebSocketMessage, on socket: WebSocket) { socket.send(message) }
}

/// A Keel WebSocket client that, once told to, sends a 64-byte binary message, waits for its echo,
/// checks it and sends the next, `remaining` times; on the I/O thread, allocating nothing of its own.
final class WebSocketPingPong: PingPong, @unchecked Sendable {
    // @unchecked Sendable: `socket` is touched on the I/O thread only.
    var socket: WebSocket?

    override func sendNext() {
        guard let socket, let pool = socket.connection?.thread.bufferPool, var buffer = try? pool.acquire() else { return fail() }
        _ = buffer.append(message)
        var payload = BufferChain()
        payload.append(buffer)
        socket.send(.binary, payload: payload)
    }

    struct Handler: WebSocketHandler {
        let pingPong: WebSocketPingPong

        mutating func webSocketOpened(_ socket: WebSocket) {
            pingPong.socket = socket
            pingPong.established.store(1, ordering: .releasing)
        }

        mutating func messageReceived(_ message: consuming WebSocketMessage, on socket: WebSocket) {
            var matches = message.payload.readableBytes == 64
            var offset = 0
            message.payload.forEachReadableRegion { region in
                matches = matches && memcmp(region.baseAddress!, pingPong.message.baseAddress! + offset, region.count) == 0
                offset += region.count
            }
            guard matches else { return pingPong.fail() }
            pingPong.echoed()
        }

        mutating func webSocketClosed(_ close: WebSocketClose, reason: TCPCloseReason) {
            pingPong.socket = nil
            pingPong.fail()
        }
    }
}

/// One single-threaded pool with a TCP echo server, a UDP echo socket and a blocking raw client of
/// each, so the measured loops allocate nothing of their own. Created by a benchmark's setup hook,
/// shut down by its teardown hook.
final class Fixture: @unchecked Sendable {
    // @unchecked Sendable: the benchmark runner calls setup, the measured closure and teardown one
    // after another on its own thread; the I/O thread only touches the servers' own state.
    let backend: BackendKind
    private(set) var pool: IOPool?
    private(set) var server: TCPServer<EchoHandler>?
    /// An echo server whose every send goes zero-copy (where io_uring has it; loopback copies anyway).
    private var zeroCopyServer: TCPServer<EchoHandler>?
    private var udpServer: UDPSocket?
    /// The TLS echo server and one Keel TLS client per protocol version.
    private var tlsServer: TCPServer<EchoHandler>?
    private var tlsConnector: [TLSVersion: TCPConnector<TLSPingPong.Handler>] = [:]
    private(set) var tlsClients: [TLSVersion: TLSPingPong] = [:]
    /// An echo server that reads a PROXY protocol header first, and the v2 header its clients send.
    private var proxyServer: TCPServer<EchoHandler>?
    private let proxyHeader = ProxyHeader(addresses: .inet(source: try! SocketAddress(host: "203.0.113.9", port: 4242),
                                                           destination: try! SocketAddress(host: "192.0.2.1", port: 443))).encoded()
    /// The WebSocket echo server and its Keel client.
    private var webSocketServer: TCPServer<HTTPOnlyConnection>?
    private var webSocketConnector: TCPConnector<HTTPOnlyConnection>?
    private(set) var webSocketClient: WebSocketPingPong?
    /// Connected blocking clients.
    private(set) var tcpClient: Int32 = -1
    private(set) var zeroCopyClient: Int32 = -1
    private(set) var udpClient: Int32 = -1
    private(set) var serverAddress: SocketAddress?
    /// Message and reply scratch, allocated once.
    let message: UnsafeMutableRawBufferPointer
    let reply: UnsafeMutableRawBufferPointer
    /// Hand-over flags between the benchmark thread and the I/O thread for timer runs.
    let go = Atomic<Int>(0)
    let done = Atomic<Int>(0)
    /// The prepared timer callback: setting a timer stores a reference to it.
    let timerCallback: () -> Void = {}

    init(backend: BackendKind) {
        self.backend = backend
        message = .allocate(byteCount: 64, alignment: 8)
        reply = .allocate(byteCount: 64, alignment: 8)
        for i in 0..<64 { message[i] = UInt8(truncatingIfNeeded: i &* 7 &+ 1) }
    }

    deinit {
        message.deallocate()
        reply.deallocate()
    }

    func setUp() throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
        self.pool = pool
        let server = try TCPServer(pool: pool, configuration: .init(host: "127.0.0.1", port: 0)) { EchoHandler() }
        self.server = server
        serverAddress = server.localAddress
        tcpClient = try Self.connectedSocket(type: SOCK_STREAM, to: server.localAddress)
        var zeroCopy = TCPServerConfiguration(host: "127.0.0.1", port: 0)
        zeroCopy.connection.zeroCopySendThreshold = 1
        zeroCopy.connection.zeroCopyEvenWhenCopied = true
        let zeroCopyServer = try TCPServer(pool: pool, configuration: zeroCopy) { EchoHandler() }
        self.zeroCopyServer = zeroCopyServer
        zeroCopyClient = try Self.connectedSocket(type: SOCK_STREAM, to: zeroCopyServer.localAddress)
        let udp = try UDPSocket.bind(pool: pool, configuration: .init(host: "127.0.0.1", port: 0), handler: UDPEchoHandler())
        udpServer = udp
        udpClient = try Self.connectedSocket(type: SOCK_DGRAM, to: udp.localAddress)
        try setUpTLS(pool: pool)
        try setUpWebSocket(pool: pool)
        var proxyConfiguration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
        proxyConfiguration.connection.acceptProxyProtocol()
        proxyServer = try TCPServer(pool: pool, configuration: proxyConfiguration) { EchoHandler() }
    }

    /// Connects to the PROXY server, sends a v2 header, closes, and waits until the server let the
    /// connection go.
    func acceptOneWithProxyHeader() -> Bool {
        guard let proxyServer else { return false }
        let accepted = proxyServer.statistics.accepted
        guard let fd = try? Self.connectedSocket(type: SOCK_STREAM, to: proxyServer.localAddress) else { return false }
        let sent = proxyHeader.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        let wasAccepted = waitUntil { proxyServer.statistics.accepted != accepted }
        Glibc.close(fd)
        return sent == proxyHeader.count && wasAccepted && waitUntil { proxyServer.statistics.active == 0 }
            && proxyServer.statistics.refusedByFilters == 0
    }

    /// A WebSocket echo server (no compression) and a connected Keel WebSocket client.
    private func setUpWebSocket(pool: IOPool) throws {
        var serverConfiguration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
        serverConfiguration.connection.serveWebSockets { WebSocketEcho() }
        let server = try TCPServer(pool: pool, configuration: serverConfiguration) { HTTPOnlyConnection() }
        webSocketServer = server
        let pingPong = WebSocketPingPong(message: UnsafeRawBufferPointer(message))
        var clientConfiguration = TCPConnectorConfiguration()
        clientConfiguration.connection.connectWebSocket(host: "localhost") { WebSocketPingPong.Handler(pingPong: pingPong) }
        let connector = TCPConnector<HTTPOnlyConnection>(pool: pool, configuration: clientConfiguration)
        connector.connect(to: server.localAddress) { HTTPOnlyConnection() }
        guard waitUntil({ pingPong.established.load(ordering: .acquiring) != 0 }) else {
            throw SystemError(code: ETIMEDOUT, call: "WebSocket upgrade")
        }
        webSocketConnector = connector
        webSocketClient = pingPong
    }

    /// Runs `count` WebSocket round trips of 64-byte binary messages, from the first send to the last echo.
    func webSocketRoundTrips(_ benchmark: Benchmark, count: Int) {
        guard let pingPong = webSocketClient else { return benchmark.error("no WebSocket client") }
        roundTrips(benchmark, pingPong, count: count, name: "WebSocket")
    }

    /// Runs `count` round trips of `pingPong`'s client, measured from the first send to the last echo.
    func roundTrips(_ benchmark: Benchmark, _ pingPong: PingPong, count: Int, name: String) {
        pingPong.remaining.store(count, ordering: .relaxed)
        pingPong.finished.store(0, ordering: .relaxed)
        measureOnIOThread(benchmark, waitingFor: { pingPong.finished.load(ordering: .acquiring) != 0 || pingPong.failed.load(ordering: .acquiring) != 0 }) { _ in
            pingPong.sendNext()
        }
        if pingPong.failed.load(ordering: .acquiring) != 0 || pingPong.remaining.load(ordering: .acquiring) != 0 {
            benchmark.error("the \(name) echo failed with \(pingPong.remaining.load(ordering: .acquiring)) round trips to go")
        }
    }

    /// A TLS echo server on a certificate made for the run, and a connected client per version.
    private func setUpTLS(pool: IOPool) throws {
        let directory = "/tmp/keel-allocations-tls-\(getpid())"
        let made = system("mkdir -p \(directory) && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
            + "-keyout \(directory)/key.pem -out \(directory)/cert.pem -days 365 -subj /CN=localhost "
            + "-addext subjectAltName=DNS:localhost >/dev/null 2>&1")
        guard made == 0 else { throw SystemError(code: EIO, call: "openssl req") }
        var serverConfiguration = TCPServerConfiguration(host: "127.0.0.1", port: 0)
        serverConfiguration.connection.useTLS(try TLSContext(configuration: .server(
            certificateChain: "\(directory)/cert.pem", privateKey: "\(directory)/key.pem")))
        let server = try TCPServer(pool: pool, configuration: serverConfiguration) { EchoHandler() }
        tlsServer = server
        for version in [TLSVersion.tls12, .tls13] {
            var client = TLSConfiguration.client(serverName: "localhost", trustRoots: .file("\(directory)/cert.pem"))
            client.profile.minimumVersion = version
            client.profile.maximumVersion = version
            var configuration = TCPConnectorConfiguration()
            configuration.connection.useTLS(try TLSContext(configuration: client))
            let connector = TCPConnector<TLSPingPong.Handler>(pool: pool, configuration: configuration)
            let pingPong = TLSPingPong(message: UnsafeRawBufferPointer(message))
            connector.connect(to: server.localAddress) { TLSPingPong.Handler(pingPong: pingPong) }
            guard waitUntil({ pingPong.established.load(ordering: .acquiring) != 0 }) else {
                throw SystemError(code: ETIMEDOUT, call: "TLS handshake")
            }
            tlsConnector[version] = connector
            tlsClients[version] = pingPong
        }
        _ = system("rm -rf \(directory)")
    }

    /// Runs `count` TLS round trips of 64 bytes between the Keel client for `version` and the server,
    /// measured from the first send to the last echo.
    func tlsRoundTrips(_ benchmark: Benchmark, version: TLSVersion, count: Int) {
        guard let pingPong = tlsClients[version] else { return benchmark.error("no TLS client") }
        roundTrips(benchmark, pingPong, count: count, name: "TLS")
    }

    func tearDown() async {
        Glibc.close(tcpClient)
        Glibc.close(zeroCopyClient)
        Glibc.close(udpClient)
        await server?.stop(closing: .abortive)
        await zeroCopyServer?.stop(closing: .abortive)
        await tlsServer?.stop(closing: .abortive)
        await webSocketServer?.stop(closing: .abortive)
        await proxyServer?.stop(closing: .abortive)
        pool?.shutdown()
        server = nil
        zeroCopyServer = nil
        tlsServer = nil
        tlsConnector = [:]
        tlsClients = [:]
        webSocketServer = nil
        proxyServer = nil
        webSocketConnector = nil
        webSocketClient = nil
        udpServer = nil
        pool = nil
    }

    /// A blocking socket of `type` connected to `address`, with a 5 s receive timeout.
    static func connectedSocket(type: __socket_type, to address: SocketAddress) throws -> Int32 {
        let fd = socket(address.addressFamily, Int32(type.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError(code: errno, call: "socket") }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        if address.withSockAddr({ sa, length in Glibc.connect(fd, sa, length) }) != 0 && !(errno == EINTR && awaitConnected(fd)) {
            let code = errno
            Glibc.close(fd)
            throw SystemError(code: code, call: "connect")
        }
        return fd
    }

    /// Finishes a connect that a signal interrupted: it goes on in the background until writable.
    static func awaitConnected(_ fd: Int32) -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        while poll(&entry, 1, 5_000) < 0 && errno == EINTR {}
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 && error == 0 && entry.revents & Int16(POLLOUT) != 0
    }

    /// Sends the 64-byte message on `fd` and reads the whole reply: nil, or what went wrong.
    func roundTrip(_ fd: Int32) -> String? {
        var sent = Glibc.send(fd, message.baseAddress, 64, Int32(MSG_NOSIGNAL))
        while sent < 0 && errno == EINTR { sent = Glibc.send(fd, message.baseAddress, 64, Int32(MSG_NOSIGNAL)) }
        guard sent == 64 else { return "send returned \(sent), errno \(errno)" }
        var received = 0
        while received < 64 {
            let n = recv(fd, reply.baseAddress! + received, 64 - received, 0)
            if n < 0 && errno == EINTR { continue }  // the benchmark runner's signals interrupt waits
            if n <= 0 { return "recv returned \(n) after \(received) bytes, errno \(errno)" }
            received += n
        }
        return memcmp(message.baseAddress!, reply.baseAddress!, 64) == 0 ? nil : "the reply differs"
    }

    /// Sends `burst` datagrams of 64 bytes on the connected UDP socket `fd`, then reads as many
    /// replies: the server sees them in one loop turn and echoes them as one segmented send.
    func burstRoundTrip(_ fd: Int32, burst: Int) -> String? {
        for _ in 0..<burst {
            var sent = Glibc.send(fd, message.baseAddress, 64, Int32(MSG_NOSIGNAL))
            while sent < 0 && errno == EINTR { sent = Glibc.send(fd, message.baseAddress, 64, Int32(MSG_NOSIGNAL)) }
            guard sent == 64 else { return "send returned \(sent), errno \(errno)" }
        }
        for _ in 0..<burst {
            var n = recv(fd, reply.baseAddress, 64, 0)
            while n < 0 && errno == EINTR { n = recv(fd, reply.baseAddress, 64, 0) }
            guard n == 64 else { return "recv returned \(n), errno \(errno)" }
        }
        return memcmp(message.baseAddress!, reply.baseAddress!, 64) == 0 ? nil : "the reply differs"
    }

    /// Opens a connection, waits until the server has accepted it, closes it and waits until the
    /// server has closed its side.
    func acceptOne() -> Bool {
        guard let server, let address = serverAddress else { return false }
        let accepted = server.statistics.accepted
        guard let fd = try? Self.connectedSocket(type: SOCK_STREAM, to: address) else { return false }
        let wasAccepted = waitUntil { server.statistics.accepted != accepted }
        Glibc.close(fd)
        // The long-lived echo client stays open: one connection remains.
        return wasAccepted && waitUntil { server.statistics.active == 1 }
    }

    /// Yields until `condition` holds or 5 seconds pass; false on time-out. Allocates nothing.
    func waitUntil(_ condition: () -> Bool) -> Bool {
        let deadline = monotonicNanoseconds() + 5_000_000_000
        while !condition() {
            if monotonicNanoseconds() > deadline { return false }
            sched_yield()
        }
        return true
    }

    func monotonicNanoseconds() -> Int {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return now.tv_sec * 1_000_000_000 + now.tv_nsec
    }

    /// Runs `body` on the I/O thread between the benchmark's start and stop of measurement. The task
    /// is queued (which allocates) before measuring starts and waits for the go signal.
    /// `finished`: what else to wait for once `body` returned (work it started on the I/O thread).
    func measureOnIOThread(_ benchmark: Benchmark, waitingFor finished: () -> Bool = { true },
                           _ body: @escaping @Sendable (IOThread) -> Void) {
        // A task that never got the go signal would hold the I/O thread: it gives up after 5 s.
        guard let thread = pool?.threads[0] else { return }
        go.store(0, ordering: .relaxed)
        done.store(0, ordering: .relaxed)
        thread.execute { [self] in
            if waitUntil({ go.load(ordering: .acquiring) != 0 }) { body(thread) }
            done.store(1, ordering: .releasing)
        }
        benchmark.startMeasurement()
        go.store(1, ordering: .releasing)
        if !waitUntil({ done.load(ordering: .acquiring) != 0 && finished() }) { benchmark.error("the I/O thread did not finish") }
        benchmark.stopMeasurement()
    }
}

/// Registers a benchmark that counts the allocations of one run of `body`, after one unmeasured
/// warm-up run. One sample per benchmark: the stored threshold (checked at p90, which for one
/// sample is that sample) bounds the run's total, so 0 means not one allocation in the whole run.
/// `fixture` is set up before the warm-up and shut down after the sample. Names have no spaces or
/// punctuation: the threshold files are named after them.
func allocationBenchmark(_ name: String, on fixture: Fixture, _ body: @escaping (Benchmark) -> Void) {
    Benchmark(
        "\(fixture.backend)_\(name)",
        configuration: .init(metrics: [.mallocCountTotal], warmupIterations: 1, maxDuration: .seconds(60), maxIterations: 1),
        closure: body,
        setup: { try fixture.setUp() },
        teardown: { await fixture.tearDown() }
    )
}

let benchmarks: @Sendable () -> Void = {
    // The control: exactly 1,000 allocations, threshold 1,000. If the malloc interposer were not
    // counting, this would read 0, and the check fails on an "improvement" as on a regression.
    Benchmark(
        "control_1000_allocations",
        configuration: .init(metrics: [.mallocCountTotal], warmupIterations: 1, maxIterations: 1)
    ) { _ in
        for _ in 0..<1_000 {
            let storage = UnsafeMutablePointer<Int>.allocate(capacity: 1)
            blackHole(storage)
            storage.deallocate()
        }
    }

    for backend in [BackendKind.ioUring, .epoll] where backend != .ioUring || IOUringSupport.isAvailable {
        let fixture = Fixture(backend: backend)

        allocationBenchmark("TCP_echo_20000_messages_of_64_bytes", on: fixture) { benchmark in
            for _ in 0..<20_000 {
                if let failure = fixture.roundTrip(fixture.tcpClient) { return benchmark.error("TCP echo: \(failure)") }
            }
        }
        for (version, name) in [(TLSVersion.tls12, "TLS12"), (.tls13, "TLS13")] {
            allocationBenchmark("\(name)_echo_20000_messages_of_64_bytes", on: fixture) { benchmark in
                fixture.tlsRoundTrips(benchmark, version: version, count: 20_000)
            }
        }
        allocationBenchmark("WebSocket_echo_20000_messages_of_64_bytes", on: fixture) { benchmark in
            fixture.webSocketRoundTrips(benchmark, count: 20_000)
        }
        allocationBenchmark("TCP_accept_and_close_500_connections", on: fixture) { benchmark in
            for _ in 0..<500 where !fixture.acceptOne() { return benchmark.error("accept timed out") }
        }
        allocationBenchmark("TCP_accept_PROXY_v2_header_and_close_500_connections", on: fixture) { benchmark in
            for _ in 0..<500 where !fixture.acceptOneWithProxyHeader() { return benchmark.error("the PROXY connection failed") }
        }
        allocationBenchmark("UDP_echo_20000_datagrams_of_64_bytes", on: fixture) { benchmark in
            for _ in 0..<20_000 {
                if let failure = fixture.roundTrip(fixture.udpClient) { return benchmark.error("UDP echo: \(failure)") }
            }
        }
        // Replies to a burst leave as segmented sends (UDP GSO) where the kernel has them.
        allocationBenchmark("UDP_echo_20000_datagrams_in_bursts_of_16", on: fixture) { benchmark in
            for _ in 0..<(20_000 / 16) {
                if let failure = fixture.burstRoundTrip(fixture.udpClient, burst: 16) { return benchmark.error("UDP burst echo: \(failure)") }
            }
        }
        allocationBenchmark("TCP_zero_copy_echo_20000_messages_of_64_bytes", on: fixture) { benchmark in
            for _ in 0..<20_000 {
                if let failure = fixture.roundTrip(fixture.zeroCopyClient) { return benchmark.error("zero-copy echo: \(failure)") }
            }
        }
        // The I/O thread's control: its allocations are counted too (threshold 1,000).
        allocationBenchmark("control_1000_allocations_on_the_IO_thread", on: fixture) { benchmark in
            fixture.measureOnIOThread(benchmark) { _ in
                for _ in 0..<1_000 {
                    let storage = UnsafeMutablePointer<Int>.allocate(capacity: 1)
                    blackHole(storage)
                    storage.deallocate()
                }
            }
        }
        allocationBenchmark("timer_set_and_cancel_10000_times", on: fixture) { benchmark in
            fixture.measureOnIOThread(benchmark) { thread in
                for i in 0..<10_000 {
                    let timer = thread.scheduleTimer(after: .milliseconds(100 + Int64(i % 1000)), fixture.timerCallback)
                    _ = thread.cancelTimer(timer)
                }
            }
        }
        allocationBenchmark("timer_reset_10000_times", on: fixture) { benchmark in
            fixture.measureOnIOThread(benchmark) { thread in
                let timer = thread.scheduleTimer(after: .seconds(30), fixture.timerCallback)
                for i in 0..<10_000 { _ = thread.resetTimer(timer, after: .milliseconds(1_000 + Int64(i % 5_000))) }
                _ = thread.cancelTimer(timer)
            }
        }
    }
}
