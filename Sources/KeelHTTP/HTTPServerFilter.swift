import HTTPTypes
import KeelBuffers
import KeelSockets

/// Answers the HTTP requests of one connection, one at a time, in order (a pipelined request waits
/// until the response before it has ended). Made per connection (``TCPConnectionOptions/serveHTTP(limits:makeHandler:)``).
///
/// **Threading:** every method runs on the connection's I/O thread; answer through the responder
/// there, now or later (e.g. after work on the work pool, back on the thread), and end each response.
public protocol HTTPRequestHandler {
    /// A request's head arrived. Its body (if any) and its end follow; the response may start now.
    mutating func requestReceived(_ head: HTTPRequestHead, responder: HTTPResponder)
    /// Bytes of the request's body, valid only during the call (not copied). Optional: by default
    /// the body is read and dropped.
    mutating func requestBodyReceived(_ bytes: UnsafeRawBufferPointer, responder: HTTPResponder)
    /// The request is complete (with the trailer fields of a chunked body, if any). Optional.
    mutating func requestEnded(trailers: HTTPFields?, responder: HTTPResponder)
    /// The connection closed (whatever the reason). Optional.
    mutating func connectionClosed(_ reason: TCPCloseReason)
}

extension HTTPRequestHandler {
    public mutating func requestBodyReceived(_ bytes: UnsafeRawBufferPointer, responder: HTTPResponder) {}
    public mutating func requestEnded(trailers: HTTPFields?, responder: HTTPResponder) {}
    public mutating func connectionClosed(_ reason: TCPCloseReason) {}
}

/// How a handler answers the request in progress: a head, body bytes (streamed: each call goes to the
/// socket), an end. The framing follows from the head: its `Content-Length`, else chunked (HTTP/1.1),
/// else the connection's close (HTTP/1.0). Calls after the response ended, or after the connection
/// closed, are ignored.
public struct HTTPResponder {
    let filter: HTTPServerFilter

    /// The request being answered (nil once its response ended).
    public var request: HTTPRequestHead? { filter.responseEnded ? nil : filter.current }

    /// Sends the response's head. An informational (1xx) head may come first and does not end
    /// anything; use ``upgrade(_:to:)`` for 101.
    public func sendHead(_ response: HTTPResponse) { filter.sendHead(response) }

    /// Sends body bytes (copied into pooled buffers).
    public func sendBody(_ bytes: some Collection<UInt8>) { filter.sendBody(bytes) }

    /// Sends a pooled buffer as body bytes, without copying it.
    public func sendBody(_ buffer: consuming IOBuffer) { filter.sendBody(buffer) }

    /// Ends the response (with trailer fields, for a chunked one). The next pipelined request
    /// follows, or the connection closes if this exchange does not keep it alive.
    public func end(trailers: HTTPFields? = nil) { filter.endResponse(trailers: trailers) }

    /// Answers with a whole response: `status`, `fields`, a `Content-Length` and `body`.
    public func respond(_ status: HTTPResponse.Status, fields: HTTPFields = HTTPFields(), body: some Collection<UInt8> = [UInt8]()) {
        var fields = fields
        fields[.contentLength] = String(body.count)
        sendHead(HTTPResponse(status: status, headerFields: fields))
        if !body.isEmpty { sendBody(body) }
        end()
    }

    /// Switches the connection to another protocol: sends `response` (101 Switching Protocols) and
    /// replaces the HTTP layer with `filters` (bottom first); the bytes after the request go to them.
    public func upgrade(_ response: HTTPResponse, to filters: [any TCPConnectionFilter]) {
        filter.upgrade(response, to: filters)
    }
}

/// The HTTP/1.1 server side of a connection, as a filter (``TCPConnectionOptions/serveHTTP(limits:makeHandler:)``):
/// parses requests, hands them to an ``HTTPRequestHandler``, frames its responses, keeps the
/// connection alive or closes it as the exchange says, answers malformed requests with their status
/// (then closes), and on an upgrade hands the connection to the next protocol's filters.
///
/// The handler above it in the stack (the connection's ``TCPConnectionHandler``) sees nothing while
/// the connection speaks HTTP: its `connectionEstablished` comes once an upgraded protocol passes
/// something up (``HTTPOnlyConnection`` is the handler for servers that never upgrade).
public final class HTTPServerFilter: TCPConnectionFilter {
    private var parser: HTTPRequestParser
    private var handler: (any HTTPRequestHandler)?
    private var context: TCPFilterContext?

