import CKeelLinux
import Glibc
import SystemPackage

/// An IPv4 or IPv6 socket address (numeric host and port), stored inline as a `sockaddr_storage`.
public struct SocketAddress: Sendable, Hashable, CustomStringConvertible {
    /// The address family.
    public enum Family: Sendable, Hashable {
        case ipv4
        case ipv6
    }

    private var storage = sockaddr_storage()
    /// The length of the valid part of the address, for `bind`/`connect`.
    public private(set) var length: socklen_t = 0

    /// Parses a numeric IPv4 (`127.0.0.1`) or IPv6 (`::1`, optionally in brackets) host.
    /// - Throws: ``SystemError`` with EINVAL when `host` is not a numeric address.
    public init(host: String, port: UInt16) throws(SystemError) {
        var trimmed = host
        if trimmed.hasPrefix("["), trimmed.hasSuffix("]") { trimmed = String(trimmed.dropFirst().dropLast()) }
        if let v4 = Self.parseIPv4(trimmed, port: port) {
            self = v4
        } else if let v6 = Self.parseIPv6(trimmed, port: port) {
            self = v6
        } else {
            throw SystemError(.invalidArgument, call: "inet_pton", context: "'\(host)' is not a numeric IPv4 or IPv6 address")
        }
    }

    /// Wraps a kernel-filled address (from `getsockname`, `accept`, `recvfrom`).
    public init(storage: sockaddr_storage, length: socklen_t) {
        self.storage = storage
        self.length = length
    }

    private init() {}

    /// An IPv4 address from its 4 bytes in network order (no parsing, no allocation).
    /// - Precondition: `bytes.count == 4`.
    public init(ipv4 bytes: UnsafeRawBufferPointer, port: UInt16) {
        precondition(bytes.count == 4, "an IPv4 address has 4 bytes")
        withUnsafeMutableBytes(of: &storage) { raw in
            let sin = raw.baseAddress!.assumingMemoryBound(to: sockaddr_in.self)
            sin.pointee.sin_family = sa_family_t(AF_INET)
            sin.pointee.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &sin.pointee.sin_addr) { $0.copyMemory(from: bytes) }
        }
        length = socklen_t(MemoryLayout<sockaddr_in>.size)
    }

    /// An IPv6 address from its 16 bytes in network order (no parsing, no allocation).
    /// - Precondition: `bytes.count == 16`.
    public init(ipv6 bytes: UnsafeRawBufferPointer, port: UInt16) {
        precondition(bytes.count == 16, "an IPv6 address has 16 bytes")
        withUnsafeMutableBytes(of: &storage) { raw in
            let sin6 = raw.baseAddress!.assumingMemoryBound(to: sockaddr_in6.self)
            sin6.pointee.sin6_family = sa_family_t(AF_INET6)
            sin6.pointee.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &sin6.pointee.sin6_addr) { $0.copyMemory(from: bytes) }
        }
        length = socklen_t(MemoryLayout<sockaddr_in6>.size)
    }

    /// The address's bytes in network order: 4 for IPv4, 16 for IPv6.
    public var addressBytes: [UInt8] {
        withUnsafeBytes(of: storage) { raw in
            if family == .ipv4 {
                return withUnsafeBytes(of: raw.load(as: sockaddr_in.self).sin_addr) { Array($0) }
            }
            return withUnsafeBytes(of: raw.load(as: sockaddr_in6.self).sin6_addr) { Array($0) }
        }
    }

    /// Calls `body` with the address's bytes in network order (4 or 16), without allocating.
    public func withAddressBytes<Result>(_ body: (UnsafeRawBufferPointer) -> Result) -> Result {
        withUnsafeBytes(of: storage) { raw in
            if family == .ipv4 {
                return body(UnsafeRawBufferPointer(rebasing: raw[MemoryLayout<sockaddr_in>.offset(of: \.sin_addr)!...].prefix(4)))
            }
            return body(UnsafeRawBufferPointer(rebasing: raw[MemoryLayout<sockaddr_in6>.offset(of: \.sin6_addr)!...].prefix(16)))
        }
    }

    private static func parseIPv4(_ host: String, port: UInt16) -> SocketAddress? {
        var address = SocketAddress()
        let ok = withUnsafeMutableBytes(of: &address.storage) { raw -> Bool in
            let sin = raw.baseAddress!.assumingMemoryBound(to: sockaddr_in.self)
            sin.pointee.sin_family = sa_family_t(AF_INET)
            sin.pointee.sin_port = port.bigEndian
            return inet_pton(AF_INET, host, &sin.pointee.sin_addr) == 1
        }
        guard ok else { return nil }
        address.length = socklen_t(MemoryLayout<sockaddr_in>.size)
        return address
    }

    private static func parseIPv6(_ host: String, port: UInt16) -> SocketAddress? {
        var address = SocketAddress()
        let ok = withUnsafeMutableBytes(of: &address.storage) { raw -> Bool in
            let sin6 = raw.baseAddress!.assumingMemoryBound(to: sockaddr_in6.self)
            sin6.pointee.sin6_family = sa_family_t(AF_INET6)
            sin6.pointee.sin6_port = port.bigEndian
            return inet_pton(AF_INET6, host, &sin6.pointee.sin6_addr) == 1
        }
        guard ok else { return nil }
        address.length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        return address
    }

    /// IPv4 or IPv6.
    public var family: Family { storage.ss_family == sa_family_t(AF_INET6) ? .ipv6 : .ipv4 }

    /// The `AF_*` constant for `socket(2)`.
    public var addressFamily: Int32 { Int32(storage.ss_family) }

    /// The port number.
    public var port: UInt16 {
        withUnsafeBytes(of: storage) { raw in
            family == .ipv4
                ? UInt16(bigEndian: raw.load(as: sockaddr_in.self).sin_port)
                : UInt16(bigEndian: raw.load(as: sockaddr_in6.self).sin6_port)
        }
    }

    /// The numeric host, e.g. `127.0.0.1` or `::1`.
    public var host: String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        withUnsafeBytes(of: storage) { raw in
            if family == .ipv4 {
                var addr = raw.load(as: sockaddr_in.self).sin_addr
                _ = inet_ntop(AF_INET, &addr, &text, socklen_t(text.count))
            } else {
                var addr = raw.load(as: sockaddr_in6.self).sin6_addr
                _ = inet_ntop(AF_INET6, &addr, &text, socklen_t(text.count))
            }
        }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// `host:port`, with IPv6 hosts in brackets.
    public var description: String { family == .ipv4 ? "\(host):\(port)" : "[\(host)]:\(port)" }

    /// Calls `body` with the address as a `sockaddr` pointer and its length.
    public func withSockAddr<Result, Failure: Error>(
        _ body: (UnsafePointer<sockaddr>, socklen_t) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        let outcome = withUnsafeBytes(of: storage) { raw in
            Swift.Result<Result, Failure> { () throws(Failure) -> Result in
                try body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), length)
            }
        }
        return try outcome.get()
    }

    public static func == (lhs: SocketAddress, rhs: SocketAddress) -> Bool {
        lhs.length == rhs.length && withUnsafeBytes(of: lhs.storage) { l in
            withUnsafeBytes(of: rhs.storage) { r in memcmp(l.baseAddress!, r.baseAddress!, Int(lhs.length)) == 0 }
        }
    }

    public func hash(into hasher: inout Hasher) {
        withUnsafeBytes(of: storage) { hasher.combine(bytes: UnsafeRawBufferPointer(rebasing: $0.prefix(Int(length)))) }
    }
}
