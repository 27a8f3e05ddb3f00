import FuzzSupport
import Glibc
import KeelBuffers
import KeelSockets
import KeelTLS

/// The server side of the TLS filter: arbitrary bytes (a mangled ClientHello, records of any shape),
/// split into reads at points the input chooses, then the peer's end of stream. Whatever arrives, the
/// connection closes with a typed reason or keeps waiting, and returns every buffer and descriptor.
@_cdecl("FuzzTLSServer_main")
func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runFuzzer(argc, argv, fuzzOne)
}

/// A throwaway certificate and key, made once per run with the openssl command.
let serverContext: TLSContext = {
    var template = Array("/tmp/keel-fuzz-tls-XXXXXX".utf8CString)
    let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    let status = system("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout \(directory)/key.pem "
        + "-out \(directory)/cert.pem -days 90 -subj /CN=localhost -addext subjectAltName=DNS:localhost 2>/dev/null")
    precondition(status == 0, "openssl could not make the fuzzer's certificate")
    var configuration = TLSConfiguration.server(certificateChain: "\(directory)/cert.pem", privateKey: "\(directory)/key.pem")
    configuration.applicationProtocols = ["h2", "http/1.1"]
    return try! TLSContext(configuration: configuration)
}()

/// Counts what reaches the handler (nothing should, short of a completed handshake).
struct Sink: TCPConnectionHandler {
    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {}
}

@_cdecl("LLVMFuzzerTestOneInput")
func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = Array(fuzzInput(data, count))
    guard let first = bytes.first else { return 0 }
    let piece = Int(first) + 1  // reads of 1 to 256 bytes
    var options = TCPConnectionOptions()
    options.useTLS(serverContext)
    let server = EmbeddedConnection(handler: Sink(), options: options)
    let rest = Array(bytes.dropFirst())
    server.receive(chunks: stride(from: 0, to: rest.count, by: piece).map { Array(rest[$0..<min($0 + piece, rest.count)]) })
    if first & 1 == 1 { server.peerHalfCloses() }
    let leftovers = server.finish()
    guard leftovers.isClean else { fatalError("leaked \(leftovers.buffersInUse) buffers, \(leftovers.openDescriptors) descriptors") }
    return 0
}
