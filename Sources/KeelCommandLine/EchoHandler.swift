import KeelBuffers
import KeelSockets

/// Echoes every received buffer back on the same connection, without copying it (under filters such
/// as TLS, the plaintext: the filter encrypts it on the way out).
public struct EchoHandler: TCPConnectionHandler {
    /// An echo handler.
    public init() {}

    public mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        connection.write(buffer)
    }
}
