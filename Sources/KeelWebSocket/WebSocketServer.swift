import HTTPTypes
import KeelHTTP
import KeelSockets

/// The HTTP side of a WebSocket server: answers each upgrade request with the opening handshake and
/// hands the connection to a ``WebSocketFilter``; refuses malformed ones (400, or 426 naming version
/// 13), plain HTTP requests (426 Upgrade Required) and origins the server's check turns down (403),
/// closing the connection after a refusal.
struct WebSocketUpgrader: HTTPRequestHandler {
    let configuration: WebSocketConfiguration
    let checkOrigin: (@Sendable (String?) -> Bool)?
    let makeHandler: @Sendable () -> any WebSocketHandler

    mutating func requestReceived(_ head: HTTPRequestHead, responder: HTTPResponder) {}

    mutating func requestEnded(trailers: HTTPFields?, responder: HTTPResponder) {
        guard let head = responder.request else { return }
        if let checkOrigin, !head.upgrade.isEmpty, !checkOrigin(head.request.headerFields[.origin]) {
            return responder.respond(.forbidden, fields: [.connection: "close"], body: Array("origin not allowed\n".utf8))
        }
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
    /// - Parameter checkOrigin: decides from the request's `Origin` header (nil when absent: not a
    ///   browser) whether to accept it; a refused upgrade gets 403 Forbidden. Browsers send the page's
    ///   origin, so this is how a server keeps other sites' pages from opening sockets with its users'
    ///   cookies. Nil accepts every origin.
    public mutating func serveWebSockets(configuration: WebSocketConfiguration = WebSocketConfiguration(),
                                         limits: HTTPParserLimits = HTTPParserLimits(),
                                         checkOrigin: (@Sendable (_ origin: String?) -> Bool)? = nil,
                                         makeHandler: @escaping @Sendable () -> any WebSocketHandler) {
        serveHTTP(limits: limits) { WebSocketUpgrader(configuration: configuration, checkOrigin: checkOrigin, makeHandler: makeHandler) }
    }
}
