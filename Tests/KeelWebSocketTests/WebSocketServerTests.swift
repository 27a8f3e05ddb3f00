import HTTPTypes
import KeelBuffers
import KeelHTTP
import KeelSockets
import KeelTestSupport
import KeelWebSocket
import Testing

// A WebSocket server in memory: the HTTP upgrade, then frames both ways through a real connection
// on an embedded thread. No sockets.

/// Echoes every message; logs opens and closes; closes on "bye".
struct EchoSocket: WebSocketHandler {
    let log: Collector<String>

    mutating func webSocketOpened(_ socket: WebSocket) { log.add("opened") }

    mutating func messageReceived(_ message: consuming WebSocketMessage, on socket: WebSocket) {
        if message.kind == .text && message.text == "bye" { return socket.close(.goingAway, reason: "asked to") }
        socket.send(message)
    }

    mutating func webSocketClosed(_ close: WebSocketClose, reason: TCPCloseReason) {
        log.add("closed \(close.code.map { "\($0)" } ?? "-") \(reason.code)")
    }
}

/// A frame as a client sends it (masked).
func clientFrame(_ opcode: WebSocketOpcode, _ payload: [UInt8], fin: Bool = true, reserved: UInt8 = 0, key: UInt32 = 0x1234_5678) -> [UInt8] {
    var masked = payload
    masked.withUnsafeMutableBytes { webSocketMask($0, key: key, offset: 0) }
    return WebSocketFrameHeader(fin: fin, reserved: reserved, opcode: opcode, maskingKey: key, payloadLength: payload.count).encoded() + masked
}

func clientFrame(_ opcode: WebSocketOpcode, _ text: String, fin: Bool = true) -> [UInt8] {
    clientFrame(opcode, Array(text.utf8), fin: fin)
}

let upgradeRequest = Array(("GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").utf8)

let upgradeResponse = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    + "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"

final class WebSocketHarness {
    let log = Collector<String>()
    let connection: EmbeddedConnection<HTTPOnlyConnection>
    private var sawUpgrade = false

    init(configuration: WebSocketConfiguration = WebSocketConfiguration(maximumMessageSize: 1 << 20)) {
        var options = TCPConnectionOptions()
        let log = log
        options.serveWebSockets(configuration: configuration) { EchoSocket(log: log) }
        connection = EmbeddedConnection(handler: HTTPOnlyConnection(), options: options)
    }

    /// What the server sent since the last call, as frames ("text Hello", "close 1000", …), after
    /// checking the upgrade response the first time.
    func takeFrames(skippingUpgrade: Bool = false) -> [String] {
        var bytes = connection.takeWritten()
        if skippingUpgrade { sawUpgrade = true }
        if !sawUpgrade {
            let head = Array(upgradeResponse.utf8)
            #expect(Array(bytes.prefix(head.count)) == head)
            bytes.removeFirst(min(head.count, bytes.count))
            sawUpgrade = true
        }
        var parser = WebSocketFrameParser(role: .client, maximumFrameSize: 1 << 21)
        var frames: [String] = []
        var current: (WebSocketOpcode, [UInt8])?
        bytes.withUnsafeMutableBytes { raw in
            var offset = 0
            while let part = try? parser.next(raw, consumed: &offset) {
                switch part {
                case .header(let header): current = (header.opcode, [])
                case .payload(let range): current?.1 += raw[range]
                case .end:
                    guard let (opcode, payload) = current else { continue }
                    switch opcode {
                    case .close:
                        let close = payload.withUnsafeBytes { try? WebSocketClose(payload: $0) }
                        frames.append("close \(close?.code.map { "\($0)" } ?? "-")")
                    case .binary: frames.append("binary \(payload.count)")
                    default: frames.append("\(opcode) \(String(decoding: payload, as: UTF8.self))")
                    }
                }
            }
        }
        return frames
    }
}

@Suite("WebSocket server in memory")
struct WebSocketServerTests {
    @Test func theUpgradeThenEchoPingAndACleanClose() {
        let harness = WebSocketHarness()
        harness.connection.receive(upgradeRequest + clientFrame(.text, "Hello"))
        #expect(harness.takeFrames() == ["text Hello"])
        harness.connection.receive(clientFrame(.ping, "are you there"))
        #expect(harness.takeFrames() == ["pong are you there"])
        harness.connection.receive(clientFrame(.close, [0x03, 0xE8] + Array("done".utf8)))
        #expect(harness.takeFrames() == ["close 1000"])
        #expect(harness.connection.peerSawEndOfStream, "the server ends the TCP connection after the closing handshake")
        #expect(harness.log.snapshot == ["opened", "closed 1000 peerClosed"])
        #expect(harness.connection.finish().isClean)
    }

