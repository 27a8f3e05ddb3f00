// keel-echo-client: an echo client on Keel's TCPConnector. Opens C connections, sends M messages of
// S bytes on each (one in flight), checks every echoed byte, and prints a summary.
//
//   keel-echo-client [--host 127.0.0.1] [--port 7007] [--connections 10] [--messages 1000] [--size 64]
import ArgumentParser
import KeelBuffers
import KeelCommandLine
import KeelEngine
import KeelSockets
import KeelSystem
import Synchronization

/// Sends `messages` messages of a per-connection pattern, one at a time, and checks each echo.
struct PingPongClient: TCPConnectionHandler {
    let stream: Int
    let messages: Int
    let size: Int
    let results: Results
    var sent = 0
    var received = 0
    var ok = true

    func byte(_ offset: Int) -> UInt8 { UInt8(truncatingIfNeeded: (stream &* 31 &+ offset) % 251) }

    mutating func connectionEstablished(_ connection: TCPConnection) { sendNext(connection) }

    mutating func sendNext(_ connection: TCPConnection) {
        guard var buffer = try? connection.thread.bufferPool.acquire() else { return connection.close() }
        for i in 0..<size { buffer.append(contentsOf: CollectionOfOne(byte(sent * size + i))) }
        sent += 1
        connection.write(buffer)
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        let start = received
        let stream = self.stream
        let good = buffer.withUnsafeReadableBytes { bytes in
            bytes.indices.allSatisfy { bytes[$0] == UInt8(truncatingIfNeeded: (stream &* 31 &+ start + $0) % 251) }
        }
        ok = ok && good
        received += buffer.readableBytes
        if received == sent * size {
            if sent < messages { sendNext(connection) } else { connection.close() }
        }
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        results.finish(ok: ok && received == messages * size, bytes: received)
    }
}

/// Totals across connections.
final class Results: Sendable {
    private let state = Mutex((done: 0, failed: 0, bytes: 0))
    private let allDone = Semaphore()
    let expected: Int

    init(expected: Int) { self.expected = expected }

    func finish(ok: Bool, bytes: Int) {
        let complete = state.withLock { state -> Bool in
            state.done += 1
            if !ok { state.failed += 1 }
            state.bytes += bytes
            return state.done == expected
        }
        if complete { allDone.signal() }
    }

    func wait() -> (done: Int, failed: Int, bytes: Int) {
        allDone.wait()
        return state.withLock { $0 }
    }
}

@main
struct KeelEchoClient: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keel-echo-client", abstract: "An echo client on Keel that checks every echoed byte.")

    @Option(help: "Server address (numeric or a host name).") var host = "127.0.0.1"
    @Option(help: "Server port.") var port: UInt16 = 7007
    @Option(help: "Concurrent connections.") var connections = 10
    @Option(help: "Messages per connection.") var messages = 1000
    @Option(help: "Bytes per message.") var size = 64
    @OptionGroup var tls: ClientTLSOptions

    func run() throws {
        let connection = try tls.connectionOptions(host: host)
        let pool = try IOPool(configuration: .init(threadCount: 1))
        defer { pool.shutdown() }
        let results = Results(expected: connections)
        let connector = TCPConnector<PingPongClient>(
            pool: pool, configuration: .init(connectTimeout: .seconds(5), connection: connection))
        let clock = ContinuousClock()
        let start = clock.now
        for stream in 0..<connections {
            let (messages, size) = (self.messages, self.size)
            connector.connect(host: host, port: port, makeHandler: {
                PingPongClient(stream: stream, messages: messages, size: size, results: results)
            }, failed: { error in
                print("connect failed: \(error)")
                results.finish(ok: false, bytes: 0)
            })
        }
        let totals = results.wait()
        let seconds = Double((clock.now - start).components.attoseconds) / 1e18 + Double((clock.now - start).components.seconds)
        let rate = Int(Double(totals.bytes / size) / max(seconds, 1e-9))
        announce("keel-echo-client: \(totals.done - totals.failed)/\(totals.done) connections ok, \(totals.bytes) bytes echoed and checked, \(rate) msg/s")
        if totals.failed > 0 { throw ExitCode.failure }
    }
}
