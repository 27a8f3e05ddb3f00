import KeelBuffers
import KeelEngine
import KeelSockets

/// Limits and timings of a WebSocket connection.
public struct WebSocketConfiguration: Sendable, Hashable {
    /// The largest frame payload accepted (1009 beyond it).
    public var maximumFrameSize: Int
    /// The largest message accepted, all fragments together (1009 beyond it).
    public var maximumMessageSize: Int
    /// How long to wait for the peer's close frame after sending one before the TCP connection is
    /// closed anyway.
    public var closeTimeout: Duration
    /// Subprotocols a server accepts, in its order of preference.
    public var subprotocols: [String]
    /// permessage-deflate (RFC 7692): nil to refuse it (a server) or not offer it (a client).
    /// Compression costs each connection a compressor and a decompressor (a few hundred KiB with the
    /// default window), so it is off unless asked for.
    public var compression: WebSocketCompression?
    /// Keep-alive: after this long without receiving anything, send a ping; nil for none.
    public var pingInterval: Duration?
    /// Keep-alive: how long to wait for anything from the peer after a keep-alive ping before the
    /// connection is closed (``KeelSockets/TCPCloseReason/Code/webSocketPingTimeout``).
    public var pongTimeout: Duration
    /// Deliver each data frame's payload as it completes (``WebSocketHandler/fragmentReceived(_:on:)``)
    /// instead of whole messages, for streaming large messages. The limits, UTF-8 checking across
    /// fragments and decompression stay as they are.
    public var deliversFragments: Bool

    /// 16 MiB frames and messages, a 5-second close timeout, no subprotocols, no compression, no
    /// keep-alive pings (a 10-second pong timeout once an interval is set).
    public init(maximumFrameSize: Int = 16 << 20, maximumMessageSize: Int = 16 << 20, closeTimeout: Duration = .seconds(5),
                subprotocols: [String] = [], compression: WebSocketCompression? = nil,
                pingInterval: Duration? = nil, pongTimeout: Duration = .seconds(10), deliversFragments: Bool = false) {
        self.maximumFrameSize = maximumFrameSize
        self.maximumMessageSize = maximumMessageSize
        self.closeTimeout = closeTimeout
        self.subprotocols = subprotocols
        self.compression = compression
        self.pingInterval = pingInterval
        self.pongTimeout = pongTimeout
        self.deliversFragments = deliversFragments
    }
}

/// How a server takes part in permessage-deflate.
public struct WebSocketCompression: Sendable, Hashable {
    /// Reset the compressor after each message even when the client does not ask for it (less memory
    /// held between messages, and a message can be compressed once for many connections).
    public var serverNoContextTakeover: Bool
    /// zlib's compression level (1 fastest ... 9 smallest).
    public var level: Int
    /// Messages shorter than this go uncompressed (not worth a deflate call).
    public var minimumMessageSize: Int

    /// Context takeover as the client wishes, level 6, messages from 64 bytes.
    public init(serverNoContextTakeover: Bool = false, level: Int = 6, minimumMessageSize: Int = 64) {
        self.serverNoContextTakeover = serverNoContextTakeover
        self.level = level
        self.minimumMessageSize = minimumMessageSize
    }
}

/// A whole received message: text or binary, its payload in pooled buffers.
public struct WebSocketMessage: ~Copyable {
    /// Text (UTF-8, already checked) or binary.
    public var kind: WebSocketMessageAssembler.Kind
    /// The payload.
    public var payload: BufferChain

    /// The payload as a string (for a text message; binary bytes are decoded leniently).
    public var text: String { String(decoding: payload.readableByteArray, as: UTF8.self) }

    /// Ends the message, handing over its payload's buffers (to keep or send without a copy).
    public consuming func takePayload() -> BufferChain { payload }
}

/// One data frame's payload, delivered as it completes when ``WebSocketConfiguration/deliversFragments``
/// is on: a message arrives as one or more fragments, the last with `isFinal`.
public struct WebSocketFragment: ~Copyable {
    /// The kind of the message this fragment belongs to.
    public var kind: WebSocketMessageAssembler.Kind
    /// This fragment's payload (decompressed; a text fragment may end inside a UTF-8 character, which
    /// the next one completes).
    public var payload: BufferChain
    /// The message's last fragment.
    public var isFinal: Bool
}

