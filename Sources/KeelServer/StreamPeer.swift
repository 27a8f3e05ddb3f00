import KeelBuffers
import KeelEngine
import KeelFraming
import KeelSockets
import KeelSystem

/// A TCP or TLS connection as a plugin peer: received bytes split by the endpoint's framing, sent
/// messages framed the same way.
class StreamPeer: PluginPeer, @unchecked Sendable {
    // @unchecked Sendable (inherited): confined to the connection's thread, like its base.
    let connection: TCPConnection
    let runtime: EndpointRuntime
    let framing: EndpointConfiguration.Framing
    var session: (any PluginSession)?
    /// Set while a drain waits for the message in progress.
    var closesWhenIdle = false
    /// True once a message arrived: a drain lets a connection that has sent nothing yet send its first
    /// (a client that just connected has its request in flight) and answers it before closing.
    var hasReceived = false

    init(connection: TCPConnection, runtime: EndpointRuntime) {
        self.connection = connection
        self.runtime = runtime
        framing = runtime.configuration.framing
        super.init(thread: connection.thread, id: runtime.nextPeerID(on: connection.thread), endpoint: runtime.name,
                   counters: runtime.counters.threads[connection.thread.index])
    }

    override var remoteAddress: SocketAddress? { connection.remoteAddress }

    override var broadcastKind: BroadcastKind {
        switch framing {
        case .raw, .fixed: .unframed
        case .line: .line
        case .lengthPrefixed(let width): .lengthPrefixed(width)
        }
    }

    /// The connection opened: make the session and tell it.
    final func start() {
        session = runtime.opened(self)
        session?.opened(self)
    }

    /// Bytes arrived (subclasses split them into messages).
    func receive(_ buffer: consuming IOBuffer) {}

    /// Bytes of a message received only in part.
    var pendingBytes: Int { 0 }

    /// Delivers one message to the session.
    @inline(__always) final func deliver(_ bytes: UnsafeRawBufferPointer, token: Int) {
        hasReceived = true
        counters.received(bytes.count)
        session?.received(PluginMessage(bytes: bytes, isText: false, token: token), from: self)
    }

    /// After a read's messages: a draining peer closes once nothing is half-received.
    @inline(__always) final func afterDelivery() {
        if closesWhenIdle && pendingBytes == 0 { close() }
    }

    override func drain() {
        if pendingBytes == 0 && hasReceived { close() } else { closesWhenIdle = true }
    }

    override func close() {
        guard !isClosed else { return }
        connection.close(.graceful)
    }

    /// The connection closed.
    func transportClosed() {
        markClosed()
        runtime.closed(self)
        session?.closed(self)
        session = nil
    }

    override func transmit(_ bytes: UnsafeRawBufferPointer) -> SendOutcome {
        var header: UInt64 = 0
        var headerBytes = 0
        var trailer = false
        switch framing {
        case .raw: break
        case .line: trailer = true
        case .lengthPrefixed(let width):
            guard width == 8 || bytes.count < 1 << (8 * width) else { return .invalid }
            header = (UInt64(bytes.count) << (64 - 8 * UInt64(width))).bigEndian
            headerBytes = width
        case .fixed(let size):
            guard bytes.count == size else { return .invalid }
        }
        let total = headerBytes + bytes.count + (trailer ? 1 : 0)
        let pool = thread.bufferPool
        guard var buffer = try? pool.acquire() else { return .dropped }
        if total <= buffer.writableBytes {
            withUnsafeBytes(of: &header) { _ = buffer.append(UnsafeRawBufferPointer(rebasing: $0[..<headerBytes])) }
            _ = buffer.append(bytes)
            if trailer { _ = buffer.append(contentsOf: CollectionOfOne(UInt8(ascii: "\n"))) }
            let dropped = connection.droppedWrites
            connection.write(buffer)
            return connection.droppedWrites == dropped ? .sent : .dropped  // a drop-newest / drop-oldest policy dropped a write
        }
        // Longer than one buffer: a chain, written with one vectored write.
        var chain = BufferChain()
        withUnsafeBytes(of: &header) { _ = buffer.append(UnsafeRawBufferPointer(rebasing: $0[..<headerBytes])) }
        chain.append(buffer)
        var copied = chain.append(copying: bytes, from: pool)
        if trailer {
            copied = copied && withUnsafeBytes(of: UInt8(ascii: "\n")) { chain.append(copying: $0, from: pool) }
        }
        guard copied else { return .dropped }
        let dropped = connection.droppedWrites
        connection.write(chain)
        return connection.droppedWrites == dropped ? .sent : .dropped
    }