    @Test func aFragmentedMessageWithAPingBetweenIsEchoedWholeAfterThePong() {
        let harness = WebSocketHarness()
        harness.connection.receive(upgradeRequest)
        harness.connection.receive(clientFrame(.text, "Hel", fin: false) + clientFrame(.ping, "p") + clientFrame(.continuation, "lo, κόσμε"))
        #expect(harness.takeFrames() == ["pong p", "text Hello, κόσμε"])
        #expect(harness.connection.finish().isClean)
    }

    @Test func aStreamOfFramesGivesTheSameEchoAtEverySplit() {
        let frames = clientFrame(.text, "first") + clientFrame(.binary, [UInt8](repeating: 7, count: 300))
            + clientFrame(.binary, [UInt8](repeating: 1, count: 70_000), fin: false) + clientFrame(.continuation, [2, 3])
            + clientFrame(.ping, "") + clientFrame(.text, "last")
        let expected = ["text first", "binary 300", "binary 70002", "pong ", "text last"]
        for cut in stride(from: 1, to: frames.count, by: 97) {
            let harness = WebSocketHarness()
            harness.connection.receive(upgradeRequest)
            harness.connection.receive(chunks: [Array(frames[..<cut]), Array(frames[cut...])])
            #expect(harness.takeFrames() == expected, "cut at \(cut)")
            #expect(harness.connection.finish().isClean, "cut at \(cut)")
        }
    }

    static let failures: [(String, [UInt8], String)] = [
        ("an unmasked frame", WebSocketFrameHeader(opcode: .text, payloadLength: 2).encoded() + Array("hi".utf8), "close 1002"),
        ("a reserved opcode", clientFrame(WebSocketOpcode(rawValue: 3), "x"), "close 1002"),
        ("invalid UTF-8", clientFrame(.text, [0x68, 0xC0, 0xAF]), "close 1007"),
        ("a continuation with nothing to continue", clientFrame(.continuation, "x"), "close 1002"),
        ("a close code not allowed on the wire", clientFrame(.close, [0x03, 0xED]), "close 1002"),
        ("a message over the limit", clientFrame(.binary, [UInt8](repeating: 0, count: 2000)), "close 1009"),
    ]

    @Test(arguments: failures)
    func aProtocolErrorFailsTheConnectionWithItsCode(name: String, bytes: [UInt8], expected: String) {
        let harness = WebSocketHarness(configuration: WebSocketConfiguration(maximumFrameSize: 1024, maximumMessageSize: 1024))
        harness.connection.receive(upgradeRequest + bytes)
        #expect(harness.takeFrames() == [expected], "\(name)")
        #expect(harness.connection.isClosed, "\(name)")
        #expect(harness.connection.finish().isClean, "\(name)")
    }

    @Test func theServerClosesAndWaitsForTheAnswerThenGivesUp() {
        let answered = WebSocketHarness()
        answered.connection.receive(upgradeRequest + clientFrame(.text, "bye"))
        #expect(answered.takeFrames() == ["close 1001"])
        #expect(!answered.connection.isClosed, "waiting for the client's close")
        answered.connection.receive(clientFrame(.close, [0x03, 0xE9]))
        #expect(answered.connection.isClosed)
        #expect(answered.connection.finish().isClean)

        let silent = WebSocketHarness()
        silent.connection.receive(upgradeRequest + clientFrame(.text, "bye"))
        _ = silent.takeFrames()
        silent.connection.advanceTime(by: .seconds(6))
        #expect(silent.connection.closeReason?.code == .webSocketCloseTimeout)
        #expect(silent.connection.finish().isClean)
    }

    @Test func badHandshakesAreRefused() {
        let harness = WebSocketHarness()
        harness.connection.receive(Array(String(decoding: upgradeRequest, as: UTF8.self)
            .replacingOccurrences("Sec-WebSocket-Version: 13", with: "Sec-WebSocket-Version: 8").utf8))
        let written = harness.connection.takeWrittenString()
        #expect(written.hasPrefix("HTTP/1.1 426 Upgrade Required\r\n"))
        #expect(written.contains("Sec-WebSocket-Version: 13\r\n"))
        #expect(harness.connection.isClosed)
        #expect(harness.connection.finish().isClean)

        let plain = WebSocketHarness()
        plain.connection.receive("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(plain.connection.takeWrittenString().hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        #expect(plain.connection.finish().isClean)
    }
}

extension String {
    func replacingOccurrences(_ target: String, with replacement: String) -> String {
        var result = ""
        var rest = self[...]
        while let range = rest.firstRange(of: target) {
            result += rest[..<range.lowerBound] + replacement
            rest = rest[range.upperBound...]
        }
        return result + rest
    }
}
