import KeelSystem

/// An address prefix in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or one address), for the
/// allow-list of trusted proxies. An IPv4 range also matches the IPv4-mapped IPv6 form of its
/// addresses (`::ffff:10.1.2.3`), as a dual-stack listener reports them.
public struct ProxyAddressRange: Sendable, Hashable, CustomStringConvertible {
    /// The network's address bytes (4 or 16), the bits past the prefix cleared.
    private let network: [UInt8]
    /// The prefix length in bits.
    public let prefixLength: Int

    /// Parses `cidr`: a numeric address, optionally followed by `/` and a prefix length.
    /// - Throws: ``ProxyRangeError`` when it is not one.
    public init(_ cidr: String) throws(ProxyRangeError) {
        let parts = cidr.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = try? SocketAddress(host: String(parts[0]), port: 0) else {
            throw ProxyRangeError(cidr: cidr, reason: "not a numeric IPv4 or IPv6 address")
        }
        var bytes = address.addressBytes
        let maximum = bytes.count * 8
        var length = maximum
        if parts.count == 2 {
            guard let parsed = Int(parts[1]), (0...maximum).contains(parsed) else {
                throw ProxyRangeError(cidr: cidr, reason: "the prefix length must be 0...\(maximum)")
            }
            length = parsed
        }
        for index in bytes.indices {
            let kept = max(0, min(8, length - index * 8))
            bytes[index] &= kept == 8 ? 0xFF : ~(0xFF >> UInt8(kept))
        }
        network = bytes
        prefixLength = length
    }

    /// Whether `address` lies in this range.
    public func contains(_ address: SocketAddress) -> Bool {
        address.withAddressBytes { bytes in
            if bytes.count == network.count { return matches(bytes) }
            // An IPv4 range against an IPv4-mapped IPv6 address.
            if network.count == 4 && bytes.count == 16 && bytes.prefix(10).allSatisfy({ $0 == 0 })
                && bytes[10] == 0xFF && bytes[11] == 0xFF {
                return matches(UnsafeRawBufferPointer(rebasing: bytes[12...]))
            }
            return false
        }
    }

    private func matches(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var remaining = prefixLength
        for index in network.indices where remaining > 0 {
            let mask: UInt8 = remaining >= 8 ? 0xFF : ~(0xFF >> UInt8(remaining))
            if bytes[index] & mask != network[index] { return false }
            remaining -= 8
        }
        return true
    }

    public var description: String {
        let host = network.count == 4
            ? network.map(String.init).joined(separator: ".")
            : stride(from: 0, to: 16, by: 2).map { String(UInt16(network[$0]) << 8 | UInt16(network[$0 + 1]), radix: 16) }.joined(separator: ":")
        return "\(host)/\(prefixLength)"
    }
}

/// A trusted-proxy range that does not parse.
public struct ProxyRangeError: Error, Sendable, Hashable, CustomStringConvertible {
    public var cidr: String
    public var reason: String
    public var description: String { "'\(cidr)': \(reason)" }
}
