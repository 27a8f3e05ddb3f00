import HTTPTypes
import KeelHTTP
import Testing

// The HTTP/1.1 request parser in memory: whole inputs, every split point, byte by byte, and the
// inputs it must refuse with the right status. No sockets.

/// What a parse produced, in a form tests compare.
enum Parsed: Equatable, CustomStringConvertible {
    case head(String)
    case body(String)
    case end(String)
    case error(Int)

    var description: String {
        switch self {
        case .head(let text): "head \(text)"
        case .body(let text): "body \(text)"
        case .end(let text): "end \(text)"
        case .error(let code): "error \(code)"
        }
    }
}

extension HTTPRequestHead {
    /// A one-line summary: method, scheme, authority, path, version, keep-alive, framing, upgrade, fields.
    var summary: String {
        let fields = request.headerFields.map { "\($0.name.rawName)=\($0.value)" }.joined(separator: ",")
        return "\(request.method.rawValue) \(request.scheme ?? "-") \(request.authority ?? "-") \(request.path ?? "-") \(version)"
            + " keepAlive=\(keepAlive) \(bodyFraming) upgrade=\(upgrade) [\(fields)]"
    }
}

/// Parses `bytes` fed in pieces cut at `cuts` (offsets), merging adjacent body pieces.
func parse(_ bytes: [UInt8], cuts: [Int] = [], limits: HTTPParserLimits = HTTPParserLimits()) -> [Parsed] {
    var parser = HTTPRequestParser(limits: limits)
    var results: [Parsed] = []
    let bounds = [0] + cuts.filter { $0 > 0 && $0 < bytes.count } + [bytes.count]
    for (start, end) in zip(bounds, bounds.dropFirst()) {
        let piece = Array(bytes[start..<end])
        let failed = piece.withUnsafeBytes { input -> Bool in
            var offset = 0
            do throws(HTTPParseError) {
                while let part = try parser.next(input, consumed: &offset) {
                    switch part {
                    case .head(let head): results.append(.head(head.summary))
                    case .body(let range):
                        let text = String(decoding: input[range], as: UTF8.self)
                        if case .body(let previous) = results.last {
                            results[results.count - 1] = .body(previous + text)
                        } else {
                            results.append(.body(text))
                        }
                    case .end(let trailers):
                        results.append(.end(trailers.map { $0.map { "\($0.name.rawName)=\($0.value)" }.joined(separator: ",") } ?? "-"))
                    }
                }
                #expect(offset == input.count, "the parser consumed every byte it was given")
                return false
            } catch {
                results.append(.error(error.code.status.code))
                return true
            }
        }
        if failed { break }
    }
    return results
}

func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

@Suite("HTTP request parser")
struct HTTPRequestParserTests {
    /// Four pipelined requests: a GET, a POST with a length, a chunked POST with extensions and
    /// trailers, an HTTP/1.0 request.
    static let pipeline = bytes(
        "GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"
            + "POST /submit HTTP/1.1\r\nHost: example.com\r\nContent-Length: 11\r\n\r\nhello world"
            + "POST /chunks HTTP/1.1\r\nhost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "5;name=value\r\nhello\r\n1\r\n \r\n6\r\nchunks\r\n0\r\nChecksum: abc\r\n\r\n"
            + "GET / HTTP/1.0\r\n\r\n")

    static let expected: [Parsed] = [
        .head("GET - example.com /index.html?q=1 HTTP/1.1 keepAlive=true none upgrade=[] [Accept=*/*]"),
        .end("-"),
        .head("POST - example.com /submit HTTP/1.1 keepAlive=true contentLength(11) upgrade=[] [Content-Length=11]"),
        .body("hello world"),
        .end("-"),
        .head("POST - example.com /chunks HTTP/1.1 keepAlive=true chunked upgrade=[] [Transfer-Encoding=chunked]"),
        .body("hello chunks"),
        .end("Checksum=abc"),
        .head("GET - - / HTTP/1.0 keepAlive=false none upgrade=[] []"),
        .end("-"),
    ]