/// What a WebSocket connection's application does, per connection: messages arrive whole (the
/// protocol's pings, pongs and closing handshake are answered for it).
///
/// **Threading:** every method runs on the connection's I/O thread.
public protocol WebSocketHandler {
    /// The connection switched to WebSocket and may send. Optional.
    mutating func webSocketOpened(_ socket: WebSocket)
    /// A whole message arrived; its buffers are yours (send them back to echo without a copy).
    mutating func messageReceived(_ message: consuming WebSocketMessage, on socket: WebSocket)
    /// With ``WebSocketConfiguration/deliversFragments``, each data frame's payload as it completes,
    /// in place of ``messageReceived(_:on:)``. Optional.
    mutating func fragmentReceived(_ fragment: consuming WebSocketFragment, on socket: WebSocket)
    /// The connection closed: `close` is the code and reason of the closing handshake (1006 when
    /// there was none), `reason` the TCP connection's own. Optional.
    mutating func webSocketClosed(_ close: WebSocketClose, reason: TCPCloseReason)
    /// The connection's send queue went over its high watermark (`isWritable` false) or drained
    /// below the low one (true): a producer should wait for true before sending more. Optional.
    mutating func webSocketWritabilityChanged(_ isWritable: Bool, on socket: WebSocket)
}

extension WebSocketHandler {
    public mutating func webSocketOpened(_ socket: WebSocket) {}
    public mutating func webSocketClosed(_ close: WebSocketClose, reason: TCPCloseReason) {}
    public mutating func webSocketWritabilityChanged(_ isWritable: Bool, on socket: WebSocket) {}
    public mutating func fragmentReceived(_ fragment: consuming WebSocketFragment, on socket: WebSocket) {}
}

/// How a handler sends on its WebSocket connection. Calls after the closing handshake started are
/// ignored. Two values are equal when they are the same connection.
///
/// **Threading:** the connection's I/O thread only.
public struct WebSocket: Hashable {
    let filter: WebSocketFilter

    public static func == (lhs: WebSocket, rhs: WebSocket) -> Bool { lhs.filter === rhs.filter }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(filter)) }

    /// False while the connection's send queue is over its high watermark (see
    /// ``WebSocketHandler/webSocketWritabilityChanged(_:on:)``); false once closed.
    public var isWritable: Bool { filter.context.map { !$0.isDetached && $0.connection.isWritable } ?? false }

    /// The TCP connection underneath (its addresses, its filters such as TLS).
    public var connection: TCPConnection? { filter.context?.connection }

    /// The subprotocol agreed on in the handshake, if any.
    public var subprotocol: String? { filter.subprotocol }

    /// permessage-deflate as agreed in the handshake, if it was.
    public var compression: WebSocketDeflateParameters? { filter.compression }

    /// Sends a text message.
    public func send(text: String) { filter.send(.text, bytes: text.utf8) }

    /// Sends a binary message.
    public func send(binary bytes: some Collection<UInt8>) { filter.send(.binary, bytes: bytes) }

    /// Sends a message whose payload is already in pooled buffers, without copying it (small payloads
    /// are copied next to the frame header instead of costing a buffer of their own).
    public func send(_ kind: WebSocketMessageAssembler.Kind, payload: consuming BufferChain) { filter.send(kind, payload: payload) }

    /// Sends a payload held in shared buffers (a server sends them as they are, behind its own
    /// frame header; a client, or a compressing connection, copies them).
    func send(_ kind: WebSocketMessageAssembler.Kind, shared payload: [SharedBuffer]) { filter.send(kind, shared: payload) }

    /// Sends `message` as it came (an echo), without copying its payload.
    public func send(_ message: consuming WebSocketMessage) {
        let kind = message.kind
        filter.send(kind, payload: message.payload)
    }

    /// Sends a message prepared once for many connections, without copying or framing it again (see
    /// ``WebSocketBroadcast``).
    public func send(_ broadcast: WebSocketBroadcast) { filter.send(broadcast) }

    /// Sends a ping (at most 125 bytes of payload).
    public func ping(_ payload: [UInt8] = []) { filter.sendControl(.ping, payload: Array(payload.prefix(125))) }

    /// Starts the closing handshake; the connection closes once the peer answers (or after the
    /// close timeout).
    public func close(_ code: WebSocketCloseCode = .normalClosure, reason: String = "") {
        filter.startClose(WebSocketClose(code: code, reason: reason))
    }
}

