import HTTPTypes
import KeelHTTP
import KeelWebSocket
import Testing

// WebSocket frames, messages, UTF-8 and the opening handshake, in memory (RFC 6455's own examples
// first), whole and at every split point.

/// Frame parts as text: "h <opcode> fin=<…> len=<…>", "p <payload>", "e".
func frames(_ bytes: [UInt8], role: WebSocketRole, cuts: [Int] = [], maximumFrameSize: Int = 1 << 20) -> [String] {
    var parser = WebSocketFrameParser(role: role, maximumFrameSize: maximumFrameSize)
    var input = bytes
    var results: [String] = []
    let bounds = [0] + cuts.filter { $0 > 0 && $0 < bytes.count } + [bytes.count]
    for (start, end) in zip(bounds, bounds.dropFirst()) {
        let failed = input[start..<end].withUnsafeMutableBytes { piece -> Bool in
            var offset = 0
            do throws(WebSocketProtocolError) {
                while let part = try parser.next(piece, consumed: &offset) {
                    switch part {
                    case .header(let header):
                        results.append("h \(header.opcode) fin=\(header.fin) len=\(header.payloadLength)")
                    case .payload(let range):
                        let text = String(decoding: UnsafeRawBufferPointer(rebasing: piece[range]), as: UTF8.self)
                        if let last = results.last, last.hasPrefix("p ") { results[results.count - 1] = last + text } else { results.append("p " + text) }
                    case .end:
                        results.append("e")
                    }
                }
                return false
            } catch {
                results.append("error \(error.closeCode)")
                return true
            }
        }
        if failed { break }
    }
    _ = input
    return results
}

@Suite("WebSocket frames")
struct WebSocketFrameTests {
    /// RFC 6455, 5.7.
    static let examples: [(String, [UInt8], WebSocketRole, [String])] = [
        ("a single-frame unmasked text message", [0x81, 0x05] + Array("Hello".utf8), .client, ["h text fin=true len=5", "p Hello", "e"]),
        ("a single-frame masked text message", [0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58], .server,
         ["h text fin=true len=5", "p Hello", "e"]),
        ("a fragmented unmasked text message", [0x01, 0x03] + Array("Hel".utf8) + [0x80, 0x02] + Array("lo".utf8), .client,
         ["h text fin=false len=3", "p Hel", "e", "h continuation fin=true len=2", "p lo", "e"]),
        ("an unmasked ping", [0x89, 0x05] + Array("Hello".utf8), .client, ["h ping fin=true len=5", "p Hello", "e"]),
        ("256 bytes of binary", [0x82, 0x7E, 0x01, 0x00] + [UInt8](repeating: 0x61, count: 256), .client,
         ["h binary fin=true len=256", "p " + String(repeating: "a", count: 256), "e"]),
        ("64 KiB of binary", [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0] + [UInt8](repeating: 0x62, count: 65536), .client,
         ["h binary fin=true len=65536", "p " + String(repeating: "b", count: 65536), "e"]),
        ("an empty close", [0x88, 0x80, 1, 2, 3, 4], .server, ["h close fin=true len=0", "e"]),
    ]

    @Test(arguments: examples)
    func theRFCExamplesParseWholeAndAtEverySplit(name: String, bytes: [UInt8], role: WebSocketRole, expected: [String]) {
        #expect(frames(bytes, role: role) == expected, "\(name)")
        for cut in stride(from: 1, to: bytes.count, by: bytes.count > 1000 ? 997 : 1) {
            #expect(frames(bytes, role: role, cuts: [cut]) == expected, "\(name), cut at \(cut)")
        }
    }

