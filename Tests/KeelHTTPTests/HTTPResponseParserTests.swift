import HTTPTypes
import KeelHTTP
import Testing

// The HTTP/1.1 response parser in memory: whole, at every split point, with the request methods that
// change a response's framing, and the responses it must refuse.

extension HTTPResponseHead {
    var summary: String {
        let fields = response.headerFields.map { "\($0.name.rawName)=\($0.value)" }.joined(separator: ",")
        return "\(response.status.code) \(response.status.reasonPhrase) \(version) keepAlive=\(keepAlive) \(bodyFraming) [\(fields)]"
    }
}

/// Parses `bytes` fed in pieces cut at `cuts`, each response answering the next of `methods`
/// (GET once they run out), then tells the parser the connection ended when `closes`.
func parseResponses(_ bytes: [UInt8], cuts: [Int] = [], methods: [HTTPRequest.Method] = [], closes: Bool = false) -> [Parsed] {
    var parser = HTTPResponseParser(limits: HTTPParserLimits(maximumBodySize: 4096))
    var results: [Parsed] = []
    var answered = 0
    let bounds = [0] + cuts.filter { $0 > 0 && $0 < bytes.count } + [bytes.count]
    func record(_ part: HTTPResponsePart, _ input: UnsafeRawBufferPointer) {
        switch part {
        case .head(let head): results.append(.head(head.summary))
        case .body(let range):
            let text = String(decoding: input[range], as: UTF8.self)
            if case .body(let previous) = results.last { results[results.count - 1] = .body(previous + text) } else { results.append(.body(text)) }
        case .end(let trailers):
            answered += 1
            results.append(.end(trailers.map { $0.map { "\($0.name.rawName)=\($0.value)" }.joined(separator: ",") } ?? "-"))
        }
    }
    for (start, end) in zip(bounds, bounds.dropFirst()) {
        let piece = Array(bytes[start..<end])
        let failed = piece.withUnsafeBytes { input -> Bool in
            var offset = 0
            do throws(HTTPParseError) {
                while let part = try parser.next(input, consumed: &offset, answering: answered < methods.count ? methods[answered] : .get) {
                    record(part, input)
                }
                return false
            } catch {
                results.append(.error(error.code.status.code))
                return true
            }
        }
        if failed { return results }
    }
    if closes {
        do throws(HTTPParseError) {
            if let part = try parser.finish() { record(part, UnsafeRawBufferPointer(start: nil, count: 0)) }
        } catch {
            results.append(.error(error.code.status.code))
        }
    }
    return results
}

@Suite("HTTP response parser")
struct HTTPResponseParserTests {
    static let exchange = bytes(
        "HTTP/1.1 100 Continue\r\n\r\n"
            + "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
            + "HTTP/1.1 204 No Content\r\n\r\n"
            + "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n"  // answers a HEAD: no body despite the length
            + "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nDigest: x\r\n\r\n"
            + "HTTP/1.0 200 OK\r\n\r\nuntil the end")

    static let expected: [Parsed] = [
        .head("100 Continue HTTP/1.1 keepAlive=true none []"), .end("-"),
        .head("200 OK HTTP/1.1 keepAlive=true contentLength(5) [Content-Length=5]"), .body("hello"), .end("-"),
        .head("204 No Content HTTP/1.1 keepAlive=true none []"), .end("-"),
        .head("200 OK HTTP/1.1 keepAlive=true none [Content-Length=42]"), .end("-"),
        .head("201 Created HTTP/1.1 keepAlive=true chunked [Transfer-Encoding=chunked]"), .body("abc"), .end("Digest=x"),
        .head("200 OK HTTP/1.0 keepAlive=false untilClose []"), .body("until the end"), .end("-"),
    ]

    static let methods: [HTTPRequest.Method] = [.post, .post, .delete, .head, .put, .get]

    @Test func anExchangeParsesWholeAndAtEverySplit() {
        #expect(parseResponses(Self.exchange, methods: Self.methods, closes: true) == Self.expected)
        for cut in 0...Self.exchange.count {
            #expect(parseResponses(Self.exchange, cuts: [cut], methods: Self.methods, closes: true) == Self.expected, "cut at \(cut)")
        }
    }

    @Test func aResponseCutShortIsAnError() {
        #expect(parseResponses(bytes("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"), closes: true).last == .error(400))
        #expect(parseResponses(bytes("HTTP/1.1 200 OK\r\nContent-Le"), closes: true).last == .error(400))
        #expect(parseResponses(bytes(""), closes: true).isEmpty, "no response in progress: a clean end")
    }

    @Test(arguments: [
        ("a malformed status line", "HTTP/1.1 2000 OK\r\n\r\n", 400),
        ("no space after the code", "HTTP/1.1 200OK\r\n\r\n", 400),
        ("HTTP/2", "HTTP/2.0 200 OK\r\n\r\n", 505),
        ("HTTP/1.2", "HTTP/1.2 200 OK\r\n\r\n", 505),
        ("differing lengths", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        ("a length over the limit", "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", 413),
        ("obsolete folding", "HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n", 400),
    ])
    func badResponsesAreRefused(name: String, text: String, status: Int) {
        #expect(parseResponses(bytes(text)).last == .error(status), "\(name)")
    }

    @Test func aSwitchingProtocolsResponseEndsAtItsHeadAndLeavesTheRest() throws {
        let input = bytes("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n") + [0x81, 0x02, 0x68, 0x69]
        var parser = HTTPResponseParser()
        var offset = 0
        var parts: [HTTPResponsePart] = []
        try input.withUnsafeBytes { raw in
            while let part = try parser.next(raw, consumed: &offset) {
                parts.append(part)
                if case .end = part { break }
            }
        }
        #expect(parts.count == 2)
        #expect(offset == input.count - 4, "the frame after the head is not the parser's")
    }

    @Test func writtenHeadsParseBack() {
        var fields = HTTPFields()
        fields[.contentLength] = "2"
        let head = HTTPWriter.head(HTTPResponse(status: .ok, headerFields: fields)) + bytes("ok")
        #expect(parseResponses(head) == [.head("200 OK HTTP/1.1 keepAlive=true contentLength(2) [Content-Length=2]"), .body("ok"), .end("-")])
    }
}
