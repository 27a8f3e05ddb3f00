import ArgumentParser
import KeelSockets
import KeelSystem

/// Parses an option's `HOST:PORT` (or `[IPv6]:PORT`) value into an address: a numeric host as is, a
/// host name resolved once, now, when `resolvesNames` (otherwise refused).
/// - Throws: `ValidationError` naming `option` and what was wrong.
public func parseHostPort(_ entry: String, option: String, resolvesNames: Bool = true) throws -> SocketAddress {
    guard let colon = entry.lastIndex(of: ":"), let port = UInt16(entry[entry.index(after: colon)...]) else {
        throw ValidationError("\(option) takes HOST:PORT, got \(entry)")
    }
    var host = String(entry[..<colon])
    if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    do {
        return try SocketAddress(host: host, port: port)
    } catch {
        guard resolvesNames else { throw ValidationError("\(option) \(entry): not a numeric address (\(error))") }
        do {
            return try Resolver.resolve(host: host, port: port)
        } catch {
            throw ValidationError("\(option) \(entry): cannot resolve \(host) (\(error))")
        }
    }
}