/// A WebSocket connection (RFC 6455) as a filter, after the opening handshake: frames to whole
/// messages for a ``WebSocketHandler``, pings answered, the closing handshake, protocol errors
/// failing the connection with their close code. Servers get one through
/// ``KeelSockets/TCPConnectionOptions/serveWebSockets(configuration:makeHandler:)``.
public final class WebSocketFilter: TCPConnectionFilter {
    /// The side this filter speaks for.
    public let role: WebSocketRole
    /// Limits and timings.
    public let configuration: WebSocketConfiguration
    /// The subprotocol agreed on, if any.
    public let subprotocol: String?
    /// permessage-deflate as agreed, if it was.
    public let compression: WebSocketDeflateParameters?

    // State below is touched on the connection's I/O thread only, and never by overlapping accesses
    // (the handler runs between parser steps, taken out of `handler` meanwhile), so the hot fields skip
    // Swift's dynamic exclusivity checks, which cost more than the WebSocket parsing itself.
    @exclusivity(unchecked) fileprivate private(set) var context: TCPFilterContext?
    @exclusivity(unchecked) private var handler: (any WebSocketHandler)?
    @exclusivity(unchecked) private var handlerBusy = false
    private var closedWhileBusy: (WebSocketClose, TCPCloseReason)?
    @exclusivity(unchecked) private var parser: WebSocketFrameParser
    @exclusivity(unchecked) private var assembler: WebSocketMessageAssembler
    @exclusivity(unchecked) private var frame: WebSocketFrameHeader?
    /// The message being received, and its kind.
    @exclusivity(unchecked) private var message: BufferChain?
    /// The message's last buffer, while it has room.
    @exclusivity(unchecked) private var messageTail: IOBuffer?
    @exclusivity(unchecked) private var messageKind = WebSocketMessageAssembler.Kind.binary
    /// The control frame being received (at most 125 bytes).
    @exclusivity(unchecked) private var controlPayload: [UInt8] = []
    @exclusivity(unchecked) private var sentClose = false
    @exclusivity(unchecked) private var receivedClose: WebSocketClose?
    private var closeTimer: TimerHandle?
    @exclusivity(unchecked) private var opened = false
    /// Keep-alive: when something last arrived, and when the outstanding keep-alive ping went (0: none).
    @exclusivity(unchecked) private var lastReceived: UInt64 = 0
    @exclusivity(unchecked) private var keepAlivePingSent: UInt64 = 0
    @exclusivity(unchecked) private var keepAliveTimer: TimerHandle?
    /// The async face of this connection, when an ``AsyncWebSocketBridge`` is its handler (weak: the
    /// bridge owns it).
    weak var asyncSocket: AsyncWebSocket?
    /// The message being received is compressed.
    private var messageIsCompressed = false
    /// Made on first use (an idle connection holds no zlib state).
    private var inflater: WebSocketInflater?
    private var deflater: WebSocketDeflater?

    /// A filter for `role` with `configuration`, delivering to `handler`.
    public init(role: WebSocketRole, configuration: WebSocketConfiguration = WebSocketConfiguration(), subprotocol: String? = nil,
                compression: WebSocketDeflateParameters? = nil, handler: any WebSocketHandler) {
        self.role = role
        self.configuration = configuration
        self.subprotocol = subprotocol
        self.compression = compression
        self.handler = handler
        parser = WebSocketFrameParser(role: role, maximumFrameSize: configuration.maximumFrameSize,
                                      allowedReservedBits: compression == nil ? 0 : 0b100)
        assembler = WebSocketMessageAssembler(maximumMessageSize: configuration.maximumMessageSize)
    }

    public func filterAdded(context: TCPFilterContext) { open(context) }
    public func connectionEstablished(context: TCPFilterContext) { open(context) }

    private func open(_ context: TCPFilterContext) {
        self.context = context
        guard !opened else { return }
        opened = true
        if let interval = configuration.pingInterval {
            lastReceived = context.connection.thread.nowNanoseconds
            scheduleKeepAlive(after: interval, context: context)
        }
        let socket = WebSocket(filter: self)
        withHandler { $0.webSocketOpened(socket) }
        context.passEstablished()  // the connection's own handler learns that the WebSocket is open
    }

