import HTTPTypes
import KeelBuffers
import KeelHTTP
import KeelSockets

/// The client side of the opening handshake, as a filter: when the connection opens (above TLS, for
/// wss) it sends the upgrade request, checks the server's 101 answer (the Sec-WebSocket-Accept for its
/// key), and replaces itself with a ``WebSocketFilter`` speaking for the client. Any other answer closes
/// the connection with ``KeelSockets/TCPCloseReason/Code/webSocketHandshakeFailed`` naming the status.
public final class WebSocketClientUpgrader: TCPConnectionFilter {
    private let host: String
    private let path: String
    private let subprotocols: [String]
    private let configuration: WebSocketConfiguration
    private var handler: (any WebSocketHandler)?
    private let key = WebSocketHandshake.makeKey()
    private var parser = HTTPResponseParser()
    private var accepted: HTTPResponseHead?
    private var done = false

    /// An upgrader asking `host` for `path`, offering `subprotocols`, handing the connection to
    /// `handler` once the server agrees.
    public init(host: String, path: String = "/", subprotocols: [String] = [],
                configuration: WebSocketConfiguration = WebSocketConfiguration(), handler: any WebSocketHandler) {
        self.host = host
        self.path = path
        self.subprotocols = subprotocols
        self.configuration = configuration
        self.handler = handler
    }

    public func connectionEstablished(context: TCPFilterContext) { sendRequest(context) }
    public func filterAdded(context: TCPFilterContext) { sendRequest(context) }

    /// The upgrade request; `established` is held until the WebSocket filter takes over.
    private func sendRequest(_ context: TCPFilterContext) {
        var fields = HTTPFields()
        fields[.upgrade] = "websocket"
        fields[.connection] = "Upgrade"
        fields[.secWebSocketKey] = key
        fields[.secWebSocketVersion] = "13"
        if !subprotocols.isEmpty { fields[.secWebSocketProtocol] = subprotocols.joined(separator: ", ") }
        if let compression = configuration.compression {
            // The client keeps no context when the server-side policy asks for none of its own.
            fields[.secWebSocketExtensions] = "permessage-deflate; client_max_window_bits"
                + (compression.serverNoContextTakeover ? "; client_no_context_takeover" : "")
        }
        let request = HTTPRequest(method: .get, scheme: nil, authority: host, path: path, headerFields: fields)
        do {
            try HTTPWriter.write(HTTPWriter.head(request), pool: context.bufferPool) { context.passOutbound($0) }
        } catch {
            context.close(.abortive, reason: TCPCloseReason(.resourceExhausted, detail: "no buffer for the upgrade request"))
        }
    }

    public func filterInbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        guard !done else { return }
        var offset = 0
        let outcome = buffer.withUnsafeReadableBytes { bytes in
            Result { () throws(HTTPParseError) -> Bool in
                while let part = try parser.next(bytes, consumed: &offset) {
                    switch part {
                    case .head(let head): accepted = head
                    case .body: break
                    case .end: return true
                    }
                }
                return false
            }
        }
        switch outcome {
        case .failure(let error):
            return refuse("the server's answer is not HTTP: \(error)", context: context)
        case .success(false):
            return  // the answer is not complete yet
        case .success(true):
            break
        }
        guard let head = accepted, WebSocketHandshake.clientAccepts(head, key: key) else {
            let status = accepted.map { "\($0.response.status.code) \($0.response.status.reasonPhrase)" } ?? "no status"
            return refuse("the server did not switch protocols (\(status))", context: context)
        }
        let chosen = head.response.headerFields[.secWebSocketProtocol]
        if let chosen, !subprotocols.contains(chosen) {
            return refuse("the server chose a subprotocol that was not offered (\(chosen))", context: context)
        }
        var compression: WebSocketDeflateParameters?
        let extensions = head.response.headerFields[values: .secWebSocketExtensions]
        if !extensions.isEmpty {
            guard configuration.compression != nil, extensions.count == 1, !extensions[0].contains(","),
                  let agreed = WebSocketDeflateParameters.negotiate(offers: extensions) else {
                return refuse("the server agreed to an extension that was not offered (\(extensions.joined(separator: ", ")))",
                              context: context)
            }
            compression = agreed
        }
        done = true
        guard let handler = handler.take() else { return }
        context.replaceFilter(with: [WebSocketFilter(role: .client, configuration: configuration, subprotocol: chosen,
                                                     compression: compression, handler: handler)])
        buffer.consume(offset)
        if buffer.readableBytes > 0 { context.passInbound(buffer) }  // frames right behind the 101
    }

    private func refuse(_ detail: String, context: TCPFilterContext) {
        done = true
        handler = nil
        context.close(.abortive, reason: TCPCloseReason(.webSocketHandshakeFailed, detail: detail))
    }
}

extension TCPCloseReason.Code {
    /// A WebSocket client's opening handshake failed (the detail names the server's answer).
    public static let webSocketHandshakeFailed = Self("webSocket.handshakeFailed")
}

extension TCPConnectionOptions {
    /// Opens a WebSocket on every connection these options make (a connector's): the upgrade request
    /// for `path` at `host` (above the filters already configured, so over TLS for wss), then a
    /// ``WebSocketFilter`` with a handler from `makeHandler`. The connector's own handler is
    /// ``KeelHTTP/HTTPOnlyConnection``.
    public mutating func connectWebSocket(host: String, path: String = "/", subprotocols: [String] = [],
                                          configuration: WebSocketConfiguration = WebSocketConfiguration(),
                                          makeHandler: @escaping @Sendable () -> any WebSocketHandler) {
        let others = makeFilters
        makeFilters = { setup in
            (others?(setup) ?? []) + [WebSocketClientUpgrader(host: host, path: path, subprotocols: subprotocols,
                                                              configuration: configuration, handler: makeHandler())]
        }
    }
}
