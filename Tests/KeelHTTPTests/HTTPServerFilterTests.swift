import HTTPTypes
import KeelBuffers
import KeelHTTP
import KeelSockets
import KeelTestSupport
import Testing

// The HTTP server filter in memory: a real connection with the filter on an embedded thread, requests
// fed whole, pipelined and split at every point; responses compared byte for byte. No sockets.

/// Responses a test answers later, from outside the handler.
final class LaterResponses: @unchecked Sendable {
    // @unchecked Sendable: an embedded connection runs on the test's thread only.
    var waiting: [HTTPResponder] = []
}

/// Routes: GET /hello answers "hello"; POST /echo streams the body back chunked; GET /later waits
/// for the test; GET /upgrade switches to a line protocol (upper-casing what it receives).
struct TestRoutes: HTTPRequestHandler {
    let log: Collector<String>
    let later: LaterResponses

    mutating func requestReceived(_ head: HTTPRequestHead, responder: HTTPResponder) {
        log.add("\(head.request.method.rawValue) \(head.request.path ?? "-")")
        if head.request.path == "/echo" {
            var fields = HTTPFields()
            fields[.contentType] = "application/octet-stream"
            responder.sendHead(HTTPResponse(status: .ok, headerFields: fields))
        }
    }

    mutating func requestBodyReceived(_ bytes: UnsafeRawBufferPointer, responder: HTTPResponder) {
        if responder.request?.request.path == "/echo" { responder.sendBody(Array(bytes)) }
    }

    mutating func requestEnded(trailers: HTTPFields?, responder: HTTPResponder) {
        switch responder.request?.request.path {
        case "/echo":
            responder.end()
        case "/later":
            later.waiting.append(responder)
        case "/upgrade":
            var fields = HTTPFields()
            fields[.upgrade] = "shout"
            fields[.connection] = "Upgrade"
            responder.upgrade(HTTPResponse(status: .switchingProtocols, headerFields: fields), to: [ShoutFilter()])
        case "/stream":
            responder.sendHead(HTTPResponse(status: .ok))
            responder.sendBody(Array("streamed".utf8))
            responder.end()
        default:
            responder.respond(.ok, body: Array("hello".utf8))
        }
    }

    mutating func connectionClosed(_ reason: TCPCloseReason) {
        log.add("closed \(reason.code)")
    }
}

/// The protocol after an upgrade: upper-cases what arrives and passes it up.
final class ShoutFilter: TCPConnectionFilter {
    func filterInbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        buffer.withUnsafeMutableReadableBytes { bytes in
            for i in bytes.indices where bytes[i] >= 0x61 && bytes[i] <= 0x7A { bytes[i] -= 0x20 }
        }
        context.passInbound(buffer)
    }
}

/// The connection's handler above the HTTP layer: echoes what reaches it (only after an upgrade).
struct AfterUpgradeEcho: TCPConnectionHandler {
    let log: Collector<String>
    mutating func connectionEstablished(_ connection: TCPConnection) { log.add("upgraded") }
    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        connection.write(buffer)
    }
}

final class HTTPServerHarness {
    let log = Collector<String>()
    let later = LaterResponses()
    let connection: EmbeddedConnection<AfterUpgradeEcho>

    init(limits: HTTPParserLimits = HTTPParserLimits()) {
        var options = TCPConnectionOptions()
        let log = log
        let later = later
        options.serveHTTP(limits: limits) { TestRoutes(log: log, later: later) }
        connection = EmbeddedConnection(handler: AfterUpgradeEcho(log: log), options: options)
    }
}

@Suite("HTTP server filter")
struct HTTPServerFilterTests {
    static let pipelined = "GET /hello HTTP/1.1\r\nHost: a\r\n\r\n"
        + "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabcdef"
        + "GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"

    static let answers = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        + "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n0\r\n\r\n"
        + "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"

    @Test func pipelinedRequestsAreAnsweredInOrderAndCloseEndsTheConnection() {
        let harness = HTTPServerHarness()
        harness.connection.receive(Self.pipelined)
        #expect(harness.connection.takeWrittenString() == Self.answers)
        #expect(harness.connection.peerSawEndOfStream)
        #expect(harness.connection.closeReason?.code == .local)
        #expect(harness.log.snapshot == ["GET /hello", "POST /echo", "GET /hello", "closed local"])
        #expect(harness.connection.finish().isClean)
    }

    @Test func everySplitGivesTheSameAnswers() {
        let input = Array(Self.pipelined.utf8)
        // A body split in two is echoed as two chunks: compare what the responses say, as a client reads them.
        let expected = parseResponses(Array(Self.answers.utf8))
        #expect(expected.count == 9)
        for cut in 1..<input.count {
            let harness = HTTPServerHarness()
            harness.connection.receive(chunks: [Array(input[..<cut]), Array(input[cut...])])
            #expect(parseResponses(harness.connection.takeWritten()) == expected, "cut at \(cut)")
            #expect(harness.connection.finish().isClean, "cut at \(cut)")
        }
    }

