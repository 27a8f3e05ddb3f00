import KeelBuffers
import KeelEngine
import KeelSockets

/// The two halves of one relayed connection: the client's connection and the back-end's, on one I/O
/// thread (the back-end connection is opened on the client's thread), so bytes move between them with
/// no lock and no thread hop.
final class RelayLink: @unchecked Sendable {
    // @unchecked Sendable: created on the client connection's I/O thread and only touched there (the
    // back-end connect is made on that same thread, and its handler and failure callbacks run there).
    // It crosses into the connector's @Sendable closures only to come back to this thread.

    /// The client's connection; nil once it closed.
    var client: TCPConnection?
    /// The back-end's connection; nil before it opened and once it closed.
    var backend: TCPConnection?
    /// The back-end chosen (index into the gateway's back-ends); nil before the first pick.
    var backendIndex: Int?
    /// Back-ends already tried for this client.
    var tried: Set<Int> = []
    /// The client is gone: a back-end connection that opens now is closed at once.
    var clientGone = false
    /// Bytes relayed each way, added to the gateway's counters when the link ends.
    var bytesToBackend = 0
    var bytesToClient = 0

    init(client: TCPConnection) {
        self.client = client
    }

    /// How to close one side after the other ended for `reason`: an orderly end is passed on as one
    /// (what is queued is still delivered), a reset or failure as a reset.
    static func closeMode(after reason: TCPCloseReason) -> TCPCloseMode {
        switch reason.code {
        case .peerClosed, .local: .graceful
        default: .abortive
        }
    }
}

/// The client side of a relayed connection: its bytes go to the back-end, its end of stream becomes
/// the back-end's, and a full back-end queue pauses its reading.
struct GatewayClientSide: TCPConnectionHandler {
    let gateway: GatewayCore
    var link: RelayLink?

    init(gateway: GatewayCore) {
        self.gateway = gateway
    }

    mutating func connectionEstablished(_ connection: TCPConnection) {
        let link = RelayLink(client: connection)
        self.link = link
        connection.pauseReading()  // until the back-end connection is open
        gateway.connectBackend(for: link, on: connection.thread)
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        guard let link, let backend = link.backend else { return }
        link.bytesToBackend &+= buffer.readableBytes
        backend.write(buffer)
    }

    mutating func connectionPeerHalfClosed(_ connection: TCPConnection) {
        // The client finished sending: the back-end reads end of stream after everything queued, and
        // its answer still comes back.
        guard let backend = link?.backend else { return connection.close() }
        backend.close(.halfClose)
    }

    mutating func connectionWritabilityChanged(_ connection: TCPConnection, isWritable: Bool) {
        guard let backend = link?.backend else { return }
        if isWritable { backend.resumeReading() } else { backend.pauseReading() }
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        guard let link else { return }
        link.client = nil
        link.clientGone = true
        if let backend = link.backend { backend.close(RelayLink.closeMode(after: reason)) }
        gateway.linkEnded(link)
        self.link = nil
    }
}

/// The back-end side of a relayed connection: the mirror image of ``GatewayClientSide``.
struct GatewayBackendSide: TCPConnectionHandler {
    let gateway: GatewayCore
    let link: RelayLink

    mutating func connectionEstablished(_ connection: TCPConnection) {
        guard let client = link.client, !link.clientGone else { return connection.close(.abortive) }
        link.backend = connection
        if let index = link.backendIndex { gateway.backends.succeeded(index) }
        if gateway.configuration.sendsProxyHeader { gateway.sendProxyHeader(from: client, to: connection) }
        client.resumeReading()
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        guard let client = link.client else { return }
        link.bytesToClient &+= buffer.readableBytes
        client.write(buffer)
    }

    mutating func connectionPeerHalfClosed(_ connection: TCPConnection) {
        guard let client = link.client else { return connection.close() }
        client.close(.halfClose)
    }

    mutating func connectionWritabilityChanged(_ connection: TCPConnection, isWritable: Bool) {
        guard let client = link.client else { return }
        if isWritable { client.resumeReading() } else { client.pauseReading() }
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        guard link.backend === connection else { return }  // closed at once: its client had gone
        link.backend = nil
        if let client = link.client { client.close(RelayLink.closeMode(after: reason)) }
    }
}
