import FuzzSupport
import KeelSystem

/// Socket address parsing: any text as host and any port either parses to an address that prints
/// back and parses again to the same address, or is a typed error; never a trap.
/// The program's entry (SwiftPM names an executable's main `FuzzSocketAddress_main`; the target is compiled as a
/// library, so this is it): hands control to libFuzzer.
@_cdecl("FuzzSocketAddress_main")
func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runFuzzer(argc, argv, fuzzOne)
}

/// One input (also exported under libFuzzer's own name, which its runtime references).
@_cdecl("LLVMFuzzerTestOneInput")
func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = fuzzInput(data, count)
    guard bytes.count >= 2 else { return 0 }
    let port = UInt16(bytes[0]) << 8 | UInt16(bytes[1])
    let host = String(decoding: bytes[2...], as: UTF8.self)
    guard let address = try? SocketAddress(host: host, port: port) else { return 0 }
    guard address.port == port else { fatalError("port \(port) became \(address.port) for \(host)") }
    let printed = address.description
    guard let separator = printed.lastIndex(of: ":") else { fatalError("no port in \(printed)") }
    var printedHost = String(printed[..<separator])
    if printedHost.hasPrefix("[") { printedHost = String(printedHost.dropFirst().dropLast()) }
    guard let again = try? SocketAddress(host: printedHost, port: port), again == address else {
        fatalError("\(host) printed as \(printed), which does not parse back to the same address")
    }
    return 0
}
