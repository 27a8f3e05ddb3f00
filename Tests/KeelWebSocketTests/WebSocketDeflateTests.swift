import HTTPTypes
import KeelBuffers
import KeelHTTP
import KeelSockets
import KeelTestSupport
@testable import KeelWebSocket
import Testing

// permessage-deflate (RFC 7692) in memory: the offer negotiation, RFC 7692's own example, round trips
// through the compressor and decompressor, and a compression bomb.

@Suite("WebSocket permessage-deflate")
struct WebSocketDeflateTests {
    @Test(arguments: [
        ("permessage-deflate", "permessage-deflate"),
        ("permessage-deflate; client_max_window_bits", "permessage-deflate"),
        ("permessage-deflate; server_no_context_takeover; client_no_context_takeover",
         "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        ("permessage-deflate; server_max_window_bits=10; client_max_window_bits=9",
         "permessage-deflate; server_max_window_bits=10; client_max_window_bits=9"),
        // a 256-byte window cannot be kept by zlib's compressor: that offer is declined, the next taken
        ("permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=9",
         "permessage-deflate; server_max_window_bits=9"),
        ("permessage-deflate; unknown_parameter, permessage-deflate", "permessage-deflate"),
        ("x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=\"12\"", "permessage-deflate; server_max_window_bits=12"),
    ])
    func offersAreNegotiated(offer: String, response: String) {
        #expect(WebSocketDeflateParameters.negotiate(offers: [offer])?.responseValue == response)
    }

    @Test func offersThatCannotBeAcceptedAreDeclined() {
        for offer in ["permessage-deflate; server_max_window_bits", "permessage-deflate; server_max_window_bits=16",
                      "permessage-deflate; client_no_context_takeover=1", "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                      "x-webkit-deflate-frame"] {
            #expect(WebSocketDeflateParameters.negotiate(offers: [offer]) == nil, "\(offer)")
        }
        #expect(WebSocketDeflateParameters.negotiate(offers: ["permessage-deflate"], serverNoContextTakeover: true)?.responseValue
                == "permessage-deflate; server_no_context_takeover")
    }

    @Test(arguments: [(false, 15), (true, 15), (false, 9)])
    func messagesRoundTripThroughTheCompressorAndDecompressor(resets: Bool, windowBits: Int) throws {
        let pool = BufferPool(configuration: BufferPoolConfiguration(bufferSize: 4096, buffersPerSlab: 16))
        let deflater = try #require(WebSocketDeflater(windowBits: windowBits, resetsAfterEachMessage: resets))
        let inflater = try #require(WebSocketInflater(resetsAfterEachMessage: resets))
        let messages: [[UInt8]] = [Array("Hello".utf8), [UInt8](repeating: 0x41, count: 100_000),
                                   (0..<50_000).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 7) }, Array("Hello".utf8)]
        for message in messages {
            var chain = BufferChain()
            var offset = 0
            while offset < message.count {
                var buffer = try pool.acquire()
                offset += message[offset...].withUnsafeBytes { buffer.append($0) }
                chain.append(buffer)
            }
            let compressed = try deflater.compress(chain, pool: pool)
            let wire = compressed.readableByteArray
            #expect(!wire.suffix(4).elementsEqual([0, 0, 0xFF, 0xFF]), "the trailer is left out")
            var output = [UInt8](repeating: 0, count: message.count + 64)
            var produced = 0
            let input = wire + WebSocketInflater.trailer
            let outcome = input.withUnsafeBytes { input in
                output.withUnsafeMutableBytes { room in
                    Result { () throws(WebSocketProtocolError) in
                        try inflater.inflate(input, region: { UnsafeMutableRawBufferPointer(rebasing: room[produced...]) },
                                             produced: { produced += $0 })
                    }
                }
            }
            try outcome.get()
            inflater.messageEnded()
            #expect(Array(output.prefix(produced)) == message)
        }
    }

    func harness(_ extensions: String, maximumMessageSize: Int = 1 << 20) -> (WebSocketHarness, String) {
        let harness = WebSocketHarness(configuration: WebSocketConfiguration(maximumMessageSize: maximumMessageSize,
                                                                            compression: WebSocketCompression(minimumMessageSize: 0)))
        let request = String(decoding: upgradeRequest.dropLast(2), as: UTF8.self) + "Sec-WebSocket-Extensions: \(extensions)\r\n\r\n"
        harness.connection.receive(request)
        let written = harness.connection.takeWrittenString()
        return (harness, written)
    }

    @Test func theRFC7692ExampleIsReadAndTheEchoIsCompressed() throws {
        let (harness, response) = harness("permessage-deflate; client_max_window_bits")
        #expect(response.contains("Sec-WebSocket-Extensions: permessage-deflate\r\n"))
        // RFC 7692, 7.2.3.1: "Hello" compressed, in one frame with RSV1.
        let compressed: [UInt8] = [0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00]
        var masked = compressed
        masked.withUnsafeMutableBytes { webSocketMask($0, key: 0x0102_0304, offset: 0) }
        harness.connection.receive([0xC1, 0x80 | 7, 1, 2, 3, 4] + masked)
        let echo = harness.connection.takeWritten()
        #expect(echo.first == 0xC1, "a text frame with RSV1: compressed")
        #expect(Array(echo.dropFirst(2)) == compressed, "the same compressed bytes come back (a fresh compressor, same input)")
        #expect(harness.connection.finish().isClean)
    }

    @Test func aCompressionBombClosesWith1009() throws {
        let (harness, _) = harness("permessage-deflate", maximumMessageSize: 64 * 1024)
        let pool = BufferPool(configuration: BufferPoolConfiguration(bufferSize: 16384, buffersPerSlab: 8))
        var zeros = BufferChain()
        for _ in 0..<64 {  // 1 MiB of zeros: about a kilobyte compressed
            var buffer = try pool.acquire()
            buffer.append(contentsOf: [UInt8](repeating: 0, count: 16384))
            zeros.append(buffer)
        }
        let bomb = try #require(WebSocketDeflater(windowBits: 15, resetsAfterEachMessage: true)).compress(zeros, pool: pool).readableByteArray
        #expect(bomb.count < 4096)
        harness.connection.receive(clientFrame(.binary, bomb, reserved: 0b100))
        let frames = harness.takeFrames(skippingUpgrade: true)
        #expect(frames == ["close 1009"])
        #expect(harness.connection.isClosed)
        #expect(harness.connection.finish().isClean)
    }

    @Test func rsv1OnAContinuationOrControlFrameIsAProtocolError() {
        for frame in [clientFrame(.binary, [0xF2, 0x48], fin: false, reserved: 0b100) + clientFrame(.continuation, [0xCD], reserved: 0b100),
                      clientFrame(.ping, [1], reserved: 0b100)] {
            let (harness, _) = harness("permessage-deflate")
            harness.connection.receive(frame)
            #expect(harness.takeFrames(skippingUpgrade: true) == ["close 1002"])
            #expect(harness.connection.finish().isClean)
        }
    }
}