    @Test func pipelinedRequestsParseWhole() {
        #expect(parse(Self.pipeline) == Self.expected)
    }

    @Test func everySplitPointGivesTheSameParts() {
        for cut in 0...Self.pipeline.count {
            #expect(parse(Self.pipeline, cuts: [cut]) == Self.expected, "cut at \(cut)")
        }
    }

    @Test func byteByByteGivesTheSameParts() {
        #expect(parse(Self.pipeline, cuts: Array(1..<Self.pipeline.count)) == Self.expected)
    }

    @Test func emptyLinesBeforeARequestAreIgnoredEvenWhenSplit() {
        let input = bytes("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        for cut in 0...input.count {
            #expect(parse(input, cuts: [cut]).first == .head("GET - a / HTTP/1.1 keepAlive=true none upgrade=[] []"), "cut at \(cut)")
        }
    }

    @Test func targetFormsAndKeepAlive() {
        #expect(parse(bytes("GET http://Example.com:8080/a?b HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n")).first
                == .head("GET http Example.com:8080 /a?b HTTP/1.1 keepAlive=false none upgrade=[] [Connection=close]"))
        #expect(parse(bytes("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")).first
                == .head("CONNECT - example.com:443 - HTTP/1.1 keepAlive=true none upgrade=[] []"))
        #expect(parse(bytes("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")).first
                == .head("OPTIONS - a * HTTP/1.1 keepAlive=true none upgrade=[] []"))
        #expect(parse(bytes("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")).first
                == .head("GET - - / HTTP/1.0 keepAlive=true none upgrade=[] [Connection=Keep-Alive]"))
    }

    @Test func anUpgradeRequestNamesItsProtocolsAndTheRestOfTheStreamIsLeftAlone() throws {
        let input = bytes("GET /chat HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n")
            + [0x81, 0x85, 1, 2, 3, 4]  // a WebSocket frame right behind the request
        var parser = HTTPRequestParser()
        var offset = 0
        var upgrade: [String] = []
        try input.withUnsafeBytes { raw in
            while let part = try parser.next(raw, consumed: &offset) {
                if case .head(let head) = part { upgrade = head.upgrade }
                if case .end = part { break }  // the server switches protocols here
            }
        }
        #expect(upgrade == ["websocket"])
        #expect(offset == input.count - 6, "the frame's bytes are not the parser's")
    }

    static let refused: [(String, String, Int)] = [
        ("a bare LF", "GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
        ("a bare CR", "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400),
        ("whitespace before the colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        ("obsolete line folding", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400),
        ("no Host in HTTP/1.1", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
        ("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("a control character in a value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\u{1}b\r\n\r\n", 400),
        ("a method that is not a token", "GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("two spaces in the request line", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("a target in no known form", "GET index.html HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("the asterisk form outside OPTIONS", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("a malformed version", "GET / HTTP/1.1x\r\nHost: a\r\n\r\n", 400),
        ("HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        ("HTTP/0.9-style", "GET /\r\n\r\n", 400),
        ("Transfer-Encoding with Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400),
        ("differing Content-Lengths", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
        ("a Content-Length that is not a number", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400),
        ("gzip before chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        ("chunked not last", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        ("chunked twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
        ("Transfer-Encoding in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("a chunk size that is not hexadecimal", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        ("chunk data longer than its size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n", 400),
        ("a Content-Length over the limit", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n", 413),
        ("a huge Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413),
        ("chunks over the limit", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + String(repeating: "x", count: 1000) + "\r\n3e8\r\n", 413),
        ("a request line over the limit", "GET /" + String(repeating: "a", count: 300) + " HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        ("too many fields", "GET / HTTP/1.1\r\nHost: a\r\n" + String(repeating: "X: y\r\n", count: 20) + "\r\n", 431),
        ("a head over the limit", "GET / HTTP/1.1\r\nHost: a\r\nX: " + String(repeating: "y", count: 2000) + "\r\n\r\n", 431),
        ("too many trailer fields", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + String(repeating: "X: y\r\n", count: 20) + "\r\n", 431),
    ]

    static let smallLimits = HTTPParserLimits(maximumRequestLineLength: 256, maximumHeaderCount: 16, maximumHeadSize: 1024,
                                              maximumBodySize: 1500)

    @Test(arguments: refused)
    func badRequestsAreRefusedWithTheirStatusAtEverySplit(name: String, text: String, status: Int) {
        let input = bytes(text)
        #expect(parse(input, limits: Self.smallLimits).last == .error(status), "\(name), whole")
        for cut in stride(from: 1, to: input.count, by: max(1, input.count / 40)) {
            #expect(parse(input, cuts: [cut], limits: Self.smallLimits).last == .error(status), "\(name), cut at \(cut)")
        }
    }

    @Test func anErrorIsFinal() {
        var parser = HTTPRequestParser()
        var offset = 0
        let bad = bytes("GET / HTTP/3.0\r\nHost: a\r\n\r\n")
        let good = bytes("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        bad.withUnsafeBytes { input -> Void in
            #expect(throws: HTTPParseError.self) { _ = try parser.next(input, consumed: &offset) }
        }
        offset = 0
        good.withUnsafeBytes { input -> Void in
            #expect { _ = try parser.next(input, consumed: &offset) } throws: { ($0 as? HTTPParseError)?.code == .versionNotSupported }
        }
    }

    @Test func equalContentLengthsAreOneLength() {
        #expect(parse(bytes("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc")).dropFirst()
                == [.body("abc"), .end("-")])
    }

    @Test func aSplitHeadIsGatheredAndTheParserIsIdleOnlyBetweenRequests() {
        var parser = HTTPRequestParser()
        #expect(parser.isIdle)
        var offset = 0
        bytes("GET / HT").withUnsafeBytes { input in
            #expect((try? parser.next(input, consumed: &offset)) == .some(nil))
        }
        #expect(!parser.isIdle)
    }
}

@Suite("HTTP writer")
struct HTTPWriterTests {
    @Test func aResponseHeadIsWrittenInOrderWithTheStandardReason() {
        var fields = HTTPFields()
        fields[.contentType] = "text/plain"
        fields[.contentLength] = "5"
        let head = HTTPWriter.head(HTTPResponse(status: .init(code: 404), headerFields: fields))
        #expect(String(decoding: head, as: UTF8.self) == "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n")
    }

    @Test func aRequestHeadCarriesItsAuthorityAsHostAndParsesBack() {
        var fields = HTTPFields()
        fields[.upgrade] = "websocket"
        fields[.connection] = "Upgrade"
        let request = HTTPRequest(method: .get, scheme: nil, authority: "example.com:8080", path: "/chat", headerFields: fields)
        let head = HTTPWriter.head(request)
        #expect(String(decoding: head, as: UTF8.self)
                == "GET /chat HTTP/1.1\r\nHost: example.com:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        #expect(parse(head).first == .head("GET - example.com:8080 /chat HTTP/1.1 keepAlive=true none upgrade=[\"websocket\"] [Upgrade=websocket,Connection=Upgrade]"))
    }

    @Test func chunkFramingParsesBack() {
        let body = bytes("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            + HTTPWriter.chunkHeader(size: 26) + bytes("abcdefghijklmnopqrstuvwxyz") + HTTPWriter.chunkEnd + HTTPWriter.lastChunk
        #expect(parse(body).dropFirst() == [.body("abcdefghijklmnopqrstuvwxyz"), .end("-")])
        #expect(HTTPWriter.chunkHeader(size: 26) == bytes("1a\r\n"))
    }
}