    /// The request being answered.
    fileprivate private(set) var current: HTTPRequestHead?

    private enum ResponseFraming {
        case notStarted, none, fixed(remaining: Int), chunked, untilClose
    }

    private var framing = ResponseFraming.notStarted
    /// The current response has ended (true between requests).
    fileprivate private(set) var responseEnded = true
    /// The current request has arrived whole.
    private var requestComplete = false
    /// The connection closes once the current response ends.
    private var closeAfterResponse = false
    private var upgraded = false
    /// A parse loop is running (a response ended inside it continues the loop, not a new one).
    private var processing = false
    /// Bytes of later requests, held while a response is in progress.
    private var stash: [DetachedBuffer] = []
    private var stashedBytes = 0
    private var pausedForStash = false
    /// The handler is running (taken out of ``handler``) and where its close callback waits.
    private var handlerBusy = false
    private var closedWhileBusy: TCPCloseReason?

    /// A filter answering with `handler`, under `limits`.
    public init(limits: HTTPParserLimits = HTTPParserLimits(), handler: any HTTPRequestHandler) {
        parser = HTTPRequestParser(limits: limits)
        self.handler = handler
    }

    public func connectionEstablished(context: TCPFilterContext) {
        self.context = context  // `established` is held: HTTP is not the handler's protocol
    }

    public func filterAdded(context: TCPFilterContext) {
        self.context = context
    }

