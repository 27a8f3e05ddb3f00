import KeelSystem

/// Socket address parsing: any text as host and any port either parses to an address that prints
/// back and parses again to the same address, or is a typed error; never a trap.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSocketAddress(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: start, count: count)
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
