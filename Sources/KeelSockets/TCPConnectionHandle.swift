import KeelBuffers
import KeelEngine

extension TCPConnection {
    /// A handle to this connection with its current peer, safe to keep and to use from any thread.
    ///
    /// I/O thread only (take it in a handler callback, typically ``TCPConnectionHandler/connectionEstablished(_:)``).
    public var handle: TCPConnectionHandle {
        precondition(thread.isCurrent, "TCPConnection.handle must be taken on the connection's I/O thread")
        return TCPConnectionHandle(connection: self, generation: generation)
    }
}

/// A reference to one connection *with one peer*, for other threads, tasks and long-lived tables.
///
/// Connection objects are recycled: after a connection closes, its object may soon serve another
/// peer. A handle captures the object and the generation it had when the handle was taken; every
/// call goes to the connection's I/O thread and is ignored there (buffers released) unless the
/// object still serves that same peer and is open. So a handle kept past
/// ``TCPConnectionHandler/connectionClosed(_:reason:)`` can never write to, or close, the next peer.
///
/// **Threading:** every method may be called from any thread; on the connection's own thread it acts at once.
public struct TCPConnectionHandle: Sendable, Hashable {
    let connection: TCPConnection
    let generation: UInt32

    /// The I/O thread that owns the connection.
    public var thread: IOThread { connection.thread }

    /// Writes `buffer` (see ``TCPConnection/write(_:)-(IOBuffer)``), or releases it if the peer is gone.
    public func write(_ buffer: consuming IOBuffer) {
        if connection.thread.isCurrent {
            guard isLive else { return }
            return connection.write(buffer)
        }
        let detached = buffer.detach()
        let handle = self
        connection.thread.execute {
            guard handle.isLive else { return detached.release() }
            handle.connection.write(detached.reattach())
        }
    }

    /// Writes a shared payload (see ``TCPConnection/write(_:)-(SharedBuffer)``), unless the peer is gone.
    public func write(_ buffer: SharedBuffer) {
        execute { $0.write(buffer) }
    }

    /// Closes the connection (see ``TCPConnection/close(_:)``), unless the peer is already gone.
    public func close(_ mode: TCPCloseMode = .graceful) {
        execute { $0.close(mode) }
    }

    /// Runs `body` with the connection on its I/O thread, if it still serves this peer and is open.
    public func execute(_ body: @escaping @Sendable (TCPConnection) -> Void) {
        let handle = self
        connection.thread.execute {
            guard handle.isLive else { return }
            body(handle.connection)
        }
    }

    /// On the connection's thread: the object still serves this handle's peer and has not closed.
    private var isLive: Bool {
        connection.generation == generation && connection.state == .open
    }

    public static func == (lhs: TCPConnectionHandle, rhs: TCPConnectionHandle) -> Bool {
        lhs.connection === rhs.connection && lhs.generation == rhs.generation
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(ObjectIdentifier(connection))
        hasher.combine(generation)
    }
}
