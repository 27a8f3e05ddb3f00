import FuzzSupport
import KeelBuffers
import KeelCompression
import KeelSockets

/// The deflate filter, two ways: the input as a peer's compressed stream (split into reads at points
/// it chooses: inflated, refused as corrupt, or stopped as a bomb, never a crash or a leak), and the
/// input as a handler's writes (compressed by one filter, inflated by another: the same bytes back).
@_cdecl("FuzzDeflateStream_main")
func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runFuzzer(argc, argv, fuzzOne)
}

struct Collect: TCPConnectionHandler {
    var received: [UInt8] = []
    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        received += buffer.readableByteArray
    }
}

func deflating() -> EmbeddedConnection<Collect> {
    let configuration = DeflateConfiguration(windowBits: 9, memoryLevel: 1, expansionAllowance: 64 * 1024)
    return EmbeddedConnection(handler: Collect(), options: .init(makeFilters: { _ in [DeflateFilter(configuration: configuration)] }))
}

func check(_ connection: EmbeddedConnection<Collect>) {
    let leftovers = connection.finish()
    guard leftovers.isClean else { fatalError("leaked \(leftovers.buffersInUse) buffers, \(leftovers.openDescriptors) descriptors") }
}

@_cdecl("LLVMFuzzerTestOneInput")
func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = Array(fuzzInput(data, count))
    guard let first = bytes.first else { return 0 }
    let rest = Array(bytes.dropFirst())
    let piece = Int(first >> 1) + 1  // reads or writes of 1 to 128 bytes

    // As a peer's stream.
    let receiver = deflating()
    receiver.receive(chunks: stride(from: 0, to: rest.count, by: piece).map { Array(rest[$0..<min($0 + piece, rest.count)]) })
    if first & 1 == 1 { receiver.peerHalfCloses() }
    check(receiver)

    // As writes, round trip.
    let sender = deflating()
    let inflater = deflating()
    for start in stride(from: 0, to: rest.count, by: piece) {
        let chunk = Array(rest[start..<min(start + piece, rest.count)])
        sender.withConnection { connection in
            var buffer = try! connection.thread.bufferPool.acquire()
            buffer.append(contentsOf: chunk)
            connection.write(buffer)
        }
        inflater.receive(sender.takeWritten())
    }
    guard inflater.handler?.received == rest else { fatalError("a round trip changed the bytes") }
    check(sender)
    check(inflater)
    return 0
}