    static let refused: [(String, [UInt8], WebSocketRole, UInt16)] = [
        ("RSV1 without an extension", [0xC1, 0x80, 0, 0, 0, 0], .server, 1002),
        ("RSV3", [0x91, 0x80, 0, 0, 0, 0], .server, 1002),
        ("reserved opcode 3", [0x83, 0x80, 0, 0, 0, 0], .server, 1002),
        ("reserved control opcode 11", [0x8B, 0x80, 0, 0, 0, 0], .server, 1002),
        ("a fragmented ping", [0x09, 0x80, 0, 0, 0, 0], .server, 1002),
        ("a ping over 125 bytes", [0x89, 0xFE, 0x00, 0x7E], .server, 1002),
        ("a 64-bit length with the top bit set", [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0], .server, 1002),
        ("an unmasked frame from a client", [0x81, 0x05] + Array("Hello".utf8), .server, 1002),
        ("a masked frame from a server", [0x81, 0x85, 0, 0, 0, 0] + Array("Hello".utf8), .client, 1002),
        ("a frame over the limit", [0x82, 0xFE, 0x10, 0x00, 0, 0, 0, 0], .server, 1009),
        ("a 64-bit length over the limit", [0x82, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], .server, 1009),
    ]

    @Test(arguments: refused)
    func badFramesAreRefusedWithTheirCloseCode(name: String, bytes: [UInt8], role: WebSocketRole, code: UInt16) {
        #expect(frames(bytes, role: role, maximumFrameSize: 1024).last == "error \(code)", "\(name)")
        for cut in 1..<bytes.count {
            #expect(frames(bytes, role: role, cuts: [cut], maximumFrameSize: 1024).last == "error \(code)", "\(name), cut at \(cut)")
        }
    }

    @Test func headersEncodeAsTheyParse() {
        for length in [0, 5, 125, 126, 65535, 65536, 1 << 20] {
            for key: UInt32? in [nil, 0x37FA_213D] {
                let header = WebSocketFrameHeader(fin: length != 5, reserved: 0, opcode: .binary, maskingKey: key, payloadLength: length)
                var bytes = header.encoded()
                #expect(bytes.count == header.encodedSize)
                var parser = WebSocketFrameParser(role: key == nil ? .client : .server, maximumFrameSize: 1 << 21)
                var offset = 0
                let part = bytes.withUnsafeMutableBytes { try? parser.next($0, consumed: &offset) }
                #expect(part == .header(header), "length \(length), key \(String(describing: key))")
            }
        }
    }

    @Test func maskingAtAnyOffsetMatchesTheByteByByteRule() {
        let key: UInt32 = 0x0102_0304
        let keyBytes: [UInt8] = [1, 2, 3, 4]
        for offset in 0..<8 {
            for count in [0, 1, 3, 7, 8, 9, 31, 64] {
                var bytes = (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 37) }
                let expected = bytes.enumerated().map { $0.element ^ keyBytes[($0.offset + offset) % 4] }
                bytes.withUnsafeMutableBytes { webSocketMask($0, key: key, offset: offset) }
                #expect(bytes == expected, "offset \(offset), count \(count)")
            }
        }
    }
}

@Suite("WebSocket messages")
struct WebSocketMessageTests {
    func header(_ opcode: WebSocketOpcode, fin: Bool = true) -> WebSocketFrameHeader {
        WebSocketFrameHeader(fin: fin, opcode: opcode, payloadLength: 0)
    }

    @Test func fragmentsContinueTheirMessageAndControlFramesMayComeBetween() throws {
        var assembler = WebSocketMessageAssembler()
        #expect(try assembler.frameStarted(header(.text, fin: false))! == (.text, true))
        try Array("Hel".utf8).withUnsafeBytes { try assembler.dataReceived($0) }
        #expect(try !assembler.frameEnded())
        #expect(try assembler.frameStarted(header(.ping)) == nil)
        #expect(try !assembler.frameEnded())
        #expect(try assembler.frameStarted(header(.continuation))! == (.text, false))
        try Array("lo".utf8).withUnsafeBytes { try assembler.dataReceived($0) }
        #expect(try assembler.frameEnded(), "the message is complete")
        #expect(assembler.current == nil)
    }