    public func filterInbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        self.context = context
        if processing || !stash.isEmpty || waitingForResponse {
            return hold(buffer, context: context)
        }
        process(buffer, context: context)
    }

    /// A complete request whose response has not ended: later bytes wait.
    private var waitingForResponse: Bool { requestComplete && !responseEnded }

    private func hold(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        stashedBytes += buffer.readableBytes
        stash.append(buffer.detach())
        if stashedBytes > Self.stashLimit && !pausedForStash {
            pausedForStash = true
            context.connection.pauseReading()
        }
    }

    /// Pipelined bytes held beyond this pause reading until the responses catch up.
    private static let stashLimit = 64 * 1024

    /// Parses `buffer`, delivering parts to the handler, until it is used up, a response must end
    /// first (the rest is held), the connection closes or the protocol changes.
    private func process(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        processing = true
        defer { processing = false }
        var offset = 0
        let outcome: Result<Void, HTTPParseError> = buffer.withUnsafeReadableBytes { bytes in
            do throws(HTTPParseError) {
                while !upgraded && !context.isDetached, !waitingForResponse,
                      let part = try parser.next(bytes, consumed: &offset) {
                    deliver(part, bytes: bytes)
                }
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        if case .failure(let error) = outcome { return refuse(error) }
        buffer.consume(offset)
        guard buffer.readableBytes > 0 else { return }
        if upgraded {
            context.passInbound(buffer)  // the next protocol's bytes, to the filters that replaced this one
        } else if !context.isDetached {
            hold(buffer, context: context)
        }
    }

    /// Runs `body` on the handler, taken out of the filter meanwhile: what the handler does may close
    /// the connection (its close callback then waits until `body` returns) or replace the filter.
    private func withHandler(_ body: (inout any HTTPRequestHandler) -> Void) {
        guard var taken = handler else { return }
        handler = nil
        handlerBusy = true
        body(&taken)
        handlerBusy = false
        if let reason = closedWhileBusy {
            taken.connectionClosed(reason)
        } else if !upgraded {
            handler = taken
        }
    }

    private func deliver(_ part: HTTPRequestPart, bytes: UnsafeRawBufferPointer) {
        let responder = HTTPResponder(filter: self)
        switch part {
        case .head(let head):
            current = head
            requestComplete = false
            responseEnded = false
            framing = .notStarted
            closeAfterResponse = !head.keepAlive
            if head.request.headerFields[.expect]?.lowercased() == "100-continue", head.bodyFraming != .none {
                write(HTTPWriter.head(HTTPResponse(status: .continue)))
            }
            withHandler { $0.requestReceived(head, responder: responder) }
        case .body(let range):
            withHandler { $0.requestBodyReceived(UnsafeRawBufferPointer(rebasing: bytes[range]), responder: responder) }
        case .end(let trailers):
            requestComplete = true
            withHandler { $0.requestEnded(trailers: trailers, responder: responder) }
        }
    }

    /// A request that cannot be parsed: its status (when no response has started), then the close.
    private func refuse(_ error: HTTPParseError) {
        guard let context, !context.isDetached else { return }
        if case .notStarted = framing {
            var fields = HTTPFields()
            fields[.contentType] = "text/plain; charset=utf-8"
            fields[.connection] = "close"
            let body = Array("\(error.code.status.code) \(error.code.status.reasonPhrase): \(error.detail)\n".utf8)
            fields[.contentLength] = String(body.count)
            write(HTTPWriter.head(HTTPResponse(status: error.code.status, headerFields: fields)) + body)
        }
        responseEnded = true
        context.close(.graceful, reason: TCPCloseReason(.httpBadRequest, detail: error.description))
    }

    /// Continues with held bytes once a response ended outside the parse loop.
    private func drainStash() {
        guard let context, !processing else { return }
        while !stash.isEmpty && !waitingForResponse && !upgraded && !context.isDetached {
            let next = stash.removeFirst().reattach()
            stashedBytes -= next.readableBytes
            let heldBefore = stash.count
            process(next, context: context)
            if stash.count > heldBefore {
                // process() held the part of `next` it did not use, at the end: it goes before the rest.
                stash.insert(stash.removeLast(), at: 0)
            }
        }
        if pausedForStash && stashedBytes <= Self.stashLimit / 2 {
            pausedForStash = false
            context.connection.resumeReading()
        }
    }

    // MARK: Responses

    fileprivate func sendHead(_ response: HTTPResponse) {
        guard let current, !responseEnded, case .notStarted = framing else { return }
        if response.status.kind == .informational {
            guard response.status.code != 101 else { return }  // upgrade(_:to:) sends 101
            return write(HTTPWriter.head(response))
        }
        var response = response
        let hasNoBody = current.request.method == .head || response.status.code == 204 || response.status.code == 304
        if hasNoBody {
            framing = .none
        } else if let length = response.headerFields[.contentLength].flatMap({ Int($0) }), length >= 0 {
            framing = .fixed(remaining: length)
        } else if current.version == .http1_1 {
            response.headerFields[.transferEncoding] = "chunked"
            framing = .chunked
        } else {
            framing = .untilClose
            closeAfterResponse = true
        }
        if HTTPMessageReader.tokens(response.headerFields[values: .connection]).contains("close") { closeAfterResponse = true }
        if closeAfterResponse {
            response.headerFields[.connection] = "close"
        } else if current.version == .http1_0 {
            response.headerFields[.connection] = "keep-alive"
        }
        write(HTTPWriter.head(response, version: .http1_1))
    }

    fileprivate func sendBody(_ bytes: some Collection<UInt8>) {
        guard let context, !bytes.isEmpty, beginBody(count: bytes.count) else { return }
        do {
            try HTTPWriter.write(bytes, pool: context.bufferPool) { context.passOutbound($0) }
        } catch {
            context.close(.abortive, reason: TCPCloseReason(.resourceExhausted, detail: "no buffer for a response body"))
        }
        endBodyPiece()
    }

    fileprivate func sendBody(_ buffer: consuming IOBuffer) {
        guard let context, buffer.readableBytes > 0, beginBody(count: buffer.readableBytes) else { return }
        context.passOutbound(buffer)
        endBodyPiece()
    }

    /// Checks `count` more body bytes against the framing and writes a chunk's header.
    private func beginBody(count: Int) -> Bool {
        guard !responseEnded else { return false }
        switch framing {
        case .notStarted, .none:
            return false
        case .fixed(let remaining):
            guard count <= remaining else {
                context?.close(.abortive, reason: TCPCloseReason(.httpBadResponse, detail: "body bytes beyond the Content-Length"))
                return false
            }
            framing = .fixed(remaining: remaining - count)
        case .chunked:
            write(HTTPWriter.chunkHeader(size: count))
        case .untilClose:
            break
        }
        return true
    }

    private func endBodyPiece() {
        if case .chunked = framing { write(HTTPWriter.chunkEnd) }
    }

    fileprivate func endResponse(trailers: HTTPFields?) {
        guard let context, !responseEnded, !context.isDetached else { return }
        switch framing {
        case .notStarted:
            return  // a response needs a head first
        case .fixed(let remaining) where remaining > 0:
            return context.close(.abortive, reason: TCPCloseReason(.httpBadResponse, detail: "the body ended \(remaining) bytes short of its Content-Length"))
        case .chunked:
            if let trailers, !trailers.isEmpty {
                var bytes = Array("0\r\n".utf8)
                for field in trailers { bytes += Array("\(field.name.rawName): \(field.value)\r\n".utf8) }
                write(bytes + [.cr, .lf])
            } else {
                write(HTTPWriter.lastChunk)
            }
        default:
            break
        }
        responseEnded = true
        framing = .notStarted
        if closeAfterResponse {
            return context.close(.graceful, reason: .local)
        }
        if requestComplete { drainStash() }
    }

    fileprivate func upgrade(_ response: HTTPResponse, to filters: [any TCPConnectionFilter]) {
        guard let context, current != nil, !responseEnded, case .notStarted = framing else { return }
        write(HTTPWriter.head(response))
        responseEnded = true
        upgraded = true
        context.replaceFilter(with: filters)
        // Bytes that arrived behind the request belong to the new protocol.
        let held = stash
        stash.removeAll()
        stashedBytes = 0
        for buffer in held { context.passInbound(buffer.reattach()) }
        if pausedForStash {
            pausedForStash = false
            context.connection.resumeReading()
        }
    }

    private func write(_ bytes: [UInt8]) {
        guard let context else { return }
        do {
            try HTTPWriter.write(bytes, pool: context.bufferPool) { context.passOutbound($0) }
        } catch {
            context.close(.abortive, reason: TCPCloseReason(.resourceExhausted, detail: "no buffer for a response head"))
        }
    }

    // MARK: Connection events

    public func peerHalfClosed(context: TCPFilterContext) {
        if upgraded { return context.passPeerHalfClosed() }
        if parser.isIdle && responseEnded && stash.isEmpty {
            context.close(.graceful, reason: .peerClosed)  // between requests: a clean end
        } else if waitingForResponse {
            closeAfterResponse = true  // answer the request, then close
        } else {
            context.close(.graceful, reason: TCPCloseReason(.httpBadRequest, detail: "the peer ended in the middle of a request"))
        }
    }

    public func connectionClosed(_ reason: TCPCloseReason, context: TCPFilterContext) {
        for buffer in stash { buffer.release() }
        stash.removeAll()
        if handlerBusy {
            closedWhileBusy = reason  // told once its current call returns
        } else {
            handler?.connectionClosed(reason)
        }
        handler = nil  // it may hold a responder, which holds this filter
        self.context = nil
    }

    public func filterRemoved(context: TCPFilterContext) {
        if !upgraded {
            for buffer in stash { buffer.release() }
            stash.removeAll()
        }
        handler = nil
    }
}

extension TCPCloseReason.Code {
    /// The peer's request could not be parsed (the detail says why; it was answered with its status).
    public static let httpBadRequest = Self("http.badRequest")
    /// The handler's response broke its own framing (more or fewer body bytes than its Content-Length).
    public static let httpBadResponse = Self("http.badResponse")
}

/// The connection handler of a server that only speaks HTTP (its requests go to the
/// ``HTTPRequestHandler``s made by ``TCPConnectionOptions/serveHTTP(limits:makeHandler:)``): it never
/// sees bytes.
public struct HTTPOnlyConnection: TCPConnectionHandler {
    /// A handler for one connection.
    public init() {}

    public mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {}
}

extension TCPConnectionOptions {
    /// Serves HTTP/1.1 on every connection these options open: an ``HTTPServerFilter`` with a handler
    /// from `makeHandler` goes on top of the filters already configured (above TLS, for HTTPS).
    public mutating func serveHTTP(limits: HTTPParserLimits = HTTPParserLimits(),
                                   makeHandler: @escaping @Sendable () -> any HTTPRequestHandler) {
        let others = makeFilters
        makeFilters = { setup in (others?(setup) ?? []) + [HTTPServerFilter(limits: limits, handler: makeHandler())] }
    }
}