    override func transmit(_ broadcast: PluginBroadcast) -> SendOutcome {
        if case .fixed(let size) = framing, broadcast.count != size { return .invalid }
        guard let buffers = broadcast.buffers(for: broadcastKind) else { return .dropped }
        let dropped = connection.droppedWrites
        for buffer in buffers { connection.write(buffer) }
        return connection.droppedWrites == dropped ? .sent : .dropped
    }
}

/// Raw framing: every read is one message, and a reply with it sends the same buffer back.
final class RawStreamPeer: StreamPeer, @unchecked Sendable {
    // @unchecked Sendable (inherited): confined to the connection's thread, like its base.
    private var held: IOBuffer?

    override func receive(_ buffer: consuming IOBuffer) {
        let bytes = UnsafeRawBufferPointer(start: buffer.unsafeReadableAddress, count: buffer.readableBytes)
        held = consume buffer
        heldToken &+= 1
        holdsReceived = true
        deliver(bytes, token: heldToken)
        holdsReceived = false
        held = nil
        afterDelivery()
    }

    override func transmitHeld() -> SendOutcome {
        guard let buffer = held.take() else { return .dropped }
        let dropped = connection.droppedWrites
        connection.write(buffer)
        return connection.droppedWrites == dropped ? .sent : .dropped
    }
}

/// Line, length-prefixed or fixed-size framing: messages handed out in place from the read buffers
/// (copied only when one straddles two reads).
final class FramedStreamPeer<Decoder: FrameDecoder>: StreamPeer, @unchecked Sendable {
    // @unchecked Sendable (inherited): confined to the connection's thread, like its base.
    private var accumulator: FrameAccumulator<Decoder>
    /// True while the accumulator is handing out messages (a close from the plugin must not touch it).
    private var feeding = false

    init(connection: TCPConnection, runtime: EndpointRuntime, decoder: Decoder) {
        accumulator = FrameAccumulator(decoder: decoder)
        super.init(connection: connection, runtime: runtime)
    }

    override var pendingBytes: Int { feeding ? 0 : accumulator.pendingBytes }

    override func receive(_ buffer: consuming IOBuffer) {
        feeding = true
        do {
            try accumulator.feed(buffer) { payload in
                guard !isClosed else { return }
                deliver(payload, token: 0)
            }
            feeding = false
        } catch {
            feeding = false
            counters.badMessage()
            connection.closeForError(error)
            return
        }
        afterDelivery()
    }

    override func transportClosed() {
        if !feeding { accumulator.discard() }
        super.transportClosed()
    }
}

/// The connection handler of a TCP or TLS endpoint: makes the peer for the endpoint's framing and
/// passes it the connection's events.
struct PluginStreamHandler: TCPConnectionHandler {
    let runtime: EndpointRuntime
    var peer: StreamPeer?

    init(runtime: EndpointRuntime) {
        self.runtime = runtime
    }

    mutating func connectionEstablished(_ connection: TCPConnection) {
        let limit = runtime.configuration.limits.maximumMessageBytes
        let peer: StreamPeer = switch runtime.configuration.framing {
        case .raw: RawStreamPeer(connection: connection, runtime: runtime)
        case .line:
            FramedStreamPeer(connection: connection, runtime: runtime, decoder: LineDecoder(maximumLineBytes: limit))
        case .lengthPrefixed(let width):
            FramedStreamPeer(connection: connection, runtime: runtime,
                             decoder: LengthPrefixedDecoder(prefixBytes: width, maximumPayloadBytes: limit))
        case .fixed(let size):
            FramedStreamPeer(connection: connection, runtime: runtime, decoder: FixedSizeDecoder(frameBytes: size))
        }
        self.peer = peer
        peer.start()
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        peer?.receive(buffer)
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        if let peer { runtime.noteClose(reason, of: peer) }
        peer?.transportClosed()
        peer = nil
    }
}
