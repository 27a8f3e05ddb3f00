import HTTPTypes
import KeelHTTP
import KeelSockets

/// The HTTP side of a WebSocket server: answers each upgrade request with the opening handshake and
/// hands the connection to a ``WebSocketFilter``; refuses malformed ones (400, or 426 naming version
/// 13) and plain HTTP requests (426 Upgrade Required), closing the connection after a refusal.
struct WebSocketUpgrader: HTTPRequestHandler {
    let configuration: WebSocketConfiguration
    let makeHandler: @Sendable () -> any WebSocketHandler

    mutating func requestReceived(_ head: HTTPRequestHead, responder: HTTPResponder) {}

    mutating func requestEnded(trailers: HTTPFields?, responder: HTTPResponder) {
        guard let head = responder.request else { return }
        do {
            var response = try WebSocketHandshake.serverResponse(to: head, subprotocols: configuration.subprotocols)
            var compression: WebSocketDeflateParameters?
            if let policy = configuration.compression {
                compression = WebSocketDeflateParameters.negotiate(
                    offers: head.request.headerFields[values: .secWebSocketExtensions], serverNoContextTakeover: policy.serverNoContextTakeover)
                if let compression { response.headerFields[.secWebSocketExtensions] = compression.responseValue }
            }
            let filter = WebSocketFilter(role: .server, configuration: configuration, subprotocol: response.headerFields[.secWebSocketProtocol],
                                         compression: compression, handler: makeHandler())
            responder.upgrade(response, to: [filter])
        } catch {
            var fields = error.response.headerFields
            fields[.connection] = "close"
            if head.upgrade.isEmpty { fields[.upgrade] = "websocket" }
            responder.respond(error.response.status, fields: fields, body: Array("\(error.detail)\n".utf8))
        }
    }
}

extension TCPConnectionOptions {
    /// Serves WebSockets on every connection these options open: the HTTP upgrade (on top of the
    /// filters already configured, so over TLS for wss), then a ``WebSocketFilter`` with a handler from
    /// `makeHandler`. The connection's own handler is ``KeelHTTP/HTTPOnlyConnection``.
    public mutating func serveWebSockets(configuration: WebSocketConfiguration = WebSocketConfiguration(),
                                         limits: HTTPParserLimits = HTTPParserLimits(),
                                         makeHandler: @escaping @Sendable () -> any WebSocketHandler) {
        serveHTTP(limits: limits) { WebSocketUpgrader(configuration: configuration, makeHandler: makeHandler) }
    }
}
