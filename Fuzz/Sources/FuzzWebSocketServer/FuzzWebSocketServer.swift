import FuzzSupport
import KeelBuffers
import KeelHTTP
import KeelSockets
import KeelWebSocket

/// A WebSocket server connection after a valid upgrade: arbitrary bytes as frames (masked or not,
/// any opcode, length, fragmentation, UTF-8), split into reads at points the input chooses, then
/// optionally the peer's end of stream. Whatever arrives, messages are echoed or the connection fails
/// with a close code, and every buffer and descriptor comes back.
@_cdecl("FuzzWebSocketServer_main")
func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runFuzzer(argc, argv, fuzzOne)
}

struct Echo: WebSocketHandler {
    mutating func messageReceived(_ message: consuming WebSocketMessage, on socket: WebSocket) {
        socket.send(message)
    }
}

let upgrade = Array(("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").utf8)

@_cdecl("LLVMFuzzerTestOneInput")
func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = Array(fuzzInput(data, count))
    guard let first = bytes.first else { return 0 }
    let piece = Int(first >> 1) + 1  // reads of 1 to 128 bytes
    var options = TCPConnectionOptions()
    options.serveWebSockets(configuration: WebSocketConfiguration(maximumFrameSize: 4096, maximumMessageSize: 8192)) { Echo() }
    let server = EmbeddedConnection(handler: HTTPOnlyConnection(), options: options)
    let rest = Array(bytes.dropFirst())
    server.receive(chunks: [upgrade] + stride(from: 0, to: rest.count, by: piece).map { Array(rest[$0..<min($0 + piece, rest.count)]) })
    if first & 1 == 1 { server.peerHalfCloses() }
    _ = server.takeWritten()
    let leftovers = server.finish()
    guard leftovers.isClean else { fatalError("leaked \(leftovers.buffersInUse) buffers, \(leftovers.openDescriptors) descriptors") }
    return 0
}