    @Test func aContinuationWithNothingToContinueAndAMessageInsideAMessageAreProtocolErrors() {
        var lone = WebSocketMessageAssembler()
        #expect { _ = try lone.frameStarted(header(.continuation)) } throws: { ($0 as? WebSocketProtocolError)?.closeCode == .protocolError }
        var nested = WebSocketMessageAssembler()
        _ = try? nested.frameStarted(header(.binary, fin: false))
        _ = try? nested.frameEnded()
        #expect { _ = try nested.frameStarted(header(.text)) } throws: { ($0 as? WebSocketProtocolError)?.closeCode == .protocolError }
    }

    @Test func invalidUTF8FailsAtTheFirstBadByteAndATruncatedCharacterAtTheEnd() throws {
        var assembler = WebSocketMessageAssembler()
        _ = try assembler.frameStarted(header(.text, fin: false))
        let bad: [UInt8] = Array("κόσμε".utf8) + [0xED, 0xA0, 0x80] + Array("more".utf8)
        #expect { try bad.withUnsafeBytes { try assembler.dataReceived($0) } } throws: {
            ($0 as? WebSocketProtocolError)?.closeCode == .invalidPayload
        }
        var truncated = WebSocketMessageAssembler()
        _ = try truncated.frameStarted(header(.text))
        try [UInt8]([0x61, 0xE2, 0x82]).withUnsafeBytes { try truncated.dataReceived($0) }  // the start of "€"
        #expect { _ = try truncated.frameEnded() } throws: { ($0 as? WebSocketProtocolError)?.closeCode == .invalidPayload }
    }

    @Test func aMessageOverTheLimitIsTooBig() throws {
        var assembler = WebSocketMessageAssembler(maximumMessageSize: 10)
        _ = try assembler.frameStarted(header(.binary, fin: false))
        try [UInt8](repeating: 0, count: 6).withUnsafeBytes { try assembler.dataReceived($0) }
        _ = try assembler.frameEnded()
        _ = try assembler.frameStarted(header(.continuation))
        #expect { try [UInt8](repeating: 0, count: 6).withUnsafeBytes { try assembler.dataReceived($0) } } throws: {
            ($0 as? WebSocketProtocolError)?.closeCode == .messageTooBig
        }
    }

    static let utf8Cases: [([UInt8], Bool)] = [
        (Array("plain ASCII, longer than eight bytes".utf8), true),
        (Array("κόσμε €𝄞 ü".utf8), true),
        ([0xC0, 0x80], false),  // overlong NUL
        ([0xE0, 0x80, 0x80], false),  // overlong
        ([0xED, 0xA0, 0x80], false),  // a surrogate
        ([0xF4, 0x90, 0x80, 0x80], false),  // above U+10FFFF
        ([0xF5, 0x80, 0x80, 0x80], false),
        ([0x80], false),  // a lone continuation byte
        ([0xEF, 0xBF, 0xBF], true),  // U+FFFF
        ([0xF4, 0x8F, 0xBF, 0xBF], true),  // U+10FFFF
    ]

    @Test(arguments: utf8Cases)
    func utf8IsJudgedTheSameAtEverySplit(bytes: [UInt8], valid: Bool) {
        for cut in 0...bytes.count {
            var validator = UTF8Validator()
            let ok = bytes[..<cut].withUnsafeBytes { validator.validate($0) } && bytes[cut...].withUnsafeBytes { validator.validate($0) }
            #expect((ok && validator.isAtCharacterBoundary) == valid, "\(bytes) cut at \(cut)")
        }
    }

    @Test func closePayloadsAreReadAndWritten() throws {
        func read(_ bytes: [UInt8]) -> Result<WebSocketClose, WebSocketProtocolError> {
            bytes.withUnsafeBytes { raw in Result { () throws(WebSocketProtocolError) in try WebSocketClose(payload: raw) } }
        }
        #expect(try read([]).get() == WebSocketClose(code: nil))
        #expect(try read([0x03, 0xE8] + Array("bye".utf8)).get() == WebSocketClose(code: .normalClosure, reason: "bye"))
        #expect(try read([0x0B, 0xB8]).get().code?.rawValue == 3000)
        for (bytes, code) in [([UInt8](arrayLiteral: 0x03), 1002), ([0x03, 0xED], 1002), ([0x03, 0xE7], 1002), ([0x13, 0x88], 1002),
                              ([0x03, 0xE8, 0xFF], 1007)] {
            guard case .failure(let error) = read(bytes) else {
                Issue.record("\(bytes) was accepted")
                continue
            }
            #expect(error.closeCode.rawValue == UInt16(code), "\(bytes)")
        }
        let long = WebSocketClose(code: .goingAway, reason: String(repeating: "€", count: 60))  // 180 bytes of UTF-8
        #expect(long.payload.count == 2 + 123 - 123 % 3)
        #expect(try read(long.payload).get().reason == String(repeating: "€", count: 41))
    }
}