    // MARK: Inbound

    public func filterInbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        guard receivedClose == nil, !context.isDetached else { return }
        if keepAliveTimer != nil { lastReceived = context.connection.thread.nowNanoseconds }
        let outcome = buffer.withUnsafeMutableReadableBytes { bytes in
            Result { () throws(WebSocketProtocolError) in try read(bytes, context: context) }
        }
        if case .failure(let error) = outcome { fail(error) }
    }

    /// Parses `bytes`, handing whole messages to the handler and answering control frames as they end.
    private func read(_ bytes: UnsafeMutableRawBufferPointer, context: TCPFilterContext) throws(WebSocketProtocolError) {
        var offset = 0
        while receivedClose == nil, !context.isDetached, let part = try parser.next(bytes, consumed: &offset) {
            switch part {
            case .header(let header):
                frame = header
                let compressed = header.reserved & 0b100 != 0
                if let (kind, starts) = try assembler.frameStarted(header) {
                    if starts {
                        messageKind = kind
                        messageIsCompressed = compressed
                    } else if compressed {
                        throw WebSocketProtocolError(.protocolError, "RSV1 on a continuation frame")
                    }
                } else {
                    if compressed { throw WebSocketProtocolError(.protocolError, "RSV1 on a control frame") }
                    controlPayload.removeAll(keepingCapacity: true)
                }
            case .payload(let range):
                let piece = UnsafeRawBufferPointer(rebasing: bytes[range])
                if frame?.opcode.isControl == true {
                    controlPayload.append(contentsOf: piece)
                } else if messageIsCompressed {
                    try inflate(piece)
                } else {
                    try assembler.dataReceived(piece)
                    try append(piece)
                }
            case .end:
                guard let header = frame else { continue }
                frame = nil
                if header.opcode.isControl {
                    try control(header.opcode)
                    continue
                }
                if header.fin && messageIsCompressed {
                    try WebSocketInflater.trailer.withUnsafeBytes { raw in
                        Result { () throws(WebSocketProtocolError) in try inflate(raw) }
                    }.get()
                    inflater?.messageEnded()
                }
                let messageEnded = try assembler.frameEnded()
                if configuration.deliversFragments {
                    var fragment: WebSocketFragment? = WebSocketFragment(kind: messageKind, payload: takeMessage(), isFinal: messageEnded)
                    let socket = WebSocket(filter: self)
                    withHandler { handler in
                        if let piece = fragment.take() { handler.fragmentReceived(piece, on: socket) }
                    }
                } else if messageEnded {
                    var received: WebSocketMessage? = WebSocketMessage(kind: messageKind, payload: takeMessage())
                    let socket = WebSocket(filter: self)
                    withHandler { handler in
                        if let whole = received.take() { handler.messageReceived(whole, on: socket) }
                    }
                }
            }
        }
    }

    /// Copies payload bytes onto the end of the message being received, filling its last buffer
    /// before taking another (a message in many small fragments costs no more buffers than its size).
    private func append(_ bytes: UnsafeRawBufferPointer) throws(WebSocketProtocolError) {
        var remaining = bytes
        while !remaining.isEmpty {
            var buffer: IOBuffer
            if let tail = messageTail.take() {
                buffer = tail
            } else {
                guard let pool = context?.bufferPool, let fresh = try? pool.acquire() else {
                    throw WebSocketProtocolError(.internalError, "no buffer for a message")
                }
                buffer = fresh
            }
            let count = buffer.append(remaining)
            remaining = UnsafeRawBufferPointer(rebasing: remaining[count...])
            if buffer.writableBytes > 0 {
                messageTail = consume buffer
            } else {
                if message == nil { message = BufferChain() }
                message!.append(buffer)
            }
        }
    }

    /// Inflates compressed payload bytes straight into the message's buffers, checking what comes
    /// out (UTF-8, the size limit: a compression bomb stops at 1009).
    private func inflate(_ piece: UnsafeRawBufferPointer) throws(WebSocketProtocolError) {
        if inflater == nil {
            inflater = WebSocketInflater(resetsAfterEachMessage: role == .server
                ? compression?.clientNoContextTakeover == true : compression?.serverNoContextTakeover == true)
        }
        guard let inflater, let pool = context?.bufferPool else { throw WebSocketProtocolError(.internalError, "no decompressor") }
        try inflater.inflate(piece, region: { () throws(WebSocketProtocolError) -> UnsafeMutableRawBufferPointer in
            let tail: IOBuffer
            if let kept = messageTail.take() {
                tail = kept
            } else {
                guard let fresh = try? pool.acquire() else { throw WebSocketProtocolError(.internalError, "no buffer for a message") }
                tail = fresh
            }
            let room = UnsafeMutableRawBufferPointer(start: tail.unsafeWritableAddress, count: tail.writableBytes)
            messageTail = consume tail
            return room
        }, produced: { (count: Int) throws(WebSocketProtocolError) in
            guard count > 0, var tail = messageTail.take() else { return }
            try assembler.dataReceived(UnsafeRawBufferPointer(start: tail.unsafeWritableAddress, count: count))
            tail.moveWriterIndex(forwardBy: count)
            if tail.writableBytes > 0 {
                messageTail = consume tail
            } else {
                if message == nil { message = BufferChain() }
                message!.append(tail)
            }
        })
    }

    /// The message received so far, its last buffer included.
    private func takeMessage() -> BufferChain {
        var chain = message.take() ?? BufferChain()
        if let tail = messageTail.take() { chain.append(tail) }
        return chain
    }

    private func control(_ opcode: WebSocketOpcode) throws(WebSocketProtocolError) {
        switch opcode {
        case .ping:
            sendControl(.pong, payload: controlPayload)
        case .close:
            let close = try controlPayload.withUnsafeBytes { raw in
                Result { () throws(WebSocketProtocolError) in try WebSocketClose(payload: raw) }
            }.get()
            receivedClose = close
            if !sentClose {
                // Echo the code (RFC 6455, 5.5.1), then end the TCP connection (a server closes first).
                sendCloseFrame(WebSocketClose(code: close.code))
            }
            finish(TCPCloseReason(.peerClosed, detail: "WebSocket close \(close.code.map { "\($0)" } ?? "without a code")"))
        default:
            break  // a pong: nothing to do
        }
    }

    // MARK: Outbound

    fileprivate func send(_ kind: WebSocketMessageAssembler.Kind, bytes: some Collection<UInt8>) {
        var chain = BufferChain()
        if let pool = context?.bufferPool {
            var remaining = bytes[...]
            while !remaining.isEmpty {
                guard var buffer = try? pool.acquire() else { return fail(WebSocketProtocolError(.internalError, "no buffer to send")) }
                let count = min(buffer.writableBytes, remaining.count)
                let end = remaining.index(remaining.startIndex, offsetBy: count)
                _ = buffer.append(contentsOf: remaining[..<end])
                remaining = remaining[end...]
                chain.append(buffer)
            }
        }
        send(kind, payload: chain)
    }

    fileprivate func send(_ kind: WebSocketMessageAssembler.Kind, payload: consuming BufferChain) {
        guard let context, !sentClose, !context.isDetached else { return }
        let opcode: WebSocketOpcode = kind == .text ? .text : .binary
        if let compression, payload.readableBytes >= (configuration.compression?.minimumMessageSize ?? 0) {
            if deflater == nil {
                let serverSide = role == .server
                deflater = WebSocketDeflater(
                    windowBits: serverSide ? compression.serverMaxWindowBits : (compression.clientMaxWindowBits ?? 15),
                    resetsAfterEachMessage: serverSide ? compression.serverNoContextTakeover : compression.clientNoContextTakeover,
                    level: Int32(configuration.compression?.level ?? 6))
            }
            guard let deflater else { return fail(WebSocketProtocolError(.internalError, "no compressor")) }
            do {
                let compressed = try deflater.compress(payload, pool: context.bufferPool)
                return writeFrame(WebSocketFrameHeader(reserved: 0b100, opcode: opcode, payloadLength: compressed.readableBytes),
                                  payload: compressed, context: context)
            } catch {
                return fail(error)
            }
        }
        writeFrame(WebSocketFrameHeader(opcode: opcode, payloadLength: payload.readableBytes), payload: payload, context: context)
    }

    fileprivate func sendControl(_ opcode: WebSocketOpcode, payload: [UInt8]) {
        guard let context, !sentClose, !context.isDetached else { return }
        var chain = BufferChain()
        if !payload.isEmpty, var buffer = try? context.bufferPool.acquire() {
            _ = buffer.append(contentsOf: payload)
            chain.append(buffer)
        }
        writeFrame(WebSocketFrameHeader(opcode: opcode, payloadLength: payload.count), payload: chain, context: context)
    }

    fileprivate func send(_ kind: WebSocketMessageAssembler.Kind, shared payload: [SharedBuffer]) {
        guard let context, !sentClose, !context.isDetached else { return }
        let size = payload.reduce(0) { $0 + $1.readableBytes }
        if role == .client || (compression != nil && size >= (configuration.compression?.minimumMessageSize ?? 0)) {
            var chain = BufferChain()
            for buffer in payload where !chain.append(copying: buffer.unsafeReadableBytes, from: context.bufferPool) {
                return fail(WebSocketProtocolError(.internalError, "no buffer to send"))
            }
            return send(kind, payload: chain)
        }
        let header = WebSocketFrameHeader(opcode: kind == .text ? .text : .binary, payloadLength: size)
        guard var first = try? context.bufferPool.acquire() else { return fail(WebSocketProtocolError(.internalError, "no buffer to send")) }
        first.append(header)
        var index = 0
        // Small payloads travel in the header's buffer; large ones go down shared, without a copy.
        while index < payload.count, payload[index].readableBytes <= min(first.writableBytes, Self.copiedPayloadLimit) {
            first.append(payload[index].unsafeReadableBytes)
            index += 1
        }
        context.passOutbound(first)
        while index < payload.count {
            context.passOutbound(payload[index])
            index += 1
        }
    }

    fileprivate func send(_ broadcast: WebSocketBroadcast) {
        guard let context, !sentClose, !context.isDetached else { return }
        guard role == .server else {
            // A client masks every frame with its own key: this connection frames its own copy.
            var chain = BufferChain()
            var copied = true
            broadcast.forEachPayloadRegion { region in
                copied = copied && chain.append(copying: region, from: context.bufferPool)
            }
            if !copied { return fail(WebSocketProtocolError(.internalError, "no buffer to send")) }
            return send(broadcast.kind, payload: chain)
        }
        for buffer in broadcast.frame(for: compression) { context.passOutbound(buffer) }
    }

    /// A frame's header, then its payload. Small payloads travel in the header's buffer; a client
    /// masks (copying, since the payload may be shared).
    private func writeFrame(_ header: WebSocketFrameHeader, payload: consuming BufferChain, context: TCPFilterContext) {
        var header = header
        if role == .client { header.maskingKey = UInt32.random(in: 0...UInt32.max) }
        guard var first = try? context.bufferPool.acquire() else {
            return context.close(.abortive, reason: TCPCloseReason(.resourceExhausted, detail: "no buffer for a WebSocket frame"))
        }
        first.append(header)
        var masked = 0
        while let next = payload.popFirst() {
            var piece = next
            if let key = header.maskingKey {
                piece.withUnsafeMutableReadableBytes { webSocketMask($0, key: key, offset: masked) }
            }
            masked += piece.readableBytes
            if piece.readableBytes <= first.writableBytes && piece.readableBytes <= Self.copiedPayloadLimit {
                _ = piece.withUnsafeReadableBytes { first.append($0) }
            } else {
                context.passOutbound(first)
                first = piece
                continue
            }
        }
        context.passOutbound(first)
    }

    /// Payloads up to this size are copied next to their frame header rather than sent as a buffer of their own.
    private static let copiedPayloadLimit = 1024

    // MARK: Keep-alive

    private func scheduleKeepAlive(after delay: Duration, context: TCPFilterContext) {
        keepAliveTimer = context.connection.thread.scheduleTimer(after: delay) { [self] in
            keepAliveTimer = nil
            keepAliveTick()
        }
    }

    /// Sends a ping after a quiet interval; closes the connection when nothing answered the last one
    /// within the pong timeout.
    private func keepAliveTick() {
        guard let context, !context.isDetached, !sentClose, let interval = configuration.pingInterval else { return }
        let now = context.connection.thread.nowNanoseconds
        if keepAlivePingSent != 0 {
            if lastReceived < keepAlivePingSent {
                return context.close(.abortive, reason: TCPCloseReason(.webSocketPingTimeout, detail: "no answer to a keep-alive ping"))
            }
            keepAlivePingSent = 0
        }
        let quiet = Duration.nanoseconds(Int64(now &- lastReceived))
        if quiet < interval { return scheduleKeepAlive(after: interval - quiet, context: context) }
        keepAlivePingSent = now
        sendControl(.ping, payload: [])
        scheduleKeepAlive(after: configuration.pongTimeout, context: context)
    }

    // MARK: Closing

    fileprivate func startClose(_ close: WebSocketClose) {
        guard let context, !sentClose, !context.isDetached else { return }
        sendCloseFrame(close)
        closeTimer = context.connection.thread.scheduleTimer(after: configuration.closeTimeout) { [self] in
            closeTimer = nil
            self.context?.close(.abortive, reason: TCPCloseReason(.webSocketCloseTimeout, detail: "no close frame from the peer"))
        }
    }

    private func sendCloseFrame(_ close: WebSocketClose) {
        guard let context, !sentClose else { return }
        var chain = BufferChain()
        let payload = close.payload
        if !payload.isEmpty, var buffer = try? context.bufferPool.acquire() {
            _ = buffer.append(contentsOf: payload)
            chain.append(buffer)
        }
        writeFrame(WebSocketFrameHeader(opcode: .close, payloadLength: payload.count), payload: chain, context: context)
        sentClose = true
    }

    /// The closing handshake is complete: end the TCP connection.
    private func finish(_ reason: TCPCloseReason) {
        guard let context else { return }
        cancelTimers(context)
        context.close(.graceful, reason: reason)
    }

    private func cancelTimers(_ context: TCPFilterContext) {
        if let closeTimer { context.connection.thread.cancelTimer(closeTimer) }
        closeTimer = nil
        if let keepAliveTimer { context.connection.thread.cancelTimer(keepAliveTimer) }
        keepAliveTimer = nil
    }

    /// Fails the connection: a close frame with the error's code, then the end of the TCP connection.
    private func fail(_ error: WebSocketProtocolError) {
        guard let context, !context.isDetached else { return }
        sendCloseFrame(WebSocketClose(code: error.closeCode, reason: ""))
        receivedClose = receivedClose ?? WebSocketClose(code: .abnormalClosure)
        finish(TCPCloseReason(.webSocketProtocolError, detail: error.description))
    }

    public func peerHalfClosed(context: TCPFilterContext) {
        context.close(.graceful, reason: receivedClose == nil
            ? TCPCloseReason(.webSocketProtocolError, detail: "the TCP connection ended without a closing handshake") : .peerClosed)
    }

    public func writabilityChanged(_ isWritable: Bool, context: TCPFilterContext) {
        let socket = WebSocket(filter: self)
        withHandler { $0.webSocketWritabilityChanged(isWritable, on: socket) }
        context.passWritabilityChanged(isWritable)
    }

    public func connectionClosed(_ reason: TCPCloseReason, context: TCPFilterContext) {
        cancelTimers(context)
        message = nil
        messageTail = nil
        let close = receivedClose ?? WebSocketClose(code: .abnormalClosure)
        if handlerBusy {
            closedWhileBusy = (close, reason)
        } else {
            handler?.webSocketClosed(close, reason: reason)
        }
        handler = nil
        self.context = nil
    }

    /// Runs `body` on the handler, taken out of the filter meanwhile (what it does may close the
    /// connection: the close callback then waits until `body` returns).
    private func withHandler(_ body: (inout any WebSocketHandler) -> Void) {
        guard var taken = handler else { return }
        handler = nil
        handlerBusy = true
        body(&taken)
        handlerBusy = false
        if let (close, reason) = closedWhileBusy {
            closedWhileBusy = nil
            taken.webSocketClosed(close, reason: reason)
        } else if context != nil {
            handler = taken
        }
    }
}

extension TCPCloseReason.Code {
    /// The peer broke the WebSocket protocol (the detail names the close code sent).
    public static let webSocketProtocolError = Self("webSocket.protocolError")
    /// The peer did not answer a close frame within the close timeout.
    public static let webSocketCloseTimeout = Self("webSocket.closeTimeout")
    /// The peer sent nothing within the pong timeout after a keep-alive ping.
    public static let webSocketPingTimeout = Self("webSocket.pingTimeout")
}