    @Test func aLaterResponseHoldsThePipelinedRequestBehindIt() {
        let harness = HTTPServerHarness()
        harness.connection.receive("GET /later HTTP/1.1\r\nHost: a\r\n\r\nGET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(harness.connection.takeWrittenString().isEmpty)
        #expect(harness.log.snapshot == ["GET /later"], "the second request waits for the first's response")
        harness.connection.withConnection { _ in harness.later.waiting.removeFirst().respond(.accepted, body: Array("done".utf8)) }
        #expect(harness.connection.takeWrittenString()
                == "HTTP/1.1 202 Accepted\r\nContent-Length: 4\r\n\r\ndone" + "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        #expect(!harness.connection.isClosed, "keep-alive")
        harness.connection.peerHalfCloses()
        #expect(harness.connection.closeReason?.code == .peerClosed)
        #expect(harness.connection.finish().isClean)
    }

    @Test func requestsHeldInManyPiecesKeepTheirOrder() {
        let harness = HTTPServerHarness()
        harness.connection.receive("GET /later HTTP/1.1\r\nHost: a\r\n\r\n")
        // Three more segments arrive while the first response is pending: a whole request, then one in two pieces.
        harness.connection.receive(chunks: [Array("GET /later HTTP/1.1\r\nHost: a\r\n\r\n".utf8), Array("GET /hello HTTP/1.1\r\n".utf8),
                                            Array("Host: a\r\n\r\n".utf8)])
        harness.connection.withConnection { _ in harness.later.waiting.removeFirst().respond(.ok, body: Array("1".utf8)) }
        harness.connection.withConnection { _ in harness.later.waiting.removeFirst().respond(.ok, body: Array("2".utf8)) }
        #expect(harness.connection.takeWrittenString()
                == "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1" + "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"
                + "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        #expect(harness.log.snapshot == ["GET /later", "GET /later", "GET /hello"])
        #expect(harness.connection.finish().isClean)
    }

    @Test func aMalformedRequestGetsItsStatusAndTheConnectionCloses() {
        let harness = HTTPServerHarness()
        harness.connection.receive("GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
        let written = harness.connection.takeWrittenString()
        #expect(written.hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        #expect(written.contains("Connection: close\r\n"))
        #expect(harness.connection.peerSawEndOfStream)
        #expect(harness.connection.closeReason?.code == .httpBadRequest)
        #expect(harness.connection.finish().isClean)
    }

    @Test func aRequestOverTheLimitsGetsItsStatus() {
        let harness = HTTPServerHarness(limits: HTTPParserLimits(maximumBodySize: 10))
        harness.connection.receive("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n")
        #expect(harness.connection.takeWrittenString().hasPrefix("HTTP/1.1 413 Content Too Large\r\n"))
        #expect(harness.connection.isClosed)
        #expect(harness.connection.finish().isClean)
    }

    @Test func http10AndHeadAndStreamedResponsesAreFramedRight() {
        let harness = HTTPServerHarness()
        harness.connection.receive("HEAD /hello HTTP/1.1\r\nHost: a\r\n\r\nGET /stream HTTP/1.0\r\n\r\n")
        #expect(harness.connection.takeWrittenString()
                == "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"  // no body for HEAD
                + "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nstreamed")  // HTTP/1.0, no length: until the close
        #expect(harness.connection.peerSawEndOfStream)
        #expect(harness.connection.finish().isClean)
    }

    @Test func anHTTP10ClientAskingForKeepAliveKeepsItsConnection() {
        let harness = HTTPServerHarness()
        harness.connection.receive("GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        #expect(harness.connection.takeWrittenString() == "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello")
        #expect(!harness.connection.isClosed)
        #expect(harness.connection.finish().isClean)
    }

    @Test func expectContinueIsAnswered() {
        let harness = HTTPServerHarness()
        harness.connection.receive("POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        #expect(harness.connection.takeWrittenString().hasPrefix("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"))
        harness.connection.receive("hi")
        #expect(harness.connection.takeWrittenString() == "2\r\nhi\r\n0\r\n\r\n")
        #expect(harness.connection.finish().isClean)
    }

    @Test func anUpgradeHandsTheRestOfTheStreamToTheNextProtocol() {
        let harness = HTTPServerHarness()
        harness.connection.receive("GET /upgrade HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: shout\r\n\r\nhello after")
        #expect(harness.connection.takeWrittenString()
                == "HTTP/1.1 101 Switching Protocols\r\nUpgrade: shout\r\nConnection: Upgrade\r\n\r\nHELLO AFTER")
        #expect(harness.log.snapshot == ["GET /upgrade", "upgraded"])
        harness.connection.receive("more")
        #expect(harness.connection.takeWrittenString() == "MORE")
        #expect(harness.connection.finish().isClean)
    }

    @Test func aPeerThatEndsMidRequestIsClosedAndOneThatEndsBetweenRequestsCleanly() {
        let cut = HTTPServerHarness()
        cut.connection.receive("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        cut.connection.peerHalfCloses()
        #expect(cut.connection.closeReason?.code == .httpBadRequest)
        #expect(cut.connection.finish().isClean)

        let clean = HTTPServerHarness()
        clean.connection.receive("GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
        clean.connection.peerHalfCloses()
        #expect(clean.connection.takeWrittenString() == "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        #expect(clean.connection.closeReason?.code == .peerClosed)
        #expect(clean.connection.finish().isClean)
    }

    @Test func aRequestWhoseAnswerIsPendingIsAnsweredBeforeAHalfCloseEndsTheConnection() {
        let harness = HTTPServerHarness()
        harness.connection.receive("GET /later HTTP/1.1\r\nHost: a\r\n\r\n")
        harness.connection.peerHalfCloses()
        #expect(!harness.connection.isClosed)
        harness.connection.withConnection { _ in harness.later.waiting.removeFirst().respond(.ok, body: Array("late".utf8)) }
        #expect(harness.connection.takeWrittenString() == "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nlate")
        #expect(harness.connection.isClosed)
        #expect(harness.connection.finish().isClean)
    }
}