@Suite("WebSocket opening handshake")
struct WebSocketHandshakeTests {
    func upgradeRequest(version: String = "13", key: String? = "dGhlIHNhbXBsZSBub25jZQ==", protocols: String? = nil) -> HTTPRequestHead {
        var fields = HTTPFields()
        fields[.upgrade] = "websocket"
        fields[.connection] = "Upgrade"
        fields[.secWebSocketVersion] = version
        if let key { fields[.secWebSocketKey] = key }
        if let protocols { fields[.secWebSocketProtocol] = protocols }
        return HTTPRequestHead(request: HTTPRequest(method: .get, scheme: nil, authority: "a", path: "/chat", headerFields: fields),
                               upgrade: ["websocket"])
    }

    @Test func theRFCSampleKeyGetsTheRFCAcceptValue() {
        #expect(WebSocketHandshake.acceptValue(forKey: "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    }

    @Test func aValidRequestIsAcceptedWithTheServersPreferredSharedSubprotocol() throws {
        let response = try WebSocketHandshake.serverResponse(to: upgradeRequest(protocols: "chat, superchat"), subprotocols: ["superchat", "chat"])
        #expect(response.status.code == 101)
        #expect(response.headerFields[.secWebSocketAccept] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        #expect(response.headerFields[.secWebSocketProtocol] == "superchat")
        let head = HTTPResponseHead(response: response, version: .http1_1, keepAlive: true, bodyFraming: .none)
        #expect(WebSocketHandshake.clientAccepts(head, key: "dGhlIHNhbXBsZSBub25jZQ=="))
        #expect(!WebSocketHandshake.clientAccepts(head, key: WebSocketHandshake.makeKey()))
    }

    @Test func anotherVersionGets426NamingVersion13AndABadKeyGets400() {
        #expect { _ = try WebSocketHandshake.serverResponse(to: upgradeRequest(version: "8")) } throws: { error in
            guard let refusal = error as? WebSocketHandshake.Refusal else { return false }
            return refusal.response.status.code == 426 && refusal.response.headerFields[.secWebSocketVersion] == "13"
        }
        for key: String? in [nil, "short", "dGhlIHNhbXBsZSBub25jZQ=", "dGhlIHNhbXBsZSBub25jZQ!!"] {
            #expect { _ = try WebSocketHandshake.serverResponse(to: upgradeRequest(key: key)) } throws: { error in
                (error as? WebSocketHandshake.Refusal)?.response.status.code == 400
            }
        }
    }

    @Test func madeKeysAreValidAndDiffer() throws {
        let first = WebSocketHandshake.makeKey(), second = WebSocketHandshake.makeKey()
        #expect(first != second)
        #expect(try WebSocketHandshake.serverResponse(to: upgradeRequest(key: first)).status.code == 101)
    }
}
