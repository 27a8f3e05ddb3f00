import KeelBuffers
import KeelSockets
import Logging

/// Echoes every received buffer back on the same connection, without copying it (under filters such
/// as TLS, the plaintext: the filter encrypts it on the way out). Logs each client's address at debug
/// level: the real client's, behind a PROXY protocol balancer.
public struct EchoHandler: TCPConnectionHandler {
    static let logger = Logger(label: "keel.echo")
    /// Whether ``logger`` logs connections (its level is fixed once made): checked before touching the
    /// logger, which otherwise costs a copy and an existential call per connection even when silent.
    static let logsConnections = logger.logLevel <= .debug

    /// An echo handler.
    public init() {}

    /// Echoing needs no word of what reached the kernel.
    public static var observesWriteCompletion: Bool { false }

    public mutating func connectionEstablished(_ connection: TCPConnection) {
        guard Self.logsConnections else { return }
        Self.logger.debug("connection from \(connection.remoteAddress.map { "\($0)" } ?? "an unknown address")")
    }

    public mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        connection.write(buffer)
    }
}
