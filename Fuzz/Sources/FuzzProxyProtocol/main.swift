import FuzzSupport
import KeelBuffers
import KeelProxyProtocol
import KeelSockets

/// The PROXY protocol, two ways: the parser on the whole input (whatever it says, a complete header
/// must encode and parse back to itself), and the listener filter on a real connection in memory, the
/// input split into reads at points it chooses, then optionally the peer's end of stream. Nothing may
/// crash, and every buffer and descriptor comes back.
@_cdecl("FuzzProxyProtocol_main")
func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runFuzzer(argc, argv, fuzzOne)
}

struct Sink: TCPConnectionHandler {
    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {}
}

@_cdecl("LLVMFuzzerTestOneInput")
func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = Array(fuzzInput(data, count))
    guard let first = bytes.first else { return 0 }
    let rest = Array(bytes.dropFirst())
    if case .complete(let header, _) = try? rest.withUnsafeBytes({ try ProxyHeaderParser.parse($0) }) {
        let again = header.encoded().withUnsafeBytes { try? ProxyHeaderParser.parse($0) }
        guard case .complete(let reparsed, _) = again else { fatalError("a parsed header did not encode to a parsable one: \(header)") }
        // v1 loses what it cannot carry (TLVs, UNIX addresses); a v2 header with addresses keeps
        // everything but its checksum, which the encoder writes only when asked.
        var expected = header
        expected.tlvs.removeAll { $0.type == ProxyTLV.Kind.crc32c.rawValue }
        if header.version == .v2 && header.addresses != .unspecified && reparsed != expected {
            fatalError("a v2 header changed in a round trip: \(header) -> \(reparsed)")
        }
    }
    let piece = Int(first >> 1) + 1  // reads of 1 to 128 bytes
    var options = TCPConnectionOptions()
    options.acceptProxyProtocol()
    let server = EmbeddedConnection(handler: Sink(), options: options)
    server.receive(chunks: stride(from: 0, to: rest.count, by: piece).map { Array(rest[$0..<min($0 + piece, rest.count)]) })
    if first & 1 == 1 { server.peerHalfCloses() }
    server.advanceTime(by: .seconds(10))
    let leftovers = server.finish()
    guard leftovers.isClean else { fatalError("leaked \(leftovers.buffersInUse) buffers, \(leftovers.openDescriptors) descriptors") }
    return 0
}
